"""Slow, obvious references for the mechanism kernel (independent of mcsl_core.mechanism).

- :func:`derivation`: the whole game derived symbolically with sympy from eqs. (1)-(3):
  the device's first-order condition, its concavity, U_s along the rule (a quadratic
  in s), the sign of its second derivative, and the argmax s*.
- :func:`spec_s_star`: SPEC.md's closed form for s*, typed in literally.
- :func:`solve_point`: the paper's model at one point, from the sympy expressions, in
  plain Python floats.
- :func:`brute_force_constrained`: the feasible bilevel optimum at one point by dense
  grids and local refinement (no closed forms, no piecewise analysis).
- :func:`constrained_exact`: the same optimum in exact rational arithmetic, by
  enumerating the pieces of the server's piecewise-quadratic objective (breakpoints
  and coefficients found from exact evaluations, not from the kernel's formulas).
- :func:`condition`: how far an exact output moves when each input moves by one
  relative unit, the yardstick for the float kernels' round-off.
- :func:`unconstrained_exact_fractions`: the paper's model in exact rationals from the
  sympy derivation's expressions.
- :func:`gap_exact_fraction`: Theorem IV.1's gap from two exact optimisations.
"""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction

import numpy as np
import sympy as sp
from scipy.optimize import minimize_scalar

NAMES = ("R", "alpha_s", "beta_s", "v_bar", "s_bar", "c_d", "eta", "xi", "eps", "theta", "T")


@functools.lru_cache(maxsize=1)
def derivation() -> dict:
    """Symbolic derivation; returns expressions and numeric (lambdified) functions."""
    R, al, be, vb, sb, cd, eta, xi, eps, th, T = sp.symbols(
        "R alpha_s beta_s v_bar s_bar c_d eta xi eps theta T", real=True
    )
    v, s = sp.symbols("v s", real=True)
    g = eps * v / vb + (1 - eps) * s / sb  # (2)
    U_s = T * (R + al * th + be - v - s) * g  # (1)
    C = cd + eta * (xi * v)
    U_d = T * (v + s - C) * g  # (3)

    d2Ud_dv2 = sp.simplify(sp.diff(U_d, v, 2))
    v_star = sp.solve(sp.Eq(sp.diff(U_d, v), 0), v)
    assert len(v_star) == 1
    v_star = sp.simplify(v_star[0])
    Us_along = sp.expand(U_s.subs(v, v_star))
    poly = sp.Poly(Us_along, s)
    d2Us_ds2 = sp.simplify(sp.diff(Us_along, s, 2))
    s_star = sp.solve(sp.Eq(sp.diff(Us_along, s), 0), s)
    assert len(s_star) == 1
    s_star = sp.simplify(s_star[0])
    syms = (R, al, be, vb, sb, cd, eta, xi, eps, th, T)
    return dict(
        symbols=syms,
        v=v,
        s=s,
        g=g,
        U_s=U_s,
        U_d=U_d,
        d2Ud_dv2=d2Ud_dv2,
        v_star=v_star,
        Us_along=Us_along,
        degree_in_s=poly.degree(),
        d2Us_ds2=d2Us_ds2,
        s_star=s_star,
        f_v_star=sp.lambdify((s, *syms), v_star, "math"),
        f_s_star=sp.lambdify(syms, s_star, "math"),
        f_d2Us=sp.lambdify(syms, sp.factor(d2Us_ds2), "math"),
        f_Us=sp.lambdify((v, s, *syms), U_s, "math"),
        f_Ud=sp.lambdify((v, s, *syms), U_d, "math"),
        f_g=sp.lambdify((v, s, *syms), g, "math"),
    )


def spec_s_star(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T=1.0):
    """SPEC.md's closed form, literally (works on sympy symbols and on floats)."""
    A0 = eps / v_bar + (eta * xi - 1) * (eps - 1) / s_bar
    A1 = 2 * (eta * xi - 1)
    return (R + alpha_s * theta + beta_s + c_d / A1) / (2 * (v_bar * A0 / (eps * A1) + 1)) + c_d * eps / (
        2 * v_bar * A1 * (A0 / A1 - (eps - 1) / s_bar)
    )


def paper_eq4(s, R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T=1.0):
    """Eq. (4) of the paper, literally."""
    return ((1 - eps) * (eta * xi - 1) * v_bar * s - eps * s_bar * (s - c_d)) / (
        2 * eps * (1 - eta * xi) * s_bar
    )


