"""Append-time rules: each bad block is rejected with its own rule, and the ledger is unchanged."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from mcsl_core.ledger import (
    AggregatedModel,
    BadCertificate,
    BadMerkleRoot,
    BadPrevHash,
    BadSignature,
    BadTimestamp,
    Block,
    CommitSignature,
    Consortium,
    ContractMismatch,
    DataSubmissionPayment,
    Identity,
    Ledger,
    LedgerError,
    MembershipError,
    MembershipRegistration,
    ModelUpdate,
    QuorumNotReached,
    ReplayedTransaction,
    ResultBinding,
    RoundOutOfOrder,
    SignedTx,
    SignerMismatch,
    TaskPublication,
    TaskStateError,
    UnregisteredKey,
    WorkerRecruitment,
    WrongProposer,
    WrongRole,
    commit_digest,
    elect_leader,
    merkle_root,
    quorum_size,
    settle_task,
)
from mcsl_core.ledger._state import run_signature_jobs
from tests.ledger.helpers import BIDS, addr, make_world, publish, run_task
from tests.reference.ledger_ref import merkle_root_rfc6962


@pytest.fixture
def world(tmp_path):
    w = make_world(tmp_path / "chain.db")
    yield w
    w.ledger.close()


def _rejects(w, block, exc_type, rule):
    before = (len(w.ledger), w.ledger.head_hash)
    with pytest.raises(exc_type) as ei:
        w.ledger.append(block)
    err = ei.value
    assert isinstance(err, LedgerError) and isinstance(err, ValueError)
    assert err.rule == rule and f"rule '{rule}'" in str(err)
    assert err.height == block.height
    assert (len(w.ledger), w.ledger.head_hash) == before
    assert w.ledger.verify().ok and w.ledger.verify().blocks == before[0]
    return err


def _update(w, r=0, k=0, task="t0", address=None):
    s = w.servers[k]
    return ModelUpdate(task, r, s.name, address or addr(100 * r + k), 5).sign(s)


def test_forged_signature(world):
    publish(world)
    good = _update(world)
    forged = SignedTx(good.payload, good.signer, bytes([good.signature[0] ^ 1]) + good.signature[1:])
    err = _rejects(
        world,
        world.consortium.propose(world.ledger, [_update(world, k=1), forged]),
        BadSignature,
        "tx_signature",
    )
    assert err.tx_index == 1
    # a payload changed after signing is a forged signature too
    other = ModelUpdate("t0", 0, world.servers[0].name, addr(999), 5).encode()
    _rejects(
        world,
        world.consortium.propose(world.ledger, [SignedTx(other, good.signer, good.signature)]),
        BadSignature,
        "tx_signature",
    )


def test_unregistered_key(world):
    publish(world)
    stranger = Identity.generate("edge_server", world.servers[0].name, seed=999)
    stx = ModelUpdate("t0", 0, stranger.name, addr(1), 5).sign(stranger)
    _rejects(world, world.consortium.propose(world.ledger, [stx]), UnregisteredKey, "unregistered_key")


def test_wrong_role(world):
    publish(world)
    # a requestor signing a model update
    stx = ModelUpdate("t0", 0, world.requestor.name, addr(1), 5).sign(world.requestor)
    _rejects(world, world.consortium.propose(world.ledger, [stx]), WrongRole, "role")
    # an edge server publishing a task
    s = world.servers[0]
    stx = TaskPublication(s.name, "t9", "", 0.5, 1).sign(s)
    _rejects(world, world.consortium.propose(world.ledger, [stx]), WrongRole, "role")


def test_signer_must_match_named_actor(world):
    publish(world)
    s0, s1 = world.servers[:2]
    stx = ModelUpdate("t0", 0, s1.name, addr(1), 5).sign(s0)  # es0 claims to be es1
    _rejects(world, world.consortium.propose(world.ledger, [stx]), SignerMismatch, "signer")
    # node transactions must come from the block's proposer
    L, c = world.ledger, world.consortium
    L.append(c.propose(L, [_update(world)]))
    not_leader = next(n for n in c.names if n != c.leader(L).name)
    agg = AggregatedModel("t0", 0, not_leader, addr(5), (world.servers[0].name,)).sign(c.node(not_leader))
    _rejects(world, c.propose(L, [agg]), SignerMismatch, "signer")


def test_replayed_update(world):
    publish(world)
    L, c = world.ledger, world.consortium
    L.append(c.propose(L, [_update(world)]))
    _rejects(world, c.propose(L, [_update(world)]), ReplayedTransaction, "replay")  # identical tx
    other = _update(world, address=addr(777))  # same (task, round, server), new content
    _rejects(world, c.propose(L, [other]), ReplayedTransaction, "replay")
    # replay inside one block
    _rejects(world, c.propose(L, [_update(world, k=1), _update(world, k=1)]), ReplayedTransaction, "replay")


def test_rounds_move_forward(world):
    publish(world)
    L, c = world.ledger, world.consortium
    _rejects(world, c.propose(L, [_update(world, r=1)]), RoundOutOfOrder, "round_order")
    L.append(c.propose(L, [_update(world, r=0)]))
    agg = AggregatedModel("t0", 1, c.leader(L).name, addr(5), (world.servers[0].name,))
    _rejects(world, c.propose(L, [agg]), RoundOutOfOrder, "round_order")
    missing = AggregatedModel("t0", 0, c.leader(L).name, addr(5), (world.servers[1].name,))
    _rejects(world, c.propose(L, [missing]), TaskStateError, "task_state")
    agg0 = AggregatedModel("t0", 0, c.leader(L).name, addr(5), (world.servers[0].name,))
    L.append(c.propose(L, [agg0]))
    assert L.task("t0").next_round == 1
    # a late update for the closed round 0 from a server that did not send one
    _rejects(world, c.propose(L, [_update(world, r=0, k=2)]), RoundOutOfOrder, "round_order")
    L.append(c.propose(L, [_update(world, r=1, k=2)]))


def test_wrong_previous_hash(world):
    L, c = world.ledger, world.consortium
    good = c.propose(L, [])
    h = dataclasses.replace(good.header, prev_hash=hashlib.sha256(b"x").digest())
    _rejects(world, Block(h, (), c.certify(h)), BadPrevHash, "prev_hash")


def test_certificate_short_of_quorum(world):
    L, c = world.ledger, world.consortium
    assert c.quorum == quorum_size(4) == 3
    two = c.propose(L, [], signers=c.names[:2])
    _rejects(world, two, QuorumNotReached, "quorum")
    # duplicates do not count twice
    b = c.propose(L, [])
    dup = Block(b.header, (), (b.certificate[0], b.certificate[0], b.certificate[1]))
    _rejects(world, dup, BadCertificate, "certificate")
    # a certificate signature that does not verify
    bad = CommitSignature(b.certificate[2].node, bytes(64))
    _rejects(world, Block(b.header, (), (*b.certificate[:2], bad)), BadCertificate, "certificate")
    # a signature by an edge server is not a commit
    es = world.servers[0]
    fake = CommitSignature(es.name, es.sign(commit_digest(b.hash)))
    _rejects(world, Block(b.header, (), (*b.certificate[:2], fake)), BadCertificate, "certificate")
    L.append(c.propose(L, [], signers=c.names))  # all four is fine


def test_wrong_proposer_and_view_change(world):
    L, c = world.ledger, world.consortium
    b = c.propose(L, [])
    other = next(n for n in c.names if n != b.header.proposer)
    h = dataclasses.replace(b.header, proposer=other)
    _rejects(world, Block(h, (), c.certify(h)), WrongProposer, "proposer")
    b1 = c.propose(L, [], view=1)  # view change: the next node in the rotation leads
    assert b1.header.proposer != b.header.proposer
    L.append(b1)


def test_merkle_and_timestamp(world):
    L, c = world.ledger, world.consortium
    publish(world)
    b = c.propose(L, [_update(world), _update(world, k=1)])
    swapped = Block(b.header, b.txs[::-1], b.certificate)
    _rejects(world, swapped, BadMerkleRoot, "merkle_root")
    early = c.propose(L, [], timestamp=L.head_timestamp - 1)
    _rejects(world, early, BadTimestamp, "timestamp")


def test_membership_and_task_rules(world):
    L, c = world.ledger, world.consortium
    n0 = c.node(c.names[0])
    newcomer = Identity.generate("node", "node9", seed=1)
    reg = MembershipRegistration("node", "node9", newcomer.public_key, n0.name).sign(n0)
    _rejects(world, c.propose(L, [reg]), MembershipError, "membership")
    dup = MembershipRegistration("edge_server", world.servers[0].name, bytes(range(32)), n0.name).sign(n0)
    _rejects(world, c.propose(L, [dup]), MembershipError, "membership")
    publish(world)
    pub = TaskPublication(world.requestor.name, "t0", "again", 0.5, 1).sign(world.requestor)
    _rejects(world, c.propose(L, [pub]), TaskStateError, "task_state")
    _rejects(world, c.propose(L, [_update(world, task="nope")]), TaskStateError, "task_state")


def test_recruitment_must_match_contract(world):
    L, c = world.ledger, world.consortium
    publish(world)
    bad = WorkerRecruitment("t0", tuple(BIDS), ("d3",), 5.0, ("a", "e"), "greedy-budgeted-max-coverage/1")
    _rejects(world, c.propose(L, [bad]), ContractMismatch, "contract")
    s = world.servers[0]
    pay = DataSubmissionPayment("t0", "d0", s.name, 1, 1).sign(s)
    _rejects(world, c.propose(L, [pay]), TaskStateError, "task_state")  # nobody recruited yet


def test_finalized_task_and_payment_rules(tmp_path):
    w = make_world(tmp_path / "c.db")
    run_task(w, settle=False)
    L, c = w.ledger, w.consortium
    _rejects(w, c.propose(L, [_update(w, r=2)]), TaskStateError, "task_state")
    rec = settle_task(L, "t0", w_l=0.5, w_a=1.25, w_b=0.1)
    # moving one minor unit between payees keeps the sum but breaks the contract
    a = list(rec.allocations)
    a[0], a[1] = a[0]._replace(amount=a[0].amount + 1), a[1]._replace(amount=a[1].amount - 1)
    _rejects(w, c.propose(L, [dataclasses.replace(rec, allocations=tuple(a))]), ContractMismatch, "contract")
    _rejects(w, c.propose(L, [dataclasses.replace(rec, total=rec.total + 1)]), ContractMismatch, "contract")
    L.append(c.propose(L, [rec]))
    _rejects(w, c.propose(L, [rec]), ReplayedTransaction, "replay")
    w.ledger.close()


def test_binding_needs_the_requestors_task_and_a_real_aggregate(world):
    L, c = world.ledger, world.consortium
    publish(world)
    L.append(c.propose(L, [_update(world)]))
    L.append(c.propose(L, [AggregatedModel("t0", 0, c.leader(L).name, addr(5), (world.servers[0].name,))]))
    _rejects(world, c.propose(L, [ResultBinding("t0", 0, "someone", addr(5))]), TaskStateError, "task_state")
    _rejects(world, c.propose(L, [ResultBinding("t0", 0, "req0", addr(6))]), TaskStateError, "task_state")
    L.append(c.propose(L, [ResultBinding("t0", 0, "req0", addr(5))]))
    assert L.task("t0").finalized


def test_first_failure_in_block_order_is_reported(world):
    publish(world)
    good = _update(world)
    forged = SignedTx(good.payload, good.signer, bytes(64))
    replay_later = _update(world, k=1)
    b = world.consortium.propose(world.ledger, [forged, replay_later, replay_later])
    err = _rejects(world, b, BadSignature, "tx_signature")
    assert err.tx_index == 0


def test_election_is_deterministic_rotation():
    nodes = [f"n{i}" for i in range(7)]
    prev = hashlib.sha256(b"p").digest()
    leaders = [elect_leader(prev, 5, v, nodes) for v in range(7)]
    assert sorted(leaders) == sorted(nodes)  # every node leads once in n views
    assert elect_leader(prev, 5, 0, nodes[::-1]) == leaders[0]  # order of the list does not matter
    start = sorted(nodes).index(leaders[0])
    assert leaders == [sorted(nodes)[(start + v) % 7] for v in range(7)]
    spread = {elect_leader(hashlib.sha256(bytes([i])).digest(), i, 0, nodes) for i in range(60)}
    assert spread == set(nodes)
    with pytest.raises(ValueError, match="node_ids"):
        elect_leader(prev, 0, 0, [])


@pytest.mark.parametrize("n", [*list(range(0, 12)), 33])
def test_merkle_matches_rfc6962(n):
    leaves = [hashlib.sha256(bytes([i])).digest()[: 1 + i % 7] for i in range(n)]
    assert merkle_root(leaves) == merkle_root_rfc6962(leaves)


def test_genesis_rules(tmp_path):
    c = Consortium.generate(4, seed=1)
    g = c.genesis()
    assert g.header.proposer == elect_leader(bytes(32), 0, 0, c.names)
    stranger = Identity.generate("edge_server", "es", seed=1)
    txs = (
        *g.txs,
        MembershipRegistration("edge_server", "es", stranger.public_key, "node0").sign(c.node("node0")),
    )
    h = dataclasses.replace(g.header, n_tx=len(txs), merkle_root=merkle_root([t.encode() for t in txs]))
    with pytest.raises(LedgerError, match="genesis"):
        Ledger.create(tmp_path / "g.db", Block(h, txs, c.certify(h)))
    assert not (tmp_path / "g.db").exists()
    with Ledger.create(tmp_path / "ok.db", g) as L:
        assert L.nodes == c.names and len(L) == 1 and L.height == 0
    with pytest.raises(FileExistsError):
        Ledger.create(tmp_path / "ok.db", g)


def _sig_jobs(n: int, bad: int):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mcsl_core.ledger._state import SigJob

    sk = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pk = sk.public_key()
    msgs = [f"m{i}".encode() for i in range(n)]
    return [SigJob(0, i, pk, sk.sign(b"x" if i == bad else m), m, f"tx {i}") for i, m in enumerate(msgs)]


_FORK_CHILD = """
import os, sys
from tests.ledger.test_rules import _sig_jobs
from mcsl_core.ledger._state import run_signature_jobs
assert run_signature_jobs(_sig_jobs(40, bad=23), max_workers=2).tx_index == 23  # the pool now exists
pid = os.fork()
if pid == 0:
    os._exit(0 if run_signature_jobs(_sig_jobs(40, bad=7), max_workers=2).tx_index == 7 else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_signature_jobs_find_the_first_bad_one_through_the_shared_pool_also_after_fork():
    """The verification thread pool is kept per process; a forked child must start its own
    (an inherited pool has no threads: its jobs would wait forever). The fork happens in a
    fresh interpreter that has imported the ledger only (no other library's threads)."""
    import subprocess
    import sys
    from pathlib import Path

    assert run_signature_jobs(_sig_jobs(40, bad=23), max_workers=2).tx_index == 23
    assert run_signature_jobs(_sig_jobs(40, bad=-1), max_workers=2) is None
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run([sys.executable, "-c", _FORK_CHILD], cwd=root, timeout=60, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child's verification hung")
    assert out.returncode == 0, out.stderr.decode()[-2000:]
