"""Every backend, both models, against the exact rational references (tests/reference).

Error model (used for every float comparison here). The references are exact: the
optimum is found in rational arithmetic from the float inputs taken at their exact
binary values, and only the final rounding to float (half a unit of round-off, u =
2**-53) separates them from the truth. A float kernel makes a few dozen roundings,
each a relative error of at most u in one intermediate; tracing those back, each
acts like a relative perturbation of one input, or of one term of the final
product ``T (M - v - s) g`` / ``T (v + s - c_d - k v) g`` / ``a v + b s``. So with

- ``cond_y``: the exact first-order change of output y when every input moves by
  one relative unit (``mechanism_ref.condition``, from exact perturbations of the
  inputs by 2**-40; it is large where the answer is ill-determined, e.g. where two
  pieces tie for the argmax or U_s is almost flat), and
- ``scale_y``: the absolute size of the terms of y's final formula (0 for s and v,
  ``|a v| + |b s|`` for g, ``T (M + |v| + |s|)(|a v| + |b s|)`` for U_s and
  ``T ((1 + k)|v| + |s| + c_d)(|a v| + |b s|)`` for U_d): where y is near zero
  this is the scale of its inputs, and the comparison is absolute at that scale,

the kernel's error is at most ``C u (cond_y + |y| + scale_y)`` with C the number of
roundings on the longest path, at most 16 (the closed form of s* has 11 operations,
the candidate's score 5). The largest ratio measured over the points below is 1.8
(JAX) and 1.4 (numba, NumPy), so C = 16 is a bound with margin, not a fit; a bug
that moves any output by more than a few thousand ulps at a well-conditioned point
fails.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcsl_core.mechanism import MechanismParams, incentive_gap, server_best_response, solve
from tests.conftest import examples
from tests.reference import mechanism_ref as ref

U = 2.0**-53
C = 16
BACKENDS = ("numba", "numpy", "jax")
DEFAULTS = {n: float(np.asarray(getattr(MechanismParams.paper_defaults(), n))) for n in ref.NAMES}

# hard cases: eta xi just above 1, eps at and near 0 and 1, zero costs and revenue,
# extreme box sizes and T, the sweep point where the paper's v* turns negative, points
# where the optimum sits on the rule's interior or its breakpoints, and no mechanism
HARD = [
    dict(eta=1.0 + 1e-13, xi=1.0),
    dict(eta=1.0 + 1e-9, xi=1.0),
    dict(eta=2.0, xi=0.5 + 1e-12),
    dict(eps=0.0),
    dict(eps=1e-300),
    dict(eps=1e-12),
    dict(eps=1e-6),
    dict(eps=1 - 1e-12),
    dict(eps=1.0),
    dict(eta=15.0, xi=15.0),
    dict(c_d=0.0),
    dict(c_d=0.0, R=0.0, alpha_s=0.0, beta_s=0.0),
    dict(R=0.0, alpha_s=0.0, beta_s=0.0),
    dict(s_bar=1e-6),
    dict(s_bar=1e6),
    dict(v_bar=1e-6),
    dict(v_bar=1e6),
    dict(T=1e-6),
    dict(T=1e6),
    dict(theta=0.0),
    dict(theta=1.0),
    dict(R=1e6),
    dict(c_d=1e4),
    dict(eta=8.15, xi=8.15),
    dict(eta=1.2, xi=1.0, eps=0.5, R=40.0),
    dict(eta=1.01, xi=1.0, c_d=0.0, eps=0.99),
    dict(eps=0.6, eta=1.5, xi=2.0, R=40.0),
    dict(eps=0.999, v_bar=1.0, s_bar=1e4, eta=1.1, xi=1.0),
    dict(eps=0.01, v_bar=1e4, s_bar=1.0),
    dict(eta=1.0, xi=1.0),
    dict(eta=0.5, xi=1.5),
]


def _points() -> list[dict]:
    rng = np.random.default_rng(20261202)
    pts = ref.random_points(rng, 300)
    pts["eta"][:260] = np.maximum(pts["eta"][:260], 1.05 / pts["xi"][:260])  # mostly eta xi > 1
    out = [{n: float(pts[n][i]) for n in ref.NAMES} for i in range(300)]
    return out + [{**DEFAULTS, **h} for h in HARD]


POINTS = _points()


def _scale(P: dict, r: dict) -> dict:
    k = P["eta"] * P["xi"]
    a, b = P["eps"] / P["v_bar"], (1 - P["eps"]) / P["s_bar"]
    M = P["R"] + P["alpha_s"] * P["theta"] + P["beta_s"]
    g = abs(a * r["v"]) + abs(b * r["s"])
    return dict(
        s=0.0,
        v=0.0,
        g=g,
        U_s=P["T"] * (M + abs(r["v"]) + abs(r["s"])) * g,
        U_d=P["T"] * ((1 + k) * abs(r["v"]) + abs(r["s"]) + P["c_d"]) * g,
    )


def check_point(P: dict, got: dict, constrained: bool, where: str = "") -> int:
    """Compare one point's outputs with the exact reference under the error model;
    returns 1 when ``accepted`` was not compared (U_s within round-off of 0)."""
    want = ref.exact_solution(P, constrained)
    assert got["valid"] == want["valid"], (where, P, got, want)
    if not want["valid"]:
        assert not got["accepted"] and all(math.isnan(got[y]) for y in ref.OUTPUTS)
        return 0
    solver = ref.constrained_exact_fractions if constrained else ref.unconstrained_exact_fractions
    scale = _scale(P, want)
    cond = None
    for y in ref.OUTPUTS:
        err = abs(got[y] - want[y])
        if err <= C * U * (abs(want[y]) + scale[y]):
            continue  # within the bound whatever the condition (it only adds)
        cond = cond or ref.condition(P, solver)
        lim = C * U * (cond[y] + abs(want[y]) + scale[y])
        assert err <= lim, (where, y, got[y], want[y], err / (U * (cond[y] + abs(want[y]) + scale[y])), P)
    tol_us = C * U * (abs(want["U_s"]) + scale["U_s"] + (cond or {}).get("U_s", 0.0))
    if abs(want["U_s"]) <= tol_us and want["U_s_exact"] != 0:
        return 1
    assert got["accepted"] == want["accepted"], (where, got, want)
    if constrained:  # feasible, and g a probability (up to its last rounding)
        assert 0.0 <= got["s"] <= P["s_bar"] and 0.0 <= got["v"] <= P["v_bar"]
        assert 0.0 <= got["g"] <= 1.0 + 2 * U
    return 0


def _batch(points: list[dict]) -> MechanismParams:
    return MechanismParams(**{n: np.array([P[n] for P in points]) for n in ref.NAMES})


def _row(sol, i: int) -> dict:
    d = {y: float(np.asarray(getattr(sol, y))[i]) for y in ref.OUTPUTS}
    d["valid"] = bool(np.asarray(sol.valid)[i])
    d["accepted"] = bool(np.asarray(sol.accepted)[i])
    return d


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "paper"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_solve_matches_exact_reference(backend, constrained):
    """331 points (300 random, 31 hard) per backend, each straight against the exact
    optimum: s, v, g, U_s, U_d, valid and accepted."""
    sol = solve(_batch(POINTS), constrained=constrained, backend=backend)
    skipped = sum(check_point(P, _row(sol, i), constrained, f"{backend} #{i}") for i, P in enumerate(POINTS))
    assert skipped <= 3  # U_s = 0 up to round-off: accepted is not determined by the inputs


def test_exact_reference_against_brute_force():
    """The exact enumeration (the reference above) against a dense grid refined by
    Brent for both the device's v and the server's s (no piecewise analysis at all).
    The brute force's error is its search tolerance: its v is the device's optimum
    only to about 1e-9 of v_bar (a 1001-point grid refined by 201 points), which can
    move its U_s either way by about |dU_s/dv| * 1e-9 v_bar, and its s is refined by
    Brent to 1e-11 s_bar; measured, the two agree to 9e-9 of the utility's scale on
    these points, so 1e-7 bounds the brute force's own error."""
    worst = 0.0
    for P in POINTS[:12] + [{**DEFAULTS, **h} for h in HARD[23:28]]:
        if not P["eta"] * P["xi"] > 1:
            continue
        exact = ref.constrained_exact(P)
        bf = ref.brute_force_constrained(P)
        sc = _scale(P, exact)["U_s"] + abs(exact["U_s"])
        worst = max(worst, abs(bf["U_s"] - exact["U_s"]) / sc)
        assert abs(bf["U_s"] - exact["U_s"]) <= 1e-7 * sc, (P, bf, exact)
    assert worst > 0  # the two really are different computations


