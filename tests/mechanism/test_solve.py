"""solve / incentive_gap against the symbolic derivation, brute force and each other."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mcsl_core.mechanism import MechanismParams, _numba, incentive_gap, solve
from tests.conftest import tol
from tests.reference import mechanism_ref as ref

FLOAT_OUT = ("s", "v", "g", "U_s", "U_d")


def _close(a, b, scale, rtol=1e-9):
    """Round-off comparison relative to the magnitude of the terms that were summed."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    m = ~np.isnan(a)
    err = np.abs(a[m] - b[m])
    lim = rtol * (np.abs(b[m]) + np.broadcast_to(scale, a.shape)[m])
    worst = int(np.argmax(err / lim)) if err.size else 0
    assert np.all(err <= lim), (a[m][worst], b[m][worst], err[worst], lim[worst])


def _scale(pts):
    """Size of the terms in the utilities (M, s_bar, v_bar) times T, squared for U."""
    M = pts["R"] + pts["alpha_s"] * pts["theta"] + pts["beta_s"]
    return 1.0 + M + pts["s_bar"] + pts["v_bar"] + pts["c_d"]


# ---------------------------------------------------------------- symbolic derivation


def test_symbolic_derivation_matches_spec_and_paper():
    d = ref.derivation()
    syms = d["symbols"]
    _R, _al, _be, vb, _sb, _cd, eta, xi, eps, _th, T = syms
    # U_d is concave in v iff eta*xi > 1 (for eps > 0): d2 = 2 T eps (1 - eta xi) / v_bar
    assert sp.simplify(d["d2Ud_dv2"] - 2 * T * eps * (1 - eta * xi) / vb) == 0
    # eq. (4) and SPEC's s* equal the sympy first-order solutions
    assert sp.simplify(ref.paper_eq4(d["s"], *syms) - d["v_star"]) == 0
    assert sp.simplify(ref.spec_s_star(*syms) - d["s_star"]) == 0
    # U_s along the rule is exactly quadratic in s
    assert d["degree_in_s"] == 2


def test_server_problem_is_convex_at_some_valid_points(rng):
    """The sympy d2U_s/ds2 is positive at some points with eta*xi > 1: there the kernel
    reports valid=False (the closed form would be a minimum)."""
    d = ref.derivation()
    pts = ref.random_points(rng, 2000)
    p = MechanismParams(**pts)
    sol = solve(p)
    k = pts["eta"] * pts["xi"]
    d2 = np.array([d["f_d2Us"](*[pts[n][i] for n in ref.NAMES]) if k[i] > 1 else np.nan for i in range(2000)])
    convex = (k > 1) & (d2 > 0)
    assert 0.01 < convex.sum() / (k > 1).sum() < 0.5
    assert not sol.valid[convex].any()
    assert np.array_equal(sol.valid, (k > 1) & (d2 < 0))


# ---------------------------------------------------------------- paper's model


@pytest.mark.parametrize("backend", ["numba", "numpy", "jax"])
def test_unconstrained_matches_symbolic_reference(rng, backend):
    pts = ref.random_points(rng, 300)
    sol = solve(MechanismParams(**pts), backend=backend)
    want = [ref.solve_point({n: pts[n][i] for n in ref.NAMES}) for i in range(300)]
    assert np.array_equal(np.asarray(sol.valid), [w["valid"] for w in want])
    assert np.array_equal(np.asarray(sol.accepted), [w["accepted"] for w in want])
    sc = _scale(pts)
    _close(sol.s, [w["s"] for w in want], sc)
    _close(sol.v, [w["v"] for w in want], sc)
    _close(sol.g, [w["g"] for w in want], 1.0)
    _close(sol.U_s, [w["U_s"] for w in want], pts["T"] * sc)
    _close(sol.U_d, [w["U_d"] for w in want], pts["T"] * sc * (1 + pts["eta"] * pts["xi"]))


