"""Client update, execution strategies, one federated round, and the FedAvg loop
(paper IV-C, Algorithm 2, learning side; SPEC.md 3; DESIGN.md "FL execution
strategies").

One definition of a client's local training (:func:`_client_update_fn`: epoch
order, batches, masked loss, SGD) is run by three strategies:

- ``"loop"``: clients one after another, each for exactly its own
  ``ceil(n / batch_size)`` steps per epoch (a dynamic trip count, so no padded
  steps); the clients of one size bucket share one compiled program and one
  dispatch, which writes each update in place into a donated stacked buffer;
- ``"vmap"``: clients sorted by size and cut into groups whose lockstep padding
  is at most :data:`VMAP_WASTE` of the real steps; each group trains in chunks of
  power-of-two width, one ``jax.vmap`` program per (width, size bucket);
- ``"shard"``: every client in one vmapped program padded to the round's
  largest bucket, the client axis split over every device with
  ``jax.sharding``.

``"auto"`` runs every candidate on the whole real round (after a compile-only
pass), keeps the fastest, and caches the choice per backend, devices, model,
shapes, data and round settings.

Local training is minibatch SGD as in LEAF: each local epoch shuffles the
client's rows and walks them in batches of ``batch_size`` (the last batch may
be short); the loss of a batch is the mean cross-entropy over its real rows.
Padding rows carry mask False; a step whose rows are all padding has an exactly
zero gradient, so it leaves the parameters unchanged.

In the ``loop`` and ``vmap`` programs, big Dense kernels (at least
``_deferred.DEFER_MIN_KERNEL`` entries: the CNN's 3136 x 2048 layer) are
updated deferred (:mod:`mcsl_core.fl._deferred`): the kernel stays fixed and
each step keeps its rank-batch gradient factors instead of forming ``dW``; the
same iterates up to float32 rounding.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mcsl_core._names import STRATEGIES
from mcsl_core._validation import available_cores, available_memory
from mcsl_core.fl import _deferred, _dense
from mcsl_core.fl._aggregate import AGGREGATORS, dp_fedavg, fedavg, krum, median, trimmed_mean
from mcsl_core.fl._data import FederatedData, bucket_steps

__all__ = [
    "AGGREGATORS",
    "FEDAVG_SERVER",
    "STRATEGIES",
    "EvalResult",
    "FLConfig",
    "FLHistory",
    "FLResult",
    "RoundUpdates",
    "aggregate",
    "choose_strategy",
    "evaluate",
    "federated_round",
    "init_params",
    "run_fedavg",
    "select_clients",
    "server_update",
]

PyTree = Any


# ---------------------------------------------------------------------------
# configuration and results
# ---------------------------------------------------------------------------
def _int_field(name: str, v, lo: int = 1, hi: int | None = None) -> int:
    """An int field of :class:`FLConfig` (or an argument): a Python or NumPy
    integer, not bool, in ``[lo, hi]``; anything else names ``name``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an integer {span}, got {v!r}")
    return int(v)


def _pos_int(name: str, v) -> int:
    return _int_field(name, v, 1)


