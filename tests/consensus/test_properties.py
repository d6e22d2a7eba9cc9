"""Kernel vs the independent pure-Python reference, safety and liveness (hypothesis), sweep, validation."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcsl_core.consensus import (
    ConsensusResult,
    NetworkModel,
    _sim,
    fault_tolerance,
    pbft_message_counts,
    simulate_pbft,
    sweep,
)
from tests.conftest import examples
from tests.reference.consensus_ref import latency, simulate_ref, uniform01

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEFAULT_NET = NetworkModel()
IDEAL = NetworkModel(
    latency="constant",
    **dict.fromkeys(("upload_bps", "download_bps", "edge_upload_bps", "client_download_bps"), 1e300),
    **dict.fromkeys(("processing_s", "sign_s", "verify_s", "hash_s_per_byte"), 0.0),
    view_timeout_s=1.0,
)


@st.composite
def placements(draw, max_faulty=None, min_faulty=0, sizes=(4, 5, 7, 10, 13)):
    n = draw(st.sampled_from(sizes))
    f = fault_tolerance(n)
    hi = f if max_faulty is None else min(max_faulty(n), n - 1)
    lo = min(min_faulty if isinstance(min_faulty, int) else min_faulty(n), hi)
    k = draw(st.integers(lo, hi))
    idx = draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
    seed = draw(st.integers(0, 2**31))
    return n, sorted(idx), seed


def _same(a, b):
    """Every field of ``ConsensusResult``, exactly: both sides do the same float operations
    in the same order (the model's equations, documented in ``_sim``), so no tolerance."""
    for fld in dataclasses.fields(ConsensusResult):
        x, y = getattr(a, fld.name), getattr(b, fld.name)
        if isinstance(x, (np.ndarray, tuple)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=fld.name)
        elif isinstance(x, float) and np.isnan(x):
            assert np.isnan(y), fld.name
        else:
            assert x == y, (fld.name, x, y)
    assert b.duplicates == 0  # the kernel counts votes: no sender repeats a kind in a view


@st.composite
def configs(draw):
    """Real inputs: sizes, fault placements and kinds, protocols, latency laws, blocks, views."""
    n = draw(st.integers(4, 40))
    k = draw(st.integers(0, n - 1))
    idx = sorted(draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True)))
    protocol = draw(st.sampled_from(["pbft", "paper", "hotstuff"]))
    f = fault_tolerance(n)
    mv = draw(st.none() | st.integers(1, f + 3)) if protocol == "pbft" else None
    kw = dict(
        faulty=idx,
        fault=draw(st.sampled_from(["silent", "equivocate"])),
        leader_faulty=0 in idx,
        protocol=protocol,
        seed=draw(st.integers(0, 2**63 - 1)),
        block_carries=draw(st.sampled_from(["updates", "digests"])),
        network=NetworkModel(latency=draw(st.sampled_from(["pareto", "exponential", "constant"]))),
        update_bytes=draw(st.sampled_from([0.0, 1000.0, 300_000.0])),
        max_views=mv,
    )
    return n, draw(st.integers(0, 6)), kw


def _pin(n, U, **kw):
    kw.setdefault("network", DEFAULT_NET)
    kw.setdefault("leader_faulty", 0 in kw.get("faulty", ()))
    return example((n, U, kw))


@settings(max_examples=examples(40), **SETTINGS)
@given(configs())
# more than f equivocators split the honest nodes (conflicting commits)
@_pin(4, 1, faulty=[0, 1], fault="equivocate")
# an equivocating primary at n = 5, where 2f + 1 = 3 would not be a safe quorum
@_pin(5, 2, faulty=[0], fault="equivocate")
# a silent primary: view change, then commit in view 1
@_pin(7, 3, faulty=[0], fault="silent")
# more than f silent nodes: every view times out, nothing commits
@_pin(10, 1, faulty=[0, 4, 9, 7], fault="silent")
# equivocators in views after a view change (certificates carry forged digests)
@_pin(13, 2, faulty=[0, 1, 2, 3, 5], fault="equivocate", seed=3)
# no updates: the primary proposes at time 0; constant latency: many equal time stamps
@_pin(10, 0, faulty=[3], network=NetworkModel(latency="constant"))
# the largest seed, digests only, one view only
@_pin(7, 2, faulty=[0], seed=2**63 - 1, block_carries="digests", max_views=1)
# f + 1 equivocators: an honest node commits one digest, then another in a later view
@_pin(7, 2, faulty=[0, 1, 2], fault="equivocate", seed=398)
# zero CPU and transfer costs, constant latency: handle events tie with arrivals
@_pin(7, 2, faulty=[0], fault="equivocate", network=IDEAL)
@_pin(10, 0, faulty=[0, 5], network=IDEAL)
@_pin(10, 3, faulty=[0, 2], fault="equivocate", protocol="hotstuff")
@_pin(10, 3, faulty=[0], fault="equivocate", protocol="paper")
def test_kernel_equals_reference(cfg):
    n, U, kw = cfg
    _same(simulate_pbft(n, U, **kw), simulate_ref(n, U, **kw))


