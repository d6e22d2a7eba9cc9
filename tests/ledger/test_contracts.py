"""Contracts: recruitment rule, initial-model choice, payment contract, round verification."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcsl_core.ledger import (
    Identity,
    Ledger,
    ModelUpdate,
    SignedTx,
    TaskPublication,
    choose_initial_model,
    recruit_for_task,
    recruit_workers,
    settle_task,
    settlement_inputs,
    verify_update_round,
)
from mcsl_core.payment import settle
from tests.conftest import examples
from tests.ledger.helpers import BIDS, addr, make_world, publish, run_task, update_content
from tests.reference.ledger_ref import coverage, greedy_literal, optimum_coverage, universe

ROOT = Path(__file__).resolve().parents[2]
LOCS = "abcdefgh"

bid_lists = st.lists(
    st.tuples(
        st.sampled_from([0.5 * k for k in range(1, 11)]),
        st.lists(st.sampled_from(LOCS), max_size=4, unique=True),
    ),
    max_size=7,
).map(lambda bs: [(f"d{i}", c, tuple(l)) for i, (c, l) in enumerate(bs)])


@settings(max_examples=examples(150), deadline=None)
@given(
    bids=bid_lists,
    budget=st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0, 7.5, 100.0]),
    locs=st.one_of(st.none(), st.lists(st.sampled_from(LOCS), min_size=1, max_size=5, unique=True)),
)
def test_recruitment_matches_reference_and_bound(bids, budget, locs):
    r = recruit_workers(bids, budget, locs)
    assert r.selected == greedy_literal(bids, budget, locs)
    cost = {d: c for d, c, _ in bids}
    assert math.isclose(r.cost, sum(cost[d] for d in r.selected)) and r.cost <= budget
    uni = universe(bids, locs)
    got = coverage(bids, set(r.selected), uni)
    assert got == len(r.covered)
    assert got >= (1 - 1 / math.e) / 2 * optimum_coverage(bids, budget, locs) - 1e-12
    # the rule depends on the bids, not on the order they were submitted in
    assert recruit_workers(bids[::-1], budget, locs) == r


def test_recruitment_examples():
    r = recruit_workers(BIDS, 6.0, "abcde")
    assert r.selected == ("d1", "d2", "d0") and r.cost == 6.0 and r.covered == tuple("abcde")
    # greedy would take the cheap single-location bid; the best single bid wins instead
    r = recruit_workers([("cheap", 1.0, ("a",)), ("big", 10.0, ("a", "b", "c"))], 10.0)
    assert r.selected == ("big",)
    assert recruit_workers(BIDS, 0.0).selected == ()
    with pytest.raises(ValueError, match="budget"):
        recruit_workers(BIDS, -1)
    with pytest.raises(ValueError, match="cost"):
        recruit_workers([("d", 0, ("a",))], 1)
    with pytest.raises(ValueError, match="two bids"):
        recruit_workers([("d", 1, ("a",)), ("d", 2, ("b",))], 5)


_NODE = textwrap.dedent("""
    import sys
    from mcsl_core.ledger import Ledger, choose_initial_model, recruit_for_task, settle_task
    from tests.ledger.helpers import BIDS
    L = Ledger.open(sys.argv[1])
    print(recruit_for_task(L, "t2", BIDS).encode().hex())
    print(choose_initial_model(L, "t2"))
    print(settle_task(L, "t1", w_l=0.3, w_a=1.1, w_b=0.07).encode().hex())
    print(L.head_hash.hex())