def _real_field(
    name: str, v, lo: float, *, lo_open: bool = False, hi: float | None = None, hi_open: bool = False
) -> float:
    """A finite real field (int or float, not bool or str) in ``[lo, hi]`` (ends
    open as asked; ``hi`` None: no upper bound); anything else names ``name``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {v!r}")
    f = float(v)
    bad_hi = hi is not None and (f > hi or (hi_open and f == hi))
    if not math.isfinite(f) or f < lo or (lo_open and f == lo) or bad_hi:
        left = "(" if lo_open else "["
        right = "inf)" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        raise ValueError(f"{name} must be finite and lie in {left}{lo:g}, {right}, got {v!r}")
    return f


_MAX_SEED = 2**63 - 1  # seeds are int64 everywhere (NumPy, JAX keys, the ledger)


@dataclass(frozen=True)
class FLConfig:
    """Settings of a federated training run (frozen, hashable).

    Attributes
    ----------
    rounds, clients_per_round, local_epochs, batch_size : int
        Communication rounds; edge servers sampled per round (without
        replacement, seeded); local epochs; minibatch size.
    client_lr : float
        Client SGD learning rate.
    seed : int
        Seeds initialisation, client sampling, shuffling and DP noise.
    server_optimizer : optax.GradientTransformation or None
        Applied to the pseudo-gradient ``-aggregate``; None means
        ``optax.sgd(1.0)`` (plain FedAvg: ``params + aggregate``).
    aggregator : {"fedavg", "median", "trimmed_mean", "krum"}
        ``fedavg`` weights clients by sample count; the robust ones are
        unweighted. ``trim_fraction`` (trimmed mean), ``num_byzantine`` and
        ``multi_krum`` (Krum) configure them.
    dp_clip_norm, dp_noise_multiplier : float
        DP-FedAvg when ``dp_clip_norm`` is set (replaces ``aggregator``).
    eval_every : int
        Evaluate every this many rounds (and after the last).
    target_accuracy : float or None
        Stop early once the evaluated accuracy reaches it.
    strategy : {"auto", "loop", "vmap", "shard"}
    progress : bool or None
        tqdm progress bar; None shows it for runs of 50 rounds or more.
    server_lr : float
        Server step size: ``global += server_lr * aggregate`` (scales the
        aggregate before ``server_optimizer``); 1.0 is plain FedAvg.
    compiled : bool
        Run every round inside one compiled program (``lax.scan`` over rounds,
        see :func:`mcsl_core.fl.run_compiled`); same result as the per-round loop.
    """

    rounds: int = 100
    clients_per_round: int = 10
    local_epochs: int = 1
    batch_size: int = 10
    client_lr: float = 0.01
    seed: int = 0
    server_optimizer: optax.GradientTransformation | None = None
    aggregator: str = "fedavg"
    trim_fraction: float = 0.1
    num_byzantine: int = 0
    multi_krum: int = 1
    dp_clip_norm: float | None = None
    dp_noise_multiplier: float = 0.0
    eval_every: int = 1
    target_accuracy: float | None = None
    strategy: str = "auto"
    progress: bool | None = None
    server_lr: float = 1.0
    compiled: bool = False

    def __post_init__(self) -> None:
        for name in ("rounds", "clients_per_round", "local_epochs", "batch_size", "eval_every", "multi_krum"):
            _pos_int(name, getattr(self, name))
        _int_field("seed", self.seed, 0, _MAX_SEED)
        _int_field("num_byzantine", self.num_byzantine, 0)
        _real_field("client_lr", self.client_lr, 0.0, lo_open=True)
        _real_field("trim_fraction", self.trim_fraction, 0.0, hi=0.5, hi_open=True)
        if self.dp_clip_norm is not None:
            _real_field("dp_clip_norm", self.dp_clip_norm, 0.0, lo_open=True)
        _real_field("dp_noise_multiplier", self.dp_noise_multiplier, 0.0)
        if self.target_accuracy is not None:
            _real_field("target_accuracy", self.target_accuracy, 0.0, hi=1.0)
        for name, allowed in (("aggregator", AGGREGATORS), ("strategy", STRATEGIES)):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {v!r}")
        opt = self.server_optimizer
        if opt is not None and not (
            callable(getattr(opt, "init", None)) and callable(getattr(opt, "update", None))
        ):
            raise ValueError(f"server_optimizer must be an optax GradientTransformation or None, got {opt!r}")
        _real_field("server_lr", self.server_lr, 0.0, lo_open=True)
        if not isinstance(self.compiled, (bool, np.bool_)):
            raise ValueError(f"compiled must be a bool, got {self.compiled!r}")
        if self.progress is not None and not isinstance(self.progress, (bool, np.bool_)):
            raise ValueError(f"progress must be True, False or None, got {self.progress!r}")


class RoundUpdates(NamedTuple):
    """What one round of local training returns (before aggregation)."""

    updates: PyTree  # leaves shape=[clients, *param_shape], float32: local - global params
    num_samples: np.ndarray  # shape=[clients], int64: training rows per client
    loss: np.ndarray  # shape=[clients], float32: mean training loss over local steps
    clients: np.ndarray  # shape=[clients], int64: client indices into the data
    strategy: str  # strategy that ran ("loop", "vmap" or "shard")


class EvalResult(NamedTuple):
    loss: float  # mean cross-entropy over all samples
    accuracy: float  # share of samples classified correctly


class FLHistory(NamedTuple):
    """Per-round records (numpy arrays, one entry per round run)."""

    round: np.ndarray  # shape=[rounds], int64, 1-based
    train_loss: np.ndarray  # shape=[rounds], float32: sample-weighted client loss
    eval_loss: np.ndarray  # shape=[rounds], float32: NaN where not evaluated
    eval_accuracy: np.ndarray  # shape=[rounds], float32: NaN where not evaluated
    round_time: np.ndarray  # shape=[rounds], float64 s: training + aggregation wall time


class FLResult(NamedTuple):
    params: PyTree  # final global parameters, usable with model.apply({"params": ...}, x)
    history: FLHistory
    strategy: str  # strategy used ("auto" resolved)
    stopped_early: bool  # target accuracy reached before config.rounds


# ---------------------------------------------------------------------------
# the client update
# ---------------------------------------------------------------------------
def init_params(model, dim: int, key: jax.Array | int = 0) -> PyTree:
    """``model.init`` on a ``[1, dim]`` dummy input; returns the ``params`` collection."""
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    return _jit_init(model, int(dim))(key)["params"]


@functools.lru_cache(maxsize=32)
def _jit_init(model, dim: int):
    return jax.jit(lambda k: model.init(k, jnp.zeros((1, dim), jnp.float32)))


def _masked_loss(model, params, xb, yb, mb):
    with _dense.lanes_dense():  # small Dense kernels' gradients as outer products in lanes
        logits = model.apply({"params": params}, xb)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
    return jnp.sum(jnp.where(mb, ce, 0.0)) / jnp.maximum(jnp.sum(mb), 1)


def _epoch_order(key: jax.Array, n, rows: int) -> jax.Array:
    """shape=[rows]: a random order of a client's ``n`` real rows, padding after.

    Real position ``i`` gets the uniform draw of ``fold_in(key, i)`` (so the
    order does not depend on how far the client is padded), padding gets 2; a
    stable argsort shuffles the real rows and leaves padding at the end.
    """
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(jnp.arange(rows))
    return jnp.argsort(jnp.where(jnp.arange(rows) < n, u, 2.0), stable=True)


def _client_update_fn(model, steps: int, batch: int, epochs: int):
    """Local training of one client: ``(params, x_all, y_all, start, n, key_data, lr)
    -> (delta, mean_loss)``. The client's rows are ``x_all[start:start+n]``."""
    rows = steps * batch

    def update(params, x_all, y_all, start, n, key_data, lr):
        key = jax.random.wrap_key_data(key_data)
        valid = (jnp.arange(rows) < n).reshape(steps, batch)
        grad_fn = jax.value_and_grad(functools.partial(_masked_loss, model))

        def epoch(p, e):
            order = _epoch_order(jax.random.fold_in(key, e), n, rows)
            idx = (start + jnp.where(jnp.arange(rows) < n, order, 0)).reshape(steps, batch)

            def step(p, inp):
                ib, mb = inp
                loss, g = grad_fn(p, x_all[ib], y_all[ib], mb)
                p = jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)
                return p, loss * jnp.sum(mb)

            p, ls = lax.scan(step, p, (idx, valid))
            return p, jnp.sum(ls)

        p, ls = lax.scan(epoch, params, jnp.arange(epochs))
        delta = jax.tree_util.tree_map(jnp.subtract, p, params)
        return delta, jnp.sum(ls) / jnp.maximum(n * epochs, 1).astype(jnp.float32)

    return update