def test_conflicting_commit_is_flagged():
    # more than f equivocators: honest nodes 4 and 6 commit digest 0 and, in a later view,
    # another one; the flag shows what the first committed digest alone hides
    kw = dict(faulty=[0, 1, 2], fault="equivocate", leader_faulty=True, seed=398, network=DEFAULT_NET)
    r = simulate_pbft(7, 2, **kw)
    ref = simulate_ref(7, 2, **kw)
    _same(r, ref)
    assert r.node_conflict[~r.faulty].any() and not r.agreement


def test_kernel_equals_reference_n100():
    kw = dict(network=DEFAULT_NET, faulty=[0, 50, 99], leader_faulty=True, seed=5)
    _same(simulate_pbft(100, 3, **kw), simulate_ref(100, 3, **kw))


@pytest.mark.parametrize(
    "n, U, kw",
    [
        # zero costs, constant latency: skipped prepares, commits and replies tie with live events
        (10, 2, dict(faulty=[0], fault="equivocate", network=IDEAL)),
        (13, 0, dict(faulty=[1, 5], network=IDEAL)),
        # many late prepares and commits (a third of each), replies after acceptance, with a
        # view change: a skipped event's handle time is the phase's last (phase_time_s)
        (31, 3, dict(faulty=[0, 7], leader_faulty=True, seed=11)),
        # slow CPUs (2 ms a message): a node's skipped late commits are handled after other
        # nodes' live ones, so the phase's last handle time must be a max, not the last write
        (7, 2, dict(network=NetworkModel(processing_s=2e-3), seed=0)),
        # HotStuff votes of a phase whose certificate is already out
        (31, 2, dict(protocol="hotstuff", faulty=[4], fault="equivocate", seed=2)),
    ],
)
def test_skipped_noop_handle_events_change_nothing(n, U, kw):
    # the kernel drops the handle event of a message that is a no-op at arrival (it keeps
    # the message's downlink and CPU time, its handle time and its sequence number);
    # the reference handles every message, so any effect of the skip shows here
    kw.setdefault("network", DEFAULT_NET)
    _same(simulate_pbft(n, U, **kw), simulate_ref(n, U, **kw))


def _block_inputs(n, U, kw):
    from mcsl_core.consensus._api import build_inputs, fault_mask

    net = kw.get("network", DEFAULT_NET)
    mask = fault_mask(n, kw.get("faulty", 0), kw.get("leader_faulty", False))
    code = _sim.EQUIVOCATE if kw.get("fault", "silent") == "equivocate" else _sim.SILENT
    proto = kw.get("protocol", "pbft")
    IP, P, fcode = build_inputs(n, U, 300_000, net, mask * code, proto, "updates", kw.get("seed", 0), None)
    return IP, P, _sim.entity_links(net.seconds_per_byte(), n, U), fcode


def _outputs(n):
    out = [np.zeros(9, np.int64), np.zeros(9), np.zeros(9), np.zeros(n, np.int64), np.zeros(n)]
    return [*out, np.zeros((n, 2), np.int64), np.zeros(2)]


