"""Validated entry points: ``simulate_pbft`` (one block) and ``sweep`` (many, in parallel)."""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from mcsl_core._validation import available_memory as available_bytes  # the one memory probe
from mcsl_core._validation import check_int_scalar, check_memory, check_nonneg_int, check_scalar

from . import _sim
from ._closed_form import BLOCK_CARRIES, PROTOCOLS, MessageCounts, fault_tolerance, quorum
from ._network import NetworkModel

__all__ = [
    "FAULTS",
    "ConsensusResult",
    "SweepResult",
    "available_bytes",
    "build_inputs",
    "fault_mask",
    "kernel_bytes",
    "simulate_pbft",
    "sweep",
]

FAULTS = ("silent", "equivocate")


@dataclass(frozen=True)
class ConsensusResult:
    """Outcome of one block's agreement (``simulate_pbft``).

    ``time_s`` is when the block is final for the system: the client holds ``f+1``
    matching replies (PBFT, HotStuff) or the leader holds ``f+1`` matching follower
    replies (the paper's exchange); NaN when that never happens.
    """

    time_s: float
    messages: int
    bytes: float
    committed: bool
    view_changes: int  # highest view installed by an honest node
    phase_messages: MessageCounts  # messages sent per kind
    phase_bytes: MessageCounts  # bytes sent per kind
    phase_time_s: MessageCounts  # last time a message of that kind was handled (NaN: none)
    node_commit_s: np.ndarray  # shape=[n], float64: when each node committed (NaN: never)
    node_digest: np.ndarray  # shape=[n], int64: digest each node committed (-1: none)
    node_conflict: np.ndarray  # shape=[n], bool: the node later committed a different digest
    faulty: np.ndarray  # shape=[n], bool
    agreement: bool  # no two honest nodes committed different blocks, none changed its mind
    all_honest_committed_s: float  # last honest commit (NaN if some honest node never committed)
    client_digest: int  # digest the system accepted (-1: none)
    protocol: str
    n_nodes: int
    f: int


class SweepResult(NamedTuple):
    """One entry per configuration of ``sweep``."""

    time_s: np.ndarray  # shape=[C], float64 (NaN: not committed)
    messages: np.ndarray  # shape=[C], int64
    bytes: np.ndarray  # shape=[C], float64
    committed: np.ndarray  # shape=[C], bool
    view_changes: np.ndarray  # shape=[C], int64


def fault_mask(n: int, faulty, leader_faulty: bool) -> np.ndarray:
    """Boolean mask of faulty nodes.

    ``faulty`` is a count k (the faulty nodes are the last k, or node 0 (the view-0
    primary) and the last k-1 when ``leader_faulty``) or a sequence of node indices
    (then ``leader_faulty`` must agree with whether 0 is among them).
    """
    mask = np.zeros(n, dtype=bool)
    if np.ndim(faulty) == 0:
        k = check_int_scalar("faulty", faulty, 0)
        if k > n:
            raise ValueError(f"faulty must be <= n_nodes = {n}; got {k}")
        if leader_faulty:
            if k < 1:
                raise ValueError("leader_faulty=True needs faulty >= 1 (the leader is one of them)")
            mask[0] = True
            if k > 1:
                mask[n - (k - 1) :] = True
        elif k:
            mask[n - k :] = True
        return mask
    idx = check_nonneg_int("faulty", np.asarray(faulty))
    if idx.ndim != 1:
        raise ValueError(f"faulty must be a count or a 1-D sequence of node indices, got shape {idx.shape}")
    if idx.size and idx.max() >= n:
        bad = int(np.flatnonzero(idx >= n)[0])
        raise ValueError(f"faulty must hold node indices < {n}; got {idx[bad]} at index {bad}")
    if np.unique(idx).size != idx.size:
        raise ValueError("faulty must not repeat a node index")
    mask[idx] = True
    if leader_faulty and not mask[0]:
        raise ValueError("leader_faulty=True but node 0 (the view-0 primary) is not in faulty")
    return mask


