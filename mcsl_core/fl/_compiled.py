"""Whole federated runs as one compiled program (issue 11 items 2 and 3).

Client sampling (:func:`select_clients`) and the evaluation schedule depend only
on the seed and the config, so a run's every round is known before it starts.
:func:`run_group` builds one XLA program for ``K`` experiments that share their
structure (model, ``batch_size``, ``local_epochs``, ``clients_per_round``,
aggregator, rounds): a ``lax.scan`` over rounds, ``jax.vmap`` over the
experiment axis, and inside each round ``jax.vmap`` over the clients of the
same client update :func:`mcsl_core.fl._train._client_update_fn` that
:func:`run_fedavg` runs. The host is touched once per segment of rounds (for
the progress bar and early stopping), never per round.

Exactness: every random draw (initialisation, client sampling, epoch shuffles,
DP noise) is derived exactly as in :func:`run_fedavg`, and masked padding steps
are exact no-ops, so experiment ``k`` follows the per-round loop operation for
operation; the only differences are float32 rounding where XLA fuses or batches
a reduction differently (see ``tests/fl/test_compiled.py`` for the measured
error and the tolerance).

Padding: on one device, local training runs in packed lanes without padded
steps (:mod:`mcsl_core.fl._packed`). With several devices, the clients of a
round are trained in rank order of their size, in up to eight groups
(contiguous ranks) whose static step counts are the largest any experiment
needs at those ranks over the whole schedule (chosen to minimise the padded
work), then put back in sampled order before aggregation.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mcsl_core.fl import _packed
from mcsl_core.fl._aggregate import fedavg, krum, median
from mcsl_core.fl._data import FederatedData
from mcsl_core.fl._train import (
    FEDAVG_SERVER,
    FLConfig,
    FLHistory,
    FLResult,
    _client_update_fn,
    _gather,
    select_clients,
)

__all__ = ["GroupSpec", "bytes_per_experiment", "run_compiled", "run_group"]

PyTree = Any
_EVAL_CHUNK = 1024  # most rows per evaluation chunk (chunks are equal, as small as they can be)


class GroupSpec(NamedTuple):
    """What one compiled program fixes (hashable; experiments of a group share it)."""

    model: Any
    rounds: int
    clients_per_round: int
    local_epochs: int
    batch_size: int
    eval_every: int
    aggregator: str  # "fedavg" | "median" | "trimmed_mean" | "krum" | "dp"
    num_byzantine: int
    multi_krum: int
    server_optimizer: Any  # optax transformation (None: sgd(1.0))


def group_spec(model, cfg: FLConfig) -> GroupSpec:
    """The structural part of ``cfg`` (DP-FedAvg replaces the aggregator when clipping)."""
    agg = "dp" if cfg.dp_clip_norm is not None else cfg.aggregator
    return GroupSpec(
        model,
        cfg.rounds,
        cfg.clients_per_round,
        cfg.local_epochs,
        cfg.batch_size,
        cfg.eval_every,
        agg,
        cfg.num_byzantine if agg == "krum" else 0,
        cfg.multi_krum if agg == "krum" else 1,
        cfg.server_optimizer,
    )


# ---------------------------------------------------------------------------
# host-side schedule
# ---------------------------------------------------------------------------
def _rank_groups(
    steps_sorted: np.ndarray, max_groups: int = 8, group_cost: int = 50_000
) -> tuple[tuple[int, int, int], ...]:
    """Split ranks ``0..c-1`` into at most ``max_groups`` contiguous groups.

    ``steps_sorted``: shape=[rows, c], each row ascending (steps per client of
    one round, in rank order). Group ``(lo, hi, cap)`` trains ranks ``lo:hi``
    with ``cap`` steps, the largest any row needs there. The split minimises
    ``sum rows * cap * (hi - lo + 1) + group_cost``: the padded client-steps of
    the whole schedule, one more per group and step for the extra sequential
    scan, and ``group_cost`` client-steps (about 0.2 s on a CPU) for compiling
    one more group (exact dynamic programme over at most 64 candidate boundaries).
    """
    rows = int(steps_sorted.shape[0])
    cap = np.maximum(steps_sorted.max(axis=0), 1).astype(np.int64)  # non-decreasing in rank
    c = cap.size
    cuts = sorted({0, c} | {int(v) for v in np.linspace(0, c, min(c, 64) + 1).round()})
    layer = {0: (0, ())}  # boundary -> (cost, groups) with the groups used so far
    best = None
    for _g in range(max_groups):
        nxt: dict = {}
        for j, (cost, parts) in layer.items():
            for hi in (h for h in cuts if h > j):
                cg = int(cap[hi - 1])
                cand = (cost + rows * cg * (hi - j + 1) + group_cost, (*parts, (j, hi, cg)))
                if hi not in nxt or cand[0] < nxt[hi][0]:
                    nxt[hi] = cand
        layer = nxt
        if c in layer and (best is None or layer[c][0] < best[0]):
            best = layer[c]
    return best[1]


class _Schedule(NamedTuple):
    ranked: np.ndarray  # shape=[K, R, c] uint32: sampled clients in rank order of size
    inverse: np.ndarray  # shape=[K, R, c] int32: position of sampled slot j in ``ranked``
    sampled: np.ndarray  # shape=[K, R, c] int64: select_clients order (sorted indices)
    groups: tuple[tuple[int, int, int], ...]


def _schedule(data: FederatedData, spec: GroupSpec, seeds: list[int]) -> _Schedule:
    r, c = spec.rounds, spec.clients_per_round
    sampled = np.stack(
        [np.stack([select_clients(data.num_clients, c, s, i) for i in range(r)]) for s in seeds]
    )
    steps = data.steps(spec.batch_size)[sampled]
    order = np.argsort(steps, axis=-1, kind="stable")
    ranked = np.take_along_axis(sampled, order, axis=-1)
    inverse = np.argsort(order, axis=-1, kind="stable").astype(np.int32)
    srt = np.take_along_axis(steps, order, axis=-1).reshape(-1, c)
    return _Schedule(ranked.astype(np.uint32), inverse, sampled, _rank_groups(srt))


class _ExpArrays(NamedTuple):
    """Per-experiment numbers (leading axis K), each traced in the program."""

    train_key: np.ndarray  # [K, 2] uint32 key data
    noise_key: np.ndarray  # [K, 2] uint32
    client_lr: np.ndarray  # [K] float32
    server_lr: np.ndarray  # [K] float32
    trim_b: np.ndarray  # [K] int32: floor(trim_fraction * c) values cut per side
    dp_clip: np.ndarray  # [K] float32
    dp_sigma: np.ndarray  # [K] float32: noise_multiplier * clip_norm / c
    stop_hits: np.ndarray  # [K] int32: hits reaching target_accuracy (total + 1: never)


@jax.jit
def _split3(seeds: jax.Array) -> jax.Array:
    return jax.vmap(lambda s: jax.random.key_data(jax.random.split(jax.random.key(s), 3)))(seeds)


def _keys_batch(seeds: list[int]):
    """Every seed's ``(init key, train key data, noise key data)``, split as :func:`run_fedavg`
    splits ``jax.random.key(seed)``, in one call: ``(init keys [K], train [K, 2], noise [K, 2])``.

    ``jax.random.key`` of a Python int keeps its low 32 bits unless 64-bit types are
    enabled; the seeds go in as uint32 low bits or int64 accordingly (the same key data).
    """
    wide = bool(jax.config.jax_enable_x64)
    arr = np.array(seeds, np.int64) if wide else (np.array(seeds, np.uint64) & 0xFFFFFFFF).astype(np.uint32)
    data = np.asarray(_split3(arr))  # [K, 3, 2]
    return jax.random.wrap_key_data(data[:, 0]), data[:, 1], data[:, 2]


def _stop_hits(target: float | None, total: int) -> int:
    """Least ``h`` with ``h / total >= target`` in float64, as :func:`run_fedavg` compares."""
    if target is None:
        return total + 1
    h = max(0, math.floor(target * total) - 1)
    while h / total < target:
        h += 1
    return h


def _exp_arrays(configs: list[FLConfig], total_eval: int):
    init_keys, train_keys, noise_keys = _keys_batch([c.seed for c in configs])
    k = configs[0].clients_per_round
    clip = [c.dp_clip_norm if c.dp_clip_norm is not None else 1.0 for c in configs]
    return init_keys, _ExpArrays(
        train_keys,
        noise_keys,
        np.array([c.client_lr for c in configs], np.float32),
        np.array([c.server_lr for c in configs], np.float32),
        np.array([int(c.trim_fraction * k) for c in configs], np.int32),
        np.array(clip, np.float32),
        np.array([float(c.dp_noise_multiplier) * float(cl) / k for c, cl in zip(configs, clip)], np.float32),
        np.array([_stop_hits(c.target_accuracy, total_eval) for c in configs], np.int32),
    )


# ---------------------------------------------------------------------------
# the program
# ---------------------------------------------------------------------------
def _trimmed(u: PyTree, b) -> PyTree:
    """Coordinate-wise trimmed mean with a traced cut ``b`` per side (= :func:`trimmed_mean`)."""

    def one(x):
        k = x.shape[0]
        rank = jnp.arange(k).reshape((k,) + (1,) * (x.ndim - 1))
        keep = (rank >= b) & (rank < k - b)
        return jnp.sum(jnp.where(keep, jnp.sort(x, axis=0), 0.0), axis=0) / (k - 2 * b).astype(x.dtype)

    return jax.tree_util.tree_map(one, u)


def _dp(u: PyTree, clip, sigma, key) -> PyTree:
    """DP-FedAvg with traced clip norm and noise scale (= :func:`dp_fedavg`, same draws)."""
    k = jax.tree_util.tree_leaves(u)[0].shape[0]
    leaves_u = jax.tree_util.tree_leaves(u)
    norms = jnp.sqrt(sum(jnp.sum(leaf.reshape(k, -1) ** 2, axis=1) for leaf in leaves_u))
    scale = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))
    clipped = jax.tree_util.tree_map(lambda x: x * scale.reshape((k,) + (1,) * (x.ndim - 1)), u)
    mean = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), clipped)
    leaves, tree = jax.tree_util.tree_flatten(mean)
    keys = jax.random.split(key, len(leaves))
    noisy = [leaf + sigma * jax.random.normal(kk, leaf.shape, leaf.dtype) for leaf, kk in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, noisy)


def _aggregate(spec: GroupSpec, deltas, n, e: _ExpArrays, key):
    if spec.aggregator == "fedavg":
        return fedavg(deltas, n.astype(jnp.float32))
    if spec.aggregator == "median":
        return median(deltas)
    if spec.aggregator == "trimmed_mean":
        return _trimmed(deltas, e.trim_b)
    if spec.aggregator == "krum":
        return krum(deltas, num_byzantine=spec.num_byzantine, multi=spec.multi_krum)
    return _dp(deltas, e.dp_clip, e.dp_sigma, key)


def _train_round(spec: GroupSpec, groups, data, params, e: _ExpArrays, r, ranked, inverse):
    """Local training of one round's clients (rank order, grouped) and aggregation."""
    x_all, y_all, offsets, nsamp = data[:4]
    rk = jax.random.fold_in(jax.random.wrap_key_data(e.train_key), r)
    deltas, losses = [], []
    for lo, hi, cap in groups:
        cl = ranked[lo:hi]
        kd = jax.vmap(lambda c: jax.random.key_data(jax.random.fold_in(rk, c)))(cl)
        upd = _client_update_fn(spec.model, cap, spec.batch_size, spec.local_epochs)
        d, l = jax.vmap(upd, in_axes=(None, None, None, 0, 0, 0, None))(
            params, x_all, y_all, offsets[cl], nsamp[cl], kd, e.client_lr
        )
        deltas.append(d)
        losses.append(l)
    cat = (lambda xs: xs[0]) if len(groups) == 1 else (lambda xs: jnp.concatenate(xs, axis=0))
    deltas = jax.tree_util.tree_map(lambda *xs: cat(xs)[inverse], *deltas)
    losses = cat(losses)[inverse]
    n = nsamp[ranked][inverse]
    nkey = jax.random.fold_in(jax.random.wrap_key_data(e.noise_key), r)
    agg = _aggregate(spec, deltas, n, e, nkey)
    return jax.tree_util.tree_map(lambda a: a * e.server_lr, agg), losses


