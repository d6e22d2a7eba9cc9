"""The JAX twin under jit, vmap, grad and disable_jit; float64; no recompilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcsl_core.mechanism import MechanismParams, _jax, incentive_gap, solve
from tests.conftest import tol

P0 = MechanismParams.paper_defaults()
# a point where the constrained optimum is interior to the linear piece (smooth in R)
P_INT = MechanismParams.paper_defaults(eps=0.6, eta=1.5, xi=2.0, R=40.0)


def test_dtype_is_float64_outside_x64_mode():
    sol = solve(P0, backend="jax")
    assert sol.s.dtype == jnp.float64 and sol.valid.dtype == jnp.bool_
    assert not jax.config.jax_enable_x64  # the wrapper did not flip the global flag


@pytest.mark.parametrize("constrained", [False, True])
def test_jit_vmap_disable_jit_agree_with_numba(constrained):
    etas = np.linspace(0.3, 15, 41)
    want = solve(P0.replace(eta=etas), constrained=constrained)
    with jax.enable_x64(True):
        f = lambda eta: solve(P0.replace(eta=eta), constrained=constrained, backend="jax").U_s  # noqa: E731
        got_vmap = jax.vmap(f)(jnp.asarray(etas))
        got_jit = jax.jit(jax.vmap(f))(jnp.asarray(etas))
        with jax.disable_jit():
            got_nojit = np.array([f(jnp.float64(e)) for e in etas[:5]])
    for got in (got_vmap, got_jit):
        np.testing.assert_allclose(np.asarray(got), want.U_s, **tol(np.float64))
        assert got.dtype == jnp.float64
    np.testing.assert_allclose(got_nojit, want.U_s[:5], **tol(np.float64))


def test_no_recompilation_on_second_call():
    with jax.enable_x64(True):
        args = [jnp.asarray(f, dtype=jnp.float64) for f in P0.replace(eta=np.arange(2.0, 9.0)).fields()]
        _jax.solve_fields(*args, constrained=True)
        n = _jax.solve_fields._cache_size()
        args2 = [a + 0.0 for a in args]
        _jax.solve_fields(*args2, constrained=True)
        assert _jax.solve_fields._cache_size() == n


GRAD_FIELDS = ("R", "eta", "eps", "c_d", "theta")
OUTS = ("U_s", "U_d", "s")


@pytest.mark.parametrize("constrained,params", [(False, P0), (True, P_INT), (True, P0)])
def test_grad_matches_finite_differences(constrained, params):
    """Jacobian of (U_s, U_d, s) w.r.t. five parameters, jax.jacrev under jit, against
    central differences of the numba kernel (all perturbed points in one batch)."""
    x0 = np.array([float(np.asarray(getattr(params, n))) for n in GRAD_FIELDS])

    def f(x):
        sol = solve(params.replace(**dict(zip(GRAD_FIELDS, x))), constrained=constrained, backend="jax")
        return jnp.stack([getattr(sol, o) for o in OUTS])

    with jax.enable_x64(True):
        jac = np.asarray(jax.jit(jax.jacrev(f))(jnp.asarray(x0)))
    h = 1e-6 * np.maximum(1.0, np.abs(x0))
    X = np.repeat(x0[None, :], 2 * len(x0), axis=0)
    for j in range(len(x0)):
        X[2 * j, j] += h[j]
        X[2 * j + 1, j] -= h[j]
    sol = solve(params.replace(**{n: X[:, j] for j, n in enumerate(GRAD_FIELDS)}), constrained=constrained)
    for i, o in enumerate(OUTS):
        y = getattr(sol, o)
        fd = (y[0::2] - y[1::2]) / (2 * h)
        assert np.all(np.isfinite(jac[i]))
        np.testing.assert_allclose(
            jac[i], fd, rtol=1e-5, atol=1e-8 * (1 + np.abs(fd).max()), err_msg=f"d{o}/d{GRAD_FIELDS}"
        )


def test_envelope_theorem_dUs_dR():
    """At an interior optimum dU_s/dR = T g(v*, s*) (envelope theorem): a closed-form
    check of the JAX gradient, independent of finite differences."""
    with jax.enable_x64(True):
        for constrained, p in ((False, P0), (True, P_INT)):
            g = jax.grad(lambda R: solve(p.replace(R=R), constrained=constrained, backend="jax").U_s)(
                jnp.float64(float(p.R))
            )
            sol = solve(p, constrained=constrained)
            np.testing.assert_allclose(float(g), float(p.T * sol.g), rtol=1e-10)


def test_gap_jax_under_jit_and_grad_finite():
    th = np.linspace(0, 1, 11)
    want = incentive_gap(P0, th)
    with jax.enable_x64(True):
        got = jax.jit(lambda t: incentive_gap(P0, t, backend="jax"))(jnp.asarray(th))
        dg = jax.grad(lambda t: incentive_gap(P0, t, backend="jax"))(jnp.float64(0.2))
    np.testing.assert_allclose(np.asarray(got), want, **tol(np.float64))
    assert np.isfinite(float(dg)) and float(dg) < 0  # gap shrinks as theta_hat -> theta = 0.5