@pytest.mark.parametrize(
    "over",
    [
        dict(eta=1.0 + 1e-9, xi=1.0),
        dict(eta=1.0 + 1e-13, xi=1.0),
        dict(eta=2.0, xi=0.5 + 1e-12),
        dict(eps=1e-12),
        dict(eps=1e-6),
        dict(eps=1 - 1e-12),
        dict(eps=1.0),
        dict(eta=15.0, xi=15.0),
        dict(c_d=0.0, R=0.0, alpha_s=0.0, beta_s=0.0),
    ],
)
def test_hard_cases_match_reference(over):
    P = {n: float(np.asarray(getattr(MechanismParams.paper_defaults(), n))) for n in ref.NAMES}
    P.update(over)
    want = ref.solve_point_exact(P)
    # the closed forms divide by eps and by eta*xi - 1: the float result carries a
    # relative error of about 1e-16 / min(eps, eta*xi - 1) from the rounded inputs
    cond = 1.0 / min(P["eps"], P["eta"] * P["xi"] - 1.0, 1.0)
    rt = 1e-13 * cond + 1e-12
    for backend in ("numba", "numpy", "jax"):
        sol = solve(MechanismParams(**P), backend=backend)
        assert bool(sol.valid) == want["valid"]
        assert bool(sol.accepted) == want["accepted"]
        if not want["valid"]:
            continue
        big = {"s": abs(want["s"]), "v": abs(want["s"]) + abs(want["v"]), "g": 1.0}
        for name in FLOAT_OUT:
            scale = big.get(name, (abs(want["s"]) + abs(want["v"]) + P["R"] + P["c_d"]) * 1.0)
            np.testing.assert_allclose(
                float(getattr(sol, name)), want[name], rtol=rt, atol=rt * scale, err_msg=f"{backend} {name}"
            )


@pytest.mark.parametrize("constrained", [False, True])
def test_outside_mechanism_is_nan_and_not_accepted(constrained):
    p = MechanismParams.paper_defaults(eta=np.array([0.5, 1.0, 2.0]), xi=np.array([1.0, 1.0, 0.25]))
    for backend in ("numba", "numpy", "jax"):
        sol = solve(p, constrained=constrained, backend=backend)
        assert not np.asarray(sol.valid).any() and not np.asarray(sol.accepted).any()
        for name in FLOAT_OUT:
            assert np.isnan(np.asarray(getattr(sol, name))).all()
        assert np.isnan(np.asarray(incentive_gap(p, 0.1, constrained=constrained, backend=backend))).all()


def test_eps_zero():
    """eps = 0: no maximiser in the paper's model; the constrained device sends v = 0
    and the server maximises (M - s) s / s_bar on [0, s_bar]: s = M / 2."""
    p = MechanismParams.paper_defaults(eps=0.0)
    assert not bool(solve(p).valid)
    for backend in ("numba", "numpy", "jax"):
        sol = solve(p, constrained=True, backend=backend)
        assert bool(sol.valid)
        np.testing.assert_allclose(float(sol.v), 0.0, atol=0)
        np.testing.assert_allclose(float(sol.s), (10 + 3 * 0.5 + 2) / 2, **tol(np.float64))


# ---------------------------------------------------------------- constrained model


def test_constrained_matches_brute_force(rng):
    pts = ref.random_points(rng, 30)
    pts["eta"] = np.maximum(pts["eta"], 1.2 / pts["xi"])  # keep eta*xi > 1
    # and a few from the paper's sweep range where the closed form's v* is negative
    for n, val in dict(eta=[10.0, 14.0, 5.0], xi=[10.0, 14.0, 5.0], eps=[0.9, 0.5, 0.3]).items():
        pts[n] = np.concatenate([pts[n], val])
    base = MechanismParams.paper_defaults()
    for n in ref.NAMES:
        if pts[n].size == 30:
            pts[n] = np.concatenate([pts[n], np.full(3, float(np.asarray(getattr(base, n))))])
    sol = solve(MechanismParams(**pts), constrained=True)
    assert sol.valid.all()
    for i in range(33):
        P = {n: pts[n][i] for n in ref.NAMES}
        bf = ref.brute_force_constrained(P)
        scale = P["T"] * _scale(P) ** 2
        assert 0 <= sol.s[i] <= P["s_bar"] and 0 <= sol.v[i] <= P["v_bar"]
        assert -1e-15 <= sol.g[i] <= 1 + 1e-15
        # exact optimum: never below brute force, and brute force gets within its grid error
        assert sol.U_s[i] >= bf["U_s"] - 1e-12 * scale, (i, sol.U_s[i], bf)
        np.testing.assert_allclose(sol.U_s[i], bf["U_s"], rtol=1e-7, atol=1e-9 * scale)


