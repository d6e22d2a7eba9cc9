"""Monte Carlo play and requestor learning dynamics (paper V-C, Figs. 7 and 8).

Randomness: the public wrappers draw one xoshiro256+ state per independent
instance from ``np.random.default_rng(seed)``; the numba kernels only loop, so
results depend on the seed alone (not on the thread count) and the parallel
kernel equals the serial one.

numba module: imports no JAX.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from mcsl_core._names import REQUESTOR_RULES
from mcsl_core._validation import check_int_scalar, check_memory, check_range, check_scalar
from mcsl_core.payment._game import (
    PAPER_X,
    PAPER_Y,
    _batch_shape,
    _batch_size,
    _check_game,
    _check_payoff,
    _check_strategies,
    _lf_pc,
)
from mcsl_core.payment._markov import check_init, threads

__all__ = ["RULES", "Trajectory", "evolve_requestor", "simulate_play"]

RULES = REQUESTOR_RULES

_INT64_MAX = 2**63 - 1  # the kernels count rounds and steps in int64

#: Bytes per pair of simulate_play: p (32), q (<= 32), init (32), seeds (32),
#: counts (32), the float result (32) and the division's temporary (32).
PLAY_BYTES_PER_PAIR = 224
#: Bytes per pair and recorded step of evolve_requestor: q (16), E_b, E_r (8 each), valid (1).
TRAJ_BYTES_PER_RECORD = 33


@njit(cache=True, inline="always")
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@njit(cache=True, inline="always")
def _next(s0, s1, s2, s3):
    """xoshiro256+: a uniform double in [0, 1) and the new state."""
    result = s0 + s3
    t = s1 << np.uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    u = np.float64(result >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return u, s0, s1, s2, s3


@njit(cache=True, inline="always")
def _draw_state(init_row, u):
    acc = 0.0
    for k in range(3):
        acc += init_row[k]
        if u < acc:
            return k
    return 3


def _seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    st = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64, endpoint=False)
    st[:, 0] |= np.uint64(1)  # never the all-zero state
    return st


def _play_impl(p, q, lf, rounds, init, seeds, counts):
    B = p.shape[0]
    istep = 1 if init.shape[0] > 1 else 0
    for i in prange(B):
        s0 = seeds[i, 0]
        s1 = seeds[i, 1]
        s2 = seeds[i, 2]
        s3 = seeds[i, 3]
        ii = i * istep
        u, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
        st = _draw_state(init[ii], u)
        for _ in range(rounds):
            u, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
            lead_d = 0 if u < p[i, st] else 1
            u, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
            if lf:
                qr = q[i, lead_d]
            else:
                # requestor's own perspective: leader states cd and dc swap
                qr = q[i, st if st == 0 or st == 3 else 3 - st]
            req_d = 0 if u < qr else 1
            st = 2 * lead_d + req_d
            counts[i, st] += 1


_play_parallel = njit(parallel=True, cache=True)(_play_impl)


def simulate_play(
    p,
    q,
    rounds: int,
    *,
    game: str = "leader_follower",
    seed: int,
    init=None,
    _parallel: bool = True,
) -> np.ndarray:
    """Monte Carlo repeated play; fraction of rounds spent in each state.

    Parameters
    ----------
    p : array_like, shape (..., 4)
        Leader's memory-one strategy.
    q : array_like, shape (..., 2) or (..., 4)
        Requestor's strategy (see :func:`transition_matrix`); broadcasts with ``p``.
    rounds : int
        Rounds played after the initial state.
    game : {"leader_follower", "simultaneous"}
    seed : int
        Seed of ``np.random.default_rng``; one independent stream per pair.
    init : array_like, shape (4,) or (..., 4), optional
        Distribution of the initial state (round 0, not counted); uniform by default.

    Returns
    -------
    ndarray, shape (..., 4), float64
        Frequencies of cc, cd, dc, dd over rounds 1..rounds; they converge to
        ``long_run(p, q, ...).v`` (with the same ``init`` for reducible chains).

    Notes
    -----
    Memory for ``B`` pairs: ``PLAY_BYTES_PER_PAIR * B`` = 224 B bytes (copies of
    ``p``, ``q`` and ``init``, seeds, int64 counts and the float result),
    independent of ``rounds``; more than is available raises ``ValueError``
    naming ``p`` before the kernel runs (parallel and serial alike).
    """
    _check_game(game)
    p, q = _check_strategies(p, q, game)
    check_range("p", p, 0.0, 1.0)
    check_range("q", q, 0.0, 1.0)
    rounds = check_int_scalar("rounds", rounds, 1, _INT64_MAX)
    shape = _batch_shape(p, q, init)
    B = _batch_size(shape)
    check_memory("p", PLAY_BYTES_PER_PAIR * B, f"play of {B} pairs")
    init2 = check_init(np.full(4, 0.25) if init is None else init, 4, shape)
    pb = np.ascontiguousarray(np.broadcast_to(p, (*shape, 4)).reshape(-1, 4))
    qb = np.ascontiguousarray(np.broadcast_to(q, (*shape, q.shape[-1])).reshape(-1, q.shape[-1]))
    B = pb.shape[0]
    counts = np.zeros((B, 4), dtype=np.int64)
    seeds = _seeds(np.random.default_rng(seed), B)
    if B:
        with threads(None if _parallel else 1):
            _play_parallel(pb, qb, game == "leader_follower", rounds, init2, seeds, counts)
    return (counts / rounds).reshape((*shape, 4))


class Trajectory(NamedTuple):
    """Recorded path of the requestor's strategy and the long-run payoffs."""

    t: np.ndarray  # shape=[R], dtype=int64: step (gradient) or round (bush_mosteller)
    q: np.ndarray  # shape=[R, ..., 2], dtype=float64: requestor's (q1, q2)
    E_b: np.ndarray  # shape=[R, ...], dtype=float64: leader's long-run payoff at q
    E_r: np.ndarray  # shape=[R, ...], dtype=float64: requestor's long-run payoff at q
    valid: np.ndarray  # shape=[R, ...], dtype=bool: unique long run at q