def _auto_timeout(n: int, U: int, upd: float, payload: float, net: NetworkModel) -> float:
    """Base view-change timeout: ``2 * estimate + 1`` s (see NetworkModel), where

    ``estimate`` is the sum, in this order, of: ``6 L``; ``n (H + upd) e_up``;
    ``U ((H + upd) down + proc + ver + hpb upd)``; ``(n - 1) (H + payload) up``;
    ``(H + payload) down``; ``proc``; ``ver (1 + U)``; ``2 hpb payload``;
    ``3 n (H (up + down) + proc + ver)``; ``8 sign`` -- with ``L`` the latency mean
    (times 10 unless the latency is constant), ``up, down, e_up`` the seconds per byte
    of a node's links and an edge server's uplink (8 / bits per second), ``H`` the
    header bytes and ``payload`` the block's (``U upd``, or ``32 U`` for digests).
    """
    spb = net.seconds_per_byte_tuple()
    H = net.header_bytes
    lat_hi = net.latency_mean_s * (1.0 if net.latency == "constant" else 10.0)
    vote = net.processing_s + net.verify_s
    sub = net.processing_s + net.verify_s + net.hash_s_per_byte * upd
    est = (
        6 * lat_hi
        + n * (H + upd) * spb[2]  # an edge server uploads its update to every node
        + U * ((H + upd) * spb[1] + sub)  # a node downloads and checks every update
        + (n - 1) * (H + payload) * spb[0]
        + (H + payload) * spb[1]  # the block to every backup
        + net.processing_s
        + net.verify_s * (1 + U)
        + 2 * net.hash_s_per_byte * payload
        + 3 * n * (H * (spb[0] + spb[1]) + vote)  # vote rounds
        + 8 * net.sign_s
    )
    return 2.0 * est + 1.0


_IP_ORDER = ("I_N", "I_U", "I_V", "I_PROTO", "I_DIGESTS", "I_LAT", "I_SEED", "I_F", "I_Q")
_P_ORDER = (
    "P_PROC",
    "P_SIGN",
    "P_VERIFY",
    "P_HASH_PB",
    "P_LAT_MEAN",
    "P_LAT_SHAPE",
    "P_TBASE",
    "P_HEADER",
    "P_UPD",
)
if [getattr(_sim, k) for k in _IP_ORDER + _P_ORDER] != [*range(_sim.N_IPARAMS), *range(_sim.N_PARAMS)]:
    raise ImportError("build_inputs lists the kernel parameters in another order than _sim")


ENTITIES_MAX = 2**30  # nodes and updates each: entity ids are 32-bit in the event records


def _size(n, U) -> tuple[int, int]:
    """``n_nodes`` and ``n_updates`` checked: integers in [4, ENTITIES_MAX], [0, ENTITIES_MAX]."""
    return check_int_scalar("n_nodes", n, 4, ENTITIES_MAX), check_int_scalar("n_updates", U, 0, ENTITIES_MAX)


def _views(n: int, protocol: str, max_views) -> int:
    """Views the kernel reserves: ``max_views`` (default f + 2) for PBFT, else 1."""
    if protocol != "pbft":
        return 1
    return fault_tolerance(n) + 2 if max_views is None else check_int_scalar("max_views", max_views, 1)


