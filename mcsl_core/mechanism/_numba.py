"""Fused numba kernels for the data-submission game (SPEC.md section 2).

One pass over the broadcast points computes the device's rule, the server's best
response and both utilities. This module imports no JAX.

Layout: every field is passed as its own C-contiguous buffer with its element
strides in the broadcast shape (0 along broadcast axes), so a grid sweep reads a
few small arrays and broadcast inputs are never materialised. A work item is a chunk of
about ``CHUNK`` consecutive output points (part of one row of the last axis, or
several whole rows when rows are short); work items run in parallel. Each work item gathers its inputs into a small
contiguous buffer and then runs a branch-free loop (``where``-style selects,
IEEE division via ``error_model="numpy"``) that LLVM vectorises.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from mcsl_core._validation import check_memory

__all__ = ["CHUNK", "SOLVE_BYTES_PER_POINT", "broadcast_layout", "gap_flat", "kernel_bytes", "solve_flat"]

#: Output bytes per point: five float64 fields and two bool masks (solve), one float64 (gap).
SOLVE_BYTES_PER_POINT = 5 * 8 + 2
GAP_BYTES_PER_POINT = 8

_NAN = np.nan
_JIT = dict(cache=True, error_model="numpy")

#: Points per parallel work item along the last axis.
CHUNK = 1024


@njit(inline="always", **_JIT)
def _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta):
    """(a, b, M, p, q, use, m): g = a v + b s, M = R + r(theta), v*(s) = p s + q (eq. (4)),
    m = eta xi - 1.

    Meaningful where m > 0 (callers mask the rest). At eps = 0 the device's
    objective is linear in v with negative slope for s > 0, so its box optimum is
    v = 0: p = q = 0 and ``use`` is False (eq. (4) does not apply).
    """
    m = eta * xi - 1.0
    a = eps / v_bar
    b = (1.0 - eps) / s_bar
    M = R + alpha_s * theta + beta_s
    p = -b / (2.0 * a) + 1.0 / (2.0 * m)
    q = -c_d / (2.0 * m)
    # eps so small that p overflows is the eps -> 0 limit of the clipped rule (v = 0)
    use = (eps > 0.0) & np.isfinite(p) & np.isfinite(q)
    return a, b, M, (p if use else 0.0), (q if use else 0.0), use, m


@njit(inline="always", **_JIT)
def _stationary(a, b, M, c_d, m):
    """The paper's closed form (s*, v*) and den2 = a (1 + 2m) - b m, in a form without
    the large terms of ``p s + q``.

    With m = eta xi - 1, d1 = a + b m and d2 = a (1 + 2 m) - b m (sympy, from the
    device's rule and the server's first-order condition):
    ``s* = a (M m d1 + a c_d (1 + m)) / (d1 d2)`` and
    ``v* = (M (a - b m) d1 - c_d (a (a + b) + b m (3 a - b))) / (2 d1 d2)``.
    Where m is small, p ~ 1/(2m) and q ~ -c_d/(2m) are huge and ``p s* + q`` loses
    all but a few digits (at eta xi = 1 + 1e-13, v* had a relative error of 2e-4);
    these forms keep full accuracy. ``d2 > 0`` iff U_s is concave along the rule
    (c2 = (1 + p)(a p + b) = d1 d2 / (4 a m^2)).
    """
    d1 = a + b * m
    d2 = a * (1.0 + 2.0 * m) - b * m
    den = d1 * d2
    s = a * (M * m * d1 + a * c_d * (1.0 + m)) / den
    v = (M * (a - b * m) * d1 - c_d * (a * (a + b) + b * m * (3.0 * a - b))) / (2.0 * den)
    return s, v, d2


@njit(inline="always", **_JIT)
def _f_con(s, a, b, M, p, q, v_bar):
    """U_s / T along the device's box-constrained rule, and that rule's v."""
    v = min(max(p * s + q, 0.0), v_bar)
    return (M - v - s) * (a * v + b * s), v


@njit(inline="always", **_JIT)
def _try(c, vc, ok, a, b, M, p, q, v_bar, s_bar, best_s, best_v, best_f):
    """Score candidate c (if ok and not NaN) projected onto [0, s_bar]; keep the best.

    ``vc`` is the device's v at c when known in closed form (a breakpoint or the
    linear piece's stationary point; NaN otherwise). It is used when c lies in
    [0, s_bar] and vc in [0, v_bar], instead of ``p c + q``, whose large terms
    cancel where eta xi is near 1; otherwise the rule is evaluated at the
    projected c (a redundant feasible point).
    """
    usable = ok and c == c
    c = c if usable else 0.0
    inside = usable & (c >= 0.0) & (c <= s_bar) & (vc >= 0.0) & (vc <= v_bar)
    c = min(max(c, 0.0), s_bar)
    f, v = _f_con(c, a, b, M, p, q, v_bar)
    v = vc if inside else v
    f = (M - v - c) * (a * v + b * c) if inside else f
    better = f > best_f
    return (c if better else best_s), (v if better else best_v), (f if better else best_f)


@njit(inline="always", **_JIT)
def _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar, extra, extra_v):
    """Exact maximiser of the piecewise quadratic U_s(v_c(s), s) over s in [0, s_bar].

    The maximiser is an end of [0, s_bar], a breakpoint of the clipped rule
    (v = 0 at ``s0 = a c_d / (a - b m)``, v = v_bar at ``s1 = a (c_d + 2 m v_bar) /
    (a - b m)``), or a stationary point of the quadratic of its piece (v = 0,
    v = v_bar, or v = p s + q, see :func:`_stationary`); every candidate is
    projected onto [0, s_bar] and scored with the true objective, so a candidate
    outside its own piece is only a redundant feasible point. An unusable
    candidate becomes s = 0, a duplicate of the first. ``extra`` (NaN for none)
    is one more candidate with its device answer ``extra_v``, used by the
    incentive gap.
    """
    best_f, best_v = _f_con(0.0, a, b, M, p, q, v_bar)
    best_s = 0.0
    e = a - b * m  # 2 a m p: zero where the rule is flat in s
    brk = use & (e != 0.0)
    b_pos = b > 0.0
    s_lin, v_lin, d2 = _stationary(a, b, M, c_d, m)
    nan = _NAN
    best_s, best_v, best_f = _try(s_bar, nan, True, a, b, M, p, q, v_bar, s_bar, best_s, best_v, best_f)
    best_s, best_v, best_f = _try(a * c_d / e, 0.0, brk, a, b, M, p, q, v_bar, s_bar, best_s, best_v, best_f)
    best_s, best_v, best_f = _try(
        a * (c_d + 2.0 * m * v_bar) / e, v_bar, brk, a, b, M, p, q, v_bar, s_bar, best_s, best_v, best_f
    )
    best_s, best_v, best_f = _try(0.5 * M, nan, b_pos, a, b, M, p, q, v_bar, s_bar, best_s, best_v, best_f)
    best_s, best_v, best_f = _try(
        (b * (M - v_bar) - a * v_bar) / (2.0 * b),
        nan,
        b_pos,
        a,
        b,
        M,
        p,
        q,
        v_bar,
        s_bar,
        best_s,
        best_v,
        best_f,
    )
    best_s, best_v, best_f = _try(
        s_lin, v_lin, use & (d2 != 0.0), a, b, M, p, q, v_bar, s_bar, best_s, best_v, best_f
    )
    best_s, best_v, best_f = _try(extra, extra_v, True, a, b, M, p, q, v_bar, s_bar, best_s, best_v, best_f)
    return best_s, best_v, best_f


@njit(inline="always", **_JIT)
def _point(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, constrained):
    """(s, v, g, U_s, U_d, valid) at one parameter point, branch-free."""
    k = eta * xi
    a, b, M, p, q, use, m = _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    if constrained:
        s, v, _ = _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar, _NAN, _NAN)
        ok = k > 1.0
    else:
        s, v, d2 = _stationary(a, b, M, c_d, m)
        ok = (k > 1.0) & use & (d2 > 0.0)
    g = a * v + b * s
    us = T * (M - v - s) * g
    ud = T * (v + s - c_d - k * v) * g
    # where float64 overflows (extreme eps, eta*xi near 1) there is no usable answer
    ok = ok & np.isfinite(s) & np.isfinite(v) & np.isfinite(g) & np.isfinite(us) & np.isfinite(ud)
    return (
        (s if ok else _NAN),
        (v if ok else _NAN),
        (g if ok else _NAN),
        (us if ok else _NAN),
        (ud if ok else _NAN),
        ok,
    )


@njit(inline="always", **_JIT)
def _gap_point(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, theta_hat, constrained):
    k = eta * xi
    a, b, M, p, q, use, m = _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    if constrained:
        M_hat = R + alpha_s * theta_hat + beta_s
        # the device's rule does not depend on theta: v_hat is its answer to s_hat
        s_hat, v_hat, _ = _best_con(a, b, M_hat, p, q, use, m, c_d, v_bar, s_bar, _NAN, _NAN)
        # (s_hat, v_hat) is a candidate of the true problem, scored by the same
        # expression as f_hat, so best >= f_hat exactly
        _, _, f_best = _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar, s_hat, v_hat)
        f_hat = (M - v_hat - s_hat) * (a * v_hat + b * s_hat)
        gap = T * (f_best - f_hat)
        ok = k > 1.0
    else:
        # U_s is the concave quadratic -T c2 s^2 + ... along the rule and s* is affine
        # in M with slope a m / d2, so U_s(s*) - U_s(s_hat) = T c2 (s_hat - s*)^2 =
        # T a d1 dM^2 / (4 d2) with dM = alpha_s (theta_hat - theta): no difference of
        # two nearly equal s (which lost all digits near eta xi = 1).
        d1 = a + b * m
        d2 = a * (1.0 + 2.0 * m) - b * m
        dM = alpha_s * (theta_hat - theta)
        gap = T * a * d1 * dM * dM / (4.0 * d2)
        ok = (k > 1.0) & use & (d2 > 0.0)
    ok = ok & np.isfinite(gap)
    return gap if ok else _NAN


@njit(inline="always", **_JIT)
def _gather_row(X, o, j0, m, pos, shape, strides, last, buf, idx):
    """Copy points j0..j0+m-1 of row o (all axes but the last) into buf[:, pos:pos+m]."""
    nd = shape.shape[0]
    # unravel the row index once (integer division is slow), then offsets per field
    rem = o
    for d in range(nd - 2, -1, -1):
        idx[d] = rem % shape[d]
        rem //= shape[d]
    for f in range(len(X)):
        off = 0
        for d in range(nd - 1):
            off += idx[d] * strides[f, d]
        xf = X[f]
        st = last[f]
        row = buf[f, pos : pos + m]
        if st == 0:
            row[:] = xf[off]
        elif st == 1:
            row[:] = xf[off + j0 : off + j0 + m]
        else:
            for j in range(m):
                row[j] = xf[off + (j0 + j) * st]


@njit(inline="always", **_JIT)
def _n_items(outer, inner, chunk):
    """Work items: chunks of one row when rows are long, groups of whole rows otherwise."""
    if outer == 0 or inner == 0:
        return 0
    if inner >= chunk:
        return outer * ((inner + chunk - 1) // chunk)
    rows = chunk // inner
    return (outer + rows - 1) // rows


@njit(inline="always", **_JIT)
def _gather(X, w, outer, inner, chunk, shape, strides, last, buf, idx):
    """Copy work item w's inputs into buf[field, :m]; returns (first output index, m)."""
    if inner >= chunk:
        nchunks = (inner + chunk - 1) // chunk
        o = w // nchunks
        j0 = (w - o * nchunks) * chunk
        m = min(chunk, inner - j0)
        _gather_row(X, o, j0, m, 0, shape, strides, last, buf, idx)
        return o * inner + j0, m
    rows = chunk // inner
    o0 = w * rows
    o1 = min(o0 + rows, outer)
    for o in range(o0, o1):
        _gather_row(X, o, 0, inner, (o - o0) * inner, shape, strides, last, buf, idx)
    return o0 * inner, (o1 - o0) * inner