def _eval_sums(model, params, ex, ey, idx, mask):
    """Per-chunk loss sums and hit counts (shape=[chunks]), as :func:`evaluate` computes them."""

    def chunk(args):
        i, m = args
        logits = model.apply({"params": params}, ex[i])
        y = ey[i]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        hit = jnp.argmax(logits, axis=-1) == y
        return jnp.sum(jnp.where(m, ce, 0.0)), jnp.sum(jnp.where(m, hit, False))

    return lax.map(chunk, (idx, mask))


def _segment_fn(spec: GroupSpec, groups, data, state, e: _ExpArrays, sched, shared):
    """One experiment, ``S`` rounds: ``(params, opt_state, stopped)`` -> same, plus
    per-round client losses, evaluation chunk sums and the stopped flag."""
    opt = spec.server_optimizer if spec.server_optimizer is not None else FEDAVG_SERVER
    ex, ey, eidx, emask = data[4:]
    nchunks = eidx.shape[0]

    def body(carry, xs):
        params, opt_state, stopped = carry
        (ranked, inverse), (r, active, is_eval) = xs

        def run(args):
            params, opt_state = args
            agg, losses = _train_round(spec, groups, data, params, e, r, ranked, inverse)
            upd, new_state = opt.update(jax.tree_util.tree_map(jnp.negative, agg), opt_state, params)
            return optax.apply_updates(params, upd), new_state, losses

        def skip(args):
            return (*args, jnp.zeros((spec.clients_per_round,), jnp.float32))

        new_p, new_s, losses = lax.cond(active, run, skip, (params, opt_state))
        keep = stopped | ~active  # a stopped experiment keeps its parameters
        params = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), params, new_p)
        opt_state = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), opt_state, new_s)
        zeros = (jnp.zeros((nchunks,), jnp.float32), jnp.zeros((nchunks,), jnp.int32))
        ls, hits = lax.cond(
            is_eval, lambda p: _eval_sums(spec.model, p, ex, ey, eidx, emask), lambda p: zeros, params
        )
        was = stopped
        stopped = stopped | (active & is_eval & (jnp.sum(hits) >= e.stop_hits))
        return (params, opt_state, stopped), (losses, ls, hits.astype(jnp.int32), was)

    return lax.scan(body, state, (sched, shared))