# ---------------------------------------------------------------- incentive gap


def _gap_points():
    rng = np.random.default_rng(7)
    th = rng.uniform(0, 1, len(POINTS))
    th[-len(HARD) :: 3] = 0.0
    return [dict(P, theta_hat=float(t)) for P, t in zip(POINTS, th)]


def check_gap(P: dict, got: float, constrained: bool, where: str = "") -> None:
    """The gap against two exact optimisations. Error model: as above, with the scale
    of the two U_s values it is the difference of (the gap is near zero where
    theta_hat is near theta, so it is compared absolutely at that scale)."""
    exact = ref.gap_exact_fraction(P, constrained)
    if exact is None:
        assert math.isnan(got), (where, P, got)
        return
    want = float(exact["gap"])
    assert exact["gap"] >= 0  # Theorem IV.1, exactly: the reference optimises
    sol = ref.exact_solution(P, constrained)
    scale = 2 * (_scale(P, sol)["U_s"] + abs(sol["U_s"]))
    err = abs(got - want)
    if err <= C * U * (abs(want) + scale):
        return
    names = (*ref.NAMES, "theta_hat")
    cond = ref.condition(P, lambda q: ref.gap_exact_fraction(q, constrained), ("gap",), names)["gap"]
    assert err <= C * U * (cond + abs(want) + scale), (where, got, want, err, cond, P)


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "paper"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_incentive_gap_matches_exact(backend, constrained):
    """Theorem IV.1's gap on 331 points per backend against exact optimisations of
    both the true and the fake problem (not the kernel's own candidates)."""
    pts = _gap_points()
    th = np.array([P["theta_hat"] for P in pts])
    gap = np.asarray(incentive_gap(_batch(pts), th, constrained=constrained, backend=backend))
    for i, P in enumerate(pts):
        check_gap(P, float(gap[i]), constrained, f"{backend} #{i}")