def _make_compute(constrained):
    """The per-work-item loop over contiguous buffer rows, with ``constrained`` a
    compile-time constant: one simple loop over 1-D arrays that LLVM vectorises."""

    @njit(**_JIT)
    def compute(buf, m, o_s, o_v, o_g, o_us, o_ud, o_ok, o_acc):
        R, al, be, vb, sb, cd = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]
        eta, xi, eps, th, T = buf[6], buf[7], buf[8], buf[9], buf[10]
        for j in range(m):
            s, v, g, us, ud, ok = _point(
                R[j], al[j], be[j], vb[j], sb[j], cd[j], eta[j], xi[j], eps[j], th[j], T[j], constrained
            )
            o_s[j] = s
            o_v[j] = v
            o_g[j] = g
            o_us[j] = us
            o_ud[j] = ud
            o_ok[j] = ok
            o_acc[j] = ok & (us >= 0.0)

    @njit(**_JIT)
    def compute_gap(buf, m, out):
        R, al, be, vb, sb, cd = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]
        eta, xi, eps, th, T, th_hat = buf[6], buf[7], buf[8], buf[9], buf[10], buf[11]
        for j in range(m):
            out[j] = _gap_point(
                R[j],
                al[j],
                be[j],
                vb[j],
                sb[j],
                cd[j],
                eta[j],
                xi[j],
                eps[j],
                th[j],
                T[j],
                th_hat[j],
                constrained,
            )

    return compute, compute_gap