def _packed_segment(spec: GroupSpec, steps_max: int, data, state, e: _ExpArrays, sched, shared):
    """``S`` rounds of all ``K`` experiments (leading axis K in ``state`` and ``e``),
    local training in packed lanes (:mod:`mcsl_core.fl._packed`); otherwise
    :func:`_segment_fn` operation for operation."""
    opt = spec.server_optimizer if spec.server_optimizer is not None else FEDAVG_SERVER
    x_all, y_all = data[:2]
    ex, ey, eidx, emask = data[4:]
    nchunks = eidx.shape[0]
    k = e.client_lr.shape[0]

    def server(params, opt_state, deltas, n, ek, r):
        nkey = jax.random.fold_in(jax.random.wrap_key_data(ek.noise_key), r)
        agg = _aggregate(spec, deltas, n, ek, nkey)
        agg = jax.tree_util.tree_map(lambda a: a * ek.server_lr, agg)
        upd, new_state = opt.update(jax.tree_util.tree_map(jnp.negative, agg), opt_state, params)
        return optax.apply_updates(params, upd), new_state

    def body(carry, xs):
        params, opt_state, stopped = carry
        slots, used, n, (r, active, is_eval) = xs

        def run(args):
            params, opt_state = args
            deltas, losses = _packed.train_round(
                spec.model, params, x_all, y_all, e.client_lr, slots, used, n, steps_max, spec.local_epochs
            )
            new_p, new_s = jax.vmap(server, in_axes=(0, 0, 0, 0, 0, None))(params, opt_state, deltas, n, e, r)
            return new_p, new_s, losses

        def skip(args):
            return (*args, jnp.zeros((k, spec.clients_per_round), jnp.float32))

        new_p, new_s, losses = lax.cond(active, run, skip, (params, opt_state))

        def keep(a, b):
            return jnp.where((stopped | ~active).reshape((k,) + (1,) * (a.ndim - 1)), a, b)

        params = jax.tree_util.tree_map(keep, params, new_p)
        opt_state = jax.tree_util.tree_map(keep, opt_state, new_s)
        zeros = (jnp.zeros((k, nchunks), jnp.float32), jnp.zeros((k, nchunks), jnp.int32))
        ls, hits = lax.cond(
            is_eval,
            lambda p: jax.vmap(lambda q: _eval_sums(spec.model, q, ex, ey, eidx, emask))(p),
            lambda p: zeros,
            params,
        )
        was = stopped
        stopped = stopped | (active & is_eval & (jnp.sum(hits, axis=1) >= e.stop_hits))
        return (params, opt_state, stopped), (losses, ls, hits.astype(jnp.int32), was)

    state, out = lax.scan(body, state, (*sched, shared))
    return state, jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), out)  # [K, S, ...] as vmapped


