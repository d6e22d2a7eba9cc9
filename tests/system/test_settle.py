"""Procedure 4 alone: the payment game's moves, the collection contract, settlement from a prepared chain."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcsl_core import ledger as L
from mcsl_core import payment
from mcsl_core.system import settle
from tests.conftest import examples
from tests.system.conftest import TINY, prepared


def exact_round_probabilities(p, q, rounds):
    """P(leader c) and P(requestor c) in each round, by propagating the state distribution.

    Written from the game's rules: the leader opens with c, then plays c with p[s] after
    outcome s (cc, cd, dc, dd); the requestor plays c with q1 after a leader c, q2 after a d.
    """
    lead, req, dist = [], [], None
    for _ in range(rounds):
        pc = 1.0 if dist is None else sum(dist[s] * p[s] for s in range(4))
        rc = pc * q[0] + (1 - pc) * q[1]
        lead.append(pc)
        req.append(rc)
        dist = [pc * q[0], pc * (1 - q[0]), (1 - pc) * q[1], (1 - pc) * (1 - q[1])]
    return np.array(lead), np.array(req)


def test_moves_follow_the_strategies_deterministically():
    tft = payment.tit_for_tat()
    lead, req = settle.draw_moves(tft, np.array([1.0, 0.0]), 6, seed=3)
    assert lead.all() and req.all()  # the requestor pays after every release: all c
    lead, req = settle.draw_moves(tft, np.array([0.0, 1.0]), 6, seed=3)
    # the requestor defects after a release and pays after a withholding; tft copies it
    assert lead.tolist() == [True, False, True, False, True, False]
    assert req.tolist() == [False, True, False, True, False, True]


def test_moves_have_the_exact_per_round_probabilities():
    p, q, k, n = np.array([0.9, 0.2, 0.6, 0.1]), np.array([0.7, 0.3]), 6, 4000
    draws = [settle.draw_moves(p, q, k, seed=s) for s in range(n)]
    lead = np.mean([d[0] for d in draws], axis=0)
    req = np.mean([d[1] for d in draws], axis=0)
    want_lead, want_req = exact_round_probabilities(p, q, k)
    # a mean of n Bernoulli draws: standard error <= 0.5 / sqrt(n) = 0.0079; allow 5 of them
    assert np.abs(lead - want_lead).max() < 5 * 0.5 / np.sqrt(n)
    assert np.abs(req - want_req).max() < 5 * 0.5 / np.sqrt(n)


@settings(max_examples=examples(40), deadline=None)
@given(
    dues=st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
    frac=st.fractions(0, 1),
)
@example(dues=[1, 1, 1], frac=Fraction(1, 3))
@example(dues=[0, 0], frac=Fraction(0))
def test_collected_split_is_payment_settle_on_the_exact_shares(dues, frac):
    total = sum(dues)
    collected = int(total * frac)
    got = L.split_collected(dues, collected)
    assert sum(got) == collected and all(0 <= g <= d for g, d in zip(got, dues))
    if total:
        # payment.settle reads each amount and the minor unit exactly (integers below 2**53), so
        # amounts dues * collected with minor unit `total` give the exact shares dues * collected / total
        ref = payment.settle(
            [d * collected for d in dues], [], [], [], w_l=0, w_a=0, w_b=0, minor_unit=float(total)
        )
        assert ref.total == collected and got == ref.devices.tolist()


def test_the_released_shares_are_the_bound_model(tiny_run):
    report, out = tiny_run
    chain = L.Ledger.open(out / "ledger.sqlite")
    try:
        recs = [r.tx for r in chain.task_records(TINY.task_id)]
    finally:
        chain.close()
    (binding,) = [t for t in recs if isinstance(t, L.ResultBinding)]
    shares = [t.share for t in recs if isinstance(t, L.ResultRelease) and t.share is not None]
    assert len(shares) == report.shares_released
    store = L.ModelStore(out / "store")
    model = store.get_bytes(binding.address)
    if len(shares) == TINY.installments:
        assert b"".join(store.get_bytes(s) for s in shares) == model
    assert model.startswith(b"".join(store.get_bytes(s) for s in shares))


@pytest.fixture(scope="module")
def billed(tmp_path_factory):
    """A prepared chain with the bill recorded; a requestor that barely learned (q near q0 = 0.3)."""
    cfg = TINY.replace(leader_strategy="wsls", requestor_q0=0.3, game_steps=1, installments=10)
    state = prepared(cfg, tmp_path_factory.mktemp("billed"))
    bill = L.settle_task(
        state.chain, cfg.task_id, w_l=cfg.w_l, w_a=cfg.w_a, w_b=cfg.w_b, minor_unit=cfg.minor_unit
    )
    state.chain.append(state.parties.nodes.propose(state.chain, [bill]))
    yield state, bill
    state.chain.close()


def _block(state, *txs):
    return state.parties.nodes.propose(state.chain, list(txs))


def test_the_chain_refuses_forged_moves_and_collections(billed):
    state, bill = billed
    cfg, req, nodes = state.cfg, state.parties.requestor, state.parties.nodes
    due = L.installment_dues(bill.total, cfg.installments)
    other = next(n for n in nodes.names if n != state.finaliser)
    with pytest.raises(L.ContractMismatch):  # an installment that is not the contract's share of W
        state.chain.append(
            _block(state, L.Installment(cfg.task_id, 0, 10, req.name, due[0] + 1, 0).sign(req))
        )
    inst = L.Installment(cfg.task_id, 0, 10, req.name, due[0], due[0]).sign(req)
    with pytest.raises(L.SignerMismatch):  # only the leader that finalised the model releases it
        state.chain.append(
            _block(state, inst, L.ResultRelease(cfg.task_id, 0, other, None).sign(nodes.node(other)))
        )
    with pytest.raises(L.RoundOutOfOrder):  # rounds in order
        skip = L.Installment(cfg.task_id, 1, 10, req.name, due[1], 0).sign(req)
        state.chain.append(_block(state, skip))
    with pytest.raises(L.TaskStateError):  # no collection before every round is played
        state.chain.append(_block(state, L.PaymentCollection(cfg.task_id, 0, bill.total, bill.allocations)))


def test_settlement_from_a_prepared_chain_collects_what_was_paid(billed):
    state, bill = billed
    cfg = state.cfg
    p = settle.leader_strategy(cfg)
    q = settle.requestor_strategy(cfg, p)
    assert ((q > 0.0) & (q < 1.0)).all()  # one gradient step from q0 = 0.3: still mixed
    lead, req = settle.draw_moves(p, q, cfg.installments, seed=11)
    settle._play_on_chain(state, bill, lead, req)
    want = L.collect_task(state.chain, cfg.task_id)
    forged = [
        a._replace(amount=a.amount + (1 if i == 0 else -1 if i == 1 else 0))
        for i, a in enumerate(want.allocations)
    ]
    with pytest.raises(L.ContractMismatch):  # the allocation is the contract's, not any that sums
        state.chain.append(
            _block(state, L.PaymentCollection(cfg.task_id, want.collected, want.owed, tuple(forged)))
        )
    state.chain.append(_block(state, want))
    due = L.installment_dues(bill.total, cfg.installments)
    paid = sum(d for d, c in zip(due, req) if c)
    assert 0 < paid < bill.total  # the requestor paid some installments, not all
    assert want.collected == paid and want.owed == bill.total - paid
    for a, b in zip(want.allocations, bill.allocations):  # each payee: its share of what was paid
        assert (a.role, a.payee) == (b.role, b.payee)
        assert abs(Fraction(a.amount) - Fraction(b.amount * paid, bill.total)) < 1
    assert state.chain.verify().ok
