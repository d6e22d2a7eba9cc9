"""Kernel vs pure-Python reference, safety and liveness (hypothesis), sweep, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcsl_core.consensus import (
    NetworkModel,
    _sim,
    fault_tolerance,
    pbft_message_counts,
    simulate_pbft,
    sweep,
)
from tests.conftest import tol
from tests.reference.consensus_ref import latency, simulate_ref, uniform01

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def placements(draw, max_faulty=None, min_faulty=0, sizes=(4, 5, 7, 10, 13)):
    n = draw(st.sampled_from(sizes))
    f = fault_tolerance(n)
    hi = f if max_faulty is None else min(max_faulty(n), n - 1)
    lo = min(min_faulty if isinstance(min_faulty, int) else min_faulty(n), hi)
    k = draw(st.integers(lo, hi))
    idx = draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
    seed = draw(st.integers(0, 2**31))
    return n, sorted(idx), seed


def _same(a, b):
    assert a.phase_messages == b.phase_messages
    np.testing.assert_allclose(np.array(a.phase_bytes), np.array(b.phase_bytes), **tol(np.float64))
    np.testing.assert_allclose(np.array(a.phase_time_s), np.array(b.phase_time_s), **tol(np.float64))
    np.testing.assert_allclose(a.node_commit_s, b.node_commit_s, **tol(np.float64))
    np.testing.assert_array_equal(a.node_digest, b.node_digest)
    assert a.client_digest == b.client_digest and a.view_changes == b.view_changes
    np.testing.assert_allclose(a.time_s, b.time_s, **tol(np.float64))


@settings(max_examples=40, **SETTINGS)
@given(
    placements(max_faulty=lambda n: n - 1),
    st.sampled_from(["silent", "equivocate"]),
    st.sampled_from(["pbft", "paper", "hotstuff"]),
    st.sampled_from(["pareto", "exponential", "constant"]),
    st.sampled_from(["updates", "digests"]),
    st.integers(0, 4),
)
def test_kernel_equals_reference(pl, fault, protocol, lat, carries, U):
    n, idx, seed = pl
    kw = dict(
        faulty=idx,
        fault=fault,
        leader_faulty=0 in idx,
        protocol=protocol,
        seed=seed,
        block_carries=carries,
        network=NetworkModel(latency=lat),
    )
    _same(simulate_pbft(n, U, **kw), simulate_ref(n, U, **kw))


def test_kernel_equals_reference_n100():
    _same(simulate_pbft(100, 3, seed=5), simulate_ref(100, 3, seed=5))


@settings(max_examples=60, **SETTINGS)
@given(placements(), st.sampled_from(["silent", "equivocate"]))
def test_up_to_f_faults_every_honest_node_commits_the_same_block(pl, fault):
    n, idx, seed = pl
    r = simulate_pbft(n, 2, faulty=idx, fault=fault, leader_faulty=0 in idx, seed=seed)
    honest = ~r.faulty
    assert r.committed and r.agreement
    assert (r.node_digest[honest] >= 0).all()
    assert (r.node_digest[honest] == r.client_digest).all()
    assert np.isfinite(r.all_honest_committed_s)
    if 0 in idx and fault == "silent":
        assert r.view_changes >= 1  # the silent primary is replaced
        assert r.phase_messages.view_change > 0 and r.phase_messages.new_view > 0


@settings(max_examples=40, **SETTINGS)
@given(
    placements(max_faulty=lambda n: n - 1, min_faulty=lambda n: fault_tolerance(n) + 1, sizes=(4, 7, 10, 13))
)
def test_more_than_f_silent_nodes_nothing_commits(pl):
    # n = 3f + 1: f + 1 silent nodes leave 2f honest ones, one short of a quorum
    n, idx, seed = pl
    r = simulate_pbft(n, 1, faulty=idx, fault="silent", leader_faulty=0 in idx, seed=seed)
    assert not r.committed and np.isnan(r.time_s)
    assert (r.node_digest == -1).all() and r.agreement


def test_silent_leader_view_change_then_commit():
    r = simulate_pbft(7, 3, faulty=1, leader_faulty=True, seed=2)
    assert r.committed and r.agreement and r.view_changes == 1
    assert r.phase_messages.view_change > 0 and r.phase_messages.new_view == 6
    # the client accepts after the view-change timer fired, i.e. later than the timeout
    assert r.time_s > simulate_pbft(7, 3, seed=2).time_s


def test_timeouts_double():
    # silent primaries of views 0, 1, 2 at n = 10: honest nodes time out after T, 2T, 4T
    T = 0.5
    net = NetworkModel(view_timeout_s=T)
    r = simulate_pbft(10, 1, faulty=[0, 1, 2], leader_faulty=True, network=net)
    assert r.view_changes == 3
    assert r.time_s > 7 * T and r.time_s < 7 * T + 1.0


def test_more_than_f_equivocators_can_split_honest_nodes():
    # the f bound is tight: n = 4, the primary and one backup equivocate (f + 1 = 2):
    # node 2 gets digest 0 and node 3 the forged one, each finds 2f prepares (own + the
    # faulty backup's) and 2f + 1 commits (own + both faulty), so they commit different blocks
    r = simulate_pbft(4, 1, faulty=[0, 1], fault="equivocate", leader_faulty=True, seed=0)
    assert not r.agreement
    assert r.node_digest[2] == 0 and r.node_digest[3] == 1


def test_paper_exchange_is_not_safe_under_an_equivocating_leader():
    r = simulate_pbft(10, 3, protocol="paper", faulty=[0], fault="equivocate", leader_faulty=True)
    assert r.committed and not r.agreement
    p = simulate_pbft(10, 3, protocol="pbft", faulty=[0], fault="equivocate", leader_faulty=True)
    assert p.agreement


def test_sweep_parallel_equals_serial_and_single_runs():
    rng = np.random.default_rng(3)
    C = 24
    ns = rng.integers(4, 30, C)
    us = rng.integers(0, 6, C)
    seeds = rng.integers(0, 1000, C)
    fa = np.minimum(rng.integers(0, 3, C), (ns - 1) // 3)
    a = sweep(ns, us, seeds, faulty=fa, leader_faulty=False)
    b = sweep(ns, us, seeds, faulty=fa, leader_faulty=False, parallel=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for c in range(0, C, 5):
        r = simulate_pbft(int(ns[c]), int(us[c]), seed=int(seeds[c]), faulty=int(fa[c]))
        assert a.time_s[c] == r.time_s and a.messages[c] == r.messages
        assert a.committed[c] == r.committed and a.view_changes[c] == r.view_changes
    assert a.time_s.dtype == np.float64 and a.messages.dtype == np.int64 and a.committed.dtype == bool


def test_time_linear_in_updates_and_increasing_in_nodes():
    U = np.arange(0, 101, 10)
    seeds = np.arange(4)
    t = np.array([sweep(10, np.full(seeds.size, u), seeds).time_s.mean() for u in U])
    slope, icpt = np.polyfit(U, t, 1)
    resid = t - (slope * U + icpt)
    r2 = 1 - resid.var() / t.var()
    assert slope > 0 and r2 > 0.999
    ns = np.array([4, 10, 31, 61, 100])
    tn = np.array([sweep(n, np.full(seeds.size, 10), seeds).time_s.mean() for n in ns])
    assert (np.diff(tn) > 0).all()
    expo = np.polyfit(np.log(ns), np.log(tn), 1)[0]
    assert 0.1 < expo < 2.0  # reported in the README (consensus section); messages grow as n^2


def test_latency_draws():
    ks = np.arange(2000)
    u = np.array([_sim.uniform01(12345, int(k)) for k in ks])
    assert np.array_equal(u, np.array([uniform01(12345, int(k)) for k in ks]))
    assert (u > 0).all() and (u < 1).all() and abs(u.mean() - 0.5) < 0.03
    big = np.array([_sim.uniform01(7, k) for k in range(100_000)])
    lat = np.array([_sim.link_latency(_sim.LAT_PARETO, 0.02, 5.0, x) for x in big])
    assert lat.min() >= 0.02 * 4 / 5 - 1e-15
    assert abs(lat.mean() - 0.02) < 0.02 * 0.03
    assert _sim.link_latency(_sim.LAT_PARETO, 0.02, 5.0, 0.3) == latency("pareto", 0.02, 5.0, 0.3)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(n_nodes=3, n_updates=1), "n_nodes"),
        (dict(n_nodes=4, n_updates=-1), "n_updates"),
        (dict(n_nodes=4, n_updates=1, faulty=-1), "faulty"),
        (dict(n_nodes=4, n_updates=1, faulty=[0, 9]), "faulty"),
        (dict(n_nodes=4, n_updates=1, faulty=0, leader_faulty=True), "leader_faulty"),
        (dict(n_nodes=4, n_updates=1, update_bytes=-5), "update_bytes"),
        (dict(n_nodes=4, n_updates=1, protocol="raft"), "protocol"),
        (dict(n_nodes=4, n_updates=1, fault="crash"), "fault"),
        (dict(n_nodes=4, n_updates=1, block_carries="both"), "block_carries"),
        (dict(n_nodes=4, n_updates=1, seed=-1), "seed"),
        (dict(n_nodes=4.5, n_updates=1), "n_nodes"),
    ],
)
def test_invalid_input_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        simulate_pbft(**kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(upload_bps=-1.0), "upload_bps"),
        (dict(download_bps=0.0), "download_bps"),
        (dict(latency="uniform"), "latency"),
        (dict(latency_mean_s=float("nan")), "latency_mean_s"),
        (dict(verify_s=-1e-6), "verify_s"),
        (dict(view_timeout_s=0.0), "view_timeout_s"),
    ],
)
def test_invalid_network_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        NetworkModel(**kw)


def test_closed_form_and_sweep_validation():
    with pytest.raises(ValueError, match="view_changes"):
        pbft_message_counts(7, view_changes=3)
    with pytest.raises(ValueError, match="n"):
        pbft_message_counts(2)
    with pytest.raises(ValueError, match="one length"):
        sweep([4, 7], [1, 2, 3], 0)
    with pytest.raises(ValueError, match="n_nodes"):
        sweep([4, 3], 1, 0)


@pytest.mark.parametrize("n", [5, 6, 8, 9])
def test_quorums_intersect_when_n_exceeds_3f_plus_1(n):
    # With 2f + 1 votes at n = 5 (f = 1) two quorums of 3 could share only the faulty
    # node, and an equivocating primary split the honest nodes; ceil((n + f + 1) / 2)
    # keeps every pair of quorums sharing an honest node.
    from mcsl_core.consensus._closed_form import fault_tolerance, quorum

    f = fault_tolerance(n)
    q = quorum(n, f)
    assert 2 * q - n >= f + 1 and (n != 3 * f + 1 or q == 2 * f + 1)
    for seed in range(6):
        r = simulate_pbft(n, 2, faulty=[0], fault="equivocate", leader_faulty=True, seed=seed)
        assert r.agreement
