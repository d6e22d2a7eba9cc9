"""Small Dense layers in lanes (mcsl_core.fl._dense): the custom backward pass
against float64 products, plain and vmapped, and which layers are routed."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcsl_core import fl
from mcsl_core.fl import _dense


def _loss(x, w, c):
    return jnp.sum(jnp.tanh(_dense.dense_product(x, w)) * c)


def _reference(x, w, c):
    """Float64 gradients of ``sum(tanh(x w) * c)`` w.r.t. ``x`` and ``w``."""
    x, w, c = (np.asarray(a, np.float64) for a in (x, w, c))
    g = (1.0 - np.tanh(x @ w) ** 2) * c
    return g @ w.T, x.T @ g


def _arrays(lanes, rows, i, o, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((lanes, rows, i)).astype(np.float32)
    w = (r.standard_normal((lanes, i, o)) / np.sqrt(i)).astype(np.float32)
    c = r.standard_normal((lanes, rows, o)).astype(np.float32)
    return x, w, c


def _tolerance(x, w, c):
    """Float32 error bounds (twice the first-order bound) of the gradients of one lane.

    A float32 sum of ``n`` products errs by at most ``n eps`` times the sum of their
    magnitudes: the forward product ``y`` by ``ey``; ``g = (1 - tanh(y)^2) c`` then by
    ``eg`` (``|d(1 - tanh^2)/dy| <= 0.77``, plus the few roundings of ``g`` itself);
    the products with ``g`` add their own ``n eps`` terms."""
    eps = float(np.finfo(np.float32).eps)
    x, w, c = (np.abs(np.asarray(a, np.float64)) for a in (x, w, c))
    rows, i = x.shape
    o = w.shape[1]
    ey = i * eps * (x @ w)
    eg = 4 * eps * c + 0.77 * ey * c
    tw = rows * eps * (x.T @ c) + x.T @ eg
    tx = o * eps * (c @ w.T) + eg @ w.T
    return 2 * tx, 2 * tw


@pytest.mark.parametrize("lanes", [2, 5])
@pytest.mark.parametrize(
    ("rows", "i", "o"), [(10, 60, 64), (10, 64, 10), (3, 5, 7), (40, 6, 4), (8, 300, 300)]
)
def test_vmapped_gradients_equal_float64_products(rows, i, o, lanes):
    """Per-lane kernels (the outer-product rule for at most OUTER_MAX_ROWS rows,
    OUTER_MAX_ENTRIES entries and OUTER_MIN_LANES lanes, the batched product
    otherwise) and one unbatched lane."""
    x, w, c = _arrays(lanes, rows, i, o)
    dx, dw = jax.vmap(jax.grad(_loss, argnums=(0, 1)))(x, w, c)
    for lane in range(lanes):
        rx, rw = _reference(x[lane], w[lane], c[lane])
        tx, tw = _tolerance(x[lane], w[lane], c[lane])
        assert np.all(np.abs(np.asarray(dx[lane]) - rx) <= tx)
        assert np.all(np.abs(np.asarray(dw[lane]) - rw) <= tw)
    ux, uw = jax.grad(_loss, argnums=(0, 1))(x[0], w[0], c[0])
    rx, rw = _reference(x[0], w[0], c[0])
    tx, tw = _tolerance(x[0], w[0], c[0])
    assert np.all(np.abs(np.asarray(ux) - rx) <= tx) and np.all(np.abs(np.asarray(uw) - rw) <= tw)


def test_vmapped_kernel_gradient_is_the_rows_in_order():
    """The outer-product rule adds the rows' products in row order in float32:
    reproduced by a float32 loop in NumPy, bit for bit."""
    x, _, c = _arrays(3, 10, 6, 4, seed=1)
    got = np.asarray(jax.vmap(_dense.kernel_grad)(x, c))
    want = np.zeros((3, 6, 4), np.float32)
    for lane in range(3):
        acc = x[lane, 0, :, None] * c[lane, 0, None, :]
        for b in range(1, 10):
            acc = acc + x[lane, b, :, None] * c[lane, b, None, :]
        want[lane] = acc
    np.testing.assert_array_equal(got, want)


def test_shared_input_or_gradient_is_broadcast():
    x, _, c = _arrays(4, 10, 6, 5, seed=2)
    got = np.asarray(jax.vmap(_dense.kernel_grad, in_axes=(None, 0))(x[0], c))
    for lane in range(4):
        ref = x[0].astype(np.float64).T @ c[lane].astype(np.float64)
        bound = 10 * np.finfo(np.float32).eps * (np.abs(x[0]).T @ np.abs(c[lane]))  # 10 rows
        assert np.all(np.abs(got[lane] - ref) <= bound)


class _Mixed(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8, name="plain")(x))
        x = nn.Dense(8, name="precise", precision=jax.lax.Precision.HIGHEST)(x)
        return nn.Dense(3, name="half", dtype=jnp.bfloat16)(x).astype(jnp.float32)


def test_only_plain_float32_dense_layers_are_routed(monkeypatch):
    calls = []
    real = _dense.dense_product
    monkeypatch.setattr(_dense, "dense_product", lambda x, w: calls.append(w.shape) or real(x, w))
    model = _Mixed()
    x = jnp.ones((4, 5), jnp.float32)
    params = model.init(jax.random.key(0), x)
    assert calls == []  # init: no kernel held yet
    plain = model.apply(params, x)
    with _dense.lanes_dense():
        routed = model.apply(params, x)
    assert calls == [(5, 8)]
    np.testing.assert_array_equal(np.asarray(routed), np.asarray(plain))


def test_training_models_keep_their_forward_pass():
    """Inside ``lanes_dense`` the MLP's and logistic model's outputs are bit for bit
    those of flax's Dense (the same product and bias)."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((7, 60)), jnp.float32)
    for model in (fl.mlp(60, 10, (64, 32)), fl.logistic(60, 10)):
        params = model.init(jax.random.key(1), x)
        leaves, tree = jax.tree_util.tree_flatten(params)  # non-zero biases too
        r = np.random.default_rng(4)
        params = tree.unflatten([a + jnp.asarray(r.standard_normal(a.shape), jnp.float32) for a in leaves])
        with _dense.lanes_dense():
            routed = model.apply(params, x)
        np.testing.assert_array_equal(np.asarray(routed), np.asarray(model.apply(params, x)))