@functools.lru_cache(maxsize=16)
def _dvg(model, d: _deferred.Deferred):
    """Value and gradient (w.r.t. the other parameters and the probes) of the
    masked loss with the deferred Dense layers of ``d``."""
    return jax.value_and_grad(_deferred.loss_fn(model, d, _masked_loss), argnums=(0, 1), has_aux=True)


@functools.lru_cache(maxsize=512)  # a 1,000-client FedProx round: 56 vmap (width, bucket) programs
def _chunk_program(
    model,
    rows: int,
    batch: int,
    epochs: int,
    width: int,
    capacity: int,
    defer_min: int = _deferred.DEFER_MIN_KERNEL,
):
    """One compiled program training up to ``capacity`` chunks of ``width`` clients.

    Arguments of the returned function: ``(params, stack, losses, x_all, y_all,
    slots, start, n, key_data, trips, num_chunks, lr)`` with ``slots``, ``start``,
    ``n`` shape=[capacity, width] int32 (``slots``: the client's position in the
    round's stacked output), ``key_data``
    shape=[capacity, width, 2] uint32, ``trips`` shape=[capacity] int32 (minibatch
    steps per epoch the chunk runs: its largest client's ``ceil(n / batch)``) and
    ``num_chunks`` the chunks to run (dynamic, so the program is reused for any
    count). ``stack`` and ``losses`` are donated and returned updated in place.

    A chunk's clients train in lockstep; client ``c`` takes the same epoch order,
    batches and masked loss as :func:`_client_update_fn` (a step past its own
    ``ceil(n / batch)`` has no real row, an exactly zero gradient and no effect),
    but the step loop stops at ``trips`` instead of a padded static length.

    Dense kernels of at least ``defer_min`` entries are updated deferred
    (:mod:`mcsl_core.fl._deferred`): fixed during local training (shared by the
    chunk's clients when no fold is needed), a history of the steps' ``(x, lr g)`` rows
    folded into them every ``SEGMENT_ROWS`` rows, the delta ``-X^T G`` at the end.
    """
    grad_fn = jax.value_and_grad(functools.partial(_masked_loss, model))
    pos = jnp.arange(rows)
    steps = rows // batch

    def client_order(key, start, n, e):
        order = _epoch_order(jax.random.fold_in(key, e), n, rows)
        return start + jnp.where(pos < n, order, 0)

    def client_step(rest, kern, hist, x_all, y_all, idx, n, s, t, lr, d):
        """One SGD step of the parameters ``rest`` (all but the deferred kernels
        ``kern``; all of them when ``d`` defers none); ``t``: the history slot."""
        ib = lax.dynamic_slice_in_dim(idx, s * batch, batch)
        mb = s * batch + jnp.arange(batch) < n
        if d.paths:  # deferred Dense kernels: fixed, a rank-batch history instead of dW
            (loss, xs), (g, gp) = _dvg(model, d)(
                rest, _deferred.probes(d), kern, hist, x_all[ib], y_all[ib], mb
            )
            hist = _deferred.record(hist, xs, gp, lr, t)
        else:
            loss, g = grad_fn(rest, x_all[ib], y_all[ib], mb)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, rest, g), hist, loss * jnp.sum(mb)

    def step_of(d, kern_axis):
        def f(rest, kern, hist, x_all, y_all, idx, n, s, t, lr):
            return client_step(rest, kern, hist, x_all, y_all, idx, n, s, t, lr, d)

        if width == 1:  # no client axis inside: the model's own (unbatched) kernels
            return f
        # without folds the deferred kernels W_0 are shared by the chunk's clients
        return jax.vmap(f, in_axes=(0, kern_axis, 0, None, None, 0, 0, None, None, None))

    order_fn = client_order if width == 1 else jax.vmap(client_order, in_axes=(0, 0, 0, None))

    def chunk(params, x_all, y_all, start, n, kd, trip, lr):
        keys = jax.random.wrap_key_data(kd)
        d = _deferred.plan_for(model, params, x_all.shape[1], batch, defer_min)
        seg = _deferred.segment(d, epochs * steps)  # history slots; fold when full
        folds = seg < epochs * steps
        rest, kern0 = _deferred.split(params, d)
        state = (rest, kern0, _deferred.history(d, seg))
        if width == 1:
            keys, start, n = keys[0], start[0], n[0]
        else:
            bcast = functools.partial(
                jax.tree_util.tree_map, lambda a: jnp.broadcast_to(a, (width, *a.shape))
            )
            state = (bcast(rest), bcast(kern0) if folds else kern0, bcast(state[2]))
        step_fn = step_of(d, 0 if folds else None)

        def epoch(e, carry):
            idx = order_fn(keys, start, n, e)

            def step(s, c):
                (r, k, h), t, acc = c
                r, h, l = step_fn(r, k, h, x_all, y_all, idx, n, s, t % seg, lr)
                if folds:  # the history is full: apply it to the kernels, start a new one
                    k, h = lax.cond((t + 1) % seg == 0, _deferred.fold, lambda k, h: (k, h), k, h)
                return (r, k, h), t + 1, acc + l

            return lax.fori_loop(0, trip, step, carry)

        carry = (state, jnp.int32(0), jnp.zeros(jnp.shape(n), jnp.float32))
        (p, kern, hist), _, acc = lax.fori_loop(0, epochs, epoch, carry)
        drest = jax.tree_util.tree_map(jnp.subtract, p, state[0])
        dk = _deferred.kernel_deltas(hist)
        if folds:
            dk = tuple(a - b + c for a, b, c in zip(kern, state[1], dk, strict=True))
        delta = _deferred.merge(drest, dk, d)
        loss = acc / jnp.maximum(n * epochs, 1).astype(jnp.float32)
        if width == 1:
            return jax.tree_util.tree_map(lambda a: a[None], delta), loss[None]
        return delta, loss

    def write(buf, slot, value):  # in place; every slot of a run chunk is a real client
        if width == 1:
            return lax.dynamic_update_index_in_dim(buf, value[0], slot[0], 0)
        return buf.at[slot].set(value, mode="promise_in_bounds", unique_indices=True)

    def run(params, stack, losses, x_all, y_all, slots, start, n, kd, trips, num_chunks, lr):
        def body(c, carry):
            d, l = chunk(params, x_all, y_all, start[c], n[c], kd[c], trips[c], lr)
            st = jax.tree_util.tree_map(lambda s, u: write(s, slots[c], u), carry[0], d)
            return st, write(carry[1], slots[c], l)

        return lax.fori_loop(0, num_chunks, body, (stack, losses))

    return jax.jit(run, donate_argnums=(1, 2))