@functools.lru_cache(maxsize=32)
def _packed_program(spec: GroupSpec, steps_max: int):
    return jax.jit(functools.partial(_packed_segment, spec, steps_max), donate_argnums=(1,))


@functools.lru_cache(maxsize=32)
def _program(spec: GroupSpec, groups: tuple, sharded: bool):
    def prog(data, state, e, sched, shared):
        f = functools.partial(_segment_fn, spec, groups, data)
        return jax.vmap(f, in_axes=(0, 0, 0, None))(state, e, sched, shared)

    return jax.jit(prog, donate_argnums=(1,))


@functools.lru_cache(maxsize=16)
def _init_fn(model, dim: int, opt):
    opt = opt if opt is not None else FEDAVG_SERVER

    def init(keys):
        p = jax.vmap(lambda k: model.init(k, jnp.zeros((1, dim), jnp.float32))["params"])(keys)
        return p, jax.vmap(opt.init)(p)

    return jax.jit(init)


# ---------------------------------------------------------------------------
# memory, devices
# ---------------------------------------------------------------------------
def bytes_per_experiment(num_params: int, spec: GroupSpec, dim: int, widths: int = 0) -> int:
    """Estimated peak bytes one experiment adds to a compiled group (float32).

    ``4 * P * (3 + 3 c)``: the carried global parameters, their new value and
    the server step (3 copies), and per client (``c = clients_per_round``) its
    local parameters, gradient and update (3 copies); plus the gathered batch
    ``4 * c * batch * (dim + widths)`` (``widths``: sum of layer output widths,
    the activations kept for the gradient).
    """
    c = spec.clients_per_round
    return int(4 * num_params * (3 + 3 * c) + 4 * c * spec.batch_size * (dim + widths))


