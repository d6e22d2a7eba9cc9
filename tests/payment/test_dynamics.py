"""Monte Carlo play and requestor dynamics."""

from __future__ import annotations

import numpy as np
import pytest

from mcsl_core.payment import (
    PAPER_X,
    PAPER_Y,
    evolve_requestor,
    long_run,
    simulate_play,
    tit_for_tat,
    win_stay_lose_shift,
    zd_phi_bounds,
    zd_strategy,
)
from mcsl_core.payment._dynamics import _grad_er

X = np.array(PAPER_X)
Y = np.array(PAPER_Y)


def zd(chi=2.0, frac=0.5):
    return zd_strategy(X, Y, chi, frac * zd_phi_bounds(X, Y, chi)[1])


@pytest.mark.parametrize("game, m", [("leader_follower", 2), ("simultaneous", 4)])
def test_simulation_converges_to_long_run(rng, game, m):
    p = rng.uniform(0.05, 0.95, (16, 4))
    q = rng.uniform(0.05, 0.95, (16, m))
    rounds = 200_000
    f = simulate_play(p, q, rounds, game=game, seed=3)
    v = long_run(p, q, X, Y, game=game).v
    assert f.shape == (16, 4)
    np.testing.assert_allclose(f.sum(-1), 1.0, rtol=1e-12)
    # mixing chains: a time average of 2e5 rounds is within ~5 standard errors
    assert np.abs(f - v).max() < 5 * np.sqrt(0.25 / rounds) * 4


