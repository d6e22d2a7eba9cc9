"""SQLite persistence: reopen, tamper detection, crash safety, CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcsl_core.cli import main as cli_main
from mcsl_core.ledger import Consortium, Identity, Ledger, LedgerError, ModelUpdate, SignedTx, verify_file
from tests.conftest import examples
from tests.ledger.helpers import addr, make_world, run_task

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chain_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "chain.db"
    w = make_world(path)
    run_task(w, "t0", rounds=2)
    run_task(w, "t1", rounds=1, description="handwritten letters", settle=False)
    w.ledger.close()
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def test_reopen_rebuilds_state(chain_file, tmp_path):
    p = _copy(chain_file, tmp_path / "c.db")
    with Ledger.open(p) as L:
        assert L.requestor_tasks("req0") == ["t0", "t1"]
        assert L.task("t0").payment is not None and L.task("t1").binding is not None
        recs = L.task_records("t0")
        assert [r.height for r in recs] == sorted(r.height for r in recs)
        assert {type(r.tx).__name__ for r in recs} >= {"TaskPublication", "ModelUpdate", "PaymentRecord"}
        assert L.task_records("missing") == [] and L.requestor_tasks("nobody") == []
        rep = L.verify()
        assert rep.ok and rep.blocks == len(L) and rep.bad_height is None
        # a reopened ledger accepts the next block
        c = Consortium.generate(4, seed=7)
        L.append(c.propose(L, []))
        n = len(L)
        assert L.block(n - 1).hash == L.head_hash
    with Ledger.open(p) as L:
        assert len(L) == n


def test_verify_reports_every_signature(chain_file):
    rep = verify_file(chain_file)
    with Ledger.open(chain_file) as L:
        blocks = [L.block(h) for h in range(len(L))]
    assert rep.ok and rep.blocks == len(blocks)
    assert rep.transactions == sum(len(b.txs) for b in blocks)
    assert rep.signatures == sum(len(b.txs) + len(b.certificate) for b in blocks)
    assert verify_file(chain_file, max_workers=1) == rep


def _rows(path: Path) -> list[tuple[str, str, int, int, int]]:
    """(table, column, rowid, height, length) of every stored blob."""
    with sqlite3.connect(path) as con:
        out = [
            ("blocks", col, r, h, n)
            for col in ("header", "certificate")
            for r, h, n in con.execute(f"SELECT rowid, height, length({col}) FROM blocks")
        ]
        out += [
            ("txs", "data", r, h, n) for r, h, n in con.execute("SELECT rowid, height, length(data) FROM txs")
        ]
    return out


@settings(
    max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_changed_byte_is_found_at_its_height(chain_file, tmp_path_factory, data):
    rows = _rows(chain_file)
    table, col, rowid, height, n = data.draw(st.sampled_from(rows))
    pos = data.draw(st.integers(0, n - 1))
    flip = data.draw(st.integers(1, 255))
    p = _copy(chain_file, tmp_path_factory.mktemp("tamper") / "c.db")
    with sqlite3.connect(p) as con:
        (blob,) = con.execute(f"SELECT {col} FROM {table} WHERE rowid=?", (rowid,)).fetchone()
        blob = bytearray(blob)
        blob[pos] ^= flip
        con.execute(f"UPDATE {table} SET {col}=? WHERE rowid=?", (bytes(blob), rowid))
    rep = verify_file(p)
    assert not rep.ok
    assert rep.bad_height == height, rep
    assert rep.blocks == height
    with pytest.raises(LedgerError) as ei:
        Ledger.open(p)
    assert ei.value.height == height and ei.value.rule == rep.rule


def test_missing_and_reordered_rows(chain_file, tmp_path):
    p = _copy(chain_file, tmp_path / "gap.db")
    with sqlite3.connect(p) as con:
        con.execute("DELETE FROM blocks WHERE height=4")
    rep = verify_file(p)
    assert (rep.ok, rep.bad_height, rep.rule) == (False, 4, "height")
    p = _copy(chain_file, tmp_path / "tx.db")
    with sqlite3.connect(p) as con:
        con.execute("DELETE FROM txs WHERE height=5 AND idx=1")
    rep = verify_file(p)
    assert (rep.bad_height, rep.rule) == (5, "encoding")
    p = _copy(chain_file, tmp_path / "tail.db")
    with sqlite3.connect(p) as con:  # dropping the newest blocks: the head anchor still names block 16
        con.execute("DELETE FROM txs WHERE height >= 10")
        con.execute("DELETE FROM blocks WHERE height >= 10")
    rep = verify_file(p)
    assert (rep.ok, rep.blocks, rep.bad_height, rep.rule) == (False, 10, 10, "anchor")


def test_not_a_ledger(tmp_path):
    (tmp_path / "x.db").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not an mcsl ledger"):
        verify_file(tmp_path / "x.db")
    with pytest.raises(FileNotFoundError):
        Ledger.open(tmp_path / "none.db")


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mcsl_core.ledger import Block, Ledger
    data = Path(sys.argv[1]).read_bytes()
    blocks, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big"); blocks.append(Block.decode(data[i + 4:i + 4 + n])); i += 4 + n
    L = Ledger.create(sys.argv[2], blocks[0], durable=sys.argv[3] == "1")
    for b in blocks[1:]:
        L.append(b)
        print(b.height, flush=True)
    print("done", flush=True)
""")


