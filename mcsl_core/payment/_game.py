"""The repeated payment game between the leader and the requestor (paper IV-D).

States ``a_b a_r`` in the order cc, cd, dc, dd (leader's action first). The
leader plays a memory-one strategy ``p`` (probability of c given last round's
state). Two games:

``"leader_follower"`` (the paper's)
    the requestor sees the leader's current action and plays c with ``q1``
    after a leader c and ``q2`` after a leader d, so ``q = (q1, q2)``.
``"simultaneous"`` (classic iterated game, for checks against the literature)
    the requestor is memory-one too, ``q = (q1..q4)`` indexed by the state
    seen from the requestor (its own action first), as in Press-Dyson and the
    axelrod package: its ``q2`` applies after the leader-perspective state dc.

Leader-follower closed form. With ``a = q1 p1 + (1 - q1) p2`` (leader keeps c)
and ``b = q2 p3 + (1 - q2) p4`` (leader moves d -> c) the leader's action is a
two-state chain, its stationary probability of c is ``pi_c = b / ((1 - a) + b)``
and the state vector is ``(pi_c q1, pi_c (1 - q1), (1 - pi_c) q2,
(1 - pi_c)(1 - q2))``. ``(1 - a) + b = 0`` (a = 1, b = 0) means the leader never
changes its action: two recurrent classes; with ``init`` the leader's first
action is c with probability ``init . p`` and stays.

numba module: imports no JAX.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from mcsl_core._validation import (
    as_float64,
    check_finite,
    check_memory,
    check_range,
    check_real,
    check_scalar,
)
from mcsl_core.payment._markov import _stationary_batch, check_init, stationary_bytes

__all__ = [
    "GAMES",
    "PAPER_X",
    "PAPER_Y",
    "LongRun",
    "long_run",
    "tit_for_tat",
    "transition_matrix",
    "win_stay_lose_shift",
    "zd_phi_bounds",
    "zd_strategy",
]

GAMES = ("leader_follower", "simultaneous")

#: Payoffs used in the paper's experiments (Section V-C): leader x, requestor y.
PAPER_X = (6.0, 3.0, 8.0, 5.0)
PAPER_Y = (6.0, 8.0, 3.0, 5.0)

#: Bytes per pair: transition_matrix (result 16 doubles + 4 column blocks of 4 +
#: their broadcast products), long_run leader-follower (p, q copies, v, E_b, E_r, flags).
TM_BYTES_PER_PAIR = 384
LF_BYTES_PER_PAIR = 8 * (4 + 2 + 4 + 2) + 2

#: Requestor's own-perspective index for each leader-perspective state (cd <-> dc).
_SWAP = np.array([0, 2, 1, 3])


class LongRun(NamedTuple):
    """Long-run averages of the repeated game (NaN where ``valid`` is False)."""

    v: np.ndarray  # shape=[..., 4], dtype=float64: state frequencies cc, cd, dc, dd
    E_b: np.ndarray  # shape=[...], dtype=float64: leader's expected payoff v . x
    E_r: np.ndarray  # shape=[...], dtype=float64: requestor's expected payoff v . y
    valid: np.ndarray  # shape=[...], dtype=bool: unique long run (or init given)


def _check_game(game: str) -> str:
    if game not in GAMES:
        raise ValueError(f"game must be one of {GAMES}, got {game!r}")
    return game


def _q_len(game: str) -> int:
    return 2 if game == "leader_follower" else 4


def _check_strategies(p, q, game: str) -> tuple[np.ndarray, np.ndarray]:
    check_real("p", p)
    check_real("q", q)
    p = as_float64("p", p)
    q = as_float64("q", q)
    if p.ndim == 0 or p.shape[-1] != 4:
        raise ValueError(f"p must have last axis of length 4, got shape {p.shape}")
    m = _q_len(game)
    if q.ndim == 0 or q.shape[-1] != m:
        raise ValueError(f"q must have last axis of length {m} for game={game!r}, got shape {q.shape}")
    return p, q


def _batch_shape(p: np.ndarray, q: np.ndarray, init=None) -> tuple[int, ...]:
    """Broadcast leading axes of p, q (and init, when given)."""
    try:
        shape = np.broadcast_shapes(p.shape[:-1], q.shape[:-1])
    except ValueError as exc:
        raise ValueError(
            f"p of shape {p.shape} and q of shape {q.shape} do not broadcast over leading axes"
        ) from exc
    if init is not None:
        lead = np.shape(init)[:-1]
        try:
            shape = np.broadcast_shapes(shape, lead)
        except ValueError as exc:
            raise ValueError(
                f"init of shape {np.shape(init)} does not broadcast with p and q (batch {shape})"
            ) from exc
    return shape


def _batch_size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=object))  # exact: a huge batch must not wrap to a small one


def _check_payoff(name: str, x) -> np.ndarray:
    check_real(name, x)
    x = check_finite(name, x)
    if x.shape != (4,):
        raise ValueError(f"{name} must have shape (4,), got {x.shape}")
    return x


def transition_matrix(p, q, *, game: str = "leader_follower") -> np.ndarray:
    """Transition matrix of the repeated game over states cc, cd, dc, dd.

    Parameters
    ----------
    p : array_like, shape (..., 4)
        Leader's memory-one strategy: probability of c after cc, cd, dc, dd.
    q : array_like, shape (..., 2) or (..., 4)
        Requestor: ``(q1, q2)`` for ``game="leader_follower"`` (c after the
        leader's current c / d), memory-one in its own perspective for
        ``game="simultaneous"``.

    Returns
    -------
    ndarray, shape (..., 4, 4), float64
        Leader-follower: row s is ``(p_s q1, p_s (1-q1), (1-p_s) q2, (1-p_s)(1-q2))``.
        Simultaneous: with ``r_s`` the requestor's probability of c after state s,
        row s is ``(p_s r_s, p_s (1-r_s), (1-p_s) r_s, (1-p_s)(1-r_s))``.

    Notes
    -----
    Memory for a batch of ``B`` pairs: ``TM_BYTES_PER_PAIR * B`` = 384 B bytes
    (the result, 128 B, and the four column blocks it is joined from); more than
    is available raises ``ValueError`` naming ``p`` before anything is allocated.
    """
    _check_game(game)
    p, q = _check_strategies(p, q, game)
    check_range("p", p, 0.0, 1.0)
    check_range("q", q, 0.0, 1.0)
    shape = _batch_shape(p, q)
    B = _batch_size(shape)
    check_memory("p", TM_BYTES_PER_PAIR * B, f"transition matrices of {B} pairs")
    p = np.broadcast_to(p, (*shape, 4))
    q = np.broadcast_to(q, (*shape, q.shape[-1]))
    ps = p[..., :, None]
    if game == "leader_follower":
        rc = np.broadcast_to(q[..., None, 0:1], (*shape, 4, 1))
        rd = np.broadcast_to(q[..., None, 1:2], (*shape, 4, 1))
        cols = [ps * rc, ps * (1.0 - rc), (1.0 - ps) * rd, (1.0 - ps) * (1.0 - rd)]
    else:
        r = q[..., _SWAP][..., :, None]
        cols = [ps * r, ps * (1.0 - r), (1.0 - ps) * r, (1.0 - ps) * (1.0 - r)]
    return np.ascontiguousarray(np.concatenate(cols, axis=-1))


@njit(cache=True, inline="always")
def _lf_pc(p1, p2, p3, p4, q1, q2):
    """Stationary probability that the leader plays c; NaN when not unique."""
    na = q1 * (1.0 - p1) + (1.0 - q1) * (1.0 - p2)
    b = q2 * p3 + (1.0 - q2) * p4
    den = na + b
    if den > 0.0:
        return b / den
    return np.nan


def _lf_impl(p, q, x, y, init, has_init, v, Eb, Er, valid, bad):
    B = p.shape[0]
    istep = 1 if init.shape[0] > 1 else 0
    for i in prange(B):
        p1 = p[i, 0]
        p2 = p[i, 1]
        p3 = p[i, 2]
        p4 = p[i, 3]
        q1 = q[i, 0]
        q2 = q[i, 1]
        ok = (
            (p1 >= 0.0)
            & (p1 <= 1.0)
            & (p2 >= 0.0)
            & (p2 <= 1.0)
            & (p3 >= 0.0)
            & (p3 <= 1.0)
            & (p4 >= 0.0)
            & (p4 <= 1.0)
            & (q1 >= 0.0)
            & (q1 <= 1.0)
            & (q2 >= 0.0)
            & (q2 <= 1.0)
        )
        bad[i] = not ok
        pc = _lf_pc(p1, p2, p3, p4, q1, q2)
        if pc != pc and has_init:
            # the leader never changes action: its first move decides
            ii = i * istep
            pc = init[ii, 0] * p1 + init[ii, 1] * p2 + init[ii, 2] * p3 + init[ii, 3] * p4
        valid[i] = ok and pc == pc
        s0 = pc * q1
        s1 = pc * (1.0 - q1)
        s2 = (1.0 - pc) * q2
        s3 = (1.0 - pc) * (1.0 - q2)
        v[i, 0] = s0
        v[i, 1] = s1
        v[i, 2] = s2
        v[i, 3] = s3
        Eb[i] = s0 * x[0] + s1 * x[1] + s2 * x[2] + s3 * x[3]
        Er[i] = s0 * y[0] + s1 * y[1] + s2 * y[2] + s3 * y[3]


_lf_parallel = njit(parallel=True, cache=True, error_model="numpy")(_lf_impl)


def long_run(p, q, x, y, *, game: str = "leader_follower", init=None) -> LongRun:
    """Long-run state frequencies and expected payoffs of the repeated game.

    Parameters
    ----------
    p : array_like, shape (..., 4)
        Leader's memory-one strategy (probability of c after cc, cd, dc, dd).
    q : array_like, shape (..., 2) or (..., 4)
        Requestor's strategy (see :func:`transition_matrix`). ``p`` and ``q``
        broadcast over their leading axes.
    x, y : array_like, shape (4,)
        Payoffs of the leader and the requestor in states cc, cd, dc, dd.
    game : {"leader_follower", "simultaneous"}
    init : array_like, shape (4,) or (..., 4), optional
        Distribution of the first state; decides the long-run average (Cesaro
        limit) where the chain has several recurrent classes.

    Returns
    -------
    LongRun
        ``v`` (stationary vector), ``E_b = v . x``, ``E_r = v . y`` and
        ``valid``. Points without a unique long run and without ``init`` are
        reported with ``valid`` False and NaN (paper IV-D; the leader-follower
        game uses the closed form in the module docstring, the simultaneous one
        GTH on the 4x4 matrix).

    Notes
    -----
    Memory for ``B`` pairs: leader-follower ``LF_BYTES_PER_PAIR * B`` = 98 B bytes
    (contiguous copies of ``p`` and ``q``, ``v``, ``E_b``, ``E_r`` and two flags);
    simultaneous: the transition matrices (384 B) plus GTH on them
    (:func:`~mcsl_core.payment._markov.stationary_bytes`, about 34 B), plus 32 B
    for a batched ``init``. More than is available raises ``ValueError`` naming
    ``p`` before the kernel runs.
    """
    _check_game(game)
    p, q = _check_strategies(p, q, game)
    x = _check_payoff("x", x)
    y = _check_payoff("y", y)
    shape = _batch_shape(p, q, init)
    B = _batch_size(shape)
    if game == "leader_follower":
        check_memory("p", LF_BYTES_PER_PAIR * B, f"long run of {B} leader-follower pairs")
    else:
        check_memory("p", TM_BYTES_PER_PAIR * B + stationary_bytes(B, 4), f"long run of {B} pairs")
    init2 = None if init is None else check_init(init, 4, shape)
    if game == "simultaneous":
        P = transition_matrix(p, q, game=game)
        out, valid, _ = _stationary_batch(P.reshape(-1, 4, 4), init2, name="p")
        v = out.reshape((*shape, 4))
        valid = valid.reshape(shape)
        return LongRun(v, v @ x, v @ y, valid)
    pb = np.ascontiguousarray(np.broadcast_to(p, (*shape, 4)).reshape(-1, 4))
    qb = np.ascontiguousarray(np.broadcast_to(q, (*shape, 2)).reshape(-1, 2))
    B = pb.shape[0]
    v = np.empty((B, 4))
    Eb = np.empty(B)
    Er = np.empty(B)
    valid = np.empty(B, dtype=np.bool_)
    bad = np.empty(B, dtype=np.bool_)
    has_init = init2 is not None
    if not has_init:
        init2 = np.zeros((1, 4))
    if B:
        _lf_parallel(pb, qb, x, y, init2, has_init, v, Eb, Er, valid, bad)
    if bad.any():
        check_range("p", p, 0.0, 1.0)
        check_range("q", q, 0.0, 1.0)
    return LongRun(v.reshape((*shape, 4)), Eb.reshape(shape), Er.reshape(shape), valid.reshape(shape))


def _zd_direction(x: np.ndarray, y: np.ndarray, chi: float) -> np.ndarray:
    return (x - x[0]) - chi * (y - y[0])


def _check_chi(chi) -> float:
    chi = check_scalar("chi", chi)
    if not chi >= 1.0:
        raise ValueError(f"chi must be >= 1 (cooperation-enforcing ZD), got {chi!r}")
    return chi


def zd_phi_bounds(x, y, chi: float) -> tuple[float, float]:
    """Feasible range of phi for the cooperation-enforcing ZD strategy.

    The strategy ``p = (1, 1, 0, 0) + phi d`` with ``d = (x - x1) - chi (y - y1)``
    must have every entry in [0, 1] and ``phi != 0`` (paper IV-D, Theorem IV.2).

    Returns
    -------
    (lo, hi) : tuple of float
        Feasible phi satisfy ``lo <= phi <= hi`` and ``phi != 0``; one end is 0
        (excluded). With the paper's payoffs phi lies in ``(0, hi]``.

    Raises
    ------
    ValueError
        When no phi other than 0 is feasible, or chi < 1.
    """
    x = _check_payoff("x", x)
    y = _check_payoff("y", y)
    chi = _check_chi(chi)
    d = _zd_direction(x, y, chi)
    base = np.array([1.0, 1.0, 0.0, 0.0])
    lo, hi = -np.inf, np.inf
    for b, di in zip(base, d):
        if di == 0.0:
            continue
        # 0 <= b + phi di <= 1
        a1, a2 = (0.0 - b) / di, (1.0 - b) / di
        lo = max(lo, min(a1, a2))
        hi = min(hi, max(a1, a2))
    if not (lo < 0.0 or hi > 0.0) or lo > hi or (lo == 0.0 and hi == 0.0):
        raise ValueError(
            f"no phi != 0 gives a ZD strategy with entries in [0, 1] for x={x.tolist()}, "
            f"y={y.tolist()}, chi={chi!r}"
        )
    return float(lo) + 0.0, float(hi) + 0.0  # + 0.0 turns -0.0 into 0.0


def zd_strategy(x, y, chi: float, phi: float) -> np.ndarray:
    """Cooperation-enforcing ZD strategy of the leader (paper IV-D).

    ``p~ = (p1 - 1, p2 - 1, p3, p4) = phi ((x - x1 1) - chi (y - y1 1))``, which
    enforces ``E_b - x1 = chi (E_r - y1)`` against every requestor strategy.
    Entries within 1e-12 of 0 or 1 through round-off at a bound of phi are set
    to that bound exactly.

    Parameters
    ----------
    x, y : array_like, shape (4,)
        Payoffs of leader and requestor (cc, cd, dc, dd).
    chi : float, >= 1
    phi : float, in the range given by :func:`zd_phi_bounds`, nonzero

    Returns
    -------
    ndarray, shape (4,), float64
    """
    lo, hi = zd_phi_bounds(x, y, chi)
    phi = check_scalar("phi", phi)
    if phi == 0.0 or not (lo - 1e-15 * abs(lo) <= phi <= hi + 1e-15 * abs(hi)):
        a = "(" if lo == 0.0 else "["
        b = ")" if hi == 0.0 else "]"
        raise ValueError(f"phi must lie in {a}{lo:.17g}, {hi:.17g}{b} and be nonzero; got {phi!r}")
    x = _check_payoff("x", x)
    y = _check_payoff("y", y)
    p = np.array([1.0, 1.0, 0.0, 0.0]) + phi * _zd_direction(x, y, chi)
    p = np.where(np.abs(p) < 1e-12, 0.0, p)
    p = np.where(np.abs(p - 1.0) < 1e-12, 1.0, p)
    return p


def tit_for_tat() -> np.ndarray:
    """The leader copies the requestor's last action: ``p = (1, 0, 1, 0)``."""
    return np.array([1.0, 0.0, 1.0, 0.0])


def win_stay_lose_shift(x, aspiration: float | None = None) -> np.ndarray:
    """Win-stay-lose-shift for the leader.

    The leader repeats its last action after a payoff above ``aspiration``
    (a win) and switches otherwise. The default aspiration is the midpoint of
    the second and third largest payoffs, so the two best outcomes are wins
    (Nowak-Sigmund Pavlov); with the paper's ``x = (6, 3, 8, 5)`` it is 5.5 and
    ``p = (1, 0, 0, 1)``.

    Returns
    -------
    ndarray, shape (4,), float64
    """
    x = _check_payoff("x", x)
    if aspiration is None:
        s = np.sort(x)
        aspiration = 0.5 * (s[1] + s[2])
    aspiration = check_scalar("aspiration", aspiration)
    win = x > aspiration
    played_c = np.array([True, True, False, False])
    return np.where(win == played_c, 1.0, 0.0)
