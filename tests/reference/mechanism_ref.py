"""Slow, obvious references for the mechanism kernel (independent of mcsl_core.mechanism).

- :func:`derivation`: the whole game derived symbolically with sympy from eqs. (1)-(3):
  the device's first-order condition, its concavity, U_s along the rule (a quadratic
  in s), the sign of its second derivative, and the argmax s*.
- :func:`spec_s_star`: SPEC.md's closed form for s*, typed in literally.
- :func:`solve_point`: the paper's model at one point, from the sympy expressions, in
  plain Python floats.
- :func:`brute_force_constrained`: the feasible bilevel optimum at one point by dense
  grids and local refinement (no closed forms, no piecewise analysis).
"""

from __future__ import annotations

import functools
import math

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