def test_constrained_never_worse_than_feasible_unconstrained(rng):
    """Where the paper's solution is feasible, the constrained optimum is at least as good."""
    pts = ref.random_points(rng, 3000)
    p = MechanismParams(**pts)
    u = solve(p)
    c = solve(p, constrained=True)
    feas = u.valid & (u.v >= 0) & (u.v <= pts["v_bar"]) & (u.s >= 0) & (u.s <= pts["s_bar"])
    assert feas.sum() > 50
    sc = pts["T"] * _scale(pts) ** 2
    assert np.all(c.U_s[feas] >= u.U_s[feas] - 1e-12 * sc[feas])


# ---------------------------------------------------------------- backends agree


@pytest.mark.parametrize("constrained", [False, True])
def test_backends_agree(rng, constrained):
    pts = ref.random_points(rng, 5000)
    pts["eta"] = pts["eta"].reshape(50, 100)
    p = MechanismParams(**{n: (v.reshape(50, 100) if v.size == 5000 else v) for n, v in pts.items()})
    a = solve(p, constrained=constrained)
    b = solve(p, constrained=constrained, backend="numpy")
    c = solve(p, constrained=constrained, backend="jax")
    sc = _scale({n: np.asarray(getattr(p, n)) for n in ref.NAMES}) * p.T
    for other in (b, c):
        for name in FLOAT_OUT:
            _close(getattr(a, name), getattr(other, name), sc**2, rtol=1e-11)
        assert np.array_equal(a.valid, np.asarray(other.valid))
        assert np.array_equal(a.accepted, np.asarray(other.accepted))
    assert np.array_equal(a.accepted, a.valid & (a.U_s >= 0))


def _same(x, y):
    return np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)


@pytest.mark.parametrize("constrained", [False, True])
def test_parallel_equals_serial_and_broadcast_layout(rng, constrained):
    pts = ref.random_points(rng, 4000)
    p = MechanismParams(**{**pts, "c_d": 1.5, "T": 2.0})
    fields = p.fields()
    par = _numba.solve_flat(fields, p.shape, constrained, parallel=True, chunk=333)
    ser = _numba.solve_flat(fields, p.shape, constrained, parallel=False, chunk=4096)
    assert all(_same(x, y) for x, y in zip(par, ser))
    th = rng.uniform(0, 1, 4000)
    assert _same(
        _numba.gap_flat((*fields, th), p.shape, constrained, parallel=True, chunk=100),
        _numba.gap_flat((*fields, th), p.shape, constrained, parallel=False),
    )
    # materialised scalars give the same answer
    full = MechanismParams(**{**pts, "c_d": np.full(4000, 1.5), "T": np.full(4000, 2.0)})
    assert all(
        _same(x, y) for x, y in zip(solve(p, constrained=constrained), solve(full, constrained=constrained))
    )