@pytest.mark.parametrize(
    "n, U, kw",
    [
        (13, 3, dict(faulty=[0, 5], leader_faulty=True, seed=4)),  # view changes in flight
        (10, 2, dict(faulty=[0], fault="equivocate", network=IDEAL)),  # ties in the tie heap
        (31, 1, dict(faulty=[3], fault="equivocate", seed=9)),
    ],
)
def test_queue_growth_changes_nothing(n, U, kw):
    # starting from n (U + 2) + 64 slots the queue doubles several times (a broadcast
    # round alone is n (n - 1) events); slots, bucket chunks, their links and the tie
    # heap must all move over intact, so every output equals the default-size run's
    IP, P, spb, fcode = _block_inputs(n, U, kw)
    runs = []
    for cap in (None, n * (U + 2) + 64):
        out = _outputs(n)
        if cap is None:
            sent = _sim.run_block(IP, P, spb, fcode, *out)
        else:
            sent = _sim.run_block_cap(IP, P, spb, fcode, *out, cap)
        runs.append((sent, out))
    assert runs[0][0] == runs[1][0] > 2 * (n * (U + 2) + 64)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["drawn first", "thread"])
@pytest.mark.parametrize(
    "n, U, kw",
    [
        (13, 3, dict(faulty=[0, 5], leader_faulty=True, seed=4)),  # view changes: more messages
        (10, 2, dict(network=NetworkModel(latency="exponential"), seed=3)),
        (7, 2, dict(protocol="hotstuff", network=NetworkModel(latency="constant"))),
        (40, 4, dict(seed=2**63 - 1)),
    ],
)
def test_latency_table_changes_nothing(mode, n, U, kw):
    # the latency table holds draw k at word k. Drawn in full before the events run,
    # every latency of its length comes from it; drawn by the latency thread, from it
    # or from the event loop as timing has it. A table shorter or longer than the run,
    # or none, must give the run without a table, output for output
    from mcsl_core.consensus._api import _LATENCY

    IP, P, spb, fcode = _block_inputs(n, U, kw)
    base = _outputs(n)
    sent = _sim.run_block(IP, P, spb, fcode, *base)
    links = kw.get("network", DEFAULT_NET).seconds_per_byte()
    for table in (1, sent // 2, sent, 4 * sent + 1000):
        Z, W, F, E = _sim.start_block(IP, P, links, fcode, table)
        if mode == "drawn first":
            _sim.draw_latencies(Z, F)
        else:
            _LATENCY.submit(Z, F)
        out = _outputs(n)
        assert _sim.run_started(Z, W, F, E, *out) == sent
        for a, b in zip(base, out):
            np.testing.assert_array_equal(a, b)


_FORK = """
import os, sys, threading
from mcsl_core.consensus import simulate_pbft
want = simulate_pbft(40, 4, seed=5)  # starts the latency thread
pid = os.fork()
if pid == 0:  # the child has no latency thread: a fresh one must start, nothing may hang
    r = simulate_pbft(40, 4, seed=5)
    started = any(t.name == "mcsl-latency" for t in threading.enumerate())
    os._exit(0 if (r.messages, r.time_s) == (want.messages, want.time_s) and started else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_latency_thread_after_fork():
    out = subprocess.run([sys.executable, "-c", _FORK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def _summary_numpy(mask, node_d, node_t, node_i):
    honest = ~mask
    hd = node_d[honest]
    agreement = np.unique(hd[hd >= 0]).size <= 1 and not node_i[honest, 0].any()
    all_t = float(node_t[honest].max()) if honest.any() and (hd >= 0).all() else float("nan")
    return agreement, all_t, int(node_i[honest, 1].max()) if honest.any() else 0


def test_summarize_equals_numpy():
    # make_result's per-node summary, against the NumPy expressions it replaced: random
    # masks (none honest included), digests with -1 (not committed), NaN commit times
    rng = np.random.default_rng(7)
    for _ in range(500):
        n = int(rng.integers(1, 9))
        mask = rng.random(n) < rng.choice([0.0, 0.3, 1.0])
        node_d = rng.integers(-1, 3, n)
        node_t = np.where(rng.random(n) < 0.2, np.nan, rng.random(n))
        node_i = np.stack([rng.random(n) < 0.1, rng.integers(0, 4, n)], axis=1).astype(np.int64)
        got = _sim.summarize(mask, node_d, node_t, node_i)
        want = _summary_numpy(mask, node_d, node_t, node_i)
        assert (bool(got[0]), int(got[2])) == (want[0], want[2])
        assert got[1] == want[1] or (np.isnan(got[1]) and np.isnan(want[1]))


def test_latency_backlog_is_bounded():
    # a thread that never takes a job (starved): at most BACKLOG tables wait, the rest of
    # the calls draw their own latencies and get the same run
    import queue

    from mcsl_core.consensus._api import _LatencyThread

    lt = _LatencyThread()
    lt._jobs = queue.SimpleQueue()  # as if started, but nobody consumes
    n, U = 40, 4
    IP, P, spb, fcode = _block_inputs(n, U, {})
    base = _outputs(n)
    sent = _sim.run_block(IP, P, spb, fcode, *base)
    for _ in range(3 * lt.BACKLOG):
        Z, W, F, E = _sim.start_block(IP, P, DEFAULT_NET.seconds_per_byte(), fcode, sent)
        lt.submit(Z, F)
        out = _outputs(n)
        assert _sim.run_started(Z, W, F, E, *out) == sent
        np.testing.assert_array_equal(out[4], base[4])
    assert lt._jobs.qsize() == lt.BACKLOG


def test_latency_table_size(monkeypatch):
    import numba

    from mcsl_core.consensus import _api

    if numba.get_num_threads() >= 2:
        assert _api.latency_table(100, 10) == pbft_message_counts(100, n_updates=10).messages.total
        assert _api.latency_table(3000, 10) == _api.LATENCY_TABLE_MAX
    assert _api.latency_table(13, 10) == 0  # 455 messages: not worth a thread
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    assert _api.latency_table(100, 10) == 0
    assert _api.kernel_bytes(100, 10, 35, 1000) == _api.kernel_bytes(100, 10, 35) + 8000


def test_byte_totals_by_hand_n4():
    # n = 4, f = 1, q = 3, one update of 1000 bytes, headers of 256 bytes
    H, upd = 256.0, 1000.0
    kw = dict(update_bytes=upd, network=DEFAULT_NET)
    ok = {
        "submit": 4 * (H + upd),  # the edge server to all 4 nodes
        "pre_prepare": 3 * (H + upd),  # the block to 3 backups
        "prepare": 3 * 3 * H,  # 3 backups to 3 others
        "commit": 4 * 3 * H,
        "reply": 4 * H,
    }
    # silent primary: views 0 -> 1; 3 live nodes send 3 view changes each (no certificate);
    # node 1 sends 3 new-views of q + 1 = 4 headers, the block, 2 backups prepare, 3 commit
    vc = {
        "submit": 4 * (H + upd),
        "pre_prepare": 3 * (H + upd),
        "prepare": 2 * 3 * H,
        "commit": 3 * 3 * H,
        "reply": 3 * H,
        "view_change": 3 * 3 * H,
        "new_view": 3 * 4 * H,
    }
    # HotStuff: proposal, 3 vote rounds of 3, 3 certificates of 3 (q = 3 signatures of 64 bytes)
    hs = {
        "submit": 4 * (H + upd),
        "pre_prepare": 3 * (H + upd),
        "vote": 9 * H,
        "qc": 9 * (H + 3 * 64),
        "reply": 4 * H,
    }
    for expect, extra in (
        (ok, {}),
        (vc, dict(faulty=1, leader_faulty=True)),
        (hs, dict(protocol="hotstuff")),
    ):
        want = tuple(expect.get(p, 0.0) for p in _sim.PHASES)
        for r in (simulate_pbft(4, 1, **kw, **extra), simulate_ref(4, 1, **kw, **extra)):
            assert tuple(r.phase_bytes) == want and r.bytes == sum(want) and r.committed
    assert sum(ok.values()) == 4 * 1256 + 3 * 1256 + 9 * 256 + 12 * 256 + 4 * 256 == 15192


@settings(max_examples=60, **SETTINGS)
@given(placements(), st.sampled_from(["silent", "equivocate"]))
def test_up_to_f_faults_every_honest_node_commits_the_same_block(pl, fault):
    n, idx, seed = pl
    r = simulate_pbft(n, 2, faulty=idx, fault=fault, leader_faulty=0 in idx, seed=seed)
    honest = ~r.faulty
    assert r.committed and r.agreement
    assert (r.node_digest[honest] >= 0).all()
    assert (r.node_digest[honest] == r.client_digest).all()
    assert np.isfinite(r.all_honest_committed_s)
    if 0 in idx and fault == "silent":
        assert r.view_changes >= 1  # the silent primary is replaced
        assert r.phase_messages.view_change > 0 and r.phase_messages.new_view > 0


@settings(max_examples=40, **SETTINGS)
@given(
    placements(max_faulty=lambda n: n - 1, min_faulty=lambda n: fault_tolerance(n) + 1, sizes=(4, 7, 10, 13))
)
def test_more_than_f_silent_nodes_nothing_commits(pl):
    # n = 3f + 1: f + 1 silent nodes leave 2f honest ones, one short of a quorum
    n, idx, seed = pl
    r = simulate_pbft(n, 1, faulty=idx, fault="silent", leader_faulty=0 in idx, seed=seed)
    assert not r.committed and np.isnan(r.time_s)
    assert (r.node_digest == -1).all() and r.agreement


def test_silent_leader_view_change_then_commit():
    r = simulate_pbft(7, 3, faulty=1, leader_faulty=True, seed=2)
    assert r.committed and r.agreement and r.view_changes == 1
    assert r.phase_messages.view_change > 0 and r.phase_messages.new_view == 6
    # the client accepts after the view-change timer fired, i.e. later than the timeout
    assert r.time_s > simulate_pbft(7, 3, seed=2).time_s


def test_timeouts_double():
    # silent primaries of views 0, 1, 2 at n = 10: honest nodes time out after T, 2T, 4T
    T = 0.5
    net = NetworkModel(view_timeout_s=T)
    r = simulate_pbft(10, 1, faulty=[0, 1, 2], leader_faulty=True, network=net)
    assert r.view_changes == 3
    assert r.time_s > 7 * T and r.time_s < 7 * T + 1.0


def test_more_than_f_equivocators_can_split_honest_nodes():
    # the f bound is tight: n = 4, the primary and one backup equivocate (f + 1 = 2):
    # node 2 gets digest 0 and node 3 the forged one, each finds 2f prepares (own + the
    # faulty backup's) and 2f + 1 commits (own + both faulty), so they commit different blocks
    r = simulate_pbft(4, 1, faulty=[0, 1], fault="equivocate", leader_faulty=True, seed=0)
    assert not r.agreement
    assert r.node_digest[2] == 0 and r.node_digest[3] == 1


def test_paper_exchange_is_not_safe_under_an_equivocating_leader():
    r = simulate_pbft(10, 3, protocol="paper", faulty=[0], fault="equivocate", leader_faulty=True)
    assert r.committed and not r.agreement
    p = simulate_pbft(10, 3, protocol="pbft", faulty=[0], fault="equivocate", leader_faulty=True)
    assert p.agreement


def test_sweep_parallel_equals_serial_and_single_runs():
    rng = np.random.default_rng(3)
    C = 24
    ns = rng.integers(4, 30, C)
    us = rng.integers(0, 6, C)
    seeds = rng.integers(0, 1000, C)
    fa = np.minimum(rng.integers(0, 3, C), (ns - 1) // 3)
    a = sweep(ns, us, seeds, faulty=fa, leader_faulty=False)
    b = sweep(ns, us, seeds, faulty=fa, leader_faulty=False, parallel=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for c in range(0, C, 5):
        r = simulate_pbft(int(ns[c]), int(us[c]), seed=int(seeds[c]), faulty=int(fa[c]))
        assert a.time_s[c] == r.time_s and a.messages[c] == r.messages
        assert a.committed[c] == r.committed and a.view_changes[c] == r.view_changes
    assert a.time_s.dtype == np.float64 and a.messages.dtype == np.int64 and a.committed.dtype == bool


def test_time_linear_in_updates_and_increasing_in_nodes():
    U = np.arange(0, 101, 10)
    seeds = np.arange(4)
    t = np.array([sweep(10, np.full(seeds.size, u), seeds).time_s.mean() for u in U])
    slope, icpt = np.polyfit(U, t, 1)
    resid = t - (slope * U + icpt)
    r2 = 1 - resid.var() / t.var()
    assert slope > 0 and r2 > 0.999
    ns = np.array([4, 10, 31, 61, 100])
    tn = np.array([sweep(n, np.full(seeds.size, 10), seeds).time_s.mean() for n in ns])
    assert (np.diff(tn) > 0).all()
    expo = np.polyfit(np.log(ns), np.log(tn), 1)[0]
    assert 0.1 < expo < 2.0  # reported in the README (consensus section); messages grow as n^2


def test_latency_draws():
    ks = np.arange(2000)
    u = np.array([_sim.uniform01(12345, int(k)) for k in ks])
    assert np.array_equal(u, np.array([uniform01(12345, int(k)) for k in ks]))
    assert (u > 0).all() and (u < 1).all() and abs(u.mean() - 0.5) < 0.03
    big = np.array([_sim.uniform01(7, k) for k in range(100_000)])
    lat = np.array([_sim.link_latency(_sim.LAT_PARETO, 0.02, 5.0, x) for x in big])
    assert lat.min() >= 0.02 * 4 / 5 - 1e-15
    assert abs(lat.mean() - 0.02) < 0.02 * 0.03
    assert _sim.link_latency(_sim.LAT_PARETO, 0.02, 5.0, 0.3) == latency("pareto", 0.02, 5.0, 0.3)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(n_nodes=3, n_updates=1), "n_nodes"),
        (dict(n_nodes=4, n_updates=-1), "n_updates"),
        (dict(n_nodes=4, n_updates=1, faulty=-1), "faulty"),
        (dict(n_nodes=4, n_updates=1, faulty=[0, 9]), "faulty"),
        (dict(n_nodes=4, n_updates=1, faulty=0, leader_faulty=True), "leader_faulty"),
        (dict(n_nodes=4, n_updates=1, update_bytes=-5), "update_bytes"),
        (dict(n_nodes=4, n_updates=1, protocol="raft"), "protocol"),
        (dict(n_nodes=4, n_updates=1, fault="crash"), "fault"),
        (dict(n_nodes=4, n_updates=1, block_carries="both"), "block_carries"),
        (dict(n_nodes=4, n_updates=1, seed=-1), "seed"),
        (dict(n_nodes=4.5, n_updates=1), "n_nodes"),
    ],
)
def test_invalid_input_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        simulate_pbft(**kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(upload_bps=-1.0), "upload_bps"),
        (dict(download_bps=0.0), "download_bps"),
        (dict(latency="uniform"), "latency"),
        (dict(latency_mean_s=float("nan")), "latency_mean_s"),
        (dict(verify_s=-1e-6), "verify_s"),
        (dict(view_timeout_s=0.0), "view_timeout_s"),
    ],
)
def test_invalid_network_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        NetworkModel(**kw)


def test_closed_form_and_sweep_validation():
    with pytest.raises(ValueError, match="view_changes"):
        pbft_message_counts(7, view_changes=3)
    with pytest.raises(ValueError, match="n"):
        pbft_message_counts(2)
    with pytest.raises(ValueError, match="one length"):
        sweep([4, 7], [1, 2, 3], 0)
    with pytest.raises(ValueError, match="n_nodes"):
        sweep([4, 3], 1, 0)


@pytest.mark.parametrize("n", [5, 6, 8, 9])
def test_quorums_intersect_when_n_exceeds_3f_plus_1(n):
    # With 2f + 1 votes at n = 5 (f = 1) two quorums of 3 could share only the faulty
    # node, and an equivocating primary split the honest nodes; ceil((n + f + 1) / 2)
    # keeps every pair of quorums sharing an honest node.
    from mcsl_core.consensus._closed_form import fault_tolerance, quorum

    f = fault_tolerance(n)
    q = quorum(n, f)
    assert 2 * q - n >= f + 1 and (n != 3 * f + 1 or q == 2 * f + 1)
    for seed in range(6):
        r = simulate_pbft(n, 2, faulty=[0], fault="equivocate", leader_faulty=True, seed=seed)
        assert r.agreement


# ----------------------------------------------------------------------------- fault_mask, max_views
def test_fault_mask_placements():
    from mcsl_core.consensus import fault_mask

    assert fault_mask(7, 0, False).tolist() == [False] * 7
    assert np.flatnonzero(fault_mask(7, 2, False)).tolist() == [5, 6]  # the last k
    assert np.flatnonzero(fault_mask(7, 1, True)).tolist() == [0]  # the view-0 primary
    assert np.flatnonzero(fault_mask(7, 3, True)).tolist() == [0, 5, 6]  # and the last k - 1
    assert np.flatnonzero(fault_mask(7, [4, 2], False)).tolist() == [2, 4]
    assert np.flatnonzero(fault_mask(7, np.array([0, 3]), True)).tolist() == [0, 3]
    assert fault_mask(7, 7, False).all()
    for args, match in [
        ((7, 8, False), "faulty"),
        ((7, 0, True), "leader_faulty"),
        ((7, [1, 1], False), "repeat"),
        ((7, [1, 7], False), "index 1"),
        ((7, [1, 2], True), "node 0"),
        ((7, [[1]], False), "1-D"),
        ((7, -1, False), "faulty"),
    ]:
        with pytest.raises(ValueError, match=match):
            fault_mask(*args)


def test_max_views_bounds_the_view_changes():
    # silent primaries of views 0 and 1 at n = 7 (f = 2): view 2 is the first that can commit
    kw = dict(faulty=[0, 1], leader_faulty=True, seed=4, network=DEFAULT_NET)
    for mv, commits in ((1, False), (2, False), (3, True), (None, True)):
        r = simulate_pbft(7, 2, max_views=mv, **kw)
        _same(r, simulate_ref(7, 2, max_views=mv, **kw))
        assert r.committed == commits
        # the highest view installed: view 1's primary is silent, so it never is
        assert r.view_changes == (2 if commits else 0)
        # a timer may not ask for a view >= max_views; with 2 views the 5 live nodes ask for view 1
        assert r.phase_messages.view_change == {1: 0, 2: 5 * 6}.get(mv, r.phase_messages.view_change)
    with pytest.raises(ValueError, match="max_views"):
        simulate_pbft(7, 2, max_views=0)


# ----------------------------------------------------------------------------- sweep
def _sweep_matches_single_runs(ns, us, seeds, fa, **kw):
    a = sweep(ns, us, seeds, faulty=fa, **kw)
    b = sweep(ns, us, seeds, faulty=fa, parallel=False, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for c in range(len(ns)):
        r = simulate_pbft(int(ns[c]), int(us[c]), seed=int(seeds[c]), faulty=int(fa[c]), **kw)
        assert a.messages[c] == r.messages and a.committed[c] == r.committed
        assert a.view_changes[c] == r.view_changes and a.bytes[c] == r.bytes
        np.testing.assert_array_equal(a.time_s[c], r.time_s)
    return a


def test_sweep_leader_faulty_and_other_protocols():
    rng = np.random.default_rng(11)
    C = 12
    ns = rng.integers(4, 25, C)
    us = rng.integers(0, 4, C)
    seeds = rng.integers(0, 2**40, C)
    fa = np.maximum(1, np.minimum(rng.integers(0, 4, C), (ns - 1) // 3))
    a = _sweep_matches_single_runs(ns, us, seeds, fa, leader_faulty=True)
    assert a.committed.all() and (a.view_changes >= 1).all()  # each silent primary replaced
    eq = _sweep_matches_single_runs(ns, us, seeds, fa, leader_faulty=True, fault="equivocate")
    assert eq.committed.all()
    for proto in ("paper", "hotstuff"):
        p = _sweep_matches_single_runs(ns, us, seeds, fa * 0, protocol=proto)
        closed = [pbft_message_counts(int(n), n_updates=int(u), protocol=proto) for n, u in zip(ns, us)]
        assert p.messages.tolist() == [int(c.messages.total) for c in closed] and p.committed.all()
        # a silent leader: neither protocol has a view change, nothing commits
        s = _sweep_matches_single_runs(ns, us, seeds, fa, protocol=proto, leader_faulty=True)
        assert not s.committed.any() and np.isnan(s.time_s).all()


def test_sweep_parallel_equals_serial_many_configs():
    rng = np.random.default_rng(3)
    C = 300
    ns = rng.integers(4, 60, C)
    kw = dict(faulty=np.minimum(rng.integers(0, 4, C), (ns - 1) // 3))
    for extra in (
        dict(),
        dict(leader_faulty=True, faulty=np.maximum(kw["faulty"], 1)),
        dict(protocol="hotstuff"),
    ):
        args = (ns, rng.integers(0, 6, C), rng.integers(0, 2**62, C))
        a = sweep(*args, **{**kw, **extra})
        b = sweep(*args, **{**kw, **extra}, parallel=False)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        assert a.committed.all() and (a.messages > 0).all()


# ----------------------------------------------------------------------------- memory
def test_memory_refused_upfront_on_both_paths(monkeypatch):
    from mcsl_core.consensus import _api

    # pretend only enough memory for the n = 100 configuration is available
    have = _api.kernel_bytes(100, 1, fault_tolerance(100) + 2) + 1
    monkeypatch.setattr(_api, "available_bytes", lambda: have)
    errors = []
    for parallel in (True, False):
        with pytest.raises(ValueError, match="n_nodes = 3000 at index 3") as exc:
            sweep([4, 10, 100, 3000], 1, 0, parallel=parallel)
        errors.append(str(exc.value))
    assert errors[0] == errors[1]
    with pytest.raises(ValueError, match="n_nodes = 3000"):
        simulate_pbft(3000, 1)
    r = sweep([4, 10, 100], 1, 0)  # what fits runs (on fewer threads if need be)
    closed = [pbft_message_counts(n, n_updates=1).messages.total for n in (4, 10, 100)]
    assert r.committed.all() and r.messages.tolist() == closed


def test_sizes_that_cannot_fit_are_refused_before_any_allocation():
    # these used to end in NumPy's MemoryError (a sweep's padded fault table, or the fault
    # mask, allocated before the check) or pass the check (the queue's size wrapped in
    # int64 and came out negative)
    from mcsl_core.consensus import _api

    assert _api.kernel_bytes(10**9, 1, 10**9 // 3 + 2) > 2**63  # exact, not wrapped
    with pytest.raises(
        ValueError, match=r"^n_nodes = 1000000000 \(with n_updates = 1, 333333335 views\) needs"
    ):
        simulate_pbft(10**9, 1)
    with pytest.raises(ValueError, match="^n_nodes = 1000000000 at index 1 .* needs"):
        sweep([4, 10**9], 1, [0, 1])
    for n in (10**12, 10**400):
        with pytest.raises(ValueError, match="^n_nodes must be <= 1073741824"):
            simulate_pbft(n, 1)
    with pytest.raises(ValueError, match="^n_nodes must be <= 1073741824; got 1000000000000 at index 1"):
        sweep([4, 10**12], 1, [0, 1])
    with pytest.raises(ValueError, match="^n_updates must be <= 1073741824"):
        simulate_pbft(10, 2**31)


def test_kernel_bytes_grows_as_n_squared_times_views():
    from mcsl_core.consensus._api import kernel_bytes

    # the queue: 32-byte records and 8-byte tie-heap keys per slot, 520 bytes per chunk of 32
    # bucket entries (cap // 32 + 2 * 704 + 2 chunks: 11 levels of 64 six-bit digits),
    # at most 320 bytes of padding and alignment
    assert _sim.NB == 704
    for cap in (108, 1000, 12345, 18_027_064):
        exact = 40 * cap + 520 * (cap // 32 + 1410)
        assert exact <= _sim.queue_bytes(cap) <= exact + 320
    # 36 bytes per node and view and a flag per view, 2 n (n - 1) + n U + 4 n + 64 queue
    # slots; Z's fixed words: IP and counts (32), counters (32), 11 mask words and 3 per bucket
    fixed = 8 * (64 + 11 + 3 * 704) + 2048
    want = (36 * 4 + 8) * 3 + _sim.queue_bytes(4 + 24 + 16 + 64) + 232 * 4 + 80 * 6 + fixed
    assert kernel_bytes(4, 1, 3) == want
    big = kernel_bytes(3000, 10, fault_tolerance(3000) + 2)
    assert 1.0 * 2**30 < big < 1.25 * 2**30  # the old (f + 2, n, n) tables alone needed 81 GB
