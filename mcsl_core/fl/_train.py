"""Client update, execution strategies, one federated round, and the FedAvg loop
(paper IV-C, Algorithm 2, learning side; SPEC.md 3; DESIGN.md "FL execution
strategies").

One definition of a client's local training, :func:`_client_update_fn`, is run
by three strategies:

- ``"loop"``: one compiled call per client (its whole local training is one
  ``lax.scan``), clients bucketed by padded size so a dataset compiles to a few
  shapes; each call writes the client's update in place into a donated stacked
  buffer;
- ``"vmap"``: all clients of a round in one XLA program (``jax.vmap`` of the
  same function), padded to the largest bucket among them;
- ``"shard"``: the ``"vmap"`` program with the client axis split over every
  device with ``jax.sharding`` (results identical to ``"vmap"``).

``"auto"`` times the candidates on a small trial (cached per backend, device
count, model and shapes) and keeps the fastest.

Local training is minibatch SGD as in LEAF: each local epoch shuffles the
client's rows and walks them in batches of ``batch_size`` (the last batch may
be short); the loss of a batch is the mean cross-entropy over its real rows.
Padding rows carry mask False; a step whose rows are all padding has an exactly
zero gradient, so it leaves the parameters unchanged.
"""

from __future__ import annotations

import functools
import math
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

from mcsl_core.fl._aggregate import dp_fedavg, fedavg, krum, median, trimmed_mean
from mcsl_core.fl._data import FederatedData

__all__ = [
    "AGGREGATORS",
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
STRATEGIES = ("auto", "loop", "vmap", "shard")
AGGREGATORS = ("fedavg", "median", "trimmed_mean", "krum")


# ---------------------------------------------------------------------------
# configuration and results
# ---------------------------------------------------------------------------
def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


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
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not (math.isfinite(self.client_lr) and self.client_lr > 0):
            raise ValueError(f"client_lr must be finite and > 0, got {self.client_lr!r}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must lie in [0, 0.5), got {self.trim_fraction!r}")
        if isinstance(self.num_byzantine, bool) or self.num_byzantine < 0:
            raise ValueError(f"num_byzantine must be >= 0, got {self.num_byzantine!r}")
        if self.dp_clip_norm is not None and not (math.isfinite(self.dp_clip_norm) and self.dp_clip_norm > 0):
            raise ValueError(f"dp_clip_norm must be finite and > 0, got {self.dp_clip_norm!r}")
        if not (math.isfinite(self.dp_noise_multiplier) and self.dp_noise_multiplier >= 0):
            raise ValueError(f"dp_noise_multiplier must be finite and >= 0, got {self.dp_noise_multiplier!r}")
        if self.target_accuracy is not None and not 0.0 <= self.target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must lie in [0, 1], got {self.target_accuracy!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise ValueError(f"server_lr must be finite and > 0, got {self.server_lr!r}")
        if not isinstance(self.compiled, (bool, np.bool_)):
            raise ValueError(f"compiled must be a bool, got {self.compiled!r}")


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


@functools.lru_cache(maxsize=64)
def _loop_fn(model, steps: int, batch: int, epochs: int):
    upd = _client_update_fn(model, steps, batch, epochs)

    def one(params, stack, losses, i, x_all, y_all, start, n, key_data, lr):
        delta, loss = upd(params, x_all, y_all, start, n, key_data, lr)
        stack = jax.tree_util.tree_map(lambda s, d: s.at[i].set(d), stack, delta)
        return stack, losses.at[i].set(loss)

    return jax.jit(one, donate_argnums=(1, 2))


@functools.lru_cache(maxsize=64)
def _vmap_fn(model, steps: int, batch: int, epochs: int):
    upd = _client_update_fn(model, steps, batch, epochs)
    return jax.jit(jax.vmap(upd, in_axes=(None, None, None, 0, 0, 0, None)))


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
    """The dataset's rows and labels on the device, cached on the data object."""
    key = ("device", None if sharding is None else id(sharding.mesh))
    if key not in data._cache:
        x, y = jnp.asarray(data.x), jnp.asarray(data.y)
        if sharding is not None:
            x, y = jax.device_put(x, sharding), jax.device_put(y, sharding)
        data._cache[key] = (x, y)
    return data._cache[key]


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------
def _run_loop(model, params, data, clients, keys, cfg):
    x_all, y_all = _device_data(data)
    k = len(clients)
    stack = jax.tree_util.tree_map(lambda p: jnp.zeros((k, *p.shape), p.dtype), params)
    losses = jnp.zeros((k,), jnp.float32)
    padded = data.padded_steps(cfg.batch_size)
    lr = jnp.float32(cfg.client_lr)
    for j, c in enumerate(clients):
        fn = _loop_fn(model, int(padded[c]), cfg.batch_size, cfg.local_epochs)
        stack, losses = fn(
            params,
            stack,
            losses,
            jnp.int32(j),
            x_all,
            y_all,
            jnp.int32(data.offsets[c]),
            jnp.int32(data.num_samples[c]),
            keys[j],
            lr,
        )
    return stack, losses


def _round_steps(data, clients, cfg) -> int:
    return int(max(data.padded_steps(cfg.batch_size)[clients]))


def _run_vmap(model, params, data, clients, keys, cfg):
    x_all, y_all = _device_data(data)
    fn = _vmap_fn(model, _round_steps(data, clients, cfg), cfg.batch_size, cfg.local_epochs)
    return fn(
        params,
        x_all,
        y_all,
        jnp.asarray(data.offsets[clients], jnp.int32),
        jnp.asarray(data.num_samples[clients], jnp.int32),
        keys,
        jnp.float32(cfg.client_lr),
    )


def _run_shard(model, params, data, clients, keys, cfg):
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
        jax.device_put(params, repl),
        x_all,
        y_all,
        jax.device_put(start, split),
        jax.device_put(n, split),
        jax.device_put(kd, split),
        jnp.float32(cfg.client_lr),
    )
    if kp != k:
        deltas = jax.tree_util.tree_map(lambda a: a[:k], deltas)
        losses = losses[:k]
    return deltas, losses


_RUNNERS = {"loop": _run_loop, "vmap": _run_vmap, "shard": _run_shard}
_AUTO_CACHE: dict[tuple, str] = {}
_FEDAVG_SERVER = optax.sgd(1.0)  # one object, so the jitted server step is reused across runs


def _shape_key(params) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(params))