@functools.lru_cache(maxsize=64)
def _shard_fn(model, steps: int, batch: int, epochs: int, devices: tuple):
    upd = _client_update_fn(model, steps, batch, epochs)
    mesh = Mesh(np.array(devices), ("clients",))
    split = NamedSharding(mesh, PartitionSpec("clients"))
    return jax.jit(jax.vmap(upd, in_axes=(None, None, None, 0, 0, 0, None)), out_shardings=split), mesh


@jax.jit
def _client_keys(base: jax.Array, round_index: jax.Array, clients: jax.Array) -> jax.Array:
    """shape=[clients, 2] uint32 key data: ``fold_in(fold_in(base, round), client)``."""
    rk = jax.random.fold_in(base, round_index)
    return jax.random.key_data(jax.vmap(lambda c: jax.random.fold_in(rk, c))(clients))


def _device_data(data: FederatedData, sharding=None):
    """The dataset's rows and labels on the device, cached on the data object.

    With a sharding they are laid out from the host copies, which also works when its
    mesh spans several processes (each passes the same values)."""
    key = ("device", None if sharding is None else id(sharding.mesh))
    if key not in data._cache:
        if sharding is None:
            data._cache[key] = (jnp.asarray(data.x), jnp.asarray(data.y))
        else:
            data._cache[key] = jax.device_put((np.asarray(data.x), np.asarray(data.y)), sharding)
    return data._cache[key]


