"""Slow, obvious references for mcsl_core.payment (exact rational arithmetic).

Independent of the kernels: matrices are built by enumerating the actions,
stationary vectors are solved exactly with ``fractions.Fraction``, and the
long-run average of a chain with several recurrent classes is the Abel limit
``(1 - a) init (I - a P)^{-1}`` at ``a = 1 - 10**-30`` (Abel = Cesaro for finite
chains), also exact.
"""

from __future__ import annotations

from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np


def _solve(A: list[list[Fraction]], b: list[Fraction]) -> list[Fraction] | None:
    """Solve A z = b exactly (Gauss-Jordan); None when A is singular."""
    n = len(A)
    M = [[*row[:], b[i]] for i, row in enumerate(A)]
    for k in range(n):
        piv = next((r for r in range(k, n) if M[r][k] != 0), None)
        if piv is None:
            return None
        M[k], M[piv] = M[piv], M[k]
        for r in range(n):
            if r != k and M[r][k] != 0:
                f = M[r][k] / M[k][k]
                M[r] = [a - f * c for a, c in zip(M[r], M[k])]
    return [M[i][n] / M[i][i] for i in range(n)]


def stationary_exact(P, init=None) -> np.ndarray | None:
    """Exact stationary vector of one chain; Abel limit from ``init`` when not unique.

    Returns None when the chain has no unique stationary vector and no init.
    """
    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    F = [[Fraction(float(P[i, j])) for j in range(n)] for i in range(n)]
    # The off-diagonal entries are the data (a float diagonal 1 - 1e-14 has lost
    # the digits of the small exits): the diagonal is 1 - sum(off-diagonal), exactly.
    for i in range(n):
        F[i][i] = 1 - sum((F[i][j] for j in range(n) if j != i), Fraction(0))
    # pi (P - I) = 0 with the last equation replaced by sum(pi) = 1: A = (P - I)^T
    A = [[F[j][i] - (1 if i == j else 0) for j in range(n)] for i in range(n)]
    A[-1] = [Fraction(1)] * n
    b = [Fraction(0)] * (n - 1) + [Fraction(1)]
    z = _solve(A, b)
    if z is not None:
        return np.array([float(v) for v in z])
    if init is None:
        return None
    a = 1 - Fraction(1, 10**30)
    mu = [Fraction(float(v)) for v in np.asarray(init, dtype=np.float64)]
    # z (I - a P) = (1 - a) mu  <=>  (I - a P)^T z^T = (1 - a) mu^T
    A = [[(1 if i == j else 0) - a * F[j][i] for j in range(n)] for i in range(n)]
    z = _solve(A, [(1 - a) * m for m in mu])
    return np.array([float(v) for v in z])


def game_matrix(p, q, game: str) -> np.ndarray:
    """Transition matrix by enumerating both players' actions (1 = c)."""
    P = np.zeros((4, 4))
    for s in range(4):
        for lead in (1, 0):
            pl = p[s] if lead else 1 - p[s]
            for req in (1, 0):
                if game == "leader_follower":
                    qc = q[0] if lead else q[1]
                else:
                    last_lead, last_req = s // 2 == 0, s % 2 == 0
                    own = (0 if last_req else 2) + (0 if last_lead else 1)
                    qc = q[own]
                pr = qc if req else 1 - qc
                nxt = (0 if lead else 2) + (0 if req else 1)
                P[s, nxt] += pl * pr
    return P


def long_run_ref(p, q, x, y, game: str = "leader_follower", init=None):
    """(v, E_b, E_r) or None, from the exact stationary vector."""
    v = stationary_exact(game_matrix(p, q, game), init)
    if v is None:
        return None
    return v, float(v @ np.asarray(x)), float(v @ np.asarray(y))


def settle_ref(amounts, trainings, aggs, blocks, w_l, w_a, w_b, minor_unit: str = "0.01"):
    """(total, exact shares in minor units as Decimal) with Decimal arithmetic.

    ``minor_unit`` must be a power of ten written as a decimal string, so the
    division is exact.
    """
    getcontext().prec = 2000
    mu = Decimal(minor_unit)
    shares = [Decimal(float(a)) / mu for a in amounts]
    shares += [Decimal(float(w_l)) * int(t) / mu for t in trainings]
    shares += [
        (Decimal(float(w_a)) * int(a) + Decimal(float(w_b)) * int(b)) / mu for a, b in zip(aggs, blocks)
    ]
    W = sum(shares, Decimal(0))
    total = int(W.to_integral_value(rounding="ROUND_HALF_EVEN"))
    return total, shares
