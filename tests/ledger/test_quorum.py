"""The certificate quorum at n = 5: ceil((n + f + 1) / 2) = 4, so one equivocating node cannot fork."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from pathlib import Path

import pytest

from mcsl_core.cli import main as cli_main
from mcsl_core.ledger import Ledger, ModelUpdate, QuorumNotReached, quorum_size, verify_file
from tests.ledger.helpers import addr, make_world, publish


def test_quorum_of_five_is_four_and_any_two_share_an_honest_node():
    # with f = 1 faulty node, two quorums must share f + 1 = 2 nodes: one of them honest
    assert quorum_size(5) == 4
    nodes = range(5)
    for a, b in itertools.combinations(itertools.combinations(nodes, 4), 2):
        assert len(set(a) & set(b)) >= 2
    # the old 2f + 1 = 3 let two certificates meet in one node alone
    assert (
        min(len(set(a) & set(b)) for a, b in itertools.combinations(itertools.combinations(nodes, 3), 2)) == 1
    )


@pytest.fixture
def five(tmp_path):
    w = make_world(tmp_path / "chain.db", n_nodes=5)
    publish(w)
    yield w
    w.ledger.close()


def test_a_three_of_five_certificate_is_rejected(five):
    L, c = five.ledger, five.consortium
    leader = c.leader(L).name
    signers = [leader, *[n for n in c.names if n != leader][:2]]
    block = c.propose(L, [], signers=signers)
    assert len(block.certificate) == 3
    before = (len(L), L.head_hash)
    with pytest.raises(QuorumNotReached, match="quorum is 4 of 5") as ei:
        L.append(block)
    assert ei.value.height == block.height and (len(L), L.head_hash) == before
    L.append(c.propose(L, [], signers=[leader, *[n for n in c.names if n != leader][:3]]))  # 4 of 5 is final
    assert L.verify().ok


def _forced_copy(src: Path, dst: Path, block) -> Path:
    """``src`` with ``block`` written straight into SQLite, bypassing every append-time rule."""
    shutil.copy(src, dst)
    header, cert, txs = block.encode_parts()
    with sqlite3.connect(dst) as con:
        con.execute("INSERT INTO blocks VALUES (?, ?, ?)", (block.height, header, cert))
        con.executemany("INSERT INTO txs VALUES (?, ?, ?)", [(block.height, i, t) for i, t in enumerate(txs)])
    return dst


def test_an_equivocating_node_cannot_certify_a_fork(five, tmp_path, capsys):
    """Two different blocks at one height, each with 3 of 5 commit signatures; the leader signs both.

    Under 2f + 1 = 3 both forks verified; with the quorum 4 each is refused at that height.
    """
    L, c = five.ledger, five.consortium
    leader = c.leader(L).name
    others = [n for n in c.names if n != leader]
    s0, s1 = five.servers[0], five.servers[1]
    x = c.propose(L, [ModelUpdate("t0", 0, s0.name, addr(1), 5).sign(s0)], signers=[leader, *others[:2]])
    y = c.propose(L, [ModelUpdate("t0", 0, s1.name, addr(2), 5).sign(s1)], signers=[leader, *others[2:]])
    assert x.height == y.height and x.hash != y.hash
    assert {s.node for s in x.certificate} & {s.node for s in y.certificate} == {leader}
    L.close()
    for name, block in (("x", x), ("y", y)):
        p = _forced_copy(L.path, tmp_path / f"fork_{name}.db", block)
        rep = verify_file(p)
        assert (rep.ok, rep.bad_height, rep.rule) == (False, block.height, "quorum")
        assert cli_main(["ledger", "verify", str(p)]) == 1
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and f"height {block.height}" in out[0] and "quorum" in out[0]
        with pytest.raises(QuorumNotReached):
            Ledger.open(p)