def _gather(x) -> np.ndarray:
    """A (possibly multi-host sharded) array on this host, whole (an array spanning several
    processes' devices is all-gathered: every process must call it with the same array)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------
VMAP_WASTE = 0.10  # vmap groups: padded lockstep steps at most this share of the real steps
_WIDTH_BYTES = 2**28  # vmap chunk width: at most this many bytes of per-client parameters


class _Call(NamedTuple):
    """One dispatch of :func:`_chunk_program`: chunks of ``width`` clients."""

    rows: int  # static order length (bucket of the largest client) = steps bucket * batch
    width: int
    pos: np.ndarray  # shape=[chunks, width] int64: positions in the round
    trips: np.ndarray  # shape=[chunks] int64: steps per epoch of each chunk


def _pow2_parts(m: int) -> list[int]:
    """``m`` as a sum of distinct powers of two, largest first (13 -> 8, 4, 1)."""
    return [1 << b for b in range(m.bit_length() - 1, -1, -1) if m >> b & 1]


def _vmap_groups(steps: np.ndarray, waste: float = VMAP_WASTE) -> list[np.ndarray]:
    """Positions sorted by steps and cut into groups whose lockstep cost
    ``max(steps) * size`` exceeds the real ``sum(steps)`` by at most ``waste``."""
    groups, cur, tot = [], [], 0
    for j in np.argsort(steps, kind="stable"):
        s = int(steps[j])
        if cur and s * (len(cur) + 1) > (1.0 + waste) * (tot + s):
            groups.append(np.asarray(cur))
            cur, tot = [], 0
        cur.append(int(j))
        tot += s
    return [*groups, np.asarray(cur)]


def _plan(strategy: str, steps: np.ndarray, batch: int, max_width: int) -> list[_Call]:
    """The dispatches of a round: ``loop`` trains one client per chunk (its exact
    steps); ``vmap`` trains sorted groups in chunks of power-of-two widths."""
    chunks: list[np.ndarray] = []
    if strategy == "loop":
        chunks = [np.asarray([j]) for j in np.argsort(steps, kind="stable")]
    else:
        for g in _vmap_groups(steps):
            at = 0
            for w in _pow2_parts(len(g)):
                for _ in range(0, w, max_width):
                    part = g[at : at + min(w, max_width)]
                    chunks.append(part)
                    at += len(part)
    by_shape: dict[tuple[int, int], list[np.ndarray]] = {}
    for c in chunks:
        trip = int(steps[c].max())
        by_shape.setdefault((bucket_steps(trip) * batch, len(c)), []).append(c)
    return [
        _Call(rows, width, np.stack(cs), np.array([int(steps[c].max()) for c in cs]))
        for (rows, width), cs in sorted(by_shape.items())
    ]


def _max_width(params) -> int:
    nbytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(params))
    return 1 << (max(_WIDTH_BYTES // max(nbytes, 1), 1).bit_length() - 1)  # largest power of two


#: Environment variable: how many parts (threads) a ``loop`` round on one CPU device
#: splits its clients into. Unset: one per core the process may use. The task sweep's
#: workers set 1 (one worker per core already). ``vmap`` rounds run in one part: their
#: lockstep chunks would change with the split, and with them a client's float rounding.
THREADS_ENV = "MCSL_FL_THREADS"


#: A round splits only when it has at least this much work, counted in steps of a
#: 8,192-parameter model: ``sum(steps) * (1 + params / 8192)``. Each thread and part costs
#: a few milliseconds of dispatch; on the 2-core machine a split paid off from about
#: 2,000 such steps (logistic regression: slower at 35 FedProx clients, 551 steps,
#: 1.4x faster at 70; the MLP even at 35 and 1.5x at 70; the CNN round 1.18x).
SPLIT_MIN_WORK = 2048


def single_cpu_device() -> bool:
    """Whether JAX runs on exactly one device, a CPU (where threads of programs help)."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def round_parts(k: int, client_bytes: int, work: float = math.inf) -> int:
    """Parts a round of ``k`` clients runs in, side by side in threads (1: no threads).

    Only on a single CPU device and for at least :data:`SPLIT_MIN_WORK` of ``work``: a
    client's steps at batch 10 are too small for XLA to keep two cores busy, while two
    independent programs do (the CNN round: 1.18x on 2 cores, ``docs/fl.md``). Each part
    but the first keeps its own stack of updates until it is merged, so the split is
    skipped when those stacks would take more than a quarter of the memory available now.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}")
        parts = int(raw)
    else:
        parts = available_cores()
    if not single_cpu_device() or work < SPLIT_MIN_WORK:
        return 1
    parts = max(1, min(parts, k))
    extra = (parts - 1) * -(-k // parts) * client_bytes
    return parts if 4 * extra <= available_memory() else 1


def _split(steps: np.ndarray, parts: int) -> list[np.ndarray]:
    """Positions in ``parts`` groups of near-equal work: clients by steps, largest first,
    dealt in a snake (0, 1, .., p-1, p-1, .., 0, ...); each group holds at most ceil(k / p)."""
    order = np.argsort(-steps, kind="stable")
    lane = np.concatenate([np.arange(parts), np.arange(parts)[::-1]])[np.arange(len(steps)) % (2 * parts)]
    return [np.sort(order[lane == i]) for i in range(parts)]


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _merge(stack, losses, part_stack, part_losses, slots):
    """Write a part's updates into the round's stack in place (slot ``k``: dropped)."""
    put = lambda a, b: a.at[slots].set(b, mode="drop", unique_indices=True)  # noqa: E731
    return jax.tree_util.tree_map(put, stack, part_stack), put(losses, part_losses)


def _run_chunks(strategy, model, params, data, clients, keys, cfg, *, warm=False, deadline=None):
    """Run a round as :func:`_plan` lays it out (``loop``: in :func:`round_parts` parts
    side by side, in threads). ``warm``: every step count 0 (compiles every program of
    the round at almost no run cost). ``deadline`` (a :data:`_clock` time): block after
    each dispatch and give up (None) once past it.

    Part 0 writes into the round's stack; the others into stacks of ``ceil(k / parts)``
    clients, merged afterwards. Every program's shape depends on ``k`` and the part
    count only, and a client's update does not depend on its part (tested bit for bit).
    """
    x_all, y_all = _device_data(data)
    k, b = len(clients), cfg.batch_size
    steps = data.steps(b)[clients]
    inputs = (
        np.append(data.offsets[clients], 0).astype(np.int32),  # position k: a dropped dummy
        np.append(data.num_samples[clients], 0).astype(np.int32),
        np.concatenate([np.asarray(keys), np.zeros((1, *keys.shape[1:]), np.uint32)]),
    )
    leaves = jax.tree_util.tree_leaves(params)
    client_bytes = sum(p.size * p.dtype.itemsize for p in leaves)
    work = float(steps.sum()) * cfg.local_epochs * (1 + sum(p.size for p in leaves) / 8192)
    parts = _split(steps, round_parts(k, client_bytes, work) if strategy == "loop" else 1)
    rows = -(-k // len(parts))
    width = 1 if strategy == "loop" else _max_width(params)

    def run(i):
        size, slots = (k, parts[0]) if i == 0 else (rows, np.arange(len(parts[i])))
        stack = jax.tree_util.tree_map(lambda p: jnp.zeros((size, *p.shape), p.dtype), params)
        state = (stack, jnp.zeros((size,), jnp.float32))
        for c in _plan(strategy, steps[parts[i]], b, width):
            state = _dispatch(c, model, params, cfg, x_all, y_all, inputs, parts[i], slots, state, rows, warm)
            if deadline is not None:
                jax.block_until_ready(state)
                if _clock() > deadline:
                    return None
        return state

    if len(parts) == 1:
        return run(0)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(parts), thread_name_prefix="mcsl-round") as ex:
        done = list(ex.map(run, range(len(parts))))
    if any(d is None for d in done):
        return None
    stack, losses = done[0]
    for pos, (st, ls) in zip(parts[1:], done[1:], strict=True):
        slots = np.full(rows, k, np.int32)
        slots[: len(pos)] = pos
        stack, losses = _merge(stack, losses, st, ls, slots)
    return stack, losses


def _dispatch(c, model, params, cfg, x_all, y_all, inputs, part, slots, state, rows, warm):
    """One call of :func:`_chunk_program` for the chunks ``c`` of one part (positions in
    the part); ``slots`` maps the part's positions to rows of its stack."""
    cap = rows // c.width  # most chunks of this width a part can hold: one program per width
    pos = np.full((cap, c.width), -1, np.int64)
    pos[: len(c.pos)] = c.pos
    at = np.where(pos >= 0, part[pos], len(inputs[0]) - 1)  # round positions; dummies: k
    trips = np.zeros(cap, np.int32)
    trips[: len(c.trips)] = 0 if warm else c.trips
    fn = _chunk_program(
        model, c.rows, cfg.batch_size, cfg.local_epochs, c.width, cap, _deferred.DEFER_MIN_KERNEL
    )
    return fn(
        params, *state, x_all, y_all, np.where(pos >= 0, slots[pos], 0).astype(np.int32),
        *(a[at] for a in inputs), trips, np.int32(len(c.pos)), jnp.float32(cfg.client_lr),
    )  # fmt: skip