def choose_strategy(model, params, data: FederatedData, config: FLConfig, clients: Sequence[int]) -> str:
    """Pick the fastest strategy by measurement, cached per backend and shapes.

    Runs :func:`federated_round` with each candidate (``loop``, ``vmap``, and
    ``shard`` when more than one device is present) on up to 4 of ``clients``:
    once to compile, once timed; the best samples per second wins.
    """
    cands = ["loop", "vmap"] + (["shard"] if jax.device_count() > 1 else [])
    trial = np.asarray(clients, dtype=np.int64)[:4]
    ck = (
        jax.default_backend(),
        jax.device_count(),
        model,
        _shape_key(params),
        data.dim,
        config.batch_size,
        config.local_epochs,
        len(clients),
        tuple(sorted(set(data.padded_steps(config.batch_size)[trial].tolist()))),
    )
    if ck in _AUTO_CACHE:
        return _AUTO_CACHE[ck]
    key = jax.random.key(config.seed)
    best, best_rate = cands[0], -1.0
    for s in cands:
        for _rep in range(2):
            t0 = time.perf_counter()
            ru = federated_round(model, params, data, trial, config, key=key, strategy=s)
            jax.block_until_ready(ru.updates)
            dt = time.perf_counter() - t0
        rate = float(ru.num_samples.sum()) / max(dt, 1e-9)
        if rate > best_rate:
            best, best_rate = s, rate
    _AUTO_CACHE[ck] = best
    return best


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
    if strategy == "auto":
        strategy = choose_strategy(model, params, data, config, cl)
    if strategy == "shard" and jax.device_count() < 1:
        raise ValueError("strategy 'shard' needs at least one device")
    base = jax.random.key(config.seed) if key is None else key
    keys = _client_keys(base, jnp.uint32(int(round_index)), jnp.asarray(cl, jnp.uint32))
    deltas, losses = _RUNNERS[strategy](model, params, data, cl, keys, config)
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
    opt = config.server_optimizer if config.server_optimizer is not None else _FEDAVG_SERVER
    opt_state = opt.init(params)
    strategy = config.strategy
    if strategy == "auto":
        first = select_clients(train.num_clients, config.clients_per_round, config.seed, 0)
        strategy = choose_strategy(model, params, train, config, first)
    progress = config.progress if config.progress is not None else config.rounds >= 50
    evaluated = test if test is not None else train
    rec = {k: [] for k in FLHistory._fields}
    stopped = False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rounds, desc=f"FedAvg ({strategy})", unit="round")
    for r in range(config.rounds):
        t0 = time.perf_counter()
        clients = select_clients(train.num_clients, config.clients_per_round, config.seed, r)
        ru = federated_round(
            model, params, train, clients, config, key=train_key, round_index=r, strategy=strategy
        )
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
