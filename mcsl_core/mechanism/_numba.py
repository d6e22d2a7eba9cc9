"""Fused numba kernels for the data-submission game (SPEC.md section 2).

One pass over the flattened broadcast points computes the device's rule, the
server's best response and both utilities; no temporaries are allocated. This
module imports no JAX.

Inputs are 1-D float64 arrays of length 1 (a broadcast scalar, stride 0) or n
(stride 1); ``strides`` says which, so scalar fields are never materialised.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["solve_flat", "gap_flat"]

_NAN = np.nan


@njit(cache=True, inline="always")
def _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta):
    """(a, b, M, p, q) with g = a v + b s, M = R + r(theta), and v*(s) = p s + q (eq. (4)).

    Only called where eta*xi > 1. At eps = 0 the device's objective is linear in v
    with negative slope for s > 0, so its box optimum is v = 0: p = q = 0.
    """
    km1 = eta * xi - 1.0
    a = eps / v_bar
    b = (1.0 - eps) / s_bar
    M = R + alpha_s * theta + beta_s
    if eps > 0.0:
        p = -b / (2.0 * a) + 1.0 / (2.0 * km1)
        q = -c_d / (2.0 * km1)
    else:
        p = 0.0
        q = 0.0
    return a, b, M, p, q


@njit(cache=True, inline="always")
def _s_free(a, b, M, p, q):
    """Stationary point of U_s(v*(s), s) (the paper's closed-form s*) and the concavity
    measure c2 = (1+p)(a p + b) = -(d2 U_s / ds2) / (2T)."""
    c2 = (1.0 + p) * (a * p + b)
    s = ((M - q) * (a * p + b) - (1.0 + p) * a * q) / (2.0 * c2) if c2 != 0.0 else _NAN
    return s, c2


@njit(cache=True, inline="always")
def _f_con(s, a, b, M, p, q, v_bar):
    """U_s / T along the device's box-constrained rule, and that rule's v."""
    v = min(max(p * s + q, 0.0), v_bar)
    return (M - v - s) * (a * v + b * s), v


@njit(cache=True, inline="always")
def _best_con(a, b, M, p, q, v_bar, s_bar, extra):
    """Exact maximiser of the piecewise quadratic U_s(v_c(s), s) over s in [0, s_bar].

    The maximiser is an end of [0, s_bar], a breakpoint of the clipped rule, or a
    stationary point of the quadratic of its piece (v = 0, v = v_bar, or v = p s + q);
    every candidate is projected onto [0, s_bar] and scored with the true objective,
    so a candidate outside its own piece is only a redundant feasible point.
    ``extra`` (NaN for none) is one more candidate, used by the incentive gap.
    """
    best_s = 0.0
    best_f, best_v = _f_con(0.0, a, b, M, p, q, v_bar)
    for j in range(7):
        if j == 0:
            c = s_bar
        elif j == 1:
            c = -q / p if p != 0.0 else _NAN
        elif j == 2:
            c = (v_bar - q) / p if p != 0.0 else _NAN
        elif j == 3:
            c = 0.5 * M if b > 0.0 else _NAN
        elif j == 4:
            c = (b * (M - v_bar) - a * v_bar) / (2.0 * b) if b > 0.0 else _NAN
        elif j == 5:
            c, _ = _s_free(a, b, M, p, q)
        else:
            c = extra
        if not np.isfinite(c):
            continue
        c = min(max(c, 0.0), s_bar)
        f, v = _f_con(c, a, b, M, p, q, v_bar)
        if f > best_f:
            best_f = f
            best_s = c
            best_v = v
    return best_s, best_v, best_f


@njit(cache=True, inline="always")
def _point(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, constrained):
    """(s, v, g, U_s, U_d, valid) at one parameter point."""
    k = eta * xi
    if not k > 1.0:
        return _NAN, _NAN, _NAN, _NAN, _NAN, False
    a, b, M, p, q = _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    if constrained:
        s, v, _ = _best_con(a, b, M, p, q, v_bar, s_bar, _NAN)
    else:
        if not eps > 0.0:
            return _NAN, _NAN, _NAN, _NAN, _NAN, False
        s, c2 = _s_free(a, b, M, p, q)
        if not c2 > 0.0:
            return _NAN, _NAN, _NAN, _NAN, _NAN, False
        v = p * s + q
    g = a * v + b * s
    us = T * (M - v - s) * g
    ud = T * (v + s - c_d - k * v) * g
    return s, v, g, us, ud, True


def _solve_py(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, strides,
              constrained, out_s, out_v, out_g, out_us, out_ud, out_valid, out_acc):
    n = out_s.shape[0]
    (k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10) = (
        strides[0], strides[1], strides[2], strides[3], strides[4], strides[5],
        strides[6], strides[7], strides[8], strides[9], strides[10])
    for i in prange(n):
        s, v, g, us, ud, ok = _point(
            R[i * k0], alpha_s[i * k1], beta_s[i * k2], v_bar[i * k3], s_bar[i * k4],
            c_d[i * k5], eta[i * k6], xi[i * k7], eps[i * k8], theta[i * k9], T[i * k10],
            constrained)
        out_s[i] = s
        out_v[i] = v
        out_g[i] = g
        out_us[i] = us
        out_ud[i] = ud
        out_valid[i] = ok
        out_acc[i] = ok and us >= 0.0


def _gap_py(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, theta_hat,
            strides, constrained, out):
    n = out.shape[0]
    for i in prange(n):
        r_ = R[i * strides[0]]
        al = alpha_s[i * strides[1]]
        be = beta_s[i * strides[2]]
        vb = v_bar[i * strides[3]]
        sb = s_bar[i * strides[4]]
        cd = c_d[i * strides[5]]
        et = eta[i * strides[6]]
        x = xi[i * strides[7]]
        ep = eps[i * strides[8]]
        th = theta[i * strides[9]]
        t = T[i * strides[10]]
        th_hat = theta_hat[i * strides[11]]
        out[i] = _NAN
        if not et * x > 1.0:
            continue
        a, b, M, p, q = _coeffs(r_, al, be, vb, sb, cd, et, x, ep, th)
        M_hat = r_ + al * th_hat + be
        if constrained:
            s_hat, _, _ = _best_con(a, b, M_hat, p, q, vb, sb, _NAN)
            # s_hat is a candidate of the true problem, so best >= f(s_hat) exactly
            _, _, f_best = _best_con(a, b, M, p, q, vb, sb, s_hat)
            f_hat, _ = _f_con(s_hat, a, b, M, p, q, vb)
            out[i] = t * (f_best - f_hat)
        else:
            if not ep > 0.0:
                continue
            s_true, c2 = _s_free(a, b, M, p, q)
            if not c2 > 0.0:
                continue
            s_hat, _ = _s_free(a, b, M_hat, p, q)
            # U_s is the concave quadratic -T c2 s^2 + ... along the rule, so
            # U_s(s*) - U_s(s_hat) = T c2 (s_hat - s*)^2 exactly, never negative.
            d = s_hat - s_true
            out[i] = t * c2 * d * d


_solve_par = njit(cache=True, parallel=True)(_solve_py)
_solve_ser = njit(cache=True)(_solve_py)
_gap_par = njit(cache=True, parallel=True)(_gap_py)
_gap_ser = njit(cache=True)(_gap_py)


def solve_flat(flat, strides, n, constrained, *, parallel=True):
    """Run the solve kernel on flattened inputs; returns seven 1-D outputs of length n."""
    out = [np.empty(n) for _ in range(5)] + [np.empty(n, dtype=np.bool_) for _ in range(2)]
    kernel = _solve_par if parallel else _solve_ser
    kernel(*flat, strides, bool(constrained), *out)
    return out


def gap_flat(flat, strides, n, constrained, *, parallel=True):
    """Run the incentive-gap kernel on flattened inputs (theta_hat last in ``flat``)."""
    out = np.empty(n)
    kernel = _gap_par if parallel else _gap_ser
    kernel(*flat, strides, bool(constrained), out)
    return out