def padded_step_overhead(
    data: FederatedData, clients: Sequence[int], batch_size: int, strategy: str
) -> float:
    """Share of extra minibatch steps a strategy runs on these clients beyond
    their real ``sum(ceil(n / batch_size))``: 0 for ``loop``; lockstep padding
    for ``vmap``; padding to the round's largest bucket for ``shard``."""
    steps = data.steps(batch_size)[np.asarray(clients, np.int64)]
    real = max(int(steps.sum()), 1)
    if strategy == "loop":
        return 0.0
    if strategy == "shard":
        return (len(steps) * bucket_steps(int(steps.max())) - real) / real
    if strategy != "vmap":
        raise ValueError(f"strategy must be 'loop', 'vmap' or 'shard', got {strategy!r}")
    ran = sum(int(t) * c.width for c in _plan("vmap", steps, batch_size, 1 << 30) for t in c.trips)
    return (ran - real) / real


def _run_loop(model, params, data, clients, keys, cfg, **kw):
    return _run_chunks("loop", model, params, data, clients, keys, cfg, **kw)


def _run_vmap(model, params, data, clients, keys, cfg, **kw):
    return _run_chunks("vmap", model, params, data, clients, keys, cfg, **kw)


def _round_steps(data, clients, cfg) -> int:
    return int(max(data.padded_steps(cfg.batch_size)[clients]))


def _run_shard(model, params, data, clients, keys, cfg, *, warm=False, deadline=None):
    """All clients in one sharded program padded to the round's largest bucket
    (``warm`` is a full run; ``deadline`` is checked once, at the end)."""
    devices = tuple(jax.devices())
    fn, mesh = _shard_fn(model, _round_steps(data, clients, cfg), cfg.batch_size, cfg.local_epochs, devices)
    split = NamedSharding(mesh, PartitionSpec("clients"))
    repl = NamedSharding(mesh, PartitionSpec())
    k, d = len(clients), len(devices)
    kp = -(-k // d) * d  # pad the client axis to a multiple of the device count
    start = np.zeros(kp, np.int32)
    n = np.zeros(kp, np.int32)  # dummy clients: no rows, zero update, dropped below
    start[:k], n[:k] = data.offsets[clients], data.num_samples[clients]
    kd = np.zeros((kp, *keys.shape[1:]), np.uint32)
    kd[:k] = np.asarray(keys)
    x_all, y_all = _device_data(data, repl)
    deltas, losses = fn(
        jax.device_put(jax.tree_util.tree_map(np.asarray, params), repl),  # host copies: any process
        x_all,
        y_all,
        jax.device_put(start, split),
        jax.device_put(n, split),
        jax.device_put(kd, split),
        jnp.float32(cfg.client_lr),
    )
    if jax.process_count() > 1:  # the rest of the round runs on this process: gather it here
        deltas, losses = jax.tree_util.tree_map(lambda a: jnp.asarray(_gather(a)), (deltas, losses))
    if kp != k:
        deltas = jax.tree_util.tree_map(lambda a: a[:k], deltas)
        losses = losses[:k]
    if deadline is not None:
        jax.block_until_ready(losses)
        if _clock() > deadline:
            return None
    return deltas, losses


_RUNNERS = {"loop": _run_loop, "vmap": _run_vmap, "shard": _run_shard}
_AUTO_CACHE: dict[tuple, str] = {}
_clock = time.perf_counter  # the timer auto measures with (a module attribute, so tests can drive it)
#: The FedAvg server step (``params + aggregate``) as one shared optax object, so the jitted
#: server step compiled for it is reused by every run in the process.
FEDAVG_SERVER = optax.sgd(1.0)


def _shape_key(params) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(params))


def _auto_key(model, params, data: FederatedData, config: FLConfig, k: int) -> tuple:
    """What the decision depends on: backend, devices, model, shapes, the data's
    client sizes (a digest) and the round's settings, not the exact participants."""
    return (
        jax.default_backend(),
        jax.device_count(),
        model,
        _shape_key(params),
        data.dim,
        hash(data.num_samples.tobytes()),
        config.batch_size,
        config.local_epochs,
        k,
        _deferred.DEFER_MIN_KERNEL,
    )


def _measure(model, params, data, config, clients, keys):
    """Time every candidate on the whole real round: ``(best, its output)``.

    Each candidate first compiles every program the round uses (``warm``, no
    steps run), then runs the round timed; a candidate is abandoned as soon as it
    takes longer than the best so far. The output of the winner is kept, so the
    round is not run again.
    """
    cands = ["loop", "vmap"] + (["shard"] if jax.device_count() > 1 else [])
    best, best_t, best_out = cands[0], math.inf, None
    for s in cands:
        jax.block_until_ready(_RUNNERS[s](model, params, data, clients, keys, config, warm=True))
        t0 = _clock()
        out = _RUNNERS[s](model, params, data, clients, keys, config, deadline=t0 + best_t)
        if out is None:
            continue
        jax.block_until_ready(out)
        dt = _clock() - t0
        if dt < best_t:
            best, best_t, best_out = s, dt, out
    _AUTO_CACHE[_auto_key(model, params, data, config, len(clients))] = best
    return best, best_out