def solve_point_exact(point: dict) -> dict:
    """The paper's model at one point in exact rational arithmetic (the float inputs are
    converted exactly), rounded to float at the end: the reference for ill-conditioned
    points (eta*xi just above 1, eps near 0)."""
    d = derivation()
    sub = {sym: sp.Rational(float(point[n])) for sym, n in zip(d["symbols"], NAMES)}
    k = sub[d["symbols"][6]] * sub[d["symbols"][7]]
    if not (k > 1 and sub[d["symbols"][8]] > 0) or not d["d2Us_ds2"].subs(sub) < 0:
        return dict(
            s=math.nan, v=math.nan, g=math.nan, U_s=math.nan, U_d=math.nan, valid=False, accepted=False
        )
    s = d["s_star"].subs(sub)
    v = d["v_star"].subs(sub).subs(d["s"], s)
    sub2 = {**sub, d["s"]: s, d["v"]: v}
    us = d["U_s"].subs(sub2)
    return dict(
        s=float(s),
        v=float(v),
        g=float(d["g"].subs(sub2)),
        U_s=float(us),
        U_d=float(d["U_d"].subs(sub2)),
        valid=True,
        accepted=bool(us >= 0),
    )


def solve_point(point: dict) -> dict:
    """The paper's (unconstrained) model at one point, from the sympy expressions."""
    d = derivation()
    x = [float(point[n]) for n in NAMES]
    k = point["eta"] * point["xi"]
    nan = dict(s=math.nan, v=math.nan, g=math.nan, U_s=math.nan, U_d=math.nan, valid=False, accepted=False)
    if not (k > 1 and point["eps"] > 0):
        return nan
    if not d["f_d2Us"](*x) < 0:
        return nan
    s = d["f_s_star"](*x)
    v = d["f_v_star"](s, *x)
    us = d["f_Us"](v, s, *x)
    return dict(s=s, v=v, g=d["f_g"](v, s, *x), U_s=us, U_d=d["f_Ud"](v, s, *x), valid=True, accepted=us >= 0)


def _argmax_1d(f, lo, hi, n):
    """Maximise a scalar function on [lo, hi]: grid of n points, then a bounded
    Brent refinement on the two cells around the best grid point."""
    grid = np.linspace(lo, hi, n)
    vals = np.array([f(t) for t in grid]) if n <= 64 else f(grid)
    j = int(np.argmax(vals))
    a, b = grid[max(j - 1, 0)], grid[min(j + 1, n - 1)]
    best_x, best_f = grid[j], vals[j]
    if b > a:
        res = minimize_scalar(
            lambda t: -float(f(t)),
            bounds=(a, b),
            method="bounded",
            options=dict(xatol=1e-12 * max(1.0, abs(hi))),
        )
        if -res.fun > best_f:
            best_x, best_f = float(res.x), -float(res.fun)
    return float(best_x), float(best_f)


def brute_force_constrained(point: dict, n_s: int = 1001, n_v: int = 1001) -> dict:
    """Feasible bilevel optimum at one point by brute force.

    Device: best v in [0, v_bar] for each s (grid + refine of U_d). Server: best s in
    [0, s_bar] of U_s(v_dev(s), s) (grid + refine). Returns s, v, U_s, U_d.
    """
    P = {n: float(point[n]) for n in NAMES}
    M = P["R"] + P["alpha_s"] * P["theta"] + P["beta_s"]
    k = P["eta"] * P["xi"]

    def g(v, s):
        return P["eps"] * v / P["v_bar"] + (1 - P["eps"]) * s / P["s_bar"]

    def U_d(v, s):
        return P["T"] * (v + s - P["c_d"] - k * v) * g(v, s)

    def U_s(v, s):
        return P["T"] * (M - v - s) * g(v, s)

    def v_dev(s):
        return _argmax_1d(lambda v: U_d(v, s), 0.0, P["v_bar"], n_v)[0]

    def v_dev_vec(s_arr):
        # device for many s at once: grid of n_v, then a 201-point grid on the two
        # cells around each best grid point
        v_grid = np.linspace(0.0, P["v_bar"], n_v)
        j = np.argmax(U_d(v_grid[None, :], s_arr[:, None]), axis=1)
        lo = v_grid[np.maximum(j - 1, 0)]
        hi = v_grid[np.minimum(j + 1, n_v - 1)]
        fine = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, 201)[None, :]
        jf = np.argmax(U_d(fine, s_arr[:, None]), axis=1)
        return fine[np.arange(s_arr.size), jf]

    def best_on(s_arr):
        us = U_s(v_dev_vec(s_arr), s_arr)
        return int(np.argmax(us))

    # coarse pass over [0, s_bar], then a fine grid on the cells around the best,
    # then Brent on the scalar objective with the device refined by Brent as well
    s_grid = np.linspace(0.0, P["s_bar"], n_s)
    j = best_on(s_grid)
    fine = np.linspace(s_grid[max(j - 2, 0)], s_grid[min(j + 2, n_s - 1)], 801)
    jf = best_on(fine)
    a, b = fine[max(jf - 1, 0)], fine[min(jf + 1, 800)]
    res = minimize_scalar(
        lambda t: -U_s(v_dev(t), t), bounds=(a, b), method="bounded", options=dict(xatol=1e-11 * P["s_bar"])
    )
    cand = [s_grid[j], fine[jf], float(res.x), 0.0, P["s_bar"]]
    scored = [(U_s(v_dev(t), t), t) for t in cand]
    best_us, s = max(scored)
    v = v_dev(s)
    return dict(s=s, v=v, U_s=best_us, U_d=U_d(v, s))


