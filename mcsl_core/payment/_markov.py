"""Stationary vectors of finite Markov chains: GTH elimination in numba.

The Grassmann-Taksar-Heyman (GTH) algorithm eliminates states one at a time
(each step censors the chain on the remaining states) and never subtracts, so
it keeps full relative accuracy even when transition probabilities are 1e-14.

Chains with more than one recurrent class have no unique stationary vector;
for them the long-run (Cesaro) average from an initial distribution is
returned when one is given, else the chain is reported (``valid`` False /
``ValueError``). A periodic chain with a single recurrent class has a unique
stationary vector, which equals its Cesaro limit from every initial
distribution, so it is answered with or without ``init``.

numba module: imports no JAX.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

from mcsl_core._validation import as_float64, check_memory, check_range, check_real, first_bad_index

__all__ = ["stationary"]

#: Largest allowed |row sum - 1| of a transition matrix.
ROW_SUM_TOL = 1e-9


@njit(cache=True, inline="always")
def _gth(A, n, out):
    """GTH on ``A[:n, :n]`` in place; ``out[:n]`` gets pi. False when a scale is 0.

    Eliminates the last state first: the censored chain on ``{0..k-1}`` is
    ``A[i, j] + A[i, k] * A[k, j] / s`` with ``s = sum_{j<k} A[k, j]`` (= 1 - A[k, k]
    without the cancellation). ``A[k, k]`` keeps ``1 / s`` for the back substitution
    ``pi_k = sum_{i<k} pi_i A[i, k] / s``.
    """
    for k in range(n - 1, 0, -1):
        s = 0.0
        for j in range(k):
            s += A[k, j]
        if not s > 0.0:
            return False
        inv = 1.0 / s
        for i in range(k):
            a = A[i, k] * inv
            if a != 0.0:
                for j in range(k):
                    A[i, j] += a * A[k, j]
        A[k, k] = inv
    out[0] = 1.0
    total = 1.0
    for k in range(1, n):
        t = 0.0
        for i in range(k):
            t += out[i] * A[i, k]
        out[k] = t * A[k, k]
        total += out[k]
    inv = 1.0 / total
    for k in range(n):
        out[k] *= inv
    return True


@njit(cache=True)
def _reducible(P, init, has_init, out):
    """Slow path: classify states, then solve class by class. Returns validity.

    Recurrent classes come from the transitive closure of the support of ``P``.
    One class: its stationary vector, zero on transient states. Several: with
    ``init``, sum over classes C of ``w_C * pi_C`` where ``w_C`` is the
    probability of ending in C (mass already in C plus absorption from the
    transient states through the expected visit counts ``nu (I - Q) = init_T``).
    """
    n = P.shape[0]
    label, ncls = _recurrent_classes(_reach(P))
    if ncls > 1 and not has_init:
        for i in range(n):
            out[i] = np.nan
        return False
    pis = _class_stationary(P, label, ncls)
    if ncls == 1:
        for i in range(n):
            out[i] = pis[0, i]
        return True
    w = _class_weights(P, init, label, ncls)
    for i in range(n):
        t = 0.0
        for c in range(ncls):
            t += w[c] * pis[c, i]
        out[i] = t
    total = 0.0
    for i in range(n):
        total += out[i]
    for i in range(n):
        out[i] /= total
    return True


@njit(cache=True)
def _reach(P):
    """Transitive closure of the support of ``P`` (every state reaches itself)."""
    n = P.shape[0]
    reach = np.zeros((n, n), dtype=np.bool_)
    for i in range(n):
        reach[i, i] = True
        for j in range(n):
            if P[i, j] > 0.0:
                reach[i, j] = True
    for k in range(n):
        for i in range(n):
            if reach[i, k]:
                for j in range(n):
                    if reach[k, j]:
                        reach[i, j] = True
    return reach


@njit(cache=True)
def _recurrent_classes(reach):
    """``(label, count)``: class id of each recurrent state (-1 transient), in order of first state."""
    n = reach.shape[0]
    label = np.full(n, -1, dtype=np.int64)
    ncls = 0
    for i in range(n):
        if label[i] >= 0:
            continue
        rec = True
        for j in range(n):
            if reach[i, j] and not reach[j, i]:
                rec = False
                break
        if rec:
            for j in range(n):
                if reach[i, j]:
                    label[j] = ncls
            ncls += 1
    return label, ncls


@njit(cache=True)
def _class_stationary(P, label, ncls):
    """shape=[ncls, n]: the stationary vector of each closed class (GTH on its block)."""
    n = P.shape[0]
    pis = np.zeros((ncls, n))
    idx = np.empty(n, dtype=np.int64)
    A = np.empty((n, n))
    sub = np.empty(n)
    for c in range(ncls):
        m = 0
        for i in range(n):
            if label[i] == c:
                idx[m] = i
                m += 1
        for a in range(m):
            for b in range(m):
                A[a, b] = P[idx[a], idx[b]]
        if m == 1:
            sub[0] = 1.0
        else:
            _gth(A, m, sub)
        for a in range(m):
            pis[c, idx[a]] = sub[a]
    return pis


@njit(cache=True)
def _class_weights(P, init, label, ncls):
    """Probability of ending in each class from ``init``: mass already there plus what the
    transient states' expected visits ``nu`` (``nu (I - Q) = init_T``) send into it."""
    n = P.shape[0]
    w = np.zeros(ncls)
    tr = np.empty(n, dtype=np.int64)
    nt = 0
    for i in range(n):
        if label[i] >= 0:
            w[label[i]] += init[i]
        else:
            tr[nt] = i
            nt += 1
    if nt == 0:
        return w
    M = np.empty((nt, nt))  # (I - Q)^T
    rhs = np.empty(nt)
    for a in range(nt):
        rhs[a] = init[tr[a]]
        for b in range(nt):
            M[a, b] = (1.0 if a == b else 0.0) - P[tr[b], tr[a]]
    nu = _solve_pivoted(M, rhs)
    for a in range(nt):
        for j in range(n):
            if label[j] >= 0:
                w[label[j]] += nu[a] * P[tr[a], j]
    return w