@njit(cache=True, inline="always")
def _lf_payoffs(p, q1, q2, x, y):
    pc = _lf_pc(p[0], p[1], p[2], p[3], q1, q2)
    s0 = pc * q1
    s1 = pc * (1.0 - q1)
    s2 = (1.0 - pc) * q2
    s3 = (1.0 - pc) * (1.0 - q2)
    eb = s0 * x[0] + s1 * x[1] + s2 * x[2] + s3 * x[3]
    er = s0 * y[0] + s1 * y[1] + s2 * y[2] + s3 * y[3]
    return eb, er


@njit(cache=True, inline="always")
def _grad_er(p, q1, q2, y):
    """d E_r / d(q1, q2) in the leader-follower game (closed form; NaN if not unique).

    ``E_r = pi_c u_c + (1 - pi_c) u_d`` with ``u_c = q1 y1 + (1-q1) y2``,
    ``u_d = q2 y3 + (1-q2) y4`` and ``pi_c = b / (na + b)``.
    """
    na = q1 * (1.0 - p[0]) + (1.0 - q1) * (1.0 - p[1])
    b = q2 * p[2] + (1.0 - q2) * p[3]
    den = na + b
    if not den > 0.0:
        return np.nan, np.nan
    pc = b / den
    uc = q1 * y[0] + (1.0 - q1) * y[1]
    ud = q2 * y[2] + (1.0 - q2) * y[3]
    dpc1 = -b * (p[1] - p[0]) / (den * den)
    dpc2 = (p[2] - p[3]) * na / (den * den)
    g1 = dpc1 * (uc - ud) + pc * (y[0] - y[1])
    g2 = dpc2 * (uc - ud) + (1.0 - pc) * (y[2] - y[3])
    return g1, g2