""")


def _contract_outputs(path: Path) -> list[str]:
    with Ledger.open(path) as L:
        return [
            recruit_for_task(L, "t2", BIDS).encode().hex(),
            str(choose_initial_model(L, "t2")),
            settle_task(L, "t1", w_l=0.3, w_a=1.1, w_b=0.07).encode().hex(),
            L.head_hash.hex(),
        ]


def _build(path: Path) -> None:
    w = make_world(path)
    run_task(w, "t0", rounds=2, description="handwritten digits on phones")
    run_task(w, "t1", rounds=1, description="street noise levels", settle=False)
    publish(w, "t2", description="noise levels near schools")
    w.ledger.close()


def test_contracts_identical_on_independent_nodes(tmp_path):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    _build(a)
    _build(b)  # a second node that built the same chain on its own
    out_a, out_b = _contract_outputs(a), _contract_outputs(b)
    assert out_a == out_b
    # a third node in another process with a different hash seed (no set-order dependence)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run(
        [sys.executable, "-c", _NODE, str(a)], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.split() == out_a


def test_choose_initial_model(tmp_path):
    w = make_world(tmp_path / "c.db")
    L = w.ledger
    run_task(w, "t0", rounds=1, description="handwritten digits", settle=False)
    run_task(w, "t1", rounds=2, description="air quality sensing", settle=False)
    publish(w, "t2", description="Handwritten digit sketches")
    assert choose_initial_model(L, "t2") == L.task("t0").binding.address
    publish(w, "t3", description="Air quality, indoor")
    assert choose_initial_model(L, "t3") == L.task("t1").binding.address
    publish(w, "t4", description="traffic")
    assert choose_initial_model(L, "t4") is None
    publish(w, "t5", description="digits", initial_model=addr(42))
    assert choose_initial_model(L, "t5") == addr(42)
    with pytest.raises(ValueError, match="task_id"):
        choose_initial_model(L, "zzz")
    L.close()


def test_payment_contract_reads_the_chain(tmp_path):
    w = make_world(tmp_path / "c.db")
    run_task(w, "t0", rounds=3, settle=False)
    L = w.ledger
    inp = settlement_inputs(L, "t0")
    sel = L.task("t0").recruitment.selected
    # helpers.run_task pays device k (in selection order) v = 1.5 + k, s = 0.25
    want = {d: 1.5 + k + 0.25 for k, d in enumerate(sel)}
    assert inp.devices == tuple(sorted(sel))
    np.testing.assert_array_equal(inp.device_amounts, [want[d] for d in inp.devices])
    np.testing.assert_array_equal(inp.server_trainings, [3, 3, 3])  # one update per round each
    assert inp.producers == L.nodes and inp.producer_aggregations.sum() == 3
    task_heights = {r.height for r in L.task_records("t0")}
    assert inp.producer_blocks.sum() == len(task_heights)
    for n, k in zip(inp.producers, inp.producer_blocks):
        assert k == sum(L.proposer(h) == n for h in task_heights)
    rec = settle_task(L, "t0", w_l=0.5, w_a=1.25, w_b=0.1)
    s = settle(
        inp.device_amounts,
        inp.server_trainings,
        inp.producer_aggregations,
        inp.producer_blocks,
        w_l=0.5,
        w_a=1.25,
        w_b=0.1,
    )
    assert rec.total == s.total == sum(a.amount for a in rec.allocations)
    # W = sum(v + s) + w_l * trainings + w_a * aggregations + w_b * blocks, in cents
    W = sum(want.values()) + 0.5 * 9 + 1.25 * 3 + 0.1 * len(task_heights)
    assert rec.total == round(W * 100)
    calls = []

    def spy(*args, **kw):
        calls.append((args, kw))
        return s

    assert settle_task(L, "t0", w_l=0.5, w_a=1.25, w_b=0.1, settle=spy) == rec
    assert calls[0][1] == dict(w_l=0.5, w_a=1.25, w_b=0.1, minor_unit=0.01)
    with pytest.raises(ValueError, match="no bound result"):
        publish(w, "t9")
        settle_task(L, "t9", w_l=1, w_a=1, w_b=1)
    L.close()


def _round(w, n_updates: int, nbytes: int):
    items = []
    for i in range(n_updates):
        s = w.servers[i % len(w.servers)]
        content = update_content(i, nbytes)
        import hashlib

        items.append(
            (
                ModelUpdate("t0", i // len(w.servers), s.name, hashlib.sha256(content).hexdigest(), 10).sign(
                    s
                ),
                content,
            )
        )
    return items


def test_verify_update_round(tmp_path):
    w = make_world(tmp_path / "c.db", n_servers=5)
    items = _round(w, 5, 4096)
    chk = verify_update_round(w.ledger, items, task_id="t0", round=0)
    assert chk.valid.all() and chk.reasons == (None,) * 5
    stx, content = items[0]
    stranger = Identity.generate("edge_server", "zz", seed=3)
    bad = [
        (SignedTx(stx.payload, stx.signer, bytes(64)), content),  # forged
        (stx, content + b"x"),  # content does not match address
        (ModelUpdate("t0", 0, "zz", addr(1), 1).sign(stranger), b""),  # unregistered
        (ModelUpdate("t0", 0, w.requestor.name, addr(1), 1).sign(w.requestor), b""),  # wrong role
        (stx, content),  # duplicate of items[0]
        (TaskPublication("req0", "t", "", 0.5, 1).sign(w.requestor), b""),  # not an update
    ]
    chk = verify_update_round(w.ledger, items + bad, task_id="t0", round=0)
    assert chk.valid.tolist() == [True] * 5 + [False] * 6
    reasons = chk.reasons[5:]
    for r, word in zip(
        reasons, ["signature", "hash", "unregistered", "edge_server", "replayed", "not a model"]
    ):
        assert word in r
    assert verify_update_round(w.ledger, items, round=1).valid.sum() == 0
    serial = verify_update_round(w.ledger.members, items + bad, max_workers=1)
    parallel = verify_update_round(w.ledger, items + bad, max_workers=4)
    assert serial.valid.tolist() == parallel.valid.tolist() and serial.reasons == parallel.reasons
    with pytest.raises(ValueError, match="updates"):
        verify_update_round(w.ledger, [stx])
    w.ledger.close()
