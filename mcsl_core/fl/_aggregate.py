"""Aggregation of stacked client updates (paper IV-C step 5; robust variants).

Every aggregator takes ``updates``, a pytree whose leaves have a leading client
axis (shape=[clients, ...], as :func:`mcsl_core.fl.federated_round` returns
them), and ``weights`` (shape=[clients], e.g. sample counts), and returns one
update pytree without the client axis. All are pure JAX functions (jit-able),
float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mcsl_core._names import AGGREGATORS

__all__ = [
    "AGGREGATORS",
    "clip_updates",
    "dp_fedavg",
    "fedavg",
    "flatten_updates",
    "krum",
    "krum_select",
    "median",
    "trimmed_mean",
]

PyTree = Any

#: The aggregation rules by name: the one registry that :class:`mcsl_core.fl.FLConfig`
#: (``aggregator``) and the system layer validate against. DP-FedAvg is not a name
#: here: it is switched on by ``dp_clip_norm`` and replaces the rule.


def _num_clients(updates: PyTree) -> int:
    leaves = jax.tree_util.tree_leaves(updates)
    if not leaves:
        raise ValueError("updates must hold at least one array")
    k = leaves[0].shape[0] if leaves[0].ndim else None
    if k is None or any(leaf.ndim == 0 or leaf.shape[0] != k for leaf in leaves):
        raise ValueError("updates must share one leading client axis on every leaf")
    if k < 1:
        raise ValueError("updates must hold at least one client")
    return int(k)


def _check_weights(weights, k: int) -> jax.Array:
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (k,):
        raise ValueError(f"weights must have shape ({k},), got {w.shape}")
    return w


def flatten_updates(updates: PyTree) -> jax.Array:
    """shape=[clients, params]: each client's update as one flat vector."""
    k = _num_clients(updates)
    return jnp.concatenate([leaf.reshape(k, -1) for leaf in jax.tree_util.tree_leaves(updates)], axis=1)


def fedavg(updates: PyTree, weights) -> PyTree:
    """FedAvg: ``sum_k w_k u_k / sum_k w_k`` (McMahan et al.; weights = sample counts)."""
    k = _num_clients(updates)
    w = _check_weights(weights, k)
    w = w / jnp.sum(w)
    return jax.tree_util.tree_map(lambda u: jnp.tensordot(w, u.astype(jnp.float32), axes=1), updates)


def median(updates: PyTree, weights=None) -> PyTree:
    """Coordinate-wise median (Yin et al. 2018); ``weights`` ignored (unweighted)."""
    _num_clients(updates)
    return jax.tree_util.tree_map(lambda u: jnp.median(u, axis=0), updates)


def trimmed_mean(updates: PyTree, weights=None, *, trim: float = 0.1) -> PyTree:
    """Coordinate-wise trimmed mean: drop the ``floor(trim * k)`` largest and
    smallest values of each coordinate, average the rest (Yin et al. 2018)."""
    k = _num_clients(updates)
    if not 0.0 <= float(trim) < 0.5:
        raise ValueError(f"trim must lie in [0, 0.5), got {trim!r}")
    b = int(trim * k)

    def one(u):
        s = jnp.sort(u, axis=0)
        return jnp.mean(s[b : k - b], axis=0)

    return jax.tree_util.tree_map(one, updates)


def krum_select(updates: PyTree, *, num_byzantine: int, multi: int = 1) -> jax.Array:
    """Indices (shape=[multi]) of the updates multi-Krum keeps (Blanchard et al. 2017).

    Score of ``i``: sum of squared distances to its ``k - f - 2`` nearest other
    updates; the ``multi`` lowest scores win (ties: lower index first).
    """
    k = _num_clients(updates)
    f = int(num_byzantine)
    if f < 0 or k - f - 2 < 1:
        raise ValueError(f"num_byzantine must satisfy 0 <= f <= clients - 3 = {k - 3}, got {num_byzantine!r}")
    if not 1 <= int(multi) <= k:
        raise ValueError(f"multi must lie in [1, {k}], got {multi!r}")
    flat = flatten_updates(updates)
    sq = jnp.sum(flat * flat, axis=1)
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (flat @ flat.T), 0.0)
    d = jnp.where(jnp.eye(k, dtype=bool), jnp.inf, d)
    scores = jnp.sum(jnp.sort(d, axis=1)[:, : k - f - 2], axis=1)
    return jnp.argsort(scores, stable=True)[: int(multi)]


def krum(updates: PyTree, weights=None, *, num_byzantine: int, multi: int = 1) -> PyTree:
    """(Multi-)Krum: the mean of the ``multi`` updates :func:`krum_select` keeps
    (``multi=1`` is Krum: the single best-scored update)."""
    sel = krum_select(updates, num_byzantine=num_byzantine, multi=multi)
    return jax.tree_util.tree_map(lambda u: jnp.mean(u[sel], axis=0), updates)


def clip_updates(updates: PyTree, clip_norm: float) -> PyTree:
    """Scale each client's update to L2 norm at most ``clip_norm`` (over all leaves)."""
    if not float(clip_norm) > 0.0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}")
    k = _num_clients(updates)
    norms = jnp.sqrt(
        sum(jnp.sum(leaf.reshape(k, -1) ** 2, axis=1) for leaf in jax.tree_util.tree_leaves(updates))
    )
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-30))
    return jax.tree_util.tree_map(lambda u: u * scale.reshape((k,) + (1,) * (u.ndim - 1)), updates)


def dp_fedavg(
    updates: PyTree, weights=None, *, clip_norm: float, noise_multiplier: float, key: jax.Array
) -> PyTree:
    """DP-FedAvg (McMahan et al. 2018, fixed-size uniform version).

    Each update is clipped to L2 norm ``clip_norm``, the clipped updates are
    averaged with equal weights, and Gaussian noise with standard deviation
    ``noise_multiplier * clip_norm / clients`` is added to every coordinate.
    ``weights`` are ignored: sample-count weights would leak and break the
    sensitivity bound.
    """
    if float(noise_multiplier) < 0.0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
    k = _num_clients(updates)
    clipped = clip_updates(updates, clip_norm)
    mean = jax.tree_util.tree_map(lambda u: jnp.mean(u, axis=0), clipped)
    leaves, tree = jax.tree_util.tree_flatten(mean)
    keys = jax.random.split(key, len(leaves))
    sigma = float(noise_multiplier) * float(clip_norm) / k
    noisy = [leaf + sigma * jax.random.normal(kk, leaf.shape, leaf.dtype) for leaf, kk in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, noisy)