def _clip01(v):
    return min(1.0, max(0.0, v))


_clip01 = njit(cache=True, inline="always")(_clip01)


def _gradient_impl(p, q0, x, y, steps, lr, every, tq, teb, ter, tval):
    B = p.shape[0]
    for i in prange(B):
        q1 = q0[i, 0]
        q2 = q0[i, 1]
        alive = True
        r = 0
        for k in range(steps + 1):
            if k % every == 0:
                eb, er = _lf_payoffs(p[i], q1, q2, x, y)
                tq[r, i, 0] = q1
                tq[r, i, 1] = q2
                teb[r, i] = eb
                ter[r, i] = er
                tval[r, i] = alive and eb == eb
                r += 1
            if k == steps:
                break
            if alive:
                g1, g2 = _grad_er(p[i], q1, q2, y)
                if g1 != g1:
                    alive = False  # no unique long run here: the gradient does not exist
                else:
                    q1 = _clip01(q1 + lr * g1)
                    q2 = _clip01(q2 + lr * g2)


_gradient_parallel = njit(parallel=True, cache=True)(_gradient_impl)


def _bm_impl(p, q0, x, y, steps, lr, aspiration, scale, every, seeds, tq, teb, ter, tval):
    B = p.shape[0]
    for i in prange(B):
        s0 = seeds[i, 0]
        s1 = seeds[i, 1]
        s2 = seeds[i, 2]
        s3 = seeds[i, 3]
        q = np.empty(2)
        q[0] = q0[i, 0]
        q[1] = q0[i, 1]
        u, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
        st = int(u * 4.0)  # uniform initial state
        r = 0
        for k in range(steps + 1):
            if k % every == 0:
                eb, er = _lf_payoffs(p[i], q[0], q[1], x, y)
                tq[r, i, 0] = q[0]
                tq[r, i, 1] = q[1]
                teb[r, i] = eb
                ter[r, i] = er
                tval[r, i] = eb == eb
                r += 1
            if k == steps:
                break
            u, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
            lead_d = 0 if u < p[i, st] else 1
            u, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
            req_d = 0 if u < q[lead_d] else 1
            st = 2 * lead_d + req_d
            sig = (y[st] - aspiration) / scale
            qk = q[lead_d]
            # Bush-Mosteller: reinforce the action taken when sig > 0, weaken it when < 0
            if req_d == 0:
                qk = qk + lr * sig * (1.0 - qk) if sig >= 0.0 else qk + lr * sig * qk
            else:
                qk = qk - lr * sig * qk if sig >= 0.0 else qk - lr * sig * (1.0 - qk)
            q[lead_d] = qk


_bm_parallel = njit(parallel=True, cache=True)(_bm_impl)


