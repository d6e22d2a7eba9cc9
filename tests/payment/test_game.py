"""The payment game: matrices, closed-form long run, ZD, baselines, axelrod cross-check."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcsl_core.payment import (
    PAPER_X,
    PAPER_Y,
    long_run,
    simulate_play,
    stationary,
    tit_for_tat,
    transition_matrix,
    win_stay_lose_shift,
    zd_phi_bounds,
    zd_strategy,
)
from mcsl_core.payment._game import _lf_parallel
from mcsl_core.payment._markov import threads
from tests.conftest import examples, tol
from tests.reference.payment_ref import game_matrix, long_run_ref

X = np.array(PAPER_X)
Y = np.array(PAPER_Y)
prob = st.floats(0.0, 1.0)
# 0, 1 or at least 1e-60: below ~1e-150 GTH's products underflow and the chain is reported
prob_sim = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(1e-60, 1.0))


@pytest.mark.parametrize("game, m", [("leader_follower", 2), ("simultaneous", 4)])
def test_transition_matrix_against_enumeration(rng, game, m):
    p = rng.random((50, 4))
    q = rng.random((50, m))
    P = transition_matrix(p, q, game=game)
    assert P.shape == (50, 4, 4) and P.dtype == np.float64
    for b in range(50):
        np.testing.assert_allclose(P[b], game_matrix(p[b], q[b], game), **tol(np.float64))


@pytest.mark.parametrize("game, m", [("leader_follower", 2), ("simultaneous", 4)])
def test_long_run_against_exact_reference(rng, game, m):
    p = rng.random((60, 4))
    q = rng.random((60, m))
    p[:16] = np.round(p[:16])  # deterministic leaders: some never change action (reducible)
    lr = long_run(p, q, X, Y, game=game)
    for b in range(60):
        ref = long_run_ref(p[b], q[b], X, Y, game)
        assert lr.valid[b] == (ref is not None)
        if ref is None:
            assert np.isnan(lr.v[b]).all()
            continue
        v, eb, er = ref
        np.testing.assert_allclose(lr.v[b], v, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose([lr.E_b[b], lr.E_r[b]], [eb, er], rtol=1e-10)


def test_closed_form_equals_general_gth(rng):
    p = rng.random((5000, 4))
    q = rng.random((5000, 2))
    p[:1000] = np.where(rng.random((1000, 4)) < 0.5, 1e-14, 1 - 1e-14)
    lr = long_run(p, q, X, Y)
    pi = stationary(transition_matrix(p, q))
    np.testing.assert_allclose(lr.v, pi, rtol=1e-9, atol=1e-14)


def test_broadcasting_and_parallel_equals_serial(rng):
    p = rng.random((3, 1, 4))
    q = rng.random((1, 5, 2))
    lr = long_run(p, q, X, Y)
    assert lr.v.shape == (3, 5, 4) and lr.E_b.shape == (3, 5) and lr.valid.dtype == bool
    np.testing.assert_allclose(lr.E_r[2, 3], long_run(p[2, 0], q[0, 3], X, Y).E_r, **tol(np.float64))
    pb, qb = rng.random((4000, 4)), rng.random((4000, 2))
    outs = []
    for nthreads in (None, 1):
        o = (np.empty((4000, 4)), np.empty(4000), np.empty(4000), np.empty(4000, bool), np.empty(4000, bool))
        with threads(nthreads):
            _lf_parallel(pb, qb, X, Y, np.zeros((1, 4)), False, *o)
        outs.append(o)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


# ---- ZD strategies ---------------------------------------------------------


@settings(max_examples=examples(200), deadline=None)
@given(chi=st.floats(1.0, 20.0), frac=st.floats(0.01, 1.0), q1=prob, q2=prob)
@example(chi=2.0, frac=0.5, q1=1.0, q2=0.0)  # Fig. 7's ZD leader against full cooperation
@example(chi=1.0, frac=1.0, q1=0.0, q2=0.0)  # chi = 1 at the phi bound, always-defect
@example(chi=20.0, frac=1.0, q1=0.0, q2=1.0)  # largest chi, alternating requestor
def test_zd_relation_leader_follower(chi, frac, q1, q2):
    _, hi = zd_phi_bounds(X, Y, chi)
    p = zd_strategy(X, Y, chi, frac * hi)
    lr = long_run(p, [q1, q2], X, Y, init=[0.25] * 4)
    assert lr.valid
    # E_b - x1 = chi (E_r - y1) for every requestor: holds in the leader-follower game
    assert abs((lr.E_b - X[0]) - chi * (lr.E_r - Y[0])) <= 1e-10 * (1 + chi)
    # Theorem IV.2: the requestor cannot beat mutual cooperation
    assert lr.E_r <= Y[0] + 1e-12


@settings(max_examples=examples(150), deadline=None)
@given(chi=st.floats(1.0, 10.0), frac=st.floats(0.01, 1.0), q=st.lists(prob_sim, min_size=4, max_size=4))
@example(chi=2.0, frac=0.5, q=[0.0, 1.0, 1.0, 0.0])  # anti-Pavlov: deterministic requestor
@example(chi=1.0, frac=1.0, q=[1.0, 0.0, 1.0, 0.0])  # TFT requestor, phi at its bound
@example(chi=3.0, frac=0.01, q=[1e-60, 1.0, 0.0, 1e-60])  # near-absorbing, tiny phi
def test_zd_relation_simultaneous(chi, frac, q):
    _, hi = zd_phi_bounds(X, Y, chi)
    p = zd_strategy(X, Y, chi, frac * hi)
    lr = long_run(p, q, X, Y, game="simultaneous", init=[0.25] * 4)
    assert lr.valid
    assert abs((lr.E_b - X[0]) - chi * (lr.E_r - Y[0])) <= 1e-9 * (1 + chi)


def test_zd_relation_thousands_of_requestors(rng):
    for chi in (1.0, 1.5, 3.0, 10.0):
        _, hi = zd_phi_bounds(X, Y, chi)
        p = zd_strategy(X, Y, chi, 0.7 * hi)
        q = rng.random((5000, 2))
        q[:500] = rng.integers(0, 2, (500, 2))  # pure requestors too
        lr = long_run(p, q, X, Y, init=[0.25] * 4)
        assert lr.valid.all()
        np.testing.assert_allclose(lr.E_b - X[0], chi * (lr.E_r - Y[0]), rtol=0, atol=1e-11 * chi)


@settings(max_examples=examples(150), deadline=None)
@example(p=[1.0, 0.0, 1.0, 0.0], q1=1.0, q2=0.0, alpha=0.1, beta=-0.2)  # TFT vs copycat: reducible
@example(p=[1.0, 0.0, 0.0, 1.0], q1=0.0, q2=0.0, alpha=-0.3, beta=0.3)  # WSLS vs ALLD: periodic
@example(p=[1.0, 1.0, 0.0, 0.0], q1=0.5, q2=0.5, alpha=0.0, beta=0.0)  # leader repeats itself
@given(
    p=st.lists(prob, min_size=4, max_size=4),
    q1=prob,
    q2=prob,
    alpha=st.floats(-0.3, 0.3),
    beta=st.floats(-0.3, 0.3),
)
def test_akin_lemma_and_general_zd(p, q1, q2, alpha, beta):
    """v . p~ = 0 for any leader p and requestor q (Akin); hence alpha E_b + beta E_r + gamma = 0."""
    p = np.array(p)
    init = [0.25] * 4
    lr = long_run(p, [q1, q2], X, Y, init=init)
    pt = p - np.array([1.0, 1.0, 0.0, 0.0])
    assert abs(lr.v @ pt) <= 1e-12
    # a general ZD leader p~ = alpha x + beta y + gamma 1, when feasible
    d = alpha * X + beta * Y
    gamma = -max(d[0], d[1])  # p1, p2 = 1 + d + gamma <= 1
    pz = np.array([1.0, 1.0, 0.0, 0.0]) + d + gamma
    if ((pz >= 0) & (pz <= 1)).all():
        lz = long_run(pz, [q1, q2], X, Y, init=init)
        assert abs(alpha * lz.E_b + beta * lz.E_r + gamma) <= 1e-10 * (1 + abs(alpha) + abs(beta))


def test_zd_bounds_paper_closed_form():
    for chi in (1.0, 2.0, 5.0):
        lo, hi = zd_phi_bounds(X, Y, chi)
        expect = min(1 / (3 + 2 * chi), 1 / (2 + 3 * chi), 1 / (chi - 1) if chi > 1 else np.inf)
        assert lo == 0.0 and hi == pytest.approx(expect, rel=1e-15)
        p = zd_strategy(X, Y, chi, hi)
        assert ((p >= 0) & (p <= 1)).all() and p[0] == 1.0
        np.testing.assert_allclose(
            p, [1, 1 - hi * (3 + 2 * chi), hi * (2 + 3 * chi), hi * (chi - 1)], atol=1e-15
        )


def test_zd_bad_arguments():
    with pytest.raises(ValueError, match=r"phi must lie in \(0, 0.125"):
        zd_strategy(X, Y, 2.0, 0.2)
    with pytest.raises(ValueError, match="nonzero"):
        zd_strategy(X, Y, 2.0, 0.0)
    with pytest.raises(ValueError, match="phi must lie in"):
        zd_strategy(X, Y, 2.0, -0.01)
    with pytest.raises(ValueError, match="chi must be >= 1"):
        zd_phi_bounds(X, Y, 0.5)
    with pytest.raises(ValueError, match="no phi != 0"):
        zd_phi_bounds([0, 1, 1, 0], [0, 0, 0, 0], 1.0)  # d2 > 0 and d3 > 0: only phi = 0
    with pytest.raises(ValueError, match="x must have shape"):
        zd_phi_bounds([1, 2, 3], Y, 1.0)


# ---- baselines, reducible and periodic cases -------------------------------


def test_baseline_vectors():
    np.testing.assert_array_equal(tit_for_tat(), [1, 0, 1, 0])
    np.testing.assert_array_equal(win_stay_lose_shift(X), [1, 0, 0, 1])
    # classic PD (R, S, T, P) = (3, 0, 5, 1) gives Pavlov (1, 0, 0, 1) too
    np.testing.assert_array_equal(win_stay_lose_shift([3, 0, 5, 1]), [1, 0, 0, 1])
    np.testing.assert_array_equal(win_stay_lose_shift(X, aspiration=7.0), [0, 0, 0, 1])


def test_tft_against_copycat_is_reducible():
    """TFT vs q = (1, 0): cc and dd both absorbing."""
    with_nan = long_run(tit_for_tat(), [1.0, 0.0], X, Y)
    assert not with_nan.valid and np.isnan(with_nan.E_b)
    with pytest.raises(ValueError, match="more than one recurrent class"):
        stationary(transition_matrix(tit_for_tat(), [1.0, 0.0]))
    for init in ([1, 0, 0, 0], [0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 0]):
        init = np.array(init, float)
        lr = long_run(tit_for_tat(), [1.0, 0.0], X, Y, init=init)
        ref = long_run_ref(tit_for_tat(), [1.0, 0.0], X, Y, "leader_follower", init)
        np.testing.assert_allclose(lr.v, ref[0], atol=1e-14)
        # the leader's first move (copying the requestor's move in init) decides
        c = init[0] + init[2]
        np.testing.assert_allclose(lr.v, [c, 0, 0, 1 - c], atol=1e-15)
        np.testing.assert_allclose(
            stationary(transition_matrix(tit_for_tat(), [1, 0]), init=init), lr.v, atol=1e-14
        )


def test_wsls_against_always_defect_is_periodic():
    """WSLS vs q = (0, 0): the leader alternates c, d; unique long run (cd + dd) / 2."""
    w = win_stay_lose_shift(X)
    P = transition_matrix(w, [0.0, 0.0])
    for init in (None, [1, 0, 0, 0], [0, 0, 0, 1]):
        lr = long_run(w, [0.0, 0.0], X, Y, init=init)
        assert lr.valid
        np.testing.assert_allclose(lr.v, [0, 0.5, 0, 0.5], atol=1e-15)
        np.testing.assert_allclose(stationary(P, init=init), lr.v, atol=1e-15)
        assert lr.E_r == pytest.approx((Y[1] + Y[3]) / 2)  # 6.5 > y1: WSLS is exploited
    # the distribution itself oscillates: period 2
    mu = np.array([0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(mu @ P @ P, mu)
    assert not np.allclose(mu @ P, mu)


def test_wsls_against_full_cooperation_two_classes():
    lr = long_run(win_stay_lose_shift(X), [1.0, 1.0], X, Y)
    assert not lr.valid
    lr = long_run(win_stay_lose_shift(X), [1.0, 1.0], X, Y, init=[0, 0, 1, 0])
    np.testing.assert_allclose(lr.v, [0, 0, 1, 0])  # dc absorbing: the leader exploits


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\].*index 2"):
        long_run([0.5, 0.5, 1.5, 0.5], [0.5, 0.5], X, Y)
    with pytest.raises(ValueError, match="q must be finite"):
        long_run([0.5] * 4, [np.nan, 0.5], X, Y)
    with pytest.raises(ValueError, match="q must have last axis of length 4"):
        long_run([0.5] * 4, [0.5, 0.5], X, Y, game="simultaneous")
    with pytest.raises(ValueError, match="game must be one of"):
        transition_matrix([0.5] * 4, [0.5, 0.5], game="stackelberg")
    with pytest.raises(ValueError, match="do not broadcast"):
        long_run(np.full((3, 4), 0.5), np.full((2, 2), 0.5), X, Y)
    with pytest.raises(ValueError, match="y must be finite"):
        long_run([0.5] * 4, [0.5, 0.5], X, [1, 2, np.inf, 3])


# ---- an independent library --------------------------------------------------


def _axelrod():
    """axelrod, or a skip that says why; CI installs it (the ``dev`` extra), so there a
    missing axelrod is a failure, not a silent skip."""
    if os.environ.get("CI", "").lower() == "true":
        import axelrod  # must be installed in CI

        return axelrod
    return pytest.importorskip("axelrod", reason="axelrod is not installed (pip install -e '.[dev]')")


def _axelrod_check(turns: int, stochastic_atol: float) -> None:
    axl = _axelrod()
    game = axl.Game(r=6, s=3, t=8, p=5)  # x = (R, S, T, P), y its mirror: the paper's payoffs
    rng = np.random.default_rng(7)
    cases = [
        (tit_for_tat(), np.array([0.0, 1.0, 1.0, 0.0])),  # TFT vs anti-Pavlov: deterministic cycle
        # all-c leader vs a requestor that cooperates only after (own d, opponent c): the
        # play alternates cc, cd; with the opposite index convention it would stay at cd
        (np.ones(4), np.array([0.0, 0.0, 1.0, 0.0])),
        (np.array([0.9, 0.2, 0.7, 0.1]), np.array([0.8, 0.3, 0.6, 0.4])),
        (zd_strategy(X, Y, 2.0, 0.1), rng.random(4)),
    ]
    for k, (p, q) in enumerate(cases):
        players = (axl.MemoryOnePlayer(four_vector=tuple(p)), axl.MemoryOnePlayer(four_vector=tuple(q)))
        match = axl.Match(players, turns=turns, game=game, seed=11 + k)
        match.play()
        sb, sr = match.final_score_per_turn()
        lr = long_run(p, q, X, Y, game="simultaneous", init=[1, 0, 0, 0])
        deterministic = set(np.r_[p, q]) <= {0.0, 1.0}
        # deterministic play: the per-turn score differs from the long run only by the
        # first few turns (at most 10 payoff units in all); random play: sampling error
        atol = 10.0 / turns if deterministic else stochastic_atol
        assert sb == pytest.approx(lr.E_b, abs=atol), (k, sb, lr.E_b)
        assert sr == pytest.approx(lr.E_r, abs=atol), (k, sr, lr.E_r)


def test_simultaneous_against_axelrod_short_matches():
    """Default tier: 20 000-turn matches. The per-turn score of these mixing chains has a
    standard deviation below 3 and an autocorrelation time below 5 turns, so its
    standard error is below 3 * sqrt(5 / 20000) = 0.05; 0.2 is four of them."""
    _axelrod_check(20_000, 0.2)


@pytest.mark.slow
def test_simultaneous_against_axelrod_match_play():
    """Slow tier: 200k turns, standard error of the per-turn score about 0.005."""
    _axelrod_check(200_000, 0.03)


# ---- the simultaneous game's state convention, by direct enumeration ---------------

ACTIONS = ("c", "d")
#: states in the documented order, leader's action first: cc, cd, dc, dd
LEADER_STATES = [(lead, req) for lead in ACTIONS for req in ACTIONS]


def _own_index(own: str, other: str) -> int:
    """Index of a memory-one vector for a player that saw ``own`` and ``other`` last
    round: (c, c), (c, d), (d, c), (d, d) with the player's own action first (Press-Dyson,
    axelrod). Written from the definition, with no index map of the package."""
    return [(a, b) for a in ACTIONS for b in ACTIONS].index((own, other))


def _enumerated_matrix(p, q):
    """P[s, s'] over leader-perspective states: the leader plays c with p[its own view],
    the requestor with q[its own view], independently, for each of the four joint
    actions."""
    P = np.zeros((4, 4))
    for i, (lead, req) in enumerate(LEADER_STATES):
        pl = p[_own_index(lead, req)]  # the leader's own view is the state itself
        pr = q[_own_index(req, lead)]  # the requestor sees (its own action, the leader's)
        for j, (lead2, req2) in enumerate(LEADER_STATES):
            P[i, j] = (pl if lead2 == "c" else 1 - pl) * (pr if req2 == "c" else 1 - pr)
    return P


def test_simultaneous_convention_by_enumeration(rng):
    p = rng.random((40, 4))
    q = rng.random((40, 4))
    P = transition_matrix(p, q, game="simultaneous")
    for b in range(40):
        # every entry is one product of two probabilities: equal up to its one rounding
        np.testing.assert_allclose(P[b], _enumerated_matrix(p[b], q[b]), rtol=2**-52, atol=0)


def test_simultaneous_convention_from_both_sides(rng):
    """The simultaneous game is symmetric: swapping the roles (the requestor as the
    first player, each payoff vector re-indexed to its owner's view by enumeration)
    must swap E_b and E_r. A wrong index map for q breaks this."""
    p = rng.random((200, 4))
    q = rng.random((200, 4))
    # in the swapped game a state is (requestor's action, leader's action); each
    # player's payoff there is its payoff at the leader-first state (leader's, requestor's)
    swapped = [(first, second) for first in ACTIONS for second in ACTIONS]
    y_sw = np.array([Y[LEADER_STATES.index((second, first))] for first, second in swapped])
    x_sw = np.array([X[LEADER_STATES.index((second, first))] for first, second in swapped])
    a = long_run(p, q, X, Y, game="simultaneous")
    b = long_run(q, p, y_sw, x_sw, game="simultaneous")
    assert a.valid.all() and b.valid.all()
    # two GTH solves of the same chain in different state orders: round-off of GTH on
    # 4 states (tested against exact rationals to 1e-13 in test_markov.py) times payoffs <= 8
    np.testing.assert_allclose(a.E_b, b.E_r, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.E_r, b.E_b, rtol=0, atol=1e-12)


def test_simultaneous_convention_hand_example():
    """All-c leader, requestor c only after (own d, other c): from cc it defects (cd),
    then cooperates (cc), and so on: v = (1/2, 1/2, 0, 0), E_r = (6 + 8) / 2 = 7."""
    lr = long_run(np.ones(4), [0.0, 0.0, 1.0, 0.0], X, Y, game="simultaneous", init=[1, 0, 0, 0])
    np.testing.assert_allclose(lr.v, [0.5, 0.5, 0.0, 0.0], atol=1e-15)
    assert lr.E_r == pytest.approx(7.0, abs=1e-14)
    f = simulate_play(np.ones(4), [0.0, 0.0, 1.0, 0.0], 1001, game="simultaneous", seed=0, init=[1, 0, 0, 0])
    np.testing.assert_allclose(f, [500 / 1001, 501 / 1001, 0, 0], atol=1e-15)


def test_press_dyson_equalizer_closed_form(rng):
    """Classic PD (R, S, T, P) = (3, 0, 5, 1): p = (2/3, 0, 2/3, 1/3) pins the opponent's
    score at 2 whatever its memory-one strategy (p~ = -S_Y/3 + 2/3)."""
    x = np.array([3.0, 0.0, 5.0, 1.0])
    y = np.array([3.0, 5.0, 0.0, 1.0])
    q = rng.random((2000, 4))
    lr = long_run([2 / 3, 0, 2 / 3, 1 / 3], q, x, y, game="simultaneous")
    assert lr.valid.all()
    np.testing.assert_allclose(lr.E_r, 2.0, rtol=1e-12)