def choose_strategy(model, params, data: FederatedData, config: FLConfig, clients: Sequence[int]) -> str:
    """The strategy measured fastest on this round, cached.

    Every candidate (``loop``, ``vmap``, and ``shard`` with more than one device)
    runs the whole round on the given ``clients`` (all their sizes, so all the
    programs the round needs) after a compile-only pass; the fastest wall time
    wins. The choice is cached per backend, device count, model, parameter
    shapes, the data's client sizes, ``batch_size``, ``local_epochs`` and the
    number of clients per round.
    """
    cl = np.asarray(clients, dtype=np.int64)
    ck = _auto_key(model, params, data, config, len(cl))
    if ck not in _AUTO_CACHE:
        keys = _client_keys(jax.random.key(config.seed), jnp.uint32(0), jnp.asarray(cl, jnp.uint32))
        _measure(model, params, data, config, cl, keys)
    return _AUTO_CACHE[ck]


def federated_round(
    model,
    params: PyTree,
    data: FederatedData,
    clients: Sequence[int],
    config: FLConfig,
    *,
    key: jax.Array | None = None,
    round_index: int = 0,
    strategy: str | None = None,
) -> RoundUpdates:
    """Local training of the given clients from the global ``params`` (one round).

    Parameters
    ----------
    model : flax module
    params : pytree of the global model
    data : FederatedData, one client per edge server
    clients : indices into ``data`` of this round's participants
    config : FLConfig (``batch_size``, ``local_epochs``, ``client_lr``, ``strategy``)
    key : PRNG key of the run (default ``jax.random.key(config.seed)``); client
        ``c`` shuffles with ``fold_in(fold_in(key, round_index), c)``, so a
        client's update does not depend on the strategy or on who else takes part.
    strategy : overrides ``config.strategy``

    Returns
    -------
    RoundUpdates
        Stacked updates (local minus global parameters, leading client axis in
        the order of ``clients``), sample counts and mean local losses, ready to
        be signed, replaced (Byzantine tests) and aggregated.
    """
    strategy = config.strategy if strategy is None else strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    cl = np.asarray(clients)
    if cl.ndim != 1 or cl.size == 0 or cl.dtype.kind not in "iu":
        raise ValueError("clients must be a non-empty 1-d sequence of client indices")
    if cl.min() < 0 or cl.max() >= data.num_clients:
        raise ValueError(f"clients must lie in [0, {data.num_clients}); got {cl.tolist()}")
    if np.unique(cl).size != cl.size:
        raise ValueError("clients must not repeat")
    cl = cl.astype(np.int64)
    base = jax.random.key(config.seed) if key is None else key
    keys = _client_keys(base, jnp.uint32(int(round_index)), jnp.asarray(cl, jnp.uint32))
    out = None
    if strategy == "auto":
        ck = _auto_key(model, params, data, config, len(cl))
        if ck in _AUTO_CACHE:
            strategy = _AUTO_CACHE[ck]
        else:  # measured on this very round; the winner's output is this round's result
            strategy, out = _measure(model, params, data, config, cl, keys)
    deltas, losses = out if out is not None else _RUNNERS[strategy](model, params, data, cl, keys, config)
    return RoundUpdates(deltas, data.num_samples[cl].copy(), np.asarray(losses), cl, strategy)


# ---------------------------------------------------------------------------
# aggregation, server step, evaluation, the loop
# ---------------------------------------------------------------------------
def aggregate(updates: PyTree, num_samples, config: FLConfig, *, key: jax.Array | None = None) -> PyTree:
    """Combine stacked updates with the configured rule (DP-FedAvg when
    ``config.dp_clip_norm`` is set; ``key`` then seeds the noise)."""
    if config.dp_clip_norm is not None and key is None:
        raise ValueError("key is required for DP-FedAvg noise")
    rule = _agg_fn(
        config.aggregator,
        config.trim_fraction,
        config.num_byzantine,
        config.multi_krum,
        config.dp_clip_norm,
        config.dp_noise_multiplier,
    )
    if key is None:
        key = jax.random.key(0)  # unused without DP
    return rule(updates, jnp.asarray(num_samples, jnp.float32), key)


@functools.lru_cache(maxsize=32)
def _agg_fn(aggregator, trim, num_byzantine, multi, clip_norm, noise_multiplier):
    if clip_norm is not None:

        def rule(u, w, key):
            return dp_fedavg(u, None, clip_norm=clip_norm, noise_multiplier=noise_multiplier, key=key)
    elif aggregator == "fedavg":

        def rule(u, w, key):
            return fedavg(u, w)
    elif aggregator == "median":

        def rule(u, w, key):
            return median(u)
    elif aggregator == "trimmed_mean":

        def rule(u, w, key):
            return trimmed_mean(u, trim=trim)
    else:

        def rule(u, w, key):
            return krum(u, num_byzantine=num_byzantine, multi=multi)

    return jax.jit(rule)


@functools.lru_cache(maxsize=16)
def _server_step(opt: optax.GradientTransformation):
    def step(params, state, agg):
        neg = jax.tree_util.tree_map(jnp.negative, agg)
        upd, state = opt.update(neg, state, params)
        return optax.apply_updates(params, upd), state

    return jax.jit(step, donate_argnums=(1,))


def server_update(opt: optax.GradientTransformation, params: PyTree, opt_state, aggregated: PyTree):
    """Apply the server optimizer to the pseudo-gradient ``-aggregated``;
    returns ``(params, opt_state)``. With ``optax.sgd(1.0)`` this is
    ``params + aggregated`` (FedAvg)."""
    return _server_step(opt)(params, opt_state, aggregated)