_compute_free, _gap_free = _make_compute(False)
_compute_con, _gap_con = _make_compute(True)


def _solve_py(X, shape, strides, chunk, constrained, out_s, out_v, out_g, out_us, out_ud, out_valid, out_acc):
    nd = shape.shape[0]
    inner = shape[nd - 1]
    n = out_s.shape[0]
    outer = n // inner if inner > 0 else 0
    last = strides[:, nd - 1].copy()
    for w in prange(_n_items(outer, inner, chunk)):
        buf = np.empty((11, chunk))
        idx = np.empty(nd, dtype=np.int64)
        i, m = _gather(X, w, outer, inner, chunk, shape, strides, last, buf, idx)
        if constrained:
            _compute_con(
                buf,
                m,
                out_s[i : i + m],
                out_v[i : i + m],
                out_g[i : i + m],
                out_us[i : i + m],
                out_ud[i : i + m],
                out_valid[i : i + m],
                out_acc[i : i + m],
            )
        else:
            _compute_free(
                buf,
                m,
                out_s[i : i + m],
                out_v[i : i + m],
                out_g[i : i + m],
                out_us[i : i + m],
                out_ud[i : i + m],
                out_valid[i : i + m],
                out_acc[i : i + m],
            )


def _gap_py(X, shape, strides, chunk, constrained, out):
    nd = shape.shape[0]
    inner = shape[nd - 1]
    n = out.shape[0]
    outer = n // inner if inner > 0 else 0
    last = strides[:, nd - 1].copy()
    for w in prange(_n_items(outer, inner, chunk)):
        buf = np.empty((12, chunk))
        idx = np.empty(nd, dtype=np.int64)
        i, m = _gather(X, w, outer, inner, chunk, shape, strides, last, buf, idx)
        if constrained:
            _gap_con(buf, m, out[i : i + m])
        else:
            _gap_free(buf, m, out[i : i + m])


