"""Deferred dense updates: a client's local SGD without forming a big kernel's
gradient at every step (docs/fl.md, "Deferred dense updates").

For a Dense layer ``y = x W + b`` the step-``t`` kernel gradient is the rank-batch
product ``x_t^T g_t`` (``x_t``: the layer's input rows, ``g_t``: the loss gradient
w.r.t. ``y``), so after ``s`` plain SGD steps

    W_s = W_0 - sum_{t<s} x_t^T (lr g_t)

exactly (in exact arithmetic). Step ``s`` therefore computes its forward pass as
``x_s W_0 - (x_s X^T) G + b`` and, by autodiff of that, the input gradient
``g_s W_0^T - (g_s G^T) X``, where the history ``X`` (rows ``x_t``) and ``G``
(rows ``lr g_t``) are small buffers; ``g_s`` is the gradient w.r.t. a zero
"probe" added to the layer's output. ``W_0`` is never differentiated and never
written during the epoch; the client's kernel delta is one GEMM at the end,
``-X^T G``. Once the history holds :data:`SEGMENT_ROWS` rows it is folded into
the kernel (``W <- W - X^T G``, history cleared), which bounds the per-step cost
of the corrections. Unused history rows are zero, and a masked row has
``g = 0`` exactly, so padding contributes exactly nothing.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcsl_core.fl import _dense

PyTree = Any

DEFER_MIN_KERNEL = 2**20  # kernels of at least this many entries are deferred (measured: docs/fl.md)
SEGMENT_ROWS = 256  # history rows before it is folded into the kernel (measured: docs/fl.md)


class Deferred(NamedTuple):
    """The Dense layers a model's training step defers (static, hashable)."""

    paths: tuple[tuple[str, ...], ...]  # parameter paths of the deferred Dense modules
    rows: tuple[int, ...]  # rows of the layer's input per minibatch (the batch size)
    dims: tuple[tuple[int, int], ...]  # (in, out) of each kernel


def _eligible(ctx, args, kwargs, min_size: int) -> bool:
    return _dense.plain_dense(ctx, args, kwargs) and args[0].shape[-1] * ctx.module.features >= min_size


@functools.lru_cache(maxsize=64)
def plan(model, dim: int, batch: int, min_size: int = DEFER_MIN_KERNEL) -> Deferred:
    """The model's Dense layers to defer at this batch size: plain float32
    ``nn.Dense`` on 2-d inputs, called once per forward pass, with at least
    ``min_size`` kernel entries (found by tracing one forward pass)."""
    seen: dict[tuple[str, ...], list] = {}

    def spy(f, args, kwargs, ctx):
        if _eligible(ctx, args, kwargs, min_size):
            seen.setdefault(tuple(ctx.module.path), []).append((args[0].shape, ctx.module.features))
        return f(*args, **kwargs)

    def fwd(x):
        with nn.intercept_methods(spy):
            return model.init_with_output(jax.random.key(0), x)

    jax.eval_shape(fwd, jax.ShapeDtypeStruct((batch, dim), jnp.float32))
    keep = sorted(p for p, calls in seen.items() if len(calls) == 1)
    return Deferred(
        tuple(keep),
        tuple(seen[p][0][0][0] for p in keep),
        tuple((seen[p][0][0][1], seen[p][0][1]) for p in keep),
    )


NONE = Deferred((), (), ())


def plan_for(model, params: PyTree, dim: int, batch: int, min_size: int = DEFER_MIN_KERNEL) -> Deferred:
    """:func:`plan`, or :data:`NONE` where the parameters are not nested dicts
    holding each deferred kernel (then the ordinary step runs)."""
    d = plan(model, int(dim), int(batch), int(min_size))
    for p in d.paths:
        node = params
        for k in p:
            if not isinstance(node, dict) or k not in node:
                return NONE
            node = node[k]
        if not isinstance(node, dict) or "kernel" not in node:
            return NONE
    return d


