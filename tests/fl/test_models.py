"""Model shapes, LEAF parameter count, im2col == XLA convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcsl_core import fl
from tests.conftest import tol


def test_femnist_cnn_has_leaf_parameter_count():
    model = fl.femnist_cnn()
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 784))), jax.random.key(0))["params"]
    # LEAF CNN: 5*5*1*32+32 + 5*5*32*64+64 + 3136*2048+2048 + 2048*62+62
    assert fl.num_params(shapes) == 832 + 51264 + 6424576 + 127038 == 6_603_710
    assert shapes["conv1_kernel"].shape == (5, 5, 1, 32) and shapes["dense1"]["kernel"].shape == (3136, 2048)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))


def test_cnn_im2col_equals_xla_convolution(rng):
    a, b = fl.femnist_cnn(conv_impl="im2col"), fl.femnist_cnn(conv_impl="xla")
    params = fl.init_params(a, 784, 1)
    # non-zero biases so a bias/layout slip would show
    params = jax.tree_util.tree_map(
        lambda p: p + 0.01 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) / p.size, params
    )
    x = jnp.asarray(rng.random((3, 784)), jnp.float32)
    ya = jax.jit(a.apply)({"params": params}, x)
    yb = jax.jit(b.apply)({"params": params}, x)
    assert ya.shape == (3, 62) and ya.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ya), np.asarray(yb), rtol=1e-4, atol=1e-5)


def test_patches_match_direct_convolution(rng):
    from mcsl_core.fl._models import _conv_same

    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(5, 5, 3, 4)), jnp.float32)
    got = np.asarray(_conv_same(x, k, jnp.zeros(4), "im2col"))
    xn, kn = np.pad(np.asarray(x, np.float64), ((0, 0), (2, 2), (2, 2), (0, 0))), np.asarray(k, np.float64)
    want = np.zeros((2, 6, 6, 4))
    for i in range(6):
        for j in range(6):
            want[:, i, j, :] = np.einsum("bhwc,hwco->bo", xn[:, i : i + 5, j : j + 5, :], kn)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _numpy_conv_grads(x, k, g):
    """Gradients of ``sum(g * conv_same(x, k))`` in float64 by direct loops over the window."""
    r = k.shape[0] // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (r, r), (r, r), (0, 0)))
    dxp, dk = np.zeros_like(xp), np.zeros(k.shape)
    h, w = x.shape[1:3]
    for dy in range(k.shape[0]):
        for dx in range(k.shape[1]):
            win = xp[:, dy : dy + h, dx : dx + w, :]
            dk[dy, dx] = np.einsum("bhwc,bhwo->co", win, g)
            dxp[:, dy : dy + h, dx : dx + w, :] += np.einsum("bhwo,co->bhwc", g, k[dy, dx])
    return dxp[:, r : r + h, r : r + w, :], dk


def test_conv_im2col_custom_backward_matches_direct_gradients(rng):
    """The hand-written backward pass (kernel gradient from the kept patches, input gradient
    by the transposed convolution) against float64 loops, plain and in each vmap case:
    per-client kernels (the slices' transpose), a shared kernel (folded batch), nested."""
    from mcsl_core.fl._models import conv_im2col

    x = rng.normal(size=(3, 2, 6, 7, 3)).astype(np.float32)
    k = rng.normal(size=(3, 5, 5, 3, 4)).astype(np.float32)
    g = rng.normal(size=(3, 2, 6, 7, 4)).astype(np.float32)

    def grads(x, k, g):
        return jax.grad(lambda x, k: jnp.sum(g * conv_im2col(x, k)), argnums=(0, 1))(x, k)

    t = dict(rtol=1e-4, atol=1e-4)  # float32 sums of 75..150 products of unit normals
    plain = [jax.jit(grads)(x[i], k[i], g[i]) for i in range(3)]
    per_client = jax.jit(jax.vmap(grads))(x, k, g)
    shared = jax.jit(jax.vmap(grads, (0, None, 0)))(x, k[0], g)
    nested = jax.jit(jax.vmap(jax.vmap(grads, (0, None, 0)), (None, 0, None)))(x, k, g)  # [kernel, x]
    for e in range(3):
        for c in range(3):
            dx, dk = _numpy_conv_grads(x[c], k[e], g[c])
            got = [(nested[0][e, c], nested[1][e, c], "nested vmap")]
            if e == c:
                got += [(*plain[c], "plain"), (per_client[0][c], per_client[1][c], "per-client kernels")]
            if e == 0:
                got += [(shared[0][c], shared[1][c], "shared kernel")]
            for gx, gk, name in got:
                np.testing.assert_allclose(np.asarray(gx), dx, **t, err_msg=name)
                np.testing.assert_allclose(np.asarray(gk), dk, **t, err_msg=name)


def test_logistic_and_mlp(rng):
    x = jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)
    lg = fl.logistic(7, 3)
    p = fl.init_params(lg, 7, 0)
    np.testing.assert_allclose(
        np.asarray(lg.apply({"params": p}, x)),
        np.asarray(x) @ np.asarray(p["linear"]["kernel"]) + np.asarray(p["linear"]["bias"]),
        **tol(np.float32),
    )
    m = fl.mlp(7, 3, hidden=(5, 6))
    pm = fl.init_params(m, 7, 0)
    assert (
        m.apply({"params": pm}, x).shape == (4, 3) and fl.num_params(pm) == 7 * 5 + 5 + 5 * 6 + 6 + 6 * 3 + 3
    )
    for bad in (
        lambda: fl.logistic(0, 3),
        lambda: fl.mlp(3, 2, hidden=(0,)),
        lambda: fl.femnist_cnn(conv_impl="fft"),
    ):
        with pytest.raises(ValueError):
            bad()