_solve_par = njit(parallel=True, **_JIT)(_solve_py)
_solve_ser = njit(**_JIT)(_solve_py)
_gap_par = njit(parallel=True, **_JIT)(_gap_py)
_gap_ser = njit(**_JIT)(_gap_py)


def broadcast_layout(arrays, shape):
    """Each array as a flat C-contiguous float64 buffer (a tuple) plus its element
    strides in the broadcast ``shape`` (0 along broadcast axes)."""
    shape = tuple(shape) or (1,)
    flat, strides = [], np.zeros((len(arrays), len(shape)), dtype=np.int64)
    for f, x in enumerate(arrays):
        x = np.ascontiguousarray(x, dtype=np.float64)
        strides[f] = np.asarray(np.broadcast_to(x, shape).strides, dtype=np.int64) // 8
        flat.append(x.reshape(-1))
    return tuple(flat), np.asarray(shape, dtype=np.int64), strides


def kernel_bytes(n: int, nfields: int, chunk: int, per_point: int, parallel: bool) -> int:
    """Bytes a kernel allocates for ``n`` output points: ``per_point * n`` outputs, plus
    per thread one gather buffer ``8 * nfields * chunk`` and an index vector. The inputs
    are read in place (broadcast axes are never materialised)."""
    threads = numba.get_num_threads() if parallel else 1
    return per_point * n + threads * (8 * nfields * chunk + 256)


def _prepare(arrays, shape, chunk, per_point, parallel):
    X, shp, strides = broadcast_layout(arrays, shape)
    n = int(np.prod(shp, dtype=object))  # exact: a huge grid must not wrap to a small one
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    need = kernel_bytes(n, len(arrays), int(chunk), per_point, parallel)
    check_memory("params", need, f"{n} points of shape {tuple(int(d) for d in shp)}")
    return X, shp, strides, n


def solve_flat(arrays, shape, constrained, *, parallel=True, chunk=CHUNK):
    """Run the solve kernel on broadcastable float64 arrays; returns seven flat outputs.

    Memory: :func:`kernel_bytes` with 42 bytes per point (checked before any output
    is allocated; ``ValueError`` naming ``params``), parallel and serial alike.
    """
    X, shp, strides, n = _prepare(arrays, shape, chunk, SOLVE_BYTES_PER_POINT, parallel)
    out = [np.empty(n) for _ in range(5)] + [np.empty(n, dtype=np.bool_) for _ in range(2)]
    kernel = _solve_par if parallel else _solve_ser
    kernel(X, shp, strides, int(chunk), bool(constrained), *out)
    return out


def gap_flat(arrays, shape, constrained, *, parallel=True, chunk=CHUNK):
    """Run the incentive-gap kernel (theta_hat last in ``arrays``); returns a flat output.

    Memory: :func:`kernel_bytes` with 8 bytes per point, checked upfront as in
    :func:`solve_flat`.
    """
    X, shp, strides, n = _prepare(arrays, shape, chunk, GAP_BYTES_PER_POINT, parallel)
    out = np.empty(n)
    kernel = _gap_par if parallel else _gap_ser
    kernel(X, shp, strides, int(chunk), bool(constrained), out)
    return out