def probes(d: Deferred) -> tuple:
    """Zero probes added to each deferred layer's output: shape=[rows, out]."""
    return tuple(jnp.zeros((r, o), jnp.float32) for r, (_, o) in zip(d.rows, d.dims, strict=True))


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def split(params: PyTree, d: Deferred) -> tuple[PyTree, tuple]:
    """``(rest, kernels)``: the parameters without the deferred kernels, and those kernels."""
    rest = jax.tree_util.tree_map(lambda a: a, params)  # a fresh copy of the nested dicts
    kernels = []
    for p in d.paths:
        node = _get(rest, p)
        node = dict(node)
        kernels.append(node.pop("kernel"))
        parent = _get(rest, p[:-1])
        parent[p[-1]] = node
    return rest, tuple(kernels)


def merge(rest: PyTree, kernels: tuple, d: Deferred) -> PyTree:
    """Inverse of :func:`split`."""
    out = jax.tree_util.tree_map(lambda a: a, rest)
    for p, k in zip(d.paths, kernels, strict=True):
        node = dict(_get(out, p))
        node["kernel"] = k
        _get(out, p[:-1])[p[-1]] = node
    return out


def history(d: Deferred, steps: int) -> tuple:
    """Zero history buffers for ``steps`` minibatch steps: ``((X, G), ...)``,
    ``X`` shape=[steps * rows, in], ``G`` shape=[steps * rows, out]."""
    return tuple(
        (jnp.zeros((steps * r, i), jnp.float32), jnp.zeros((steps * r, o), jnp.float32))
        for r, (i, o) in zip(d.rows, d.dims, strict=True)
    )


def loss_fn(model, d: Deferred, loss):
    """``f(rest, probes, kernels, hist, xb, yb, mb) -> (loss, xs)``: ``loss(model,
    params, xb, yb, mb)`` with every deferred layer computed from ``W_0`` and the
    history (probes added to its output); ``xs`` are the layers' inputs."""
    index = {p: i for i, p in enumerate(d.paths)}

    def f(rest, probes, kernels, hist, xb, yb, mb):
        xs: dict[int, jax.Array] = {}

        def swap(nxt, args, kwargs, ctx):
            i = index.get(tuple(ctx.module.path)) if ctx.method_name == "__call__" else None
            if i is None:
                return nxt(*args, **kwargs)
            x = args[0]
            xs[i] = x
            hx, hg = hist[i]
            y = x @ kernels[i] - (x @ hx.T) @ hg + probes[i]
            if ctx.module.use_bias:
                y = y + ctx.module.variables["params"]["bias"]
            return y

        with nn.intercept_methods(swap):
            value = loss(model, rest, xb, yb, mb)  # the deferred kernels are never read
        return value, tuple(xs[i] for i in range(len(d.paths)))

    return f


def record(hist: tuple, xs: tuple, gs: tuple, lr, t) -> tuple:
    """The history with step ``t``'s rows ``xs`` and ``lr * gs`` written (rows
    ``t * rows`` on)."""
    out = []
    for (hx, hg), x, g in zip(hist, xs, gs, strict=True):
        hx = jax.lax.dynamic_update_slice_in_dim(hx, x, t * x.shape[0], 0)
        hg = jax.lax.dynamic_update_slice_in_dim(hg, lr * g, t * x.shape[0], 0)
        out.append((hx, hg))
    return tuple(out)


def segment(d: Deferred, total_steps: int) -> int:
    """History slots (minibatch steps) kept before a fold: all ``total_steps``
    when no layer is deferred, else at most :data:`SEGMENT_ROWS` rows' worth."""
    if not d.paths:
        return max(total_steps, 1)
    return max(1, min(total_steps, SEGMENT_ROWS // max(max(d.rows), 1)))


def fold(kernels: tuple, hist: tuple) -> tuple:
    """``(kernels - X^T G, zero history)``: the history applied to the kernels."""
    new = tuple(k + dk for k, dk in zip(kernels, kernel_deltas(hist), strict=True))
    return new, jax.tree_util.tree_map(jnp.zeros_like, hist)


def kernel_deltas(hist: tuple) -> tuple:
    """Each deferred kernel's total update ``-X^T G`` (one GEMM per layer)."""
    return tuple(-jnp.einsum("...ri,...ro->...io", hx, hg) for hx, hg in hist)
