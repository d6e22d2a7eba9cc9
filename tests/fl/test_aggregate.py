"""Robust aggregators and DP-FedAvg against NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mcsl_core import fl
from tests.conftest import examples, tol
from tests.reference import fl_ref


def _tree(u: np.ndarray):
    """Split [clients, 7] into a two-leaf pytree ({'a': [k, 3], 'b': [k, 2, 2]})."""
    k = u.shape[0]
    return {"a": jnp.asarray(u[:, :3], jnp.float32), "b": jnp.asarray(u[:, 3:].reshape(k, 2, 2), jnp.float32)}


def _flat(t) -> np.ndarray:
    return np.concatenate([np.asarray(t["a"]).ravel(), np.asarray(t["b"]).ravel()])


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_fedavg_median_trimmed_vs_reference(rng, k):
    for _ in range(5):
        u = rng.normal(size=(k, 7)).astype(np.float32)
        w = rng.integers(1, 100, k).astype(np.float64)
        t = _tree(u)
        out = fl.fedavg(t, w)
        assert out["a"].dtype == jnp.float32 and out["b"].shape == (2, 2)
        np.testing.assert_allclose(_flat(out), fl_ref.fedavg(u.astype(np.float64), w), **tol(np.float32))
        np.testing.assert_allclose(
            _flat(fl.median(t)), fl_ref.median(u.astype(np.float64)), **tol(np.float32)
        )
        for trim in (0.0, 0.1, 0.25, 0.4):
            np.testing.assert_allclose(
                _flat(fl.trimmed_mean(t, trim=trim)),
                fl_ref.trimmed_mean(u.astype(np.float64), trim),
                **tol(np.float32),
            )


@pytest.mark.parametrize("k,f,m", [(4, 1, 1), (7, 2, 1), (7, 2, 3), (10, 3, 5)])
def test_krum_vs_reference(rng, k, f, m):
    for _ in range(5):
        u = rng.normal(size=(k, 7)).astype(np.float32)
        u[0] += 5.0  # an outlier
        t = _tree(u)
        sel = np.asarray(fl.krum_select(t, num_byzantine=f, multi=m))
        assert sel.tolist() == fl_ref.krum_select(u.astype(np.float64), f, m)
        np.testing.assert_allclose(
            _flat(fl.krum(t, num_byzantine=f, multi=m)), u[sel].mean(axis=0), **tol(np.float32)
        )


def test_aggregators_under_jit(rng):
    u = rng.normal(size=(6, 7)).astype(np.float32)
    t = _tree(u)
    w = np.arange(1.0, 7.0)
    np.testing.assert_allclose(_flat(jax.jit(fl.fedavg)(t, w)), _flat(fl.fedavg(t, w)), **tol(np.float32))
    kr = jax.jit(lambda t: fl.krum(t, num_byzantine=1, multi=2))
    np.testing.assert_allclose(_flat(kr(t)), _flat(fl.krum(t, num_byzantine=1, multi=2)), **tol(np.float32))


def test_clip_and_dp_noise(rng):
    u = rng.normal(size=(6, 7)).astype(np.float32) * np.array([[0.1], [1], [5], [0.2], [3], [9]], np.float32)
    t = _tree(u)
    c = 1.5
    clipped = fl.clip_updates(t, c)
    ref = fl_ref.clip(u, c)
    got = np.stack(
        [np.concatenate([np.asarray(clipped["a"][i]), np.asarray(clipped["b"][i]).ravel()]) for i in range(6)]
    )
    np.testing.assert_allclose(got, ref, **tol(np.float32))
    assert np.all(np.linalg.norm(got, axis=1) <= c * (1 + 1e-6))
    # no noise: DP-FedAvg is the plain mean of the clipped updates
    z0 = fl.dp_fedavg(t, None, clip_norm=c, noise_multiplier=0.0, key=jax.random.key(0))
    np.testing.assert_allclose(_flat(z0), ref.mean(axis=0), **tol(np.float32))
    # noise: std = z * C / k per coordinate, reproducible per key
    big = {"w": jnp.zeros((4, 20000), jnp.float32)}
    noisy = fl.dp_fedavg(big, None, clip_norm=2.0, noise_multiplier=1.2, key=jax.random.key(3))["w"]
    want = 1.2 * 2.0 / 4
    assert abs(float(jnp.std(noisy)) / want - 1) < 0.03 and abs(float(jnp.mean(noisy))) < 4 * want / np.sqrt(
        20000
    )
    again = fl.dp_fedavg(big, None, clip_norm=2.0, noise_multiplier=1.2, key=jax.random.key(3))["w"]
    np.testing.assert_array_equal(np.asarray(noisy), np.asarray(again))


_UPDATES = st.integers(1, 9).flatmap(
    lambda k: hnp.arrays(np.float32, (k, 7), elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False))
)


@settings(max_examples=examples(40), deadline=None)
@given(u=_UPDATES)
@example(u=np.zeros((1, 7), np.float32))
@example(u=np.full((4, 7), 3.5, np.float32))  # all equal: every rule returns that value
@example(u=np.array([[1e3] * 7, [-1e3] * 7, [0.0] * 7], np.float32))
def test_robust_aggregates_stay_within_client_range(u):
    """Coordinate-wise: median, trimmed mean and the mean lie between the smallest and
    largest client value (float32 sums of k <= 9 values of magnitude <= 1e3 round by
    at most about k * 1e3 * 6e-8 < 1e-3)."""
    k = u.shape[0]
    t = _tree(u)
    lo, hi = u.min(axis=0) - 1e-3, u.max(axis=0) + 1e-3
    for out in (fl.median(t), fl.trimmed_mean(t, trim=0.2), fl.fedavg(t, np.ones(k))):
        v = _flat(out)
        assert np.all((lo <= v) & (v <= hi))


def test_flatten_updates_against_a_by_hand_reference(rng):
    """Leaves in JAX's pytree order (dict keys sorted, nested), each client's row the
    concatenation of its C-order ravelled leaves."""
    k = 3
    tree = {
        "b": rng.normal(size=(k, 2, 3)).astype(np.float32),
        "a": {"z": rng.normal(size=(k,)).astype(np.float32), "y": rng.normal(size=(k, 4)).astype(np.float32)},
    }
    got = np.asarray(fl.flatten_updates(jax.tree_util.tree_map(jnp.asarray, tree)))
    order = [tree["a"]["y"], tree["a"]["z"], tree["b"]]  # sorted keys: a/y, a/z, b
    want = np.zeros((k, 4 + 1 + 6), np.float32)
    for i in range(k):
        col = 0
        for leaf in order:
            for v in np.asarray(leaf[i]).ravel():
                want[i, col] = v
                col += 1
    np.testing.assert_array_equal(got, want)
    assert got.shape == (3, 11) and got.dtype == np.float32
    with pytest.raises(ValueError, match="leading client axis"):
        fl.flatten_updates({"a": jnp.zeros((3, 2)), "b": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match="at least one array"):
        fl.flatten_updates({})


def test_bad_input():
    t = _tree(np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="weights"):
        fl.fedavg(t, np.ones(4))
    with pytest.raises(ValueError, match="num_byzantine"):
        fl.krum(t, num_byzantine=1)
    with pytest.raises(ValueError, match="trim"):
        fl.trimmed_mean(t, trim=0.5)
    with pytest.raises(ValueError, match="clip_norm"):
        fl.clip_updates(t, 0.0)
    with pytest.raises(ValueError, match="leading client axis"):
        fl.fedavg({"a": jnp.zeros((3, 2)), "b": jnp.zeros((4,))}, np.ones(3))
