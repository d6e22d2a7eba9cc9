"""Simulated message counts, bytes and times against closed forms (paper IV-C, SPEC.md 3)."""

from __future__ import annotations

import numpy as np
import pytest

from mcsl_core.consensus import NetworkModel, pbft_message_counts, simulate_pbft


@pytest.mark.parametrize("n", [4, 7, 10, 13, 31, 100])
@pytest.mark.parametrize("carries", ["updates", "digests"])
def test_simulated_counts_equal_closed_form(n, carries):
    U = 3
    r = simulate_pbft(n, U, block_carries=carries, seed=n)
    c = pbft_message_counts(n, n_updates=U, block_carries=carries)
    assert r.phase_messages == c.messages
    np.testing.assert_allclose(np.array(r.phase_bytes), np.array(c.bytes), rtol=1e-12)
    assert r.messages == c.messages.total
    assert r.committed and r.agreement and r.view_changes == 0
    assert (r.node_digest == 0).all()


def test_closed_form_hand_values():
    c = pbft_message_counts(4, n_updates=2).messages
    assert (c.submit, c.pre_prepare, c.prepare, c.commit, c.reply) == (8, 3, 9, 12, 4)
    # no updates: pre-prepare n-1, prepare (n-1)^2, commit n(n-1), replies n
    assert pbft_message_counts(10).messages.total == 9 + 81 + 90 + 10
    assert pbft_message_counts(10, protocol="paper").messages.total == 18
    assert pbft_message_counts(10, protocol="hotstuff").messages.total == 7 * 9 + 10


@pytest.mark.parametrize("n,k", [(4, 1), (7, 1), (7, 2), (10, 3), (13, 2)])
def test_view_change_counts_equal_closed_form(n, k):
    r = simulate_pbft(n, 2, faulty=list(range(k)), leader_faulty=True, seed=k)
    c = pbft_message_counts(n, n_updates=2, view_changes=k)
    assert r.committed and r.agreement
    assert r.view_changes == k
    assert r.phase_messages == c.messages
    np.testing.assert_allclose(np.array(r.phase_bytes), np.array(c.bytes), rtol=1e-12)


@pytest.mark.parametrize("protocol", ["paper", "hotstuff"])
@pytest.mark.parametrize("n", [4, 10, 31])
def test_other_protocol_counts(protocol, n):
    r = simulate_pbft(n, 2, protocol=protocol, seed=1)
    c = pbft_message_counts(n, n_updates=2, protocol=protocol)
    assert r.phase_messages == c.messages
    assert r.committed and r.agreement


def _ideal(L):
    """Constant latency L, (near) infinite bandwidth, free CPU: time counts the hops."""
    return NetworkModel(
        latency="constant",
        latency_mean_s=L,
        upload_bps=1e30,
        download_bps=1e30,
        edge_upload_bps=1e30,
        client_download_bps=1e30,
        processing_s=0.0,
        sign_s=0.0,
        verify_s=0.0,
        hash_s_per_byte=0.0,
        view_timeout_s=100.0,
    )


@pytest.mark.parametrize("protocol,hops", [("pbft", 5), ("paper", 3), ("hotstuff", 9)])
def test_time_is_hops_times_latency_on_an_ideal_network(protocol, hops):
    # submit, pre-prepare, prepare, commit, reply = 5 one-way delays for PBFT;
    # submit, block, reply = 3 for the paper; submit, proposal, 3 x (vote, QC), reply = 9
    L = 0.01
    r = simulate_pbft(7, 3, network=_ideal(L), protocol=protocol)
    assert r.time_s == pytest.approx(hops * L, rel=1e-12)


def test_time_adds_the_modelled_serialisation():
    # n = 4, one update, constant latency, free CPU; uplinks of 1 byte per microsecond
    # at the edge server (case a) and also at the consortium nodes (case b).
    L, H, upd = 0.01, 256.0, 1000.0
    bw, us = 8e6, 1e-6
    free = dict(
        latency="constant",
        latency_mean_s=L,
        download_bps=1e30,
        client_download_bps=1e30,
        processing_s=0.0,
        sign_s=0.0,
        verify_s=0.0,
        hash_s_per_byte=0.0,
        view_timeout_s=100.0,
        header_bytes=H,
    )
    # (a) only the edge server's uplink is finite: the primary has the update after one
    # copy, then 4 one-way delays (pre-prepare, prepare, commit, reply)
    r = simulate_pbft(
        4, 1, update_bytes=upd, network=NetworkModel(upload_bps=1e30, edge_upload_bps=bw, **free)
    )
    assert r.time_s == pytest.approx((H + upd) * us + 5 * L, rel=1e-12)
    # (b) the primary serialises 3 copies of the block: the last backup has it at
    t_pp = (H + upd) * us + L + 3 * (H + upd) * us + L
    r = simulate_pbft(4, 1, update_bytes=upd, network=NetworkModel(upload_bps=bw, edge_upload_bps=bw, **free))
    assert r.phase_time_s.pre_prepare == pytest.approx(t_pp, rel=1e-12)
    assert r.time_s > (H + upd) * us + 5 * L


def test_same_seed_same_result_and_seeds_differ():
    a = simulate_pbft(10, 5, seed=7)
    b = simulate_pbft(10, 5, seed=7)
    c = simulate_pbft(10, 5, seed=8)
    assert a.time_s == b.time_s and a.phase_messages == b.phase_messages
    np.testing.assert_array_equal(np.array(a.phase_time_s), np.array(b.phase_time_s))
    np.testing.assert_array_equal(a.node_commit_s, b.node_commit_s)
    assert a.time_s != c.time_s
    assert a.node_commit_s.dtype == np.float64 and a.node_digest.dtype == np.int64


_RSS_SCRIPT = """
import resource, sys
from mcsl_core.consensus import pbft_message_counts, simulate_pbft, sweep
r = simulate_pbft(3000, 10)
c = pbft_message_counts(3000, n_updates=10)
s = sweep([4, 10, 100, 3000], 1, 0)
ok = r.committed and r.agreement and r.phase_messages == c.messages and r.messages == c.messages.total
closed = [pbft_message_counts(n, n_updates=1).messages.total for n in (4, 10, 100, 3000)]
ok = ok and s.committed.all() and s.messages.tolist() == closed and (s.time_s > 0).all()
print(int(ok), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_3000_nodes_commit_with_exact_counts_under_2_gib(tmp_path):
    # a fresh interpreter, so that its peak RSS is this run's (about 0.6 GiB measured)
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, check=True)
    ok, rss = map(int, out.stdout.split())
    assert ok == 1
    assert rss < 2 * 2**30