def random_points(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random parameter points across the whole domain (eta*xi on both sides of 1)."""
    return dict(
        R=rng.uniform(0, 50, n),
        alpha_s=rng.uniform(0, 10, n),
        beta_s=rng.uniform(0, 10, n),
        v_bar=rng.uniform(1, 100, n),
        s_bar=rng.uniform(1, 1000, n),
        c_d=rng.uniform(0, 10, n),
        eta=rng.uniform(0.05, 15, n),
        xi=rng.uniform(0.05, 15, n),
        eps=rng.uniform(0, 1, n),
        theta=rng.uniform(0, 1, n),
        T=rng.uniform(0.1, 3, n),
    )


# ---------------------------------------------------------------- constrained model, exact


def _device_best_v(s: Fraction, P: dict) -> Fraction:
    """The device's best v in [0, v_bar] at one s, exactly: U_d(v) / T is the quadratic
    ((1 - k) v + s - c_d) (a v + b s) in v; its maximiser over the interval is an end or
    the vertex, scored exactly. Ties (U_d flat in v: eps = 0 and s = 0) go to the least
    v, the eps -> 0 limit of the rule."""
    a, b, k, cd, vb = P["a"], P["b"], P["k"], P["c_d"], P["v_bar"]

    def ud(v):
        return ((1 - k) * v + s - cd) * (a * v + b * s)

    cands = [Fraction(0), vb]
    c2 = (1 - k) * a  # coefficient of v^2
    if c2 != 0:
        c1 = (1 - k) * b * s + a * (s - cd)
        vert = -c1 / (2 * c2)
        if 0 < vert < vb:
            cands.append(vert)
    best = max(ud(v) for v in cands)
    return min(v for v in cands if ud(v) == best)


def _fractions(point: dict) -> dict:
    P = {n: (point[n] if isinstance(point[n], Fraction) else Fraction(float(point[n]))) for n in NAMES}
    P["k"] = P["eta"] * P["xi"]
    P["a"] = P["eps"] / P["v_bar"]
    P["b"] = (1 - P["eps"]) / P["s_bar"]
    P["M"] = P["R"] + P["alpha_s"] * P["theta"] + P["beta_s"]
    return P


def constrained_exact_fractions(point: dict, M_override: Fraction | None = None) -> dict | None:
    """The feasible bilevel optimum at one point in exact rational arithmetic.

    Independent of the kernel's closed forms: the device's answer v(s) is found by
    scoring its interval's ends and vertex exactly (:func:`_device_best_v`); it is a
    clipped affine function of s (U_d's vertex is affine in s), so its breakpoints
    come from two exact evaluations of the unclipped vertex; between breakpoints the
    server's U_s(v(s), s) is a polynomial of degree <= 2 in s, whose coefficients are
    read off three exact evaluations (Lagrange); each piece's maximum is at an end
    or at the vertex of a concave piece. The largest value wins; among exact ties the
    least s. ``M_override`` replaces R + r(theta) in the server's objective (the
    incentive gap's fake theta_hat). Returns Fractions (s, v, g, U_s, U_d, f, ties),
    or None where eta * xi <= 1 (no mechanism).
    """
    P = _fractions(point)
    if not P["k"] > 1:
        return None
    M = P["M"] if M_override is None else M_override
    sb, vb, a, b, k = P["s_bar"], P["v_bar"], P["a"], P["b"], P["k"]

    def f(s):
        v = _device_best_v(s, P)
        return (M - v - s) * (a * v + b * s)

    # unclipped vertex of U_d in v, affine in s (defined when a > 0)
    knots = {Fraction(0), sb}
    if a > 0:

        def vert(s):
            return -((1 - k) * b * s + a * (s - P["c_d"])) / (2 * (1 - k) * a)

        slope = vert(Fraction(1)) - vert(Fraction(0))
        if slope != 0:
            for target in (Fraction(0), vb):
                t = (target - vert(Fraction(0))) / slope
                if 0 < t < sb:
                    knots.add(t)
    knots = sorted(knots)
    cands = set(knots)
    for lo, hi in itertools.pairwise(knots):
        mid = (lo + hi) / 2
        f0, f1, f2 = f(lo), f(mid), f(hi)
        h = mid - lo
        # f(lo + t) = A t^2 + B t + f0 through the three points
        A = (f2 - 2 * f1 + f0) / (2 * h * h)
        B = (f1 - f0) / h - A * h
        if A < 0:
            t = -B / (2 * A)
            if 0 < t < hi - lo:
                cands.add(lo + t)
    scored = [(f(s), s) for s in cands]
    best = max(fs for fs, _ in scored)
    ties = sorted(s for fs, s in scored if fs == best)
    s = ties[0]
    v = _device_best_v(s, P)
    g = a * v + b * s
    T = P["T"]
    return dict(
        s=s,
        v=v,
        g=g,
        U_s=T * (P["M"] - v - s) * g,
        U_d=T * (v + s - P["c_d"] - k * v) * g,
        f=best,
        ties=len(ties),
    )


def constrained_exact(point: dict) -> dict:
    """:func:`constrained_exact_fractions` rounded to floats (nearest), with ``valid`` and
    ``accepted`` (U_s >= 0, decided exactly)."""
    r = constrained_exact_fractions(point)
    if r is None:
        nan = math.nan
        return dict(s=nan, v=nan, g=nan, U_s=nan, U_d=nan, valid=False, accepted=False, ties=0)
    out = {n: float(r[n]) for n in ("s", "v", "g", "U_s", "U_d")}
    return dict(out, valid=True, accepted=bool(r["U_s"] >= 0), ties=r["ties"])


def server_value_exact(point: dict, s: float, M_override: Fraction | None = None) -> Fraction:
    """U_s / T at a given s (taken exactly) along the device's exact best answer."""
    P = _fractions(point)
    M = P["M"] if M_override is None else M_override
    s = Fraction(float(s))
    v = _device_best_v(s, P)
    return (M - v - s) * (P["a"] * v + P["b"] * s)


def _value_at(s: Fraction, P: dict) -> Fraction:
    v = _device_best_v(s, P)
    return (P["M"] - v - s) * (P["a"] * v + P["b"] * s)


#: Relative step of :func:`condition` (exact in binary, far below the outputs' scale
#: yet far above float64's unit round-off, so the differences are exact derivatives
#: of the piecewise-rational outputs except within 2**-40 of a kink).
COND_STEP = Fraction(1, 2**40)
OUTPUTS = ("s", "v", "g", "U_s", "U_d")


def condition(point: dict, solver=None, outputs=OUTPUTS, names=NAMES) -> dict:
    """Per output y: sum over inputs x_i of max over +-h of |y(x_i (1 +- h)) - y(x)| / h.

    This is the first-order change of the exact y when every input moves by one
    relative unit: a float computation whose roundings act as relative input
    perturbations of at most c units of round-off u each is off by at most about
    ``c u (condition + |y|)``. A jump of the argmax (two pieces tied within h)
    makes the condition huge, as it should: such an s is not determined by the
    inputs to float precision. ``solver`` maps a point to Fractions (default: the
    constrained exact solver).
    """
    solver = solver or constrained_exact_fractions
    base = solver(point)
    out = dict.fromkeys(outputs, Fraction(0))
    for n in names:
        x = Fraction(float(point[n]))
        if x == 0:
            continue
        worst = dict.fromkeys(outputs, Fraction(0))
        for sign in (1, -1):
            moved = dict(point)
            xm = x * (1 + sign * COND_STEP)
            moved[n] = xm
            r = solver(moved)
            if r is None:
                continue
            for y in outputs:
                worst[y] = max(worst[y], abs(r[y] - base[y]) / COND_STEP)
        for y in outputs:
            out[y] += worst[y]
    return {y: float(v) for y, v in out.items()}


# ---------------------------------------------------------------- paper's model, exact


@functools.lru_cache(maxsize=1)
def _exact_fns() -> dict:
    """The sympy derivation's expressions as Python functions of Fractions (the printed
    code is pure integer-coefficient arithmetic, so Fractions stay exact)."""
    from sympy.printing.pycode import PythonCodePrinter

    class _FractionPrinter(PythonCodePrinter):
        def _print_Rational(self, e):
            return f"Fraction({e.p}, {e.q})"

        _print_Half = _print_Rational

    d = derivation()
    syms = d["symbols"]

    def mk(args, e):
        return sp.lambdify(args, e, modules=[{"Fraction": Fraction}], printer=_FractionPrinter)

    return dict(
        s_star=mk(syms, d["s_star"]),
        v_star=mk((d["s"], *syms), d["v_star"]),
        d2=mk(syms, d["d2Us_ds2"]),
        Us=mk((d["v"], d["s"], *syms), d["U_s"]),
        Ud=mk((d["v"], d["s"], *syms), d["U_d"]),
        g=mk((d["v"], d["s"], *syms), d["g"]),
        Us_along=mk((d["s"], *syms), d["Us_along"]),
    )


def _exact(x) -> Fraction:
    if not isinstance(x, Fraction):
        raise TypeError(f"exact evaluation produced {type(x).__name__}, not a Fraction")
    return x


def unconstrained_exact_fractions(point: dict) -> dict | None:
    """The paper's model at one point in exact rational arithmetic, from the sympy
    derivation (first-order conditions of eqs. (3) and (1)); None where it has no
    maximiser (eta xi <= 1, eps = 0, or U_s convex along the rule)."""
    fn = _exact_fns()
    P = _fractions(point)
    x = [P[n] for n in NAMES]
    if not (P["k"] > 1 and P["eps"] > 0) or not _exact(fn["d2"](*x)) < 0:
        return None
    s = _exact(fn["s_star"](*x))
    v = _exact(fn["v_star"](s, *x))
    return dict(
        s=s, v=v, g=_exact(fn["g"](v, s, *x)), U_s=_exact(fn["Us"](v, s, *x)), U_d=_exact(fn["Ud"](v, s, *x))
    )


def exact_solution(point: dict, constrained: bool) -> dict:
    """Floats (nearest) of the exact solution with ``valid``/``accepted`` (decided exactly)."""
    r = (constrained_exact_fractions if constrained else unconstrained_exact_fractions)(point)
    if r is None:
        nan = math.nan
        return dict(s=nan, v=nan, g=nan, U_s=nan, U_d=nan, valid=False, accepted=False, U_s_exact=None)
    out = {n: float(r[n]) for n in OUTPUTS}
    return dict(out, valid=True, accepted=bool(r["U_s"] >= 0), U_s_exact=r["U_s"])


def gap_exact_fraction(point: dict, constrained: bool) -> dict | None:
    """Theorem IV.1's gap ``U_s(s*(theta)) - U_s(s*(theta_hat))`` under the true theta,
    exactly, from two independent optimisations (``point["theta_hat"]`` is the fake
    degree); None where the model has no answer."""
    P = _fractions(point)
    th_hat = (
        point["theta_hat"]
        if isinstance(point["theta_hat"], Fraction)
        else Fraction(float(point["theta_hat"]))
    )
    if constrained:
        true = constrained_exact_fractions(point)
        if true is None:
            return None
        fake = constrained_exact_fractions(point, M_override=P["R"] + P["alpha_s"] * th_hat + P["beta_s"])
        return dict(gap=P["T"] * (true["f"] - _value_at(fake["s"], P)))
    true = unconstrained_exact_fractions(point)
    if true is None:
        return None
    fn = _exact_fns()
    x = [P[n] for n in NAMES]
    x_hat = [th_hat if n == "theta" else P[n] for n in NAMES]
    s_hat = _exact(fn["s_star"](*x_hat))
    return dict(gap=true["U_s"] - _exact(fn["Us_along"](s_hat, *x)))