# ---------------------------------------------------------------- properties over the real inputs

_pos = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False)
_point = dict(
    R=st.floats(0, 100, **_pos),
    alpha_s=st.floats(0, 20, **_pos),
    beta_s=st.floats(0, 20, **_pos),
    v_bar=st.floats(1e-3, 1e3, **_pos),
    s_bar=st.floats(1e-3, 1e3, **_pos),
    c_d=st.floats(0, 20, **_pos),
    eta=st.floats(1e-3, 20, **_pos),
    xi=st.floats(1e-3, 20, **_pos),
    eps=st.floats(0, 1, **_pos),
    theta=st.floats(0, 1, **_pos),
    T=st.floats(1e-2, 10, **_pos),
    theta_hat=st.floats(0, 1, **_pos),
    constrained=st.booleans(),
)


def _pin(constrained, **over):
    return dict({**DEFAULTS, "theta_hat": 0.2, **over}, constrained=constrained)


@settings(max_examples=examples(40), deadline=None)
@given(**_point)
@example(**_pin(True))
@example(**_pin(False))
@example(**_pin(True, eta=1.0 + 1e-13, xi=1.0))
@example(**_pin(False, eta=1.0 + 1e-13, xi=1.0))
@example(**_pin(True, eps=0.0))
@example(**_pin(True, eps=1.0, theta_hat=1.0))
@example(**_pin(False, eps=1e-12))
@example(**_pin(True, R=0.0, alpha_s=0.0, beta_s=0.0, c_d=0.0))
@example(**_pin(True, eta=8.15, xi=8.15, theta_hat=0.5))
def test_solve_and_gap_match_exact_property(
    R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, theta_hat, constrained
):
    P = dict(
        R=R, alpha_s=alpha_s, beta_s=beta_s, v_bar=v_bar, s_bar=s_bar, c_d=c_d,
        eta=eta, xi=xi, eps=eps, theta=theta, T=T,
    )  # fmt: skip
    p = MechanismParams(**P)
    sol = solve(p, constrained=constrained)
    got = {y: float(getattr(sol, y)) for y in ref.OUTPUTS}
    check_point(P, dict(got, valid=bool(sol.valid), accepted=bool(sol.accepted)), constrained)
    check_gap(
        dict(P, theta_hat=theta_hat), float(incentive_gap(p, theta_hat, constrained=constrained)), constrained
    )


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "paper"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_server_best_response_is_exact_argmax(backend, constrained):
    """server_best_response against the exact argmax s* (error model above), NaN
    exactly where the model has no answer."""
    pts = POINTS[::7]
    s = np.asarray(server_best_response(_batch(pts), constrained=constrained, backend=backend))
    assert s.shape == (len(pts),)
    solver = ref.constrained_exact_fractions if constrained else ref.unconstrained_exact_fractions
    for i, P in enumerate(pts):
        want = ref.exact_solution(P, constrained)
        if not want["valid"]:
            assert math.isnan(s[i])
            continue
        err = abs(s[i] - want["s"])
        if err > C * U * abs(want["s"]):
            assert err <= C * U * (ref.condition(P, solver)["s"] + abs(want["s"])), (i, s[i], want["s"])
    # a scalar problem gives a scalar answer
    one = server_best_response(MechanismParams.paper_defaults(), constrained=constrained, backend=backend)
    assert np.shape(one) == ()
    assert float(one) == pytest.approx(ref.exact_solution(DEFAULTS, constrained)["s"], rel=C * U)


def test_reference_is_exact_in_rationals():
    """The references compute in Fractions end to end (no float sneaks in)."""
    r = ref.constrained_exact_fractions(DEFAULTS)
    u = ref.unconstrained_exact_fractions(DEFAULTS)
    assert all(isinstance(r[y], Fraction) and isinstance(u[y], Fraction) for y in ref.OUTPUTS)
    # SPEC.md's s* closed form (typed in literally) equals the exact derivation in rationals
    x = [Fraction(DEFAULTS[n]) for n in ref.NAMES]
    assert ref.spec_s_star(*x[:10]) == u["s"]