@functools.lru_cache(maxsize=16)
def _eval_fn(model):
    def sums(params, x_all, y_all, idx, m):
        x, y = x_all[idx], y_all[idx]
        logits = model.apply({"params": params}, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        hit = jnp.argmax(logits, axis=-1) == y
        return jnp.sum(jnp.where(m, ce, 0.0)), jnp.sum(jnp.where(m, hit, False))

    return jax.jit(sums)


def evaluate(model, params: PyTree, data: FederatedData, *, batch_size: int = 1024) -> EvalResult:
    """Mean cross-entropy and accuracy of ``params`` over every row of ``data``
    (all clients pooled, so each sample counts once). Fixed-size padded chunks:
    one compilation per model."""
    batch_size = _pos_int("batch_size", batch_size)
    total = data.x.shape[0]
    if total == 0:
        raise ValueError("data holds no samples")
    fn = _eval_fn(model)
    xd, yd = _device_data(data)
    loss = 0.0
    hits = 0
    for s in range(0, total, batch_size):
        idx = np.minimum(np.arange(s, s + batch_size), total - 1)
        m = np.arange(s, s + batch_size) < total
        l, h = fn(params, xd, yd, idx.astype(np.int32), m)
        loss += float(l)
        hits += int(h)
    return EvalResult(loss / total, hits / total)


def select_clients(num_clients: int, k: int, seed: int, round_index: int) -> np.ndarray:
    """The ``k`` clients of round ``round_index``: a seeded draw without
    replacement, sorted (same seed, same participants)."""
    if k > num_clients:
        raise ValueError(f"clients_per_round={k} exceeds the {num_clients} clients in the data")
    rng = np.random.default_rng([int(seed), int(round_index)])
    return np.sort(rng.choice(num_clients, size=k, replace=False)).astype(np.int64)


def run_fedavg(
    model,
    train: FederatedData,
    config: FLConfig,
    *,
    test: FederatedData | None = None,
    callback: Callable[[int, PyTree, dict], bool | None] | None = None,
    params: PyTree | None = None,
) -> FLResult:
    """Federated training (paper Algorithm 2, learning side): every round,
    sample ``clients_per_round`` clients, run :func:`federated_round`,
    :func:`aggregate`, and apply the server optimizer.

    Evaluation (on ``test``, else on ``train``) runs every ``eval_every`` rounds
    and after the last; ``target_accuracy`` stops early. ``callback(round,
    params, record)`` runs after every round; returning True stops the run.
    ``params`` (optional) starts from given weights instead of a seeded init.
    """
    if config.clients_per_round > train.num_clients:
        raise ValueError(
            f"clients_per_round={config.clients_per_round} exceeds the {train.num_clients} clients"
        )
    if config.compiled:
        from mcsl_core.fl._compiled import run_compiled

        if callback is not None:
            raise ValueError("callback needs the per-round loop; use FLConfig(compiled=False)")
        return run_compiled(model, train, config, test=test, params=params)
    key = jax.random.key(config.seed)
    init_key, train_key, noise_key = jax.random.split(key, 3)
    if params is None:
        params = init_params(model, train.dim, init_key)
    opt = config.server_optimizer if config.server_optimizer is not None else FEDAVG_SERVER
    opt_state = opt.init(params)
    strategy = config.strategy  # "auto" is resolved by the first round, on its real clients
    progress = config.progress if config.progress is not None else config.rounds >= 50
    evaluated = test if test is not None else train
    rec = {k: [] for k in FLHistory._fields}
    stopped = False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rounds, desc="FedAvg", unit="round")
    for r in range(config.rounds):
        t0 = time.perf_counter()
        clients = select_clients(train.num_clients, config.clients_per_round, config.seed, r)
        ru = federated_round(
            model, params, train, clients, config, key=train_key, round_index=r, strategy=strategy
        )
        strategy = ru.strategy
        agg = aggregate(ru.updates, ru.num_samples, config, key=jax.random.fold_in(noise_key, r))
        train_loss = float(np.average(ru.loss, weights=np.maximum(ru.num_samples, 1)))
        del ru  # free the stacked updates before the server step
        if config.server_lr != 1.0:
            agg = jax.tree_util.tree_map(lambda a: a * jnp.float32(config.server_lr), agg)
        params, opt_state = server_update(opt, params, opt_state, agg)
        jax.block_until_ready(params)
        dt = time.perf_counter() - t0
        record = {"round": r + 1, "round_time": dt, "train_loss": train_loss}
        rec["train_loss"].append(train_loss)
        rec["round"].append(r + 1)
        rec["round_time"].append(dt)
        last = r == config.rounds - 1
        if (r + 1) % config.eval_every == 0 or last:
            ev = evaluate(model, params, evaluated)
            rec["eval_loss"].append(ev.loss)
            rec["eval_accuracy"].append(ev.accuracy)
        else:
            rec["eval_loss"].append(math.nan)
            rec["eval_accuracy"].append(math.nan)
        record.update(eval_loss=rec["eval_loss"][-1], eval_accuracy=rec["eval_accuracy"][-1])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{rec['eval_accuracy'][-1]:.3f}", loss=f"{rec['eval_loss'][-1]:.3f}")
        stop = callback is not None and bool(callback(r + 1, params, record))
        if config.target_accuracy is not None and rec["eval_accuracy"][-1] >= config.target_accuracy:
            stopped = r < config.rounds - 1
            stop = True
        if stop:
            break
    if bar is not None:
        bar.close()
    hist = FLHistory(
        np.asarray(rec["round"], np.int64),
        np.asarray(rec["train_loss"], np.float32),
        np.asarray(rec["eval_loss"], np.float32),
        np.asarray(rec["eval_accuracy"], np.float32),
        np.asarray(rec["round_time"], np.float64),
    )
    return FLResult(params, hist, strategy, stopped)
