"""Plain NumPy broadcasting backend of the data-submission game (SPEC.md section 2).

The same closed forms as the numba kernel, written as whole-array NumPy
expressions: the ``backend="numpy"`` path and the benchmark's NumPy anchor.
"""

from __future__ import annotations

import numpy as np

__all__ = ["coeffs", "gap_arrays", "solve_arrays"]


def coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta):
    """(ok, use, a, b, M, p, q): g = a v + b s, M = R + r(theta), v*(s) = p s + q (eq. (4));
    ``ok`` is eta*xi > 1; where eps = 0 (``use`` False) p = q = 0 (box optimum v = 0)."""
    k = eta * xi
    ok = k > 1.0
    km1 = np.where(ok, k - 1.0, 1.0)
    a = eps / v_bar
    b = (1.0 - eps) / s_bar
    M = R + alpha_s * theta + beta_s
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = -b / (2.0 * a) + 1.0 / (2.0 * km1)
        q = -c_d / (2.0 * km1)
    # eps so small that p overflows is the eps -> 0 limit of the clipped rule (v = 0)
    use = (eps > 0.0) & np.isfinite(p) & np.isfinite(q)
    return ok, use, a, b, M, np.where(use, p, 0.0), np.where(use, q, 0.0)


def _stationary(a, b, M, c_d, m):
    """(s*, v*, d2): the numba kernel's cancellation-free closed forms (see there)."""
    d1 = a + b * m
    d2 = a * (1.0 + 2.0 * m) - b * m
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        den = d1 * d2
        s = a * (M * m * d1 + a * c_d * (1.0 + m)) / den
        v = (M * (a - b * m) * d1 - c_d * (a * (a + b) + b * m * (3.0 * a - b))) / (2.0 * den)
    return s, v, d2


def _f_con(s, a, b, M, p, q, v_bar):
    v = np.minimum(np.maximum(p * s + q, 0.0), v_bar)
    return (M - v - s) * (a * v + b * s), v


def _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar, extra=None):
    """Vectorised twin of the numba kernel's exact piecewise-quadratic maximisation;
    ``extra`` is an optional candidate ``(s, v)``."""
    nan = np.nan
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e = a - b * m
        brk = use & (e != 0.0)
        e_safe = np.where(brk, e, 1.0)
        b_pos = b > 0.0
        b_safe = np.where(b_pos, b, 1.0)
        s_lin, v_lin, d2 = _stationary(a, b, M, c_d, m)
        cands = [
            (s_bar, nan),
            (np.where(brk, a * c_d / e_safe, nan), 0.0),
            (np.where(brk, a * (c_d + 2.0 * m * v_bar) / e_safe, nan), v_bar),
            (np.where(b_pos, 0.5 * M, nan), nan),
            (np.where(b_pos, (b * (M - v_bar) - a * v_bar) / (2.0 * b_safe), nan), nan),
            (np.where(use & (d2 != 0.0), s_lin, nan), v_lin),
        ]
    if extra is not None:
        cands.append(extra)
    zero = np.zeros(np.broadcast_shapes(np.shape(a), np.shape(M), np.shape(p), np.shape(s_bar)))
    best_s = zero
    best_f, best_v = _f_con(zero, a, b, M, p, q, v_bar)
    for c, vc in cands:
        with np.errstate(invalid="ignore", over="ignore"):
            usable = ~np.isnan(c)
            c = np.where(usable, c, 0.0)
            inside = usable & (c >= 0.0) & (c <= s_bar) & (vc >= 0.0) & (vc <= v_bar)
            c = np.clip(c, 0.0, s_bar)
            f, v = _f_con(c, a, b, M, p, q, v_bar)
            v = np.where(inside, vc, v)
            f = np.where(inside, (M - v - c) * (a * v + b * c), f)
        take = usable & (f > best_f)
        best_s = np.where(take, c, best_s)
        best_f = np.where(take, f, best_f)
        best_v = np.where(take, v, best_v)
    return best_s, best_v, best_f


def _m(ok, eta, xi):
    return np.where(ok, eta * xi - 1.0, 1.0)


def solve_arrays(fields, constrained: bool):
    """(s, v, g, U_s, U_d, valid, accepted) as broadcast NumPy arrays."""
    R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T = fields
    ok, use, a, b, M, p, q = coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    m = _m(ok, eta, xi)
    if constrained:
        s, v, _ = _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar)
        valid = ok
    else:
        s, v, d2 = _stationary(a, b, M, c_d, m)
        valid = ok & use & (d2 > 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        g = a * v + b * s
        us = T * (M - v - s) * g
        ud = T * (v + s - c_d - eta * xi * v) * g
    valid = valid & np.isfinite(s) & np.isfinite(v) & np.isfinite(g) & np.isfinite(us) & np.isfinite(ud)
    shape = np.broadcast_shapes(*(np.shape(f) for f in fields))
    valid = np.broadcast_to(valid, shape)
    out = [np.where(valid, np.broadcast_to(x, shape), np.nan) for x in (s, v, g, us, ud)]
    accepted = np.asarray(valid & (out[3] >= 0.0))
    return (*out, np.array(valid), accepted)


def gap_arrays(fields, theta_hat, constrained: bool):
    """U_s(s*(theta)) - U_s(s*(theta_hat)) under the true theta, NaN where invalid."""
    R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T = fields
    ok, use, a, b, M, p, q = coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    m = _m(ok, eta, xi)
    if constrained:
        M_hat = R + alpha_s * theta_hat + beta_s
        s_hat, v_hat, _ = _best_con(a, b, M_hat, p, q, use, m, c_d, v_bar, s_bar)
        _, _, f_best = _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar, extra=(s_hat, v_hat))
        f_hat = (M - v_hat - s_hat) * (a * v_hat + b * s_hat)
        gap = T * (f_best - f_hat)
        valid = ok
    else:
        d1 = a + b * m
        d2 = a * (1.0 + 2.0 * m) - b * m
        dM = alpha_s * (theta_hat - theta)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            gap = T * a * d1 * dM * dM / (4.0 * d2)
        valid = ok & use & (d2 > 0.0)
    valid = valid & np.isfinite(gap)
    shape = np.broadcast_shapes(*(np.shape(f) for f in fields), np.shape(theta_hat))
    return np.where(np.broadcast_to(valid, shape), np.broadcast_to(gap, shape), np.nan)