@pytest.mark.parametrize("constrained", [False, True])
def test_broadcast_grid_equals_materialised(rng, constrained):
    """A 4-D grid of broadcast axes (strides 0 in the kernel) against the same grid
    materialised point by point, with odd sizes and a small chunk."""
    eta = rng.uniform(0.1, 15, (5, 1, 1, 1))
    xi = rng.uniform(0.1, 15, (1, 7, 1, 1))
    eps = rng.uniform(0, 1, (1, 1, 3, 1))
    R = rng.uniform(0, 30, (9,))
    p = MechanismParams.paper_defaults(eta=eta, xi=xi, eps=eps, R=R)
    assert p.shape == (5, 7, 3, 9)
    E, X, P, RR = np.broadcast_arrays(eta, xi, eps, R)
    q = MechanismParams.paper_defaults(eta=E.ravel(), xi=X.ravel(), eps=P.ravel(), R=RR.ravel())
    a = solve(p, constrained=constrained)
    b = solve(q, constrained=constrained)
    for x, y in zip(a, b):
        assert _same(x.ravel(), y)
    for chunk in (4, 64, 10**6):  # chunks of a row; groups of whole rows; everything at once
        flat = _numba.solve_flat(p.fields(), p.shape, constrained, chunk=chunk)
        assert all(_same(x, y.ravel()) for x, y in zip(flat, a))
        gap = _numba.gap_flat((*p.fields(), np.full(p.shape, 0.2)), p.shape, constrained, chunk=chunk)
        assert _same(gap, incentive_gap(p, 0.2, constrained=constrained).ravel())
    th = rng.uniform(0, 1, (1, 7, 1, 1))
    g1 = incentive_gap(p, th, constrained=constrained)
    g2 = incentive_gap(q, np.broadcast_to(th, p.shape).ravel(), constrained=constrained)
    assert _same(g1.ravel(), g2)
    assert solve(MechanismParams.paper_defaults(eta=np.zeros((0, 3)) + 2)).s.shape == (0, 3)


def test_same_input_same_output(rng):
    p = MechanismParams(**ref.random_points(rng, 1000))
    for c in (False, True):
        for x, y in zip(solve(p, constrained=c), solve(p, constrained=c)):
            assert np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)


# ---------------------------------------------------------------- incentive compatibility


@pytest.mark.parametrize("constrained", [False, True])
def test_incentive_gap_matches_direct_difference(rng, constrained):
    pts = ref.random_points(rng, 400)
    p = MechanismParams(**pts)
    th_hat = rng.uniform(0, 1, 400)
    gap = incentive_gap(p, th_hat, constrained=constrained)
    sol = solve(p, constrained=constrained)
    fake = solve(p.replace(theta=th_hat), constrained=constrained)
    # the fake answer is scored under the true theta along the device's rule
    from mcsl_core.mechanism import device_rule, server_utility

    v_hat = np.nan_to_num(device_rule(np.nan_to_num(fake.s), p, constrained=constrained))
    direct = sol.U_s - server_utility(v_hat, np.nan_to_num(fake.s), p)
    direct = np.where(sol.valid, direct, np.nan)
    sc = pts["T"] * _scale(pts) ** 2
    _close(gap, direct, sc, rtol=1e-10)
    for backend in ("numpy", "jax"):
        _close(
            gap,
            np.asarray(incentive_gap(p, th_hat, constrained=constrained, backend=backend)),
            sc,
            rtol=1e-11,
        )
    assert np.all(gap[sol.valid] >= 0)
    assert np.array_equal(np.isfinite(gap), sol.valid)


@settings(max_examples=60, deadline=None)
@given(
    R=st.floats(0, 100),
    alpha_s=st.floats(0, 20),
    beta_s=st.floats(0, 20),
    v_bar=st.floats(1e-3, 1e3),
    s_bar=st.floats(1e-3, 1e3),
    c_d=st.floats(0, 20),
    eta=st.floats(1e-3, 20),
    xi=st.floats(1e-3, 20),
    eps=st.floats(0, 1),
    theta=st.floats(0, 1),
    theta_hat=st.floats(0, 1),
    constrained=st.booleans(),
)
def test_incentive_gap_never_negative(
    R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, theta_hat, constrained
):
    p = MechanismParams(
        R=R,
        alpha_s=alpha_s,
        beta_s=beta_s,
        v_bar=v_bar,
        s_bar=s_bar,
        c_d=c_d,
        eta=eta,
        xi=xi,
        eps=eps,
        theta=theta,
    )
    gap = float(incentive_gap(p, theta_hat, constrained=constrained))
    valid = bool(solve(p, constrained=constrained).valid)
    assert np.isfinite(gap) == valid
    if valid:
        assert gap >= 0.0
