"""Flax models for federated learning (paper V-B): LEAF's FEMNIST CNN, logistic
regression, a small MLP. All float32.

The CNN keeps LEAF's exact architecture and parameter shapes but offers two
equivalent convolution implementations: ``"im2col"`` (patches by shifted slices,
then one matrix product) and ``"xla"`` (``lax.conv_general_dilated``). Under
``jax.vmap`` over clients with per-client weights, XLA turns a convolution into a
grouped convolution that is slow on CPU, while the im2col form becomes a batched
matrix product; both give the same numbers up to float32 rounding.

The im2col convolution has its own backward pass (:func:`conv_im2col`): the kernel
gradient is one matrix product with the patches kept from the forward pass, and the
input gradient is the transposed convolution run by XLA, which on CPU beats the
transpose of the 25 shifted slices that autodiff would build (a CNN train step at
batch 10: 0.9 ms instead of 1.3 ms for ``conv1``, 2.8 instead of 3.7 ms for ``conv2``,
``docs/fl.md``). Under ``vmap`` with per-client kernels that transposed convolution
would be grouped again, so there the input gradient falls back to the slices'
transpose (a kernel shared by the batch is folded into the convolution's batch).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["MLP", "FemnistCNN", "Logistic", "femnist_cnn", "logistic", "mlp", "num_params"]

_init_kernel = nn.initializers.lecun_normal()
_init_zero = nn.initializers.zeros


def _patches_same(x: jax.Array, k: int) -> jax.Array:
    """im2col for a stride-1 'SAME' ``k x k`` window.

    ``x``: shape=[batch, H, W, C] -> shape=[batch, H, W, k*k*C], feature order
    (dy, dx, c), matching an HWIO kernel reshaped to [k*k*C, out].
    """
    p = k // 2
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    cols = [xp[:, dy : dy + h, dx : dx + w, :] for dy in range(k) for dx in range(k)]
    return jnp.concatenate(cols, axis=-1)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _im2col_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _patches_same(x, kernel.shape[0]) @ kernel.reshape(-1, kernel.shape[-1])


def _input_grad_slices(g: jax.Array, kernel: jax.Array) -> jax.Array:
    """The input gradient of :func:`_im2col_product` by autodiff (the slices' transpose)."""
    x0 = jnp.zeros((*g.shape[:-1], kernel.shape[2]), g.dtype)
    return jax.vjp(lambda x: _im2col_product(x, kernel), x0)[1](g)[0]


@jax.custom_batching.custom_vmap
def _input_grad(g: jax.Array, kernel: jax.Array) -> jax.Array:
    """Input gradient of a stride-1 'SAME' convolution: the flipped, transposed kernel."""
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    return lax.conv_general_dilated(g, flipped, (1, 1), "SAME", dimension_numbers=_NHWC)


@_input_grad.def_vmap
def _input_grad_vmap(axis_size, in_batched, g, kernel):
    g_batched, k_batched = in_batched
    if not g_batched:
        g = jnp.broadcast_to(g, (axis_size, *g.shape))
    if not k_batched:  # one kernel: the vmapped axis joins the convolution's batch
        out = _input_grad(g.reshape(-1, *g.shape[2:]), kernel)
        return out.reshape(*g.shape[:2], *out.shape[1:]), True
    return jax.vmap(_input_grad_slices)(g, kernel), True


@jax.custom_vjp
def conv_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'SAME' convolution as one matrix product of the im2col patches.

    ``x``: shape=[batch, H, W, C]; ``kernel``: HWIO, square and odd. Its backward pass is
    custom (module docstring): ``dK = patches^T g`` and ``dx`` by XLA's transposed
    convolution, the same values as autodiff up to float32 rounding.
    """
    return _im2col_product(x, kernel)


def _conv_im2col_fwd(x, kernel):
    cols = _patches_same(x, kernel.shape[0])
    return cols @ kernel.reshape(-1, kernel.shape[-1]), (cols, kernel)


def _conv_im2col_bwd(res, g):
    cols, kernel = res
    dk = jnp.einsum("bhwp,bhwo->po", cols, g).reshape(kernel.shape)
    return _input_grad(g, kernel), dk


conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


def _conv_same(x: jax.Array, kernel: jax.Array, bias: jax.Array, impl: str) -> jax.Array:
    if impl == "im2col":
        y = conv_im2col(x, kernel)
    else:
        y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC)
    return y + bias


def _max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2 (LEAF's ``max_pooling2d(pool_size=[2, 2], strides=2)``)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class FemnistCNN(nn.Module):
    """LEAF's FEMNIST CNN (``models/femnist/cnn.py``).

    Input rows as LEAF stores them, shape=[batch, 784] floats in [0, 1]
    (row-major 28x28); output logits shape=[batch, num_classes]. Layers: 5x5
    conv 32 (SAME, ReLU), 2x2 max-pool, 5x5 conv 64 (SAME, ReLU), 2x2 max-pool,
    dense 2048 (ReLU), dense ``num_classes``; 6,603,710 parameters for 62 classes.
    """

    num_classes: int = 62
    conv_impl: str = "im2col"  # "im2col" or "xla"; same function, different speed

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.conv_impl not in ("im2col", "xla"):
            raise ValueError(f"conv_impl must be 'im2col' or 'xla', got {self.conv_impl!r}")
        x = x.reshape(x.shape[0], 28, 28, 1).astype(jnp.float32)
        for name, cin, cout in (("conv1", 1, 32), ("conv2", 32, 64)):
            k = self.param(f"{name}_kernel", _init_kernel, (5, 5, cin, cout), jnp.float32)
            b = self.param(f"{name}_bias", _init_zero, (cout,), jnp.float32)
            x = _max_pool2(nn.relu(_conv_same(x, k, b, self.conv_impl)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(2048, name="dense1")(x))
        return nn.Dense(self.num_classes, name="dense2")(x)


class Logistic(nn.Module):
    """Multinomial logistic regression: logits = x W + b, shape=[batch, num_classes]."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, name="linear")(x.astype(jnp.float32))


class MLP(nn.Module):
    """Fully connected ReLU network: ``hidden`` widths, then ``num_classes`` logits."""

    hidden: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden{i}")(x))
        return nn.Dense(self.num_classes, name="out")(x)


def _check_pos(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def femnist_cnn(num_classes: int = 62, *, conv_impl: str = "im2col") -> FemnistCNN:
    """LEAF's FEMNIST CNN as a Flax module (see :class:`FemnistCNN`)."""
    if conv_impl not in ("im2col", "xla"):
        raise ValueError(f"conv_impl must be 'im2col' or 'xla', got {conv_impl!r}")
    return FemnistCNN(num_classes=_check_pos("num_classes", num_classes), conv_impl=conv_impl)


def logistic(dim: int, num_classes: int) -> Logistic:
    """Multinomial logistic regression on ``dim`` features (``dim`` checked at init)."""
    _check_pos("dim", dim)
    return Logistic(num_classes=_check_pos("num_classes", num_classes))


def mlp(dim: int, num_classes: int, hidden: tuple[int, ...] = (64,)) -> MLP:
    """A small ReLU MLP on ``dim`` features with the given hidden widths."""
    _check_pos("dim", dim)
    for i, h in enumerate(hidden):
        _check_pos(f"hidden[{i}]", h)
    return MLP(hidden=tuple(int(h) for h in hidden), num_classes=_check_pos("num_classes", num_classes))


def num_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))