@pytest.mark.parametrize("durable", [True, False], ids=["fsync", "no-fsync"])
def test_sigkill_mid_append_leaves_a_verified_prefix(tmp_path, durable):
    w = make_world(tmp_path / "src.db", durable=False)
    L, c = w.ledger, w.consortium
    from tests.ledger.helpers import publish

    publish(w)
    for r in range(400):
        ups = (
            [ModelUpdate("t0", 0, s.name, addr(1000 * r + k), 5).sign(s) for k, s in enumerate(w.servers)]
            if r == 0
            else []
        )
        L.append(c.propose(L, ups))
    blocks = [L.block(h) for h in range(len(L))]
    L.close()
    blob = b"".join(len(e).to_bytes(4, "big") + e for e in (b.encode() for b in blocks))
    (tmp_path / "blocks.bin").write_bytes(blob)
    dst = tmp_path / "dst.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path / "blocks.bin"), str(dst), "1" if durable else "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = 0
    for _line in proc.stdout:  # kill once a few dozen appends went through
        seen += 1
        if seen >= 30:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with Ledger.open(dst) as got:
        n = len(got)
        assert 30 < n <= len(blocks)  # at least the acknowledged appends survived
        assert n < len(blocks), "the writer finished before it was killed; use more blocks"
        for h in range(n):
            assert got.block(h).hash == blocks[h].hash
        assert got.verify().ok
        got.append(blocks[n])  # and the writer can resume where it stopped


def test_cli_verify_and_show(chain_file, tmp_path, capsys):
    assert cli_main(["ledger", "verify", str(chain_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "signatures verified" in out
    assert cli_main(["ledger", "show", str(chain_file)]) == 0
    out = capsys.readouterr().out
    assert "#0 " in out and "membership" in out
    assert cli_main(["ledger", "show", str(chain_file), "--task", "t0"]) == 0
    out = capsys.readouterr().out
    assert "task t0 (paid)" in out and "payment t0" in out and "update t0 round 1" in out
    assert cli_main(["ledger", "show", str(chain_file), "--task", "zzz"]) == 2
    assert "no task" in capsys.readouterr().err
    p = _copy(chain_file, tmp_path / "bad.db")
    with sqlite3.connect(p) as con:
        con.execute("UPDATE txs SET data = data || x'20' WHERE height=6")
    assert cli_main(["ledger", "verify", str(p)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "height 6" in out[0] and "rule 'encoding'" in out[0]
    assert cli_main(["ledger", "verify", str(tmp_path / "none.db")]) == 2


def test_second_writer_is_refused_until_it_reopens(chain_file, tmp_path):
    p = _copy(chain_file, tmp_path / "c.db")
    c = Consortium.generate(4, seed=7)
    a, b = Ledger.open(p), Ledger.open(p)
    a.append(c.propose(a, []))
    with pytest.raises(LedgerError, match="changed under this ledger"):
        b.append(c.propose(b, [], timestamp=b.head_timestamp + 5))
    assert len(b) == len(a) and b.head_hash == a.head_hash  # b re-read the file
    b.append(c.propose(b, []))
    a.close()
    b.close()
    with Ledger.open(p) as L:
        assert L.verify().ok and len(L) == len(b)


def test_member_and_task_queries(chain_file):
    with Ledger.open(chain_file, read_only=True) as L:
        es0 = Identity.generate("edge_server", "es0", seed=7)
        assert L.member("es0") == es0.member and L.member_by_key(es0.public_key) == es0.member
        assert L.member("nobody") is None and L.member_by_key(bytes(32)) is None
        assert L.tasks() == ["t0", "t1"]  # publication order
        assert set(L.members) == {*L.nodes, "es0", "es1", "es2", "req0"}
        rec = L.task_records("t0")[0]
        stx = L.block(rec.height).txs[rec.index]
    # txid: SHA-256 of the envelope magic, signer, signature and payload, in that order
    env = b"MCSLSTX1" + stx.signer + stx.signature + stx.payload
    assert stx.txid == hashlib.sha256(env).hexdigest()
    assert SignedTx.decode(env) == stx