@njit(cache=True)
def _solve_pivoted(M, rhs):
    """``M x = rhs`` by Gaussian elimination with partial pivoting (``M``, ``rhs`` overwritten)."""
    nt = rhs.shape[0]
    for k in range(nt):
        piv = k
        big = abs(M[k, k])
        for r in range(k + 1, nt):
            if abs(M[r, k]) > big:
                big = abs(M[r, k])
                piv = r
        if piv != k:
            for b in range(nt):
                M[k, b], M[piv, b] = M[piv, b], M[k, b]
            rhs[k], rhs[piv] = rhs[piv], rhs[k]
        for r in range(k + 1, nt):
            f = M[r, k] / M[k, k]
            if f != 0.0:
                for b in range(k, nt):
                    M[r, b] -= f * M[k, b]
                rhs[r] -= f * rhs[k]
    x = np.empty(nt)
    for k in range(nt - 1, -1, -1):
        t = rhs[k]
        for b in range(k + 1, nt):
            t -= M[k, b] * x[b]
        x[k] = t / M[k, k]
    return x


def _batch_impl(P, init, has_init, tol, L, out, valid, bad):
    """GTH over blocks of ``L`` chains, chains innermost (SIMD across chains).

    The arithmetic per chain is exactly that of :func:`_gth` in the same order,
    so results equal the one-chain kernel bit for bit. Lanes that meet a zero
    scale (reducible chains) go to :func:`_reducible`.
    """
    B = P.shape[0]
    n = P.shape[1]
    nblk = (B + L - 1) // L
    istep = 1 if init.shape[0] > 1 else 0
    for blk in prange(nblk):
        c0 = blk * L
        m = min(L, B - c0)
        W = np.empty((n, n, L))
        s = np.empty(L)
        inv = np.empty(L)
        a = np.empty(L)
        ok = np.empty(L, dtype=np.bool_)
        pi = np.empty((n, L))
        tot = np.empty(L)
        for l in range(m):
            c = c0 + l
            flag = False
            for i in range(n):
                rs = 0.0
                lo = 0.0
                hi = 0.0
                for j in range(n):
                    v = P[c, i, j]
                    lo = min(lo, v)
                    hi = max(hi, v)
                    rs += v
                    W[i, j, l] = v
                # NaN fails every comparison, so it is caught by the row sum
                flag |= (lo < 0.0) | (hi > 1.0) | (not abs(rs - 1.0) <= tol)
            bad[c] = 1 if flag else 0
            ok[l] = not flag
        for k in range(n - 1, 0, -1):
            for l in range(m):
                s[l] = 0.0
            for j in range(k):
                for l in range(m):
                    s[l] += W[k, j, l]
            for l in range(m):
                good = s[l] > 0.0
                ok[l] = ok[l] and good
                inv[l] = 1.0 / s[l] if good else 0.0
            for i in range(k):
                for l in range(m):
                    a[l] = W[i, k, l] * inv[l]
                for j in range(k):
                    for l in range(m):
                        W[i, j, l] += a[l] * W[k, j, l]
            for l in range(m):
                W[k, k, l] = inv[l]
        for l in range(m):
            pi[0, l] = 1.0
            tot[l] = 1.0
        for k in range(1, n):
            for l in range(m):
                pi[k, l] = 0.0
            for i in range(k):
                for l in range(m):
                    pi[k, l] += pi[i, l] * W[i, k, l]
            for l in range(m):
                pi[k, l] = pi[k, l] * W[k, k, l]
                tot[l] += pi[k, l]
        for l in range(m):
            c = c0 + l
            if bad[c] != 0:
                valid[c] = False
                continue
            if ok[l]:
                it = 1.0 / tot[l]
                for k in range(n):
                    out[c, k] = pi[k, l] * it
                valid[c] = True
            else:
                valid[c] = _reducible(P[c], init[c * istep], has_init, out[c])
            if valid[c]:
                for i in range(n):
                    if not (out[c, i] >= 0.0 and out[c, i] <= 1.0):
                        # products of transition probabilities underflowed (< ~1e-300)
                        valid[c] = False
                        bad[c] = 2
                if not valid[c]:
                    for i in range(n):
                        out[c, i] = np.nan