def memory_budget() -> int:
    """Bytes a sweep chunk may use: a quarter of the first device's memory
    (``bytes_limit`` where the backend reports it, else the host's RAM)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory stats
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) // 4
    return int(np.int64(_host_ram()) // 4)


def _host_ram() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def _put(tree, sharding):
    """Host arrays onto the device(s): whole on the default device, or laid out
    by ``sharding`` from host copies (so it also works when the mesh spans
    several processes, each passing the same values)."""
    if sharding is None:
        return jax.tree_util.tree_map(jnp.asarray, tree)
    return jax.device_put(jax.tree_util.tree_map(np.asarray, tree), sharding)


def _mesh():
    devs = jax.devices()
    return None if len(devs) < 2 else Mesh(np.array(devs), ("exp",))


# ---------------------------------------------------------------------------
# the host loop
# ---------------------------------------------------------------------------
class GroupResult(NamedTuple):
    params: PyTree  # leaves shape=[K, ...]
    history: FLHistory  # fields shape=[K, rounds]; NaN (round 0) after an early stop
    stopped_early: np.ndarray  # shape=[K] bool


def _eval_data(evaluated: FederatedData):
    total = int(evaluated.x.shape[0])
    if total == 0:
        raise ValueError("the evaluation data holds no samples")
    nch = -(-total // _EVAL_CHUNK)
    size = -(-total // nch)  # equal chunks, no more padding than needed
    pos = np.arange(nch * size).reshape(nch, size)
    return (evaluated.x, evaluated.y, np.minimum(pos, total - 1).astype(np.int32), pos < total), total


def _segment_length(rounds: int, progress: bool, early: bool) -> int:
    """Rounds per compiled call: all of them, unless a progress bar or an early
    stop wants the host back about 20 times per run."""
    return max(1, -(-rounds // 20)) if (progress or early) else rounds


class PreparedGroup(NamedTuple):
    """A group laid out for its program (:func:`prepare_group`), ready to run."""

    spec: GroupSpec
    k: int  # real experiments (the axis may be padded to the device count)
    split: NamedSharding | None  # several devices: the experiment axis over them
    repl: NamedSharding | None  # and what every device holds whole
    data: tuple
    state: tuple
    exp: _ExpArrays
    sched: _Schedule
    num_samples: np.ndarray  # each training client's rows
    total: int  # evaluation rows
    early: bool  # some experiment may stop early
    packed: _packed.Packed | None  # one device: the packed lanes
    prog: Any


def prepare_group(
    model, train: FederatedData, configs: list[FLConfig], *, test=None, params: PyTree | None = None
) -> PreparedGroup:
    """The host-side work of :func:`run_group`: schedule, keys, initial state, packing."""
    spec = group_spec(model, configs[0])
    if any(group_spec(model, c) != spec for c in configs):
        raise ValueError("configs of one group must share their structural fields")
    if spec.clients_per_round > train.num_clients:
        raise ValueError(
            f"clients_per_round={spec.clients_per_round} exceeds the {train.num_clients} clients"
        )
    k_real = len(configs)
    mesh = _mesh()
    if mesh is not None:  # pad the experiment axis to a multiple of the device count
        configs = configs + [configs[-1]] * (-k_real % mesh.size)
    evald, total = _eval_data(test if test is not None else train)
    init_keys, e = _exp_arrays(configs, total)
    sched = _schedule(train, spec, [c.seed for c in configs])
    split = None if mesh is None else NamedSharding(mesh, PartitionSpec("exp"))
    if params is None:
        state = _init_fn(model, train.dim, spec.server_optimizer)(init_keys)
    else:
        p = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (len(configs), *a.shape)), params)
        opt = spec.server_optimizer if spec.server_optimizer is not None else FEDAVG_SERVER
        state = (p, jax.vmap(opt.init)(p))
    state = _put((*state, np.zeros((len(configs),), bool)), split)
    repl = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    data = _put(
        (train.x, train.y, train.offsets[:-1].astype(np.int32), train.num_samples.astype(np.int32), *evald),
        repl,
    )
    early = any(c.target_accuracy is not None for c in configs)
    if mesh is None:  # one device: packed lanes, no padded steps
        pk = _packed.pack(train, sched.sampled, e.train_key, spec.batch_size, spec.local_epochs)
        prog = _packed_program(spec, pk.steps_max)
    else:
        pk, prog = None, _program(spec, sched.groups, True)
    e = _put(e, split)
    return PreparedGroup(
        spec, k_real, split, repl, data, state, e, sched, train.num_samples, total, early, pk, prog
    )


def execute_group(g: PreparedGroup, bar=None) -> GroupResult:
    """Run a prepared group's program segment by segment (``bar``: advanced by experiment-rounds)."""
    rounds, state, pk = g.spec.rounds, g.state, g.packed
    seg = _segment_length(rounds, bar is not None, g.early)
    outs, times = [], np.zeros(rounds)
    for s0 in range(0, rounds, seg):
        idx = np.minimum(np.arange(s0, s0 + seg), rounds - 1)
        active = np.arange(s0, s0 + seg) < rounds
        is_eval = active & ((((idx + 1) % g.spec.eval_every) == 0) | (idx == rounds - 1))
        if pk is not None:
            sl = _put((tuple(a[idx] for a in pk[:6]), pk.used[idx], pk.n[:, idx].transpose(1, 0, 2)), None)
        else:
            sl = _put((g.sched.ranked[:, idx], g.sched.inverse[:, idx]), g.split)
        shared = _put((idx.astype(np.uint32), active, is_eval), g.repl)
        t0 = time.perf_counter()
        state, out = g.prog(g.data, state, g.exp, sl, shared)
        out = jax.tree_util.tree_map(_gather, out)
        n_act = int(active.sum())
        times[s0 : s0 + n_act] = (time.perf_counter() - t0) / n_act
        outs.append((out, is_eval[:n_act], n_act))
        if bar is not None:
            bar.update(n_act * g.k)
        if g.early and bool(np.all(_gather(state[2]))):
            break
    hist, stopped = _history(outs, g.sched, g.num_samples, g.total, times, rounds, g.k)
    final = jax.tree_util.tree_map(lambda a: _gather(a)[: g.k], state[0])
    return GroupResult(final, hist, stopped)