def build_inputs(n, U, update_bytes, network, mask_kind, protocol, block_carries, seed, max_views):
    """Validated kernel inputs ``(IP, P, fault)`` for one configuration."""
    n, U = _size(n, U)
    upd = check_scalar("update_bytes", update_bytes, 0.0)
    seed = check_int_scalar("seed", seed, 0)
    if seed >= 2**63:
        raise ValueError(f"seed must be < 2**63; got {seed}")
    if not isinstance(network, NetworkModel):
        raise ValueError(f"network must be a NetworkModel, got {type(network).__name__}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if block_carries not in BLOCK_CARRIES:
        raise ValueError(f"block_carries must be one of {BLOCK_CARRIES}, got {block_carries!r}")
    f = fault_tolerance(n)
    V = _views(n, protocol, max_views)
    digests = block_carries == "digests"
    payload = U * (32.0 if digests else upd)
    tbase = network.view_timeout_s
    if tbase is None:
        tbase = _auto_timeout(n, U, upd, payload, network)
    # in the order of _sim's I_* and P_* offsets (0, 1, ...; checked at import)
    proto, lat = PROTOCOLS.index(protocol), network.latency_code
    IP = np.array([n, U, V, proto, int(digests), lat, seed, f, quorum(n, f)], np.int64)
    net = network
    costs = (net.processing_s, net.sign_s, net.verify_s, net.hash_s_per_byte)
    P = np.array([*costs, net.latency_mean_s, net.latency_shape, tbase, net.header_bytes, upd], np.float64)
    fault = np.asarray(mask_kind, dtype=np.int64)
    return IP, P, fault


LATENCY_TABLE_MAX = 1 << 21  # latency draws the latency thread makes ahead (16 MiB)
LATENCY_TABLE_MIN = 1024  # below this, starting the thread costs what it saves (about 500)


class _LatencyThread:
    """A daemon thread that draws the latency tables of ``simulate_pbft`` calls, one job at a
    time, started on first use. The caller never waits for it: the event loop draws any
    latency the table does not hold yet, so the result does not depend on this thread
    (nor on whether it runs at all). A job holds its arrays, so they outlive the call; at
    most ``BACKLOG`` jobs wait (a job whose events are done ends at once), beyond that a
    call draws its latencies itself, so a starved thread cannot pile up tables."""

    BACKLOG = 4

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
            os.register_at_fork(after_in_child=self._reset)  # a child has no such thread

    def _reset(self) -> None:
        self._jobs: queue.SimpleQueue | None = None
        self._lock = threading.Lock()

    def submit(self, Z: np.ndarray, F: np.ndarray) -> None:
        if self._jobs is None:
            with self._lock:
                if self._jobs is None:
                    jobs: queue.SimpleQueue = queue.SimpleQueue()
                    threading.Thread(
                        target=_draw_jobs, args=(jobs,), name="mcsl-latency", daemon=True
                    ).start()
                    self._jobs = jobs
        if self._jobs.qsize() < self.BACKLOG:
            self._jobs.put((Z, F))


def _draw_jobs(jobs: queue.SimpleQueue) -> None:
    while True:
        Z, F = jobs.get()
        _sim.draw_latencies(Z, F)  # stops at once when the events are done
        del Z, F


_LATENCY = _LatencyThread()


def latency_table(n: int, U: int) -> int:
    """Messages whose latency the latency thread draws ahead of the event loop: one PBFT
    block's ``n U + 2 n^2 - n`` (at most ``LATENCY_TABLE_MAX``); 0 (no thread) for fewer
    than ``LATENCY_TABLE_MIN`` or when numba may use one thread only (as in task-sweep
    workers). Any count gives the same run (a draw depends on the message number alone)."""
    m = n * U + 2 * n * n - n
    if m < LATENCY_TABLE_MIN or numba.get_num_threads() < 2:
        return 0
    return min(m, LATENCY_TABLE_MAX)


def kernel_bytes(n: int, U: int, V: int, table: int = 0) -> int:
    """Bytes one ``run_block`` allocates for ``n`` nodes, ``U`` updates and ``V`` views
    (and ``8 table`` for a latency table, ``latency_table``).

    ``(36 n + 8) V`` (per view and node, int32: prepare and commit counters for two
    digests, the pre-prepare digest, view changes received, best certificate view and
    digest, a sent flag; per view a flag: its rows are set, and their pages touched, only
    when the view is first used) ``+ queue_bytes(n U + 2 n (n - 1) + 4 n + 64)`` (every message of two
    broadcast rounds in flight; about 56.3 bytes a slot: a 32-byte record, a 16-byte
    bucket entry in chunks of 32, an 8-byte tie-heap key, plus 733 KB of bucket chunks)
    ``+ 232 n`` (node state, fault codes, outputs) ``+ 80 (n + 1 + U)`` (per entity: link
    and CPU clocks, seconds per byte) ``+ 8 Z_NODE + 2048`` (counters, bucket heads,
    parameters, alignment: 19.5 KB). ``V = f + 2`` for PBFT
    by default (``max_views``), 1 otherwise. The queue doubles if more events are
    pending at once (many views in flight); its pages are touched only as used.
    """
    fixed = 8 * _sim.Z_NODE + 2048
    queue = _sim.queue_bytes(_sim.queue_slots(n, U))
    return (36 * n + 8) * V + queue + 232 * n + 80 * (n + 1 + U) + fixed + 8 * table


def _check_fits(n: int, U: int, V: int, where: str = "", have: int | None = None, table: int = 0) -> int:
    need = kernel_bytes(n, U, V, table)
    have = available_bytes() if have is None else have
    if need > have:
        raise ValueError(
            f"n_nodes = {n}{where} (with n_updates = {U}, {V} views) needs about {need / 2**30:.2f} GiB "
            f"for the simulation, more than the {have / 2**30:.2f} GiB of memory available"
        )
    return need


def _fault_code(fault: str) -> int:
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
    return _sim.SILENT if fault == "silent" else _sim.EQUIVOCATE


def simulate_pbft(
    n_nodes: int,
    n_updates: int,
    *,
    update_bytes: float = 300_000,
    network: NetworkModel = NetworkModel(),
    faulty: int | Sequence[int] = 0,
    fault: str = "silent",
    leader_faulty: bool = False,
    protocol: str = "pbft",
    block_carries: str = "updates",
    seed: int = 0,
    max_views: int | None = None,
) -> ConsensusResult:
    """Discrete-event simulation of every message agreeing on one block (paper IV-C, Fig. 6).

    The ``n_updates`` edge servers sign their update and send it to every node; each
    node checks the signature and hashes the update. The primary of view 0 (node 0)
    then broadcasts the block (pre-prepare; it carries the updates or only their
    digests, ``block_carries``); backups check the primary's signature and, when the
    block carries them, every update's signature and hash. Prepare (quorum 2f, own
    included, from backups) and commit (quorum 2f+1) follow, then each node replies to
    the client, which accepts ``f+1`` matching replies (Castro-Liskov PBFT, n = 3f+1).

    Faulty nodes (``faulty``: a count or node indices; ``leader_faulty`` puts node 0
    among them) are ``"silent"`` (send nothing) or ``"equivocate"``: they send one
    digest to even-numbered nodes and a forged one to odd-numbered nodes in
    pre-prepare, prepare and commit, vote at once without waiting for quorums, and
    reply with the forged digest. A node whose timer expires before it commits starts
    a view change (timeouts double per view, the primary of view v is node v mod n;
    f+1 view-change messages make a node join; the new primary needs 2f+1 and
    re-proposes the digest of the highest prepared certificate). Views stop at
    ``max_views`` (default f+2) so a run with more than f silent nodes ends.

    ``protocol="paper"``: the leader broadcasts the block and is done at f+1 matching
    follower replies. ``protocol="hotstuff"``: basic (non-pipelined) HotStuff, the
    leader collects 2f+1 votes in three rounds and broadcasts each certificate.
    Neither has a view change here: a faulty leader means no commit.

    Returns
    -------
    ConsensusResult
        ``time_s``, ``messages``, ``bytes``, ``committed``, ``view_changes``, per-phase
        counts, bytes and times, per-node commit times and digests, ``agreement``.
    """
    n, U = _size(n_nodes, n_updates)
    table = latency_table(n, U)
    _check_fits(n, U, _views(n, protocol, max_views), table=table)  # before anything of size n
    code = _fault_code(fault)
    mask = fault_mask(n, faulty, bool(leader_faulty))
    IP, P, fcode = build_inputs(
        n, U, update_bytes, network, mask * code, protocol, block_carries, seed, max_views
    )
    cnt = np.zeros(_sim.N_PHASES, np.int64)
    byt = np.zeros(_sim.N_PHASES)
    ptime = np.zeros(_sim.N_PHASES)
    node_d = np.zeros(n, np.int64)
    node_t = np.zeros(n)
    node_i = np.zeros((n, 2), np.int64)
    client = np.zeros(2)
    out = (cnt, byt, ptime, node_d, node_t, node_i, client)
    Z, W, F, E = _sim.start_block(IP, P, network.seconds_per_byte(), fcode, table)
    if table:
        _LATENCY.submit(Z, F)
    sent = _sim.run_started(Z, W, F, E, *out)
    if sent < 0:
        raise ValueError(f"n_nodes = {n}: more than {_sim.MAX_SEQ} events in one run (lower max_views)")
    return make_result(protocol, n, mask, cnt, byt, ptime, node_d, node_t, node_i, client)


def make_result(protocol, n, mask, cnt, byt, ptime, node_d, node_t, node_i, client) -> ConsensusResult:
    """Assemble a ``ConsensusResult`` from the kernel's outputs (it keeps the arrays: pass
    ones nothing else holds)."""
    agreement, all_t, views = _sim.summarize(mask, node_d, node_t, node_i)  # over honest nodes
    counts, byts = cnt.tolist(), byt.tolist()
    return ConsensusResult(
        time_s=float(client[1]),
        messages=sum(counts),
        bytes=math.fsum(byts),  # correctly rounded: independent of order
        committed=bool(client[0] >= 0),
        view_changes=int(views),
        phase_messages=MessageCounts(*counts),
        phase_bytes=MessageCounts(*byts),
        phase_time_s=MessageCounts(*ptime.tolist()),
        node_commit_s=node_t,
        node_digest=node_d,
        node_conflict=node_i[:, 0].astype(bool),
        faulty=mask,
        agreement=bool(agreement),
        all_honest_committed_s=float(all_t),
        client_digest=int(client[0]),
        protocol=protocol,
        n_nodes=n,
        f=fault_tolerance(n),
    )


def _column(name: str, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or 1-D, got shape {arr.shape}")
    return arr


def sweep(
    n_nodes,
    n_updates,
    seeds,
    *,
    update_bytes: float = 300_000,
    network: NetworkModel = NetworkModel(),
    faulty=0,
    fault: str = "silent",
    leader_faulty: bool = False,
    protocol: str = "pbft",
    block_carries: str = "updates",
    parallel: bool = True,
) -> SweepResult:
    """``simulate_pbft`` for C configurations in one call, parallel over them (``prange``).

    ``n_nodes``, ``n_updates``, ``seeds`` and ``faulty`` (a count per configuration)
    are scalars or 1-D arrays; every 1-D array must have the same length C and a
    scalar is used for every configuration. ``parallel=False`` runs the same loop on one
    thread (results are identical: each configuration is independent and deterministic).
    Before any kernel runs, every configuration's memory (``kernel_bytes``) is checked
    against ``available_bytes()``: one that cannot fit raises a ``ValueError`` naming
    ``n_nodes`` and its index, on both paths alike; the parallel path runs on fewer
    threads when the largest configurations would not fit side by side.
    """
    cols = {
        k: _column(k, v)
        for k, v in dict(n_nodes=n_nodes, n_updates=n_updates, seeds=seeds, faulty=faulty).items()
    }
    lengths = {k: v.shape[0] for k, v in cols.items() if v.ndim == 1}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"1-D arguments must have one length; got {lengths}")
    C = next(iter(lengths.values())) if lengths else 1
    full = {k: (np.repeat(v[()], C) if v.ndim == 0 else v) for k, v in cols.items()}
    code = _fault_code(fault)
    ns = check_nonneg_int("n_nodes", full["n_nodes"])
    if C and ns.min() < 4:
        bad = int(np.flatnonzero(ns < 4)[0])
        raise ValueError(f"n_nodes must be >= 4; got {ns[bad]} at index {bad}")
    if C and ns.max() > ENTITIES_MAX:
        bad = int(np.flatnonzero(ns > ENTITIES_MAX)[0])
        raise ValueError(f"n_nodes must be <= {ENTITIES_MAX}; got {ns[bad]} at index {bad}")
    have = available_bytes()
    need = np.array(  # checked before anything of size n is allocated
        [
            _check_fits(
                *_size(ns[c], full["n_updates"][c]),
                _views(int(ns[c]), protocol, None),
                f" at index {c}",
                have,
            )
            for c in range(C)
        ],
        dtype=np.int64,
    )
    nmax = int(ns.max()) if C else 4
    check_memory("n_nodes", 8 * C * nmax, "the configurations' fault codes, padded to the largest n", have)
    IPs = np.zeros((C, _sim.N_IPARAMS), np.int64)
    Ps = np.zeros((C, _sim.N_PARAMS))
    faults = np.zeros((C, nmax), np.int64)
    for c in range(C):
        n = int(ns[c])
        mask = fault_mask(n, full["faulty"][c], bool(leader_faulty))
        IPs[c], Ps[c], faults[c, :n] = build_inputs(
            n,
            full["n_updates"][c],
            update_bytes,
            network,
            mask * code,
            protocol,
            block_carries,
            full["seeds"][c],
            None,
        )
    SPB = np.tile(network.seconds_per_byte(), (C, 1))
    out = SweepResult(
        np.zeros(C), np.zeros(C, np.int64), np.zeros(C), np.zeros(C, bool), np.zeros(C, np.int64)
    )
    if parallel:
        _run_parallel(IPs, Ps, SPB, faults, out, need)
    else:
        _sim.sweep_serial(IPs, Ps, SPB, faults, *out)
    if C and out.messages.min() < 0:
        bad = int(np.flatnonzero(out.messages < 0)[0])
        raise ValueError(f"n_nodes = {ns[bad]} at index {bad}: more than {_sim.MAX_SEQ} events in one run")
    return out


def _run_parallel(IPs, Ps, SPB, faults, out, need) -> None:
    """``sweep_parallel`` on as many threads as the largest configurations fit in memory at once.

    Every configuration alone fits (checked before); running k of them at once needs at
    most the k largest estimates, so k is lowered until that fits. The results do not
    depend on k (each configuration is independent and deterministic).
    """
    threads = numba.get_num_threads()
    top = np.cumsum(np.sort(need)[::-1][:threads])
    k = max(1, int(np.searchsorted(top, available_bytes(), side="right")))
    if k >= threads:
        _sim.sweep_parallel(IPs, Ps, SPB, faults, *out)
        return
    numba.set_num_threads(k)
    try:
        _sim.sweep_parallel(IPs, Ps, SPB, faults, *out)
    finally:
        numba.set_num_threads(threads)