_batch_parallel = njit(parallel=True, cache=True, error_model="numpy")(_batch_impl)


@contextmanager
def threads(n: int | None):
    """Run parallel kernels on ``n`` threads inside the block (None: unchanged).

    ``threads(1)`` executes a ``parallel=True`` kernel serially: the
    parallel == serial tests use it instead of compiling a second, serial copy.
    """
    if n is None:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


#: Doubles in one block's work matrix ``W (n, n, lanes)`` (2 MiB): blocks of many
#: small chains stay in L2, a large chain gets one lane (no unused lanes allocated).
_BLOCK_DOUBLES = 2**18


def lanes_for(n: int, B: int) -> int:
    """Chains per block: 64 (n <= 8) or 32 lanes, fewer when ``n * n * lanes`` would pass
    :data:`_BLOCK_DOUBLES`, and never more than the ``B`` chains there are."""
    base = 64 if n <= 8 else 32
    return max(1, min(base, _BLOCK_DOUBLES // max(n * n, 1), B))


def stationary_bytes(B: int, n: int, *, parallel: bool = True) -> int:
    """Bytes the GTH kernel allocates for ``B`` chains of ``n`` states beyond its input.

    Outputs ``B (8 n + 2)``; per running block (one per thread, at most one per block)
    the work matrix and vectors ``8 L (n^2 + n + 4)`` with ``L = lanes_for(n, B)``, plus
    the reducible-chain path ``n^2 (8 + 8 + 1) + 8 n^2`` (closure, class matrix and
    stationary vectors of the classes, the transient system) for one chain at a time.
    """
    if B == 0:
        return 0
    L = lanes_for(n, B)
    blocks = (B + L - 1) // L
    workers = min(blocks, numba.get_num_threads() if parallel else 1)
    per_block = 8 * L * (n * n + n + 4) + 25 * n * n + 64 * n
    return B * (8 * n + 2) + workers * per_block


def _stationary_batch(P3: np.ndarray, init2: np.ndarray | None, *, parallel: bool = True, name: str = "P"):
    """``(pi, valid, code)`` for C-contiguous ``P3`` of shape ``(B, n, n)``.

    ``code``: 0 fine or several recurrent classes, 1 bad input, 2 underflow.
    Memory: :func:`stationary_bytes` beyond ``P3``, checked before anything is
    allocated (``ValueError`` naming ``name``), the same for the parallel and the
    serial (one-thread) path.
    """
    B, n = P3.shape[0], P3.shape[1]
    check_memory(name, stationary_bytes(B, n, parallel=parallel), f"GTH on {B} chains of {n} states")
    out = np.empty((B, n))
    valid = np.zeros(B, dtype=np.bool_)
    bad = np.zeros(B, dtype=np.int8)
    has_init = init2 is not None
    if not has_init:
        init2 = np.zeros((1, n))
    if B:
        lanes = lanes_for(n, B)
        # static scheduling: on the shared 2-core machine dynamic chunks measured slower
        with threads(None if parallel else 1):
            _batch_parallel(P3, init2, has_init, ROW_SUM_TOL * max(n, 1), lanes, out, valid, bad)
    return out, valid, bad


def _raise_bad_matrix(P: np.ndarray) -> None:
    """Raise the ValueError for the first bad entry or row of ``P``."""
    check_range("P", P, 0.0, 1.0)
    n = P.shape[-1]
    rs = P.sum(axis=-1)
    idx = first_bad_index(~(np.abs(rs - 1.0) <= ROW_SUM_TOL * max(n, 1)))
    if idx is not None:
        raise ValueError(
            f"P must be row-stochastic (rows sum to 1 within {ROW_SUM_TOL * n:g}); "
            f"row {idx} sums to {rs[idx]!r}"
        )
    raise ValueError("P is not a valid transition matrix")  # pragma: no cover


def check_init(init, n: int, batch_shape: tuple[int, ...], name: str = "init") -> np.ndarray:
    """``init`` broadcast to ``(B, n)``, each row a probability vector."""
    arr = check_range(name, init, 0.0, 1.0)
    if arr.ndim == 0 or arr.shape[-1] != n:
        raise ValueError(f"{name} must have last axis of length {n}, got shape {arr.shape}")
    sums = arr.sum(axis=-1)
    idx = first_bad_index(~(np.abs(sums - 1.0) <= ROW_SUM_TOL * n))
    if idx is not None:
        where = "" if idx == () else f" at index {idx if len(idx) > 1 else idx[0]}"
        raise ValueError(f"{name} must sum to 1; got {sums[idx].item()!r}{where}")
    try:
        full = np.broadcast_to(arr, (*batch_shape, n))
    except ValueError as exc:
        raise ValueError(
            f"{name} of shape {arr.shape} does not broadcast to batch shape {batch_shape}"
        ) from exc
    if arr.ndim == 1:
        return np.ascontiguousarray(arr.reshape(1, n))
    return np.ascontiguousarray(full.reshape(-1, n))


def stationary(P, *, init=None, return_valid: bool = False):
    """Stationary (long-run average) distribution of row-stochastic matrices.

    Parameters
    ----------
    P : array_like, shape (..., n, n)
        Transition matrices, batched over the leading axes; entries in [0, 1],
        rows summing to 1 (within ``1e-9 * n``).
    init : array_like, shape (n,) or (..., n), optional
        Initial distribution. Used only for chains with more than one recurrent
        class, where the answer is the Cesaro limit
        ``lim (1/T) sum_{t<T} init P^t``.
    return_valid : bool
        Also return the ``valid`` mask (shape ``P.shape[:-2]``).

    Returns
    -------
    pi : ndarray, shape (..., n), float64
        ``pi P = pi``, ``pi >= 0``, ``sum(pi) = 1`` (GTH elimination). For a
        chain with several recurrent classes and no ``init``: NaN in a batch,
        ``ValueError`` for a single chain (``P.ndim == 2``). Chains whose
        probabilities are so small (below ~1e-150) that GTH's products
        underflow are reported the same way instead of answered wrongly.
    valid : ndarray of bool, shape (...)
        Only with ``return_valid=True``.

    Notes
    -----
    Memory, for ``B`` chains of ``n`` states: the float64 C-contiguous copy of
    ``P`` (none when it already is one), ``8 B n`` for the result, and per thread
    one block of ``L`` chains (``8 L n^2`` bytes, at most 2 MiB unless ``n > 512``,
    where ``L = 1``: ``8 n^2``) plus ``25 n^2`` bytes when a chain is reducible
    (:func:`stationary_bytes`). One 1000 x 1000 matrix (8 MB) needs about 8 MB
    of work space beyond its input. A need above the available memory raises
    ``ValueError`` naming ``P`` before anything is allocated.
    """
    check_real("P", P)
    P = as_float64("P", P)
    if P.ndim < 2 or P.shape[-1] != P.shape[-2] or P.shape[-1] == 0:
        raise ValueError(f"P must have shape (..., n, n) with n >= 1, got {P.shape}")
    n = P.shape[-1]
    batch = P.shape[:-2]
    P3 = np.ascontiguousarray(P.reshape((-1, n, n)))
    init2 = None if init is None else check_init(init, n, batch)
    out, valid, code = _stationary_batch(P3, init2)
    if (code == 1).any():
        _raise_bad_matrix(P)
    pi = out.reshape((*batch, n))
    valid = valid.reshape(batch)
    if P.ndim == 2 and not valid and code[0] == 2:
        raise ValueError(
            "P has transition probabilities so small that their products underflow "
            "(GTH produced a non-finite value); rescale or lump those states"
        )
    if P.ndim == 2 and not valid:
        raise ValueError(
            "P has more than one recurrent class, so its stationary vector is not unique; "
            "pass init= to get the long-run average from an initial distribution"
        )
    if return_valid:
        return pi, valid
    return pi
