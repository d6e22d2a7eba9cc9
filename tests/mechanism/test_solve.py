"""solve / incentive_gap: the symbolic derivation, invariants, and the backends against each other.

Value checks against exact references (both models, every backend, hard cases,
the incentive gap) are in test_constrained.py, with their error model. Here:
exact identities (numba == NumPy bit for bit, parallel == serial, broadcast ==
materialised), the derivation itself, and invariants whose tolerance is stated.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from mcsl_core.mechanism import MechanismParams, _numba, incentive_gap, solve
from tests.reference import mechanism_ref as ref

FLOAT_OUT = ("s", "v", "g", "U_s", "U_d")
U = 2.0**-53  # unit round-off of float64


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


# ---------------------------------------------------------------- validity


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
        assert float(sol.v) == 0.0
        # M = 10 + 3 * 0.5 + 2 = 13.5 and M / 2 are exact in binary: no rounding at all
        assert float(sol.s) == 6.75


# ---------------------------------------------------------------- constrained model


def test_constrained_never_worse_than_feasible_unconstrained(rng):
    """Where the paper's solution is feasible, the constrained optimum is at least as good."""
    pts = ref.random_points(rng, 3000)
    p = MechanismParams(**pts)
    u = solve(p)
    c = solve(p, constrained=True)
    feas = u.valid & (u.v >= 0) & (u.v <= pts["v_bar"]) & (u.s >= 0) & (u.s <= pts["s_bar"])
    assert feas.sum() > 50
    # the paper's (s*, v*) is one of the constrained kernel's candidates, computed by the
    # same expressions, so its score is never above the constrained best; U_s is then
    # recomputed as T (M - v - s) g from each answer, 3 roundings each: at most 4 u |U_s|
    # apart beyond that (checked bit-exact where the same candidate won)
    lim = 4 * U * (np.abs(u.U_s) + np.abs(c.U_s))
    assert np.all(c.U_s[feas] >= u.U_s[feas] - lim[feas])
    same = feas & (c.s == u.s)
    assert same.sum() > 50 and np.array_equal(c.U_s[same], u.U_s[same])


# ---------------------------------------------------------------- backends agree


@pytest.mark.parametrize("constrained", [False, True])
def test_backends_agree(rng, constrained):
    """numba and NumPy evaluate the same expressions in the same order: equal bit for
    bit. XLA reorders and fuses floating-point operations, so JAX is compared with the
    exact reference directly (test_constrained.py); here its masks must agree."""
    pts = ref.random_points(rng, 5000)
    p = MechanismParams(**{n: (v.reshape(50, 100) if v.size == 5000 else v) for n, v in pts.items()})
    a = solve(p, constrained=constrained)
    b = solve(p, constrained=constrained, backend="numpy")
    c = solve(p, constrained=constrained, backend="jax")
    for name in (*FLOAT_OUT, "valid", "accepted"):
        assert _same(getattr(a, name), np.asarray(getattr(b, name))), name
    assert np.array_equal(a.valid, np.asarray(c.valid))
    assert np.array_equal(a.accepted, np.asarray(c.accepted))
    assert np.array_equal(a.accepted, a.valid & (a.U_s >= 0))
    th = rng.uniform(0, 1, (50, 100))
    g_nb = incentive_gap(p, th, constrained=constrained)
    assert _same(g_nb, incentive_gap(p, th, constrained=constrained, backend="numpy"))
    assert np.array_equal(
        np.isnan(g_nb), np.isnan(np.asarray(incentive_gap(p, th, constrained=constrained, backend="jax")))
    )


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