def test_simulation_reducible_follows_init():
    # TFT vs q = (1, 0): from cc the play stays in cc, from dd in dd
    f = simulate_play(tit_for_tat(), [1.0, 0.0], 1000, seed=1, init=[[1, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(f, [[1, 0, 0, 0], [0, 0, 0, 1]])
    # WSLS vs always-defect alternates cd, dd exactly
    f = simulate_play(win_stay_lose_shift(X), [0.0, 0.0], 1000, seed=1, init=[1, 0, 0, 0])
    np.testing.assert_array_equal(f, [0, 0.5, 0, 0.5])


def test_simulation_seeded_and_parallel_equals_serial(rng):
    p = rng.random((300, 4))
    q = rng.random((300, 4))
    a = simulate_play(p, q, 2000, game="simultaneous", seed=9)
    b = simulate_play(p, q, 2000, game="simultaneous", seed=9, _parallel=False)
    c = simulate_play(p, q, 2000, game="simultaneous", seed=10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_gradient_matches_finite_differences(rng):
    for p in [zd(), tit_for_tat(), win_stay_lose_shift(X), rng.random(4), rng.random(4)]:
        for q1, q2 in rng.uniform(0.05, 0.95, (20, 2)):
            g = np.array(_grad_er(p, q1, q2, Y))
            h = 1e-6
            fd = [
                (long_run(p, [q1 + h, q2], X, Y).E_r - long_run(p, [q1 - h, q2], X, Y).E_r) / (2 * h),
                (long_run(p, [q1, q2 + h], X, Y).E_r - long_run(p, [q1, q2 - h], X, Y).E_r) / (2 * h),
            ]
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


def test_gradient_requestor_cooperates_against_zd():
    """Theorem IV.2 with a long-run payoff maximiser: q1 -> 1 and payoffs -> (x1, y1)."""
    q0 = np.linspace(0.05, 0.95, 7)
    p = np.stack([zd(chi, 0.5) for chi in (1.5, 2.0, 4.0)])[:, None, :]
    tr = evolve_requestor(p, np.stack([q0, q0], -1)[None], steps=4000, lr=0.05)
    assert tr.q.shape == (4001, 3, 7, 2)
    np.testing.assert_allclose(tr.q[-1, ..., 0], 1.0)
    np.testing.assert_allclose(tr.E_b[-1], X[0], atol=1e-9)
    np.testing.assert_allclose(tr.E_r[-1], Y[0], atol=1e-9)
    # E_r never decreases along a small-step gradient path below the optimum
    assert (np.diff(tr.E_r, axis=0) > -1e-9).all()
    # ZD relation along the whole path
    np.testing.assert_allclose(tr.E_b - X[0], np.array([1.5, 2.0, 4.0])[:, None] * (tr.E_r - Y[0]), atol=1e-9)


def test_gradient_against_wsls_depends_on_q0():
    tr = evolve_requestor(win_stay_lose_shift(X), [[0.2, 0.2], [0.8, 0.8]], steps=3000, lr=0.05)
    # from a defecting start the requestor learns always-defect and exploits WSLS
    np.testing.assert_allclose(tr.q[-1, 0], 0.0)
    np.testing.assert_allclose(tr.E_r[-1, 0], (Y[1] + Y[3]) / 2)  # 6.5 > y1 = 6
    # from a cooperative start it reaches q1 = 1 and mutual cooperation
    assert tr.q[-1, 1, 0] == 1.0
    np.testing.assert_allclose([tr.E_b[-1, 1], tr.E_r[-1, 1]], [X[0], Y[0]])


def test_gradient_deterministic_and_parallel_equals_serial(rng):
    p = rng.random((50, 4))
    q0 = rng.random((50, 2))
    a = evolve_requestor(p, q0, steps=300, lr=0.1, record_every=7)
    b = evolve_requestor(p, q0, steps=300, lr=0.1, record_every=7, _parallel=False)
    assert a.t.tolist() == list(range(0, 301, 7))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_gradient_stops_where_long_run_is_not_unique():
    # WSLS against q = (1, 1) has two recurrent classes: no gradient there
    tr = evolve_requestor(win_stay_lose_shift(X), [1.0, 1.0], steps=5, lr=0.1)
    assert not tr.valid.any() and np.isnan(tr.E_r).all()
    np.testing.assert_array_equal(tr.q[-1], [1.0, 1.0])


def test_bush_mosteller_seeded_parallel_serial_and_bounded(rng):
    p = np.stack([zd(), tit_for_tat(), win_stay_lose_shift(X)])[:, None, :]
    q0 = np.full((1, 20, 2), 0.5)
    kw = dict(rule="bush_mosteller", steps=3000, lr=0.1, seed=5, record_every=100)
    a = evolve_requestor(p, q0, **kw)
    b = evolve_requestor(p, q0, _parallel=False, **kw)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert ((a.q >= 0) & (a.q <= 1)).all()
    c = evolve_requestor(p, q0, **{**kw, "seed": 6})
    assert not np.array_equal(a.q, c.q)


def test_bush_mosteller_update_rule_by_hand():
    """One round against an always-c leader: requestor plays c (q1 = 1) and earns y1 = 6."""
    tr = evolve_requestor([1.0, 1.0, 1.0, 1.0], [1.0, 0.5], rule="bush_mosteller", steps=1, lr=0.5, seed=0)
    # sig = (6 - 5.5) / 2.5 = 0.2 > 0 reinforces c: q1 stays 1; q2 untouched
    np.testing.assert_allclose(tr.q[1], [1.0, 0.5])
    # with q1 = 0 the requestor defects and earns 8: sig = 1, q1 <- q1 - lr * q1 = 0
    tr = evolve_requestor([1.0] * 4, [0.0, 0.5], rule="bush_mosteller", steps=1, lr=0.5, seed=0)
    np.testing.assert_allclose(tr.q[1], [0.0, 0.5])
    # aspiration 7 (scale max|y - 7| = 4): c earns 6, sig = -1/4, weakens c; d earns 8,
    # sig = +1/4, strengthens d. Either way q1 only falls.
    tr = evolve_requestor(
        [1.0] * 4, [0.4, 0.5], rule="bush_mosteller", steps=50, lr=0.5, seed=0, aspiration=7.0
    )
    assert (np.diff(tr.q[:, 0]) < 0).all() and tr.q[-1, 1] == 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="rule must be one of"):
        evolve_requestor(tit_for_tat(), [0.5, 0.5], rule="fictitious", steps=1, lr=0.1)
    with pytest.raises(ValueError, match=r"lr must lie in \(0, 1\]"):
        evolve_requestor(tit_for_tat(), [0.5, 0.5], rule="bush_mosteller", steps=1, lr=2.0)
    with pytest.raises(ValueError, match="q0 must lie in"):
        evolve_requestor(tit_for_tat(), [0.5, 1.5], steps=1, lr=0.1)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        simulate_play(tit_for_tat(), [0.5, 0.5], 0, seed=0)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        evolve_requestor(tit_for_tat(), [0.5, 0.5], steps=-1, lr=0.1)


@pytest.mark.parametrize("bad", [np.inf, np.nan, 2.7, True, "10", -3, 0, 2**63])
def test_rounds_must_be_a_positive_integer(bad):
    """Issue 10 item 12: rounds = inf / nan / 2.7 were truncated or raised a bare
    OverflowError; each is a ValueError naming rounds now."""
    with pytest.raises(ValueError, match="rounds must be"):
        simulate_play(tit_for_tat(), [0.5, 0.5], bad, seed=0)
    with pytest.raises(ValueError, match="steps must be"):
        evolve_requestor(tit_for_tat(), [0.5, 0.5], steps=bad if bad not in (0,) else -1, lr=0.1)
    # integral floats and numpy integers are integers
    assert simulate_play(tit_for_tat(), [0.5, 0.5], 10.0, seed=0).shape == (4,)
    assert simulate_play(tit_for_tat(), [0.5, 0.5], np.int64(10), seed=0).shape == (4,)


@pytest.mark.parametrize("parallel", [True, False])
def test_memory_checked_before_the_kernels(monkeypatch, parallel):
    """Issue 10 items 7 / 14: a batch that cannot fit raises a ValueError naming the
    argument before anything is allocated, on the parallel and the serial path alike;
    the estimate is the docstring's bytes per pair (and per record)."""
    import mcsl_core._validation as V
    from mcsl_core.payment import _dynamics

    p = np.full((1000, 4), 0.5)
    need = _dynamics.PLAY_BYTES_PER_PAIR * 1000
    monkeypatch.setattr(V, "available_memory", lambda: need)
    simulate_play(p, [0.5, 0.5], 5, seed=0, _parallel=parallel)
    monkeypatch.setattr(V, "available_memory", lambda: need - 1)
    with pytest.raises(ValueError, match="p is too large"):
        simulate_play(p, [0.5, 0.5], 5, seed=0, _parallel=parallel)
    R = 11  # records of evolve_requestor with steps = 10
    need = _dynamics.TRAJ_BYTES_PER_RECORD * R * 1000 + 8 * R + 128 * 1000
    monkeypatch.setattr(V, "available_memory", lambda: need)
    evolve_requestor(p, [0.5, 0.5], steps=10, lr=0.1, _parallel=parallel)
    monkeypatch.setattr(V, "available_memory", lambda: need - 1)
    with pytest.raises(ValueError, match="steps is too large"):
        evolve_requestor(p, [0.5, 0.5], steps=10, lr=0.1, _parallel=parallel)


def test_huge_broadcast_batches_refused():
    """10^12 pairs by broadcasting: refused upfront, not a MemoryError mid-way."""
    p = np.full((10**6, 1, 4), 0.5)
    q = np.full((1, 10**6, 2), 0.5)
    with pytest.raises(ValueError, match="p is too large"):
        simulate_play(p, q, 3, seed=0)
    with pytest.raises(ValueError, match="steps is too large"):
        evolve_requestor(p, q, steps=3, lr=0.1)
