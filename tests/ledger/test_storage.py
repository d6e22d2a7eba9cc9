"""Damaged, foreign and read-only ledger files: one line, exit 1 (corrupt) or 2 (not a ledger), no writes."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from mcsl_core.cli import main as cli_main
from mcsl_core.ledger import Consortium, Ledger, StorageError, verify_file
from mcsl_core.ledger._chain import _connect_ro
from tests.ledger.helpers import make_world, run_task

PAGE = 4096  # SQLite's default page size, which the ledger keeps


@pytest.fixture(scope="module")
def chain_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("storage") / "chain.db"
    w = make_world(path)
    run_task(w, "t0", rounds=2)
    w.ledger.close()  # the last connection checkpoints and removes the -wal file
    assert not path.with_name("chain.db-wal").exists()
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and the first line printed; a failure prints exactly one line.

    (A traceback would raise out of ``main`` and fail the test.)
    """
    code = cli_main(list(argv))
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert lines and (code == 0 or len(lines) == 1), lines
    return code, lines[0]


def _both(capsys, path: Path) -> list[tuple[int, str]]:
    return [_cli(capsys, "ledger", cmd, str(path)) for cmd in ("verify", "show")]


def _sql(path: Path, *statements: str) -> Path:
    con = sqlite3.connect(path)
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()
    return path


# ---------------------------------------------------------------- damaged files
def test_every_damaged_page_gives_one_line(chain_file, tmp_path, capsys):
    n_pages = chain_file.stat().st_size // PAGE
    assert n_pages >= 4
    codes = {}
    for page in range(n_pages):
        p = _copy(chain_file, tmp_path / f"p{page}.db")
        data = bytearray(p.read_bytes())
        lo = page * PAGE + (100 if page == 0 else 0)  # keep the 100-byte file header: damage the page
        data[lo : lo + 64] = bytes((b ^ 0xA5) for b in data[lo : lo + 64])
        p.write_bytes(bytes(data))
        results = _both(capsys, p)
        for code, line in results:
            assert code in (0, 1, 2), line
            if code == 1:
                assert line.startswith("verification failed: ")
            if code == 2:
                assert line.startswith("mcsl: error: ")
        codes[page] = results[0][0]
    assert codes[0] == 2  # the schema page: nothing says it is a ledger any more
    assert 1 in codes.values()  # data pages: a corrupt ledger, reported at a height


def test_a_malformed_page_is_a_storage_error_at_the_height_being_read(chain_file, tmp_path, capsys):
    p = _copy(chain_file, tmp_path / "c.db")
    with sqlite3.connect(p) as con:  # the txs table's root page
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='txs'").fetchone()[0]
    data = bytearray(p.read_bytes())
    start = (root - 1) * PAGE
    data[start : start + 12] = b"\xff" * 12  # an impossible b-tree page header
    p.write_bytes(bytes(data))
    rep = verify_file(p)
    assert (rep.ok, rep.rule, rep.bad_height) == (False, "storage", 0)
    assert "malformed" in rep.message
    for code, line in _both(capsys, p):
        assert code == 1 and "height 0: rule 'storage'" in line


def test_wrong_column_types(chain_file, tmp_path, capsys):
    cases = {
        "int header": ("UPDATE blocks SET header = 12345 WHERE height = 3", 3, "encoding"),
        "text certificate": ("UPDATE blocks SET certificate = 'x' WHERE height = 4", 4, "encoding"),
        "text tx height": ("UPDATE txs SET height = 'five' WHERE height = 5 AND idx = 0", 5, "encoding"),
        "real tx index": ("UPDATE txs SET idx = 0.5 WHERE height = 2 AND idx = 0", 2, "merkle_root"),
    }
    for name, (statement, height, rule) in cases.items():
        p = _sql(_copy(chain_file, tmp_path / f"{name}.db"), statement)
        rep = verify_file(p)
        assert (rep.ok, rep.bad_height, rep.rule) == (False, height, rule), name
        for code, line in _both(capsys, p):
            assert code == 1 and f"height {height}:" in line, (name, line)
    # a stray row of no height at all: every block verifies, the row is still reported
    p = _sql(_copy(chain_file, tmp_path / "stray.db"), "INSERT INTO txs VALUES ('x', 0, x'00')")
    rep = verify_file(p)
    assert (rep.ok, rep.rule, rep.bad_height) == (False, "storage", None)
    assert "non-integer height" in rep.message
    assert _cli(capsys, "ledger", "verify", str(p))[0] == 1


def _without_not_null(path: Path, table: str) -> None:
    """Recreate ``table`` without its NOT NULL constraints (so a NULL can be stored)."""
    with sqlite3.connect(path) as con:
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        con.execute(f"CREATE TABLE {table}_new ({', '.join(cols)})")
        con.execute(f"INSERT INTO {table}_new SELECT * FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE {table}_new RENAME TO {table}")


