"""Small Dense layers trained in lanes: the kernel gradient as a sum of outer products.

A local SGD step of a small Dense layer ``y = x W + b`` at batch ``B`` needs the
kernel gradient ``x^T g`` (``g``: the loss gradient w.r.t. ``y``). Under ``vmap``
with per-client kernels (the ``vmap`` strategy, a compiled group's packed lanes)
that is a batched matrix product with a contracting dimension of only ``B`` rows,
which XLA's CPU backend runs at a small fraction of its matrix-product speed
(``[18, 10, 60]^T [18, 10, 64]``: 34 us on one core, against 16 us for the same
numbers as ``B`` fused outer products, ``docs/fl.md``, "Small Dense layers in lanes").

:func:`dense_product` is ``x @ W`` with its own backward pass: the input gradient
``g W^T`` as autodiff forms it, and the kernel gradient by :func:`kernel_grad`,
whose ``vmap`` rule writes ``sum_b x_b^T g_b`` (rows in order) as one elementwise
fusion for at most :data:`OUTER_MAX_ROWS` rows, kernels of at most
:data:`OUTER_MAX_ENTRIES` entries and at least :data:`OUTER_MIN_LANES` lanes;
otherwise, and outside ``vmap``, it is the matrix product. The values are those
of autodiff up to float32 rounding (the order of the ``B`` additions).
:func:`lanes_dense` routes a model's plain float32 ``nn.Dense`` layers through it
while a training loss is traced.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

#: Rows (the batch) up to which a vmapped kernel gradient is a sum of outer products.
OUTER_MAX_ROWS = 32
#: Kernel entries up to which it is (measured on small models; large kernels are
#: memory-bound products either way).
OUTER_MAX_ENTRIES = 1 << 16
#: Lanes from which it is. At 2 lanes XLA fuses the hidden layer's gradient and the
#: packed lanes' reset into the sum, which then runs unvectorised: a compiled MLP
#: run (one experiment, 2 lanes) took 44 us per step against 16 us with the product.
OUTER_MIN_LANES = 3


def _outer_sum(x: jax.Array, g: jax.Array) -> jax.Array:
    """``sum_b x[:, b, :, None] * g[:, b, None, :]``, rows in order: shape=[L, in, out]."""
    out = x[:, 0, :, None] * g[:, 0, None, :]
    for b in range(1, x.shape[1]):
        out = out + x[:, b, :, None] * g[:, b, None, :]
    return out


@jax.custom_batching.custom_vmap
def kernel_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """``x^T g``: the kernel gradient of ``x @ W`` (``x``: shape=[rows, in], ``g``: [rows, out])."""
    return x.T @ g


@kernel_grad.def_vmap
def _kernel_grad_vmap(axis_size, in_batched, x, g):
    x_batched, g_batched = in_batched
    x = x if x_batched else jnp.broadcast_to(x, (axis_size, *x.shape))
    g = g if g_batched else jnp.broadcast_to(g, (axis_size, *g.shape))
    small = x.shape[1] <= OUTER_MAX_ROWS and x.shape[2] * g.shape[2] <= OUTER_MAX_ENTRIES
    if small and axis_size >= OUTER_MIN_LANES:
        return _outer_sum(x, g), True
    return jnp.einsum("lri,lro->lio", x, g), True


@jax.custom_vjp
def dense_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` (``x``: shape=[rows, in]) whose kernel gradient is :func:`kernel_grad`."""
    return x @ kernel


def _dense_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _dense_bwd(res, g):
    x, kernel = res
    return g @ kernel.T, kernel_grad(x, g)


dense_product.defvjp(_dense_fwd, _dense_bwd)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(nn.Dense)}


def plain_dense(ctx, args, kwargs) -> bool:
    """A call of a plain float32 ``nn.Dense`` (default dtype handling, precision and
    product, float32 parameters) on one 2-d input: what a rewrite of its product as
    ``x @ kernel + bias`` leaves unchanged (here and in the deferred update)."""
    mod = ctx.module
    if ctx.method_name != "__call__" or type(mod) is not nn.Dense or kwargs or len(args) != 1:
        return False
    defaults = all(getattr(mod, f) is _DEFAULTS[f] for f in ("precision", "promote_dtype", "dot_general"))
    plain = defaults and mod.dot_general_cls is None and mod.dtype in (None, jnp.float32)
    return plain and mod.param_dtype == jnp.float32 and getattr(args[0], "ndim", 0) == 2


def _plain(ctx, args, kwargs) -> bool:
    """:func:`plain_dense` on a float32 input, the module holding its kernel of the matching shape."""
    if not plain_dense(ctx, args, kwargs):
        return False
    x, kernel = args[0], ctx.module.variables.get("params", {}).get("kernel")
    held = (
        kernel is not None
        and kernel.dtype == jnp.float32
        and kernel.shape == (x.shape[1], ctx.module.features)
    )
    return x.dtype == jnp.float32 and held


def _route(nxt, args, kwargs, ctx):
    if not _plain(ctx, args, kwargs):
        return nxt(*args, **kwargs)
    p = ctx.module.variables["params"]
    y = dense_product(args[0], p["kernel"])
    return y + p["bias"] if ctx.module.use_bias else y


@contextlib.contextmanager
def lanes_dense() -> Iterator[None]:
    """Within the block, plain float32 ``nn.Dense`` layers on 2-d inputs compute
    ``dense_product(x, kernel) + bias`` (the same function, the backward pass above).
    A layer another interceptor already replaced (a deferred kernel) is left to it."""
    with nn.intercept_methods(_route):
        yield
