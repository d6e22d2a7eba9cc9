"""The head anchor: removing blocks from the top of a stored chain is detected and reported with the height."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcsl_core.cli import main as cli_main
from mcsl_core.ledger import (
    BadAnchor,
    Block,
    CommitSignature,
    Consortium,
    Ledger,
    PaymentRecord,
    anchor_digest,
    verify_file,
)
from mcsl_core.ledger._block import encode_certificate
from tests.conftest import examples
from tests.ledger.helpers import make_world, run_task


@pytest.fixture(scope="module")
def settled(tmp_path_factory) -> Path:
    """A chain whose last block settles task t0 (17 blocks, heights 0..16)."""
    path = tmp_path_factory.mktemp("anchor") / "chain.db"
    w = make_world(path)
    run_task(w, "t1", rounds=1, settle=False)
    run_task(w, "t0", rounds=2)
    assert isinstance(w.ledger.block(w.ledger.height).txs[0].tx, PaymentRecord)
    assert w.ledger.anchored_height == w.ledger.height
    w.ledger.close()
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _top(path: Path) -> int:
    with sqlite3.connect(path) as con:
        return con.execute("SELECT MAX(height) FROM blocks").fetchone()[0]


def _truncate(path: Path, k: int) -> None:
    """Delete the last ``k`` blocks and their transactions, as an editor of the file would."""
    with sqlite3.connect(path) as con:
        top = con.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
        con.execute("DELETE FROM txs WHERE height > ?", (top - k,))
        con.execute("DELETE FROM blocks WHERE height > ?", (top - k,))


def _cli_line(capsys, *argv) -> tuple[int, str]:
    code = cli_main(list(argv))
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1, lines
    return code, lines[0]


def test_removing_the_settlement_block_is_reported(settled, tmp_path, capsys):
    top = _top(settled)
    p = _copy(settled, tmp_path / "c.db")
    _truncate(p, 1)
    rep = verify_file(p)
    assert (rep.ok, rep.bad_height, rep.rule, rep.blocks) == (False, top, "anchor", top)
    assert f"certifies block {top}" in rep.message and f"ends at height {top - 1}" in rep.message
    with pytest.raises(BadAnchor) as ei:
        Ledger.open(p)
    assert ei.value.height == top
    code, line = _cli_line(capsys, "ledger", "verify", str(p))
    assert code == 1 and f"height {top}:" in line and "rule 'anchor'" in line
    code, line = _cli_line(capsys, "ledger", "show", str(p), "--task", "t0")
    assert code == 1 and f"height {top}:" in line


@settings(max_examples=examples(10), deadline=None)
@given(k=st.integers(1, 15))
def test_removing_the_last_k_blocks_is_reported(settled, tmp_path_factory, k):
    top = _top(settled)
    p = _copy(settled, tmp_path_factory.mktemp("trunc") / "c.db")
    _truncate(p, k)
    rep = verify_file(p)
    assert (rep.ok, rep.bad_height, rep.rule) == (False, top - k + 1, "anchor")
    assert f"{k} block(s) were removed" in rep.message


def test_the_head_record_cannot_simply_be_deleted_or_reset(settled, tmp_path, capsys):
    p = _copy(settled, tmp_path / "gone.db")
    with sqlite3.connect(p) as con:
        con.execute("DELETE FROM head")
    rep = verify_file(p)
    assert (rep.ok, rep.rule) == (False, "anchor") and "missing" in rep.message
    assert cli_main(["ledger", "verify", str(p)]) == 1
    capsys.readouterr()
    # the "no anchor yet" marker verifies, but the command refuses to call such a chain complete
    p = _copy(settled, tmp_path / "reset.db")
    _truncate(p, 3)
    with sqlite3.connect(p) as con:
        con.execute("UPDATE head SET height = -1, hash = zeroblob(32), anchor = CAST('[]' AS BLOB)")
    rep = verify_file(p)
    assert rep.ok and rep.anchored_height is None
    code, line = _cli_line(capsys, "ledger", "verify", str(p))
    assert code == 1 and "no head anchor" in line


def test_a_forged_or_foreign_anchor_is_refused(settled, tmp_path):
    top = _top(settled)
    with Ledger.open(settled, read_only=True) as L:
        prev_hash, head = L.block(top - 1).hash, L.block(top)
    assert head.anchor  # the head block comes back with its anchor
    sig = head.anchor[0].signature
    cases = {
        # the anchor of the head moved down to the new top: signatures over another digest
        "moved": (top - 1, prev_hash, head.anchor),
        "flipped": (
            top,
            head.hash,
            (CommitSignature(head.anchor[0].node, bytes([sig[0] ^ 1]) + sig[1:]), *head.anchor[1:]),
        ),
        "short": (top, head.hash, head.anchor[:2]),
        "other block": (top, bytes(32), head.anchor),
    }
    for name, (height, hsh, anchor) in cases.items():
        p = _copy(settled, tmp_path / f"{name}.db")
        with sqlite3.connect(p) as con:
            con.execute(
                "UPDATE head SET height=?, hash=?, anchor=?", (height, hsh, encode_certificate(anchor))
            )
        rep = verify_file(p)
        assert (rep.ok, rep.rule, rep.bad_height) == (False, "anchor", height), (name, rep)


def test_what_a_truncation_can_hide_an_older_anchor(settled, tmp_path):
    """The documented limit: a copy of the file taken earlier holds an older valid anchor."""
    early = tmp_path / "early.db"
    w = make_world(early)
    run_task(w, "t1", rounds=1, settle=False)
    w.ledger.close()
    with sqlite3.connect(early) as con:
        old = con.execute("SELECT height, hash, anchor FROM head").fetchone()
    p = _copy(settled, tmp_path / "c.db")
    _truncate(p, _top(p) - old[0])
    with sqlite3.connect(p) as con:
        con.execute("UPDATE head SET height=?, hash=?, anchor=?", old)
    rep = verify_file(p)
    assert rep.ok and rep.anchored_height == old[0] == rep.blocks - 1


def test_append_checks_the_anchor_and_unanchored_blocks_lag(tmp_path, capsys):
    w = make_world(tmp_path / "c.db")
    L, c = w.ledger, w.consortium
    good = c.propose(L, [])
    foreign = Consortium.generate(4, seed=99).anchor(good.header)
    with pytest.raises(BadAnchor) as ei:
        L.append(Block(good.header, good.txs, good.certificate, foreign))
    assert ei.value.height == good.height and len(L) == good.height
    L.append(Block(good.header, good.txs, good.certificate))  # no anchor: accepted, the anchor lags
    assert (L.height, L.anchored_height) == (2, 1)
    L.close()
    rep = verify_file(tmp_path / "c.db")
    assert rep.ok and rep.anchored_height == 1
    code, line = _cli_line(capsys, "ledger", "verify", str(tmp_path / "c.db"))
    assert code == 1 and "height 2: blocks 2..2" in line
    with Ledger.open(tmp_path / "c.db") as L:
        L.append(c.propose(L, []))
        assert L.anchored_height == L.height == 3
    code, line = _cli_line(capsys, "ledger", "verify", str(tmp_path / "c.db"))
    assert code == 0 and "head anchored at height 3" in line


def test_anchor_digest_and_transport():
    c = Consortium.generate(4, seed=3)
    g = c.genesis()
    assert anchor_digest(0, g.hash) != anchor_digest(1, g.hash)
    assert Block.decode(g.encode()) == g and Block.decode(g.encode()).anchor == g.anchor
    bare = Block(g.header, g.txs, g.certificate)
    assert Block.decode(bare.encode()) == bare
    with pytest.raises(ValueError, match="height"):
        anchor_digest(-1, g.hash)


def test_a_format_1_file_reads_but_is_not_anchored(settled, tmp_path, capsys):
    p = _copy(settled, tmp_path / "v1.db")
    with sqlite3.connect(p) as con:
        con.execute("DROP TABLE head")
        con.execute("UPDATE meta SET value='mcsl-ledger/1' WHERE key='format'")
    rep = verify_file(p)
    assert rep.ok and rep.anchored_height is None
    with Ledger.open(p) as L:
        assert L.anchored_height is None
        L.append(Consortium.generate(4, seed=7).propose(L, []))  # appends keep format 1
    assert verify_file(p).ok
    code, line = _cli_line(capsys, "ledger", "verify", str(p))
    assert code == 1 and "no head anchor" in line
