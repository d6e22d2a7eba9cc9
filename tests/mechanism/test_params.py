"""MechanismParams: domain checks, broadcasting, defaults; the small public functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mcsl_core.mechanism import (
    MechanismParams,
    device_rule,
    device_utility,
    incentive_gap,
    server_utility,
    solve,
    success_probability,
)
from tests.conftest import tol
from tests.reference import mechanism_ref as ref

BAD = [
    ("R", -0.5),
    ("alpha_s", -1.0),
    ("beta_s", -1e-9),
    ("v_bar", 0.0),
    ("s_bar", -3.0),
    ("c_d", -2.0),
    ("eta", 0.0),
    ("xi", -1.0),
    ("eps", 1.5),
    ("eps", -0.1),
    ("theta", 1.01),
    ("theta", -0.2),
    ("T", 0.0),
]


@pytest.mark.parametrize("field,bad", BAD)
def test_out_of_domain_raises_naming_field_and_index(field, bad):
    good = MechanismParams.paper_defaults()
    value = np.full(5, float(np.asarray(getattr(good, field))))
    value[3] = bad
    with pytest.raises(ValueError, match=rf"{field} must lie in .* at index 3"):
        MechanismParams.paper_defaults(**{field: value})


@pytest.mark.parametrize("field", ["R", "eta", "eps", "T"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_raises(field, bad):
    value = np.ones((2, 3)) * 0.5
    value[1, 2] = bad
    with pytest.raises(ValueError, match=rf"{field} must be finite.*at index \(1, 2\)"):
        MechanismParams.paper_defaults(**{field: value})


def test_non_numeric_and_unknown_field_and_shape_mismatch():
    with pytest.raises(ValueError, match="R must be numeric"):
        MechanismParams.paper_defaults(R="ten")
    with pytest.raises(ValueError, match="unknown MechanismParams field"):
        MechanismParams.paper_defaults(gamma=1.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        MechanismParams.paper_defaults(eta=np.ones(3), xi=np.ones(4))


def test_paper_defaults_frozen_and_shape():
    p = MechanismParams.paper_defaults()
    assert (
        float(p.R),
        float(p.alpha_s),
        float(p.beta_s),
        float(p.v_bar),
        float(p.s_bar),
        float(p.c_d),
        float(p.theta),
        float(p.eps),
        float(p.eta),
        float(p.xi),
        float(p.T),
    ) == (10, 3, 2, 50, 500, 2, 0.5, 0.9, 5, 5, 1)
    assert p.shape == ()
    with pytest.raises(AttributeError):
        p.R = 3.0  # type: ignore[misc]
    q = p.replace(eta=np.ones((3, 1)) * 2, xi=np.ones(4) * 3)
    assert q.shape == (3, 4)
    assert q.eta.dtype == np.float64
    sol = solve(q)
    for name in ("s", "v", "g", "U_s", "U_d"):
        assert getattr(sol, name).shape == (3, 4)
        assert getattr(sol, name).dtype == np.float64
    assert sol.valid.dtype == np.bool_ and sol.accepted.dtype == np.bool_


def test_bad_arguments_raise():
    p = MechanismParams.paper_defaults()
    with pytest.raises(ValueError, match="params must be a MechanismParams"):
        solve({"R": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend must be one of"):
        solve(p, backend="torch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="theta_hat must lie in .* at index 1"):
        incentive_gap(p, [0.5, 1.5])
    with pytest.raises(ValueError, match="theta_hat of shape"):
        incentive_gap(p.replace(eta=np.full(3, 4.0)), np.full(2, 0.3))
    with pytest.raises(ValueError, match="v must be finite"):
        success_probability([1.0, np.nan], 1.0, p)
    with pytest.raises(ValueError, match=r"s must lie in \[0, s_bar\]"):
        device_rule([1.0, 600.0], p, constrained=True)


def test_utilities_match_symbolic(rng):
    d = ref.derivation()
    pts = ref.random_points(rng, 50)
    v = rng.uniform(-20, 120, 50)
    s = rng.uniform(-50, 900, 50)
    p = MechanismParams(**pts)
    g = success_probability(v, s, p)
    us = server_utility(v, s, p)
    ud = device_utility(v, s, p)
    for i in range(50):
        x = [pts[n][i] for n in ref.NAMES]
        np.testing.assert_allclose(g[i], d["f_g"](v[i], s[i], *x), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(us[i], d["f_Us"](v[i], s[i], *x), rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(ud[i], d["f_Ud"](v[i], s[i], *x), rtol=1e-11, atol=1e-11)


def test_device_rule_is_eq4_and_box_optimum(rng):
    pts = ref.random_points(rng, 200)
    p = MechanismParams(**pts)
    s = rng.uniform(0, 1, 200) * pts["s_bar"]
    v = device_rule(s, p)
    k = pts["eta"] * pts["xi"]
    ok = (k > 1) & (pts["eps"] > 0)
    assert np.array_equal(np.isfinite(v), ok)
    for i in np.flatnonzero(ok):
        want = ref.paper_eq4(s[i], *[pts[n][i] for n in ref.NAMES])
        np.testing.assert_allclose(v[i], want, rtol=1e-9, atol=1e-9 * (1 + abs(s[i])))
    vc = device_rule(s, p, constrained=True)
    assert np.array_equal(np.isfinite(vc), k > 1)
    # the box optimum beats every v of a dense grid in [0, v_bar]
    for i in np.flatnonzero(k > 1)[:40]:
        P = {n: pts[n][i] for n in ref.NAMES}
        grid = np.linspace(0, P["v_bar"], 2001)
        q = MechanismParams(**P)
        best = device_utility(vc[i], s[i], q)
        assert 0 <= vc[i] <= P["v_bar"]
        assert best >= device_utility(grid, s[i], q).max() - 1e-12 * (1 + abs(best))


def test_scalar_input_keeps_scalar_shape():
    p = MechanismParams.paper_defaults()
    sol = solve(p)
    assert sol.s.shape == () and math.isfinite(float(sol.s))
    assert np.shape(incentive_gap(p, 0.2)) == ()
    np.testing.assert_allclose(
        sol.s, ref.spec_s_star(10, 3, 2, 50, 500, 2, 5, 5, 0.9, 0.5), **tol(np.float64)
    )


# ---------------------------------------------------------------- one input rule, every backend

BACKENDS = ("numba", "numpy", "jax")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad, match", [(np.nan, "be finite"), (2.0, r"lie in \[0, 1\]"), (-0.1, r"lie in")])
def test_theta_hat_checked_on_every_backend(backend, bad, match):
    """Issue 10 item 9: the JAX backend returned nan / a number for theta_hat = nan or 2."""
    p = MechanismParams.paper_defaults()
    with pytest.raises(ValueError, match=f"theta_hat must {match}"):
        incentive_gap(p, bad, backend=backend)
    with pytest.raises(ValueError, match=r"theta_hat must .* at index 2"):
        incentive_gap(p, [0.1, 0.2, bad], backend=backend)


@pytest.mark.parametrize("field", ["R", "v_bar", "s_bar", "eps", "eta", "T"])
def test_subnormal_fields_refused(field):
    """Subnormal v_bar/s_bar were valid in numba and NumPy but flushed to zero (invalid)
    in JAX: every backend now refuses them upfront, naming the field and index."""
    value = np.full(3, 0.5)
    value[1] = 1e-310
    with pytest.raises(ValueError, match=rf"{field} must not be subnormal.*at index 1"):
        MechanismParams.paper_defaults(**{field: value})
    # the smallest normal float and zero (where the domain allows it) stay valid
    MechanismParams.paper_defaults(**{field: np.finfo(np.float64).tiny})


def test_subnormal_theta_hat_refused_and_backends_agree_near_it():
    p = MechanismParams.paper_defaults()
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="theta_hat must not be subnormal"):
            incentive_gap(p, 5e-324, backend=backend)
    # just above the subnormal range the three backends agree on validity
    tiny = np.finfo(np.float64).tiny
    q = MechanismParams.paper_defaults(v_bar=[tiny, 50.0], s_bar=[500.0, tiny], eps=[1.0, 0.0])
    masks = [np.asarray(solve(q, constrained=True, backend=b).valid) for b in BACKENDS]
    assert all(np.array_equal(masks[0], m) for m in masks[1:])


@pytest.mark.parametrize("field", ["R", "eta", "theta"])
def test_complex_refused(field):
    """Issue 10 item 12: complex arrays were cast to float, dropping the imaginary part."""
    with pytest.raises(ValueError, match=f"{field} must be real"):
        MechanismParams.paper_defaults(**{field: np.array([0.5 + 0.5j, 0.5])})
    p = MechanismParams.paper_defaults()
    with pytest.raises(ValueError, match="theta_hat must be real"):
        incentive_gap(p, 0.5 + 0j, backend="jax")
    with pytest.raises(ValueError, match="v must be real"):
        success_probability(np.array([1j]), 1.0, p)
    with pytest.raises(ValueError, match="s must be real"):
        device_rule([1 + 0j], p)


# ---------------------------------------------------------------- memory, checked upfront


def test_too_large_grid_refused_naming_params_on_every_path():
    """A broadcast grid of 10^12 points: a clear ValueError before any allocation, on
    every backend and on numba's serial path too (issue 10 items 7 and 14)."""
    from mcsl_core.mechanism import _numba

    big = MechanismParams.paper_defaults(eta=np.full((10**6, 1), 5.0), xi=np.full(10**6, 5.0))
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"params is too large.*10{12} points|params is too large"):
            solve(big, backend=backend)
        with pytest.raises(ValueError, match="params is too large"):
            incentive_gap(big, 0.3, backend=backend, constrained=True)
    for parallel in (True, False):
        with pytest.raises(ValueError, match="params is too large"):
            _numba.solve_flat(big.fields(), big.shape, True, parallel=parallel)
        with pytest.raises(ValueError, match="params is too large"):
            _numba.gap_flat((*big.fields(), np.full(1, 0.3)), big.shape, False, parallel=parallel)


def test_documented_memory_is_what_is_checked(monkeypatch):
    """The estimate checked is the docstring's: 42 bytes per point of outputs plus one
    gather buffer per thread; with exactly that much memory free the call runs, with
    one byte less it is refused."""
    import numba

    import mcsl_core._validation as V
    from mcsl_core.mechanism import _numba

    n = 10_000
    p = MechanismParams.paper_defaults(eta=np.linspace(1.5, 9, n))
    for parallel in (True, False):
        threads = numba.get_num_threads() if parallel else 1
        need = 42 * n + threads * (8 * 11 * _numba.CHUNK + 256)
        assert _numba.kernel_bytes(n, 11, _numba.CHUNK, 42, parallel) == need
        monkeypatch.setattr(V, "available_memory", lambda need=need: need)
        _numba.solve_flat(p.fields(), p.shape, True, parallel=parallel)
        monkeypatch.setattr(V, "available_memory", lambda need=need: need - 1)
        with pytest.raises(ValueError, match="params is too large"):
            _numba.solve_flat(p.fields(), p.shape, True, parallel=parallel)