def test_null_blobs(chain_file, tmp_path, capsys):
    p = _copy(chain_file, tmp_path / "tx.db")
    _without_not_null(p, "txs")
    _sql(p, "UPDATE txs SET data = NULL WHERE height = 4 AND idx = 0")
    rep = verify_file(p)
    assert (rep.ok, rep.bad_height, rep.rule) == (False, 4, "storage") and "NULL" in rep.message
    for code, line in _both(capsys, p):
        assert code == 1 and "height 4:" in line
    p = _copy(chain_file, tmp_path / "header.db")
    _without_not_null(p, "blocks")
    _sql(p, "UPDATE blocks SET header = NULL WHERE height = 6")
    rep = verify_file(p)
    assert (rep.ok, rep.bad_height, rep.rule) == (False, 6, "storage")
    with pytest.raises(StorageError):
        Ledger.open(p)


@pytest.mark.parametrize("table", ["blocks", "txs", "head"])
def test_a_dropped_table(chain_file, tmp_path, capsys, table):
    p = _sql(_copy(chain_file, tmp_path / "c.db"), f"DROP TABLE {table}")
    rep = verify_file(p)
    assert not rep.ok
    assert rep.rule == "storage" and "no such table" in rep.message
    # without blocks or txs nothing reads (height 0); without the head record every block verifies
    assert rep.bad_height == (verify_file(chain_file).blocks if table == "head" else 0)
    for code, _line in _both(capsys, p):
        assert code == 1


def test_only_the_meta_table(tmp_path, capsys):
    p = _sql(
        tmp_path / "meta.db",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta VALUES ('format', 'mcsl-ledger/2')",
    )
    for code, line in _both(capsys, p):  # it says it is a ledger, and holds nothing: corrupt
        assert code == 1 and "height 0: rule 'storage'" in line
    q = _sql(tmp_path / "other.db", "CREATE TABLE meta (key TEXT, value TEXT)")
    for code, line in _both(capsys, q):  # no format tag: not a ledger
        assert code == 2 and "not an mcsl ledger" in line


def test_not_a_database(tmp_path, capsys):
    (tmp_path / "junk.db").write_bytes(b"SQLite format 3\x00" + os.urandom(5000))
    (tmp_path / "text.db").write_text("hello")
    for name in ("junk.db", "text.db"):
        for code, line in _both(capsys, tmp_path / name):
            assert code == 2 and line.startswith("mcsl: error: ") and "not an mcsl ledger" in line


# ---------------------------------------------------------------- reading never writes
def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in sorted(folder.iterdir())
    }


def test_verify_and_show_never_write(chain_file, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    p = _copy(chain_file, folder / "c.db")
    (folder / "empty.db").write_bytes(b"")
    foreign = _sql(folder / "foreign.db", "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)")
    assert foreign.read_bytes()[18:20] == b"\x01\x01"  # a rollback-journal database
    before = _snapshot(folder)
    assert verify_file(p).ok
    assert _cli(capsys, "ledger", "verify", str(p))[0] == 0
    assert _cli(capsys, "ledger", "show", str(p))[0] == 0
    with Ledger.open(p, read_only=True) as L:
        assert L.verify().ok and L.block(L.height).anchor
        with pytest.raises(ValueError, match="read_only"):
            L.append(Consortium.generate(4, seed=7).propose(L, []))
    for name in ("empty.db", "foreign.db"):
        for code, _line in _both(capsys, folder / name):
            assert code == 2
        with pytest.raises(ValueError, match="not an mcsl ledger"):
            Ledger.open(folder / name)  # a writer's open checks the format before touching the file
    assert _snapshot(folder) == before  # same files, bytes, mtimes: no -wal/-shm, no WAL switch
    assert (folder / "empty.db").stat().st_size == 0


def test_the_read_connection_is_read_only(chain_file, tmp_path):
    p = _copy(chain_file, tmp_path / "c.db")
    data = p.read_bytes()
    assert data[18:20] == b"\x02\x02"  # the ledger's own file is in WAL mode
    con = _connect_ro(p)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            con.execute("DELETE FROM blocks")
        con.execute("PRAGMA journal_mode=DELETE").fetchall()  # a read-only connection cannot switch it
    finally:
        con.close()
    assert p.read_bytes() == data
    # with a writer's log beside the file the reader still sees its committed blocks
    with Ledger.open(p) as L:
        L.append(Consortium.generate(4, seed=7).propose(L, []))
        assert p.with_name("c.db-wal").exists()
        rep = verify_file(p)
        assert rep.ok and rep.blocks == len(L) == rep.anchored_height + 1


def test_a_read_only_folder(chain_file, tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    p = _copy(chain_file, folder / "c.db")
    before = _snapshot(folder)
    p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        assert verify_file(p).ok
        assert _cli(capsys, "ledger", "verify", str(p))[0] == 0
        assert _cli(capsys, "ledger", "show", str(p))[0] == 0
        if os.geteuid() == 0:
            pytest.skip(
                "running as root: permission bits do not stop root from writing, so that a write "
                "is refused cannot be shown here (the no-write property is checked by bytes and mtimes)"
            )
        with pytest.raises(PermissionError):  # a writer cannot open it, with one clear error
            Ledger.open(p)
    finally:
        folder.chmod(stat.S_IRWXU)
        p.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert {k: v[:2] for k, v in _snapshot(folder).items()} == {k: v[:2] for k, v in before.items()}