def run_group(
    model,
    train: FederatedData,
    configs: list[FLConfig],
    *,
    test: FederatedData | None = None,
    params: PyTree | None = None,
    bar=None,
) -> GroupResult:
    """Run ``K = len(configs)`` experiments that share one :class:`GroupSpec` as one program.

    ``params`` (optional, no experiment axis) replaces every seeded
    initialisation. ``bar``: a tqdm bar advanced by experiment-rounds.
    Experiment ``k`` equals ``run_fedavg(model, train, configs[k], test=test)``
    up to float32 rounding.
    """
    return execute_group(prepare_group(model, train, configs, test=test, params=params), bar)


def _history(outs, sched: _Schedule, num_samples: np.ndarray, total: int, times, rounds: int, k: int):
    """Per-round records, combined on the host in float64 exactly as :func:`run_fedavg` does."""
    losses = np.concatenate([o[0][:, :n] for o, _, n in outs], axis=1)[:k]  # [K, R', c]
    ls = np.concatenate([o[1][:, :n] for o, _, n in outs], axis=1)[:k].astype(np.float64)
    hits = np.concatenate([o[2][:, :n] for o, _, n in outs], axis=1)[:k].astype(np.int64)
    was = np.concatenate([o[3][:, :n] for o, _, n in outs], axis=1)[:k]
    is_eval = np.concatenate([ev for _, ev, _ in outs])
    ran = losses.shape[1]
    w = np.maximum(num_samples[sched.sampled[:k, :ran]], 1)
    train_loss = np.sum(losses.astype(np.float64) * w, axis=-1) / np.sum(w, axis=-1)
    eval_loss = np.where(is_eval, np.cumsum(ls, axis=-1)[..., -1] / total, np.nan)
    eval_acc = np.where(is_eval, hits.sum(axis=-1) / total, np.nan)
    pad = rounds - ran
    alive = np.pad(~was, ((0, 0), (0, pad)), constant_values=False)

    def full(a, dtype):
        a = np.pad(a.astype(np.float64), ((0, 0), (0, pad)), constant_values=np.nan)
        return np.where(alive, a, np.nan).astype(dtype)

    rnd = np.where(alive, np.arange(1, rounds + 1), 0).astype(np.int64)
    hist = FLHistory(
        rnd,
        full(train_loss, np.float32),
        full(eval_loss, np.float32),
        full(eval_acc, np.float32),
        full(np.broadcast_to(times[:ran], (k, ran)), np.float64),
    )
    stopped = alive.sum(axis=1) < rounds
    return hist, stopped


def run_compiled(
    model,
    train: FederatedData,
    config: FLConfig,
    *,
    test: FederatedData | None = None,
    params: PyTree | None = None,
) -> FLResult:
    """:func:`run_fedavg` with every round inside one compiled program.

    Same arguments and result as ``run_fedavg(model, train, config, test=test)``
    (params to float32 rounding, history to the same); reached through
    ``FLConfig(compiled=True)``. The host takes part only about 20 times per
    run when a progress bar or ``target_accuracy`` needs it, else once.
    ``FLResult.strategy`` is ``"compiled"``.
    """
    progress = config.progress if config.progress is not None else config.rounds >= 50
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rounds, desc="FedAvg (compiled)", unit="round")
    try:
        g = run_group(model, train, [config], test=test, params=params, bar=bar)
    finally:
        if bar is not None:
            bar.close()
    alive = g.history.round[0] > 0
    hist = FLHistory(*(np.asarray(f[0][alive]) for f in g.history))
    p = jax.tree_util.tree_map(lambda a: jnp.asarray(a[0]), g.params)
    return FLResult(p, hist, "compiled", bool(g.stopped_early[0]))