def evolve_requestor(
    p,
    q0,
    *,
    rule: str = "gradient",
    steps: int,
    lr: float,
    seed: int = 0,
    x=PAPER_X,
    y=PAPER_Y,
    record_every: int = 1,
    aspiration: float | None = None,
    _parallel: bool = True,
) -> Trajectory:
    """Trajectories of an adapting requestor against a fixed leader strategy.

    Leader-follower game only (the paper's). Two learning rules:

    ``"gradient"``
        projected gradient ascent on the requestor's long-run payoff,
        ``q <- clip(q + lr * dE_r/dq, 0, 1)`` with the closed-form gradient
        (the adapting opponent of Press-Dyson 2012 and Chen-Zinger 2014).
        Deterministic; ``seed`` is unused. A path that reaches a point without
        a unique long run (no gradient) stops there and is recorded invalid.
    ``"bush_mosteller"``
        reinforcement from realised payoffs in simulated play (Bush-Mosteller,
        as in Macy-Flache 2002): each round the leader moves by ``p``, the
        requestor plays c with ``q1`` / ``q2`` after the leader's c / d, gets
        ``y_s`` and, with stimulus ``sig = (y_s - A) / max|y - A|``, moves the
        probability of the action it took towards 1 by ``lr * sig`` of the gap
        when ``sig >= 0`` and towards 0 by ``lr * |sig|`` of it otherwise. Only
        the ``q`` of the current context (leader c or d) changes. The
        aspiration ``A`` defaults to the mean of ``y``.

    Parameters
    ----------
    p : array_like, shape (..., 4)
        Leader's memory-one strategy; broadcasts with ``q0``.
    q0 : array_like, shape (..., 2)
        Initial ``(q1, q2)``.
    steps : int
        Gradient steps, or rounds of play for ``"bush_mosteller"``.
    lr : float, > 0
        Step size (gradient) or learning rate in (0, 1] (Bush-Mosteller).
    seed : int
        Seed for ``"bush_mosteller"`` (one stream per batch element).
    x, y : array_like, shape (4,)
        Payoffs; the paper's by default.
    record_every : int
        Record every this many steps (and step 0).

    Returns
    -------
    Trajectory
        ``E_b``/``E_r`` are the long-run payoffs at the recorded ``q`` (paper
        IV-D); ``t`` holds the step numbers.

    Notes
    -----
    Memory: ``TRAJ_BYTES_PER_RECORD * R * B + 8 R + 128 B`` bytes for ``B`` pairs
    and ``R = steps // record_every + 1`` records (33 bytes per pair and record);
    more than is available raises ``ValueError`` naming ``steps`` before anything
    is allocated (parallel and serial alike).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    p, q0 = _check_strategies(p, q0, "leader_follower")
    check_range("p", p, 0.0, 1.0)
    check_range("q0", q0, 0.0, 1.0)
    x = _check_payoff("x", x)
    y = _check_payoff("y", y)
    steps = check_int_scalar("steps", steps, 0, _INT64_MAX - 1)
    every = check_int_scalar("record_every", record_every, 1, _INT64_MAX)
    hi = 1.0 if rule == "bush_mosteller" else None
    if np.ndim(lr) != 0:
        raise ValueError(f"lr must be a scalar, got shape {np.shape(lr)}")
    lr = float(check_range("lr", lr, 0.0, hi, lo_open=True).reshape(-1)[0])
    shape = _batch_shape(p, q0)
    B = _batch_size(shape)
    R = steps // every + 1
    check_memory(
        "steps",
        TRAJ_BYTES_PER_RECORD * R * B + 8 * R + 128 * B,
        f"{R} records of {B} trajectories; raise record_every",
    )
    pb = np.ascontiguousarray(np.broadcast_to(p, (*shape, 4)).reshape(-1, 4))
    qb = np.ascontiguousarray(np.broadcast_to(q0, (*shape, 2)).reshape(-1, 2))
    tq = np.full((R, B, 2), np.nan)
    teb = np.full((R, B), np.nan)
    ter = np.full((R, B), np.nan)
    tval = np.zeros((R, B), dtype=np.bool_)
    if B:
        if rule == "gradient":
            with threads(None if _parallel else 1):
                _gradient_parallel(pb, qb, x, y, steps, lr, every, tq, teb, ter, tval)
        else:
            A = float(np.mean(y)) if aspiration is None else check_scalar("aspiration", aspiration)
            scale = float(np.max(np.abs(y - A)))
            if not scale > 0.0:
                raise ValueError("aspiration equals every payoff in y: no stimulus to learn from")
            seeds = _seeds(np.random.default_rng(seed), B)
            with threads(None if _parallel else 1):
                _bm_parallel(pb, qb, x, y, steps, lr, A, scale, every, seeds, tq, teb, ter, tval)
    return Trajectory(
        t=np.arange(R, dtype=np.int64) * every,
        q=tq.reshape((R, *shape, 2)),
        E_b=teb.reshape((R, *shape)),
        E_r=ter.reshape((R, *shape)),
        valid=tval.reshape((R, *shape)),
    )
