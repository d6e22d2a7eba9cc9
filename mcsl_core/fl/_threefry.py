"""JAX's Threefry-2x32 draws in numba, bit for bit, for host-side epoch orders.

The packed-lane trainer (:mod:`mcsl_core.fl._packed`) lays out every client's
per-epoch shuffle before a compiled run; drawing those uniforms with XLA on the
CPU costs more than the training it schedules, so they are drawn here (a numba
module: it imports no JAX, as DESIGN.md asks) and checked against
``jax.random`` bit for bit in ``tests/fl/test_packed.py``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["draws_numba"]

_M32 = np.uint64(0xFFFFFFFF)


@numba.njit(inline="always")
def _mix4(x0, x1, r0, r1, r2, r3):
    """Four Threefry rounds on 32-bit words held in uint64 (numba widens uint32 arithmetic)."""
    for r in (r0, r1, r2, r3):
        x0 = (x0 + x1) & _M32
        x1 = ((x1 << np.uint64(r)) | (x1 >> np.uint64(32 - r))) & _M32
        x1 = x1 ^ x0
    return x0, x1


@numba.njit(inline="always")
def _threefry(k0, k1, x0, x1):
    """Threefry-2x32, 20 rounds, on one count pair (as jax's ``threefry_2x32``)."""
    k2 = k0 ^ k1 ^ np.uint64(0x1BD11BDA)
    x0, x1 = (x0 + k0) & _M32, (x1 + k1) & _M32
    x0, x1 = _mix4(x0, x1, 13, 15, 26, 6)
    x0, x1 = (x0 + k1) & _M32, (x1 + k2 + np.uint64(1)) & _M32
    x0, x1 = _mix4(x0, x1, 17, 29, 16, 24)
    x0, x1 = (x0 + k2) & _M32, (x1 + k0 + np.uint64(2)) & _M32
    x0, x1 = _mix4(x0, x1, 13, 15, 26, 6)
    x0, x1 = (x0 + k0) & _M32, (x1 + k1 + np.uint64(3)) & _M32
    x0, x1 = _mix4(x0, x1, 17, 29, 16, 24)
    x0, x1 = (x0 + k1) & _M32, (x1 + k2 + np.uint64(4)) & _M32
    x0, x1 = _mix4(x0, x1, 13, 15, 26, 6)
    return (x0 + k2) & _M32, (x1 + k0 + np.uint64(5)) & _M32


@numba.njit(parallel=True, cache=True)
def draws_numba(keys, r, cl, e, seg_start, out):
    """``out[seg_start[g] + i]``: the float32 bits of ``1 + uniform(fold_in(key_g, i))`` with ``key_g =
    fold_in(fold_in(fold_in(keys[g], r[g]), cl[g]), e[g])`` (jax's threefry keys:
    ``fold_in(k, d) = threefry(k, (0, d))``; ``uniform``: ``bits = ^`` of
    ``threefry(k, (0, 0))``, mantissa ``bits >> 9`` in [1, 2), minus 1)."""
    zero = np.uint64(0)
    for g in numba.prange(r.size):
        a, b = _threefry(np.uint64(keys[g, 0]), np.uint64(keys[g, 1]), zero, np.uint64(r[g]))
        a, b = _threefry(a, b, zero, np.uint64(cl[g]))
        a, b = _threefry(a, b, zero, np.uint64(e[g]))
        for i in range(seg_start[g + 1] - seg_start[g]):
            c, d = _threefry(a, b, zero, np.uint64(i))
            c, d = _threefry(c, d, zero, zero)
            out[seg_start[g] + i] = np.uint32(((c ^ d) >> np.uint64(9)) | np.uint64(0x3F800000))
