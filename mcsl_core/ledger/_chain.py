"""The ledger: a validated chain of blocks persisted in SQLite.

Every append is one SQLite transaction (header, certificate and transactions
of the block, and the head anchor when the block carries one, or nothing), so
a crash never leaves half a block visible. ``Ledger.open`` re-verifies the
whole chain from genesis and the stored head anchor, and raises a
:class:`LedgerError` naming the first bad height and rule.

Reading never writes: verification and read-only opening use SQLite's
read-only URI (``mode=ro``, and ``immutable=1`` when no write-ahead log is
beside the file), never switch the journal mode, and turn every SQLite or
decoding failure into a :class:`LedgerError` (rule ``storage``) at the first
height that could not be read.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from mcsl_core.ledger import _errors as E
from mcsl_core.ledger._block import ZERO_HASH, Block, anchor_digest, decode_certificate, encode_certificate
from mcsl_core.ledger._keys import Member
from mcsl_core.ledger._state import (
    ChainState,
    SigJob,
    TaskInfo,
    TxRecord,
    apply_block,
    default_workers,
    quorum_jobs,
    run_signature_jobs,
    sig_error,
)

__all__ = ["Ledger", "VerifyReport", "verify_file"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, header BLOB NOT NULL, certificate BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txs (height INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
                                PRIMARY KEY (height, idx));
CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 0), height INTEGER NOT NULL,
                                 hash BLOB NOT NULL, anchor BLOB NOT NULL);
"""
#: Format 2 adds the head record (the newest head anchor); format 1 files (no head record) still read.
_FORMAT = "mcsl-ledger/2"
_FORMAT_V1 = "mcsl-ledger/1"
#: Blocks whose signature checks are batched together during whole-chain verification.
_VERIFY_BATCH = 512


class VerifyReport(NamedTuple):
    """Outcome of re-verifying a stored chain."""

    ok: bool
    blocks: int  # blocks that verified (the good prefix below bad_height)
    transactions: int | None  # transactions verified (None when the chain is bad)
    signatures: int | None  # block signatures verified (None when the chain is bad)
    bad_height: int | None  # first bad height (None when ok, or when no height is known)
    rule: str | None  # rule that failed there
    message: str | None
    #: Height the stored head anchor certifies (None: no anchor, e.g. a format-1 file). Blocks
    #: above it are not protected against truncation.
    anchored_height: int | None = None


# ---------------------------------------------------------------- connections
def _connect(path: Path, durable: bool = True) -> sqlite3.Connection:
    """Read-write connection (the writer's): WAL journal, fsync per commit when ``durable``."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an append survives power loss once it returns. NORMAL (WAL): appends are
        # still atomic and survive a killed process, but the last few may be lost on an
        # operating-system crash; no fsync per block.
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    except sqlite3.OperationalError as exc:
        raise PermissionError(f"path: cannot open {path} for writing ({exc}); open it read_only") from None
    return conn


def _connect_ro(path: Path) -> sqlite3.Connection:
    """Read-only connection that writes nothing to ``path``.

    With a write-ahead log beside the file (a writer is active, or one was killed)
    the log holds committed blocks, so SQLite must read it (``mode=ro``). Without
    one the file alone is the database, opened ``immutable`` so that SQLite creates
    no ``-wal``/``-shm`` files beside it and needs no write access to the folder;
    :func:`verify_file` re-checks the file's size and mtime after reading.
    """
    wal = path.with_name(path.name + "-wal")
    params = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        return sqlite3.connect(f"file:{quote(str(path.resolve()))}?{params}", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise PermissionError(f"path: cannot open {path} for reading ({exc})") from None


def _read_format(conn: sqlite3.Connection, path: Path) -> str:
    """The file's format tag; ``ValueError`` (not a ledger) when it has none."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        if "readonly" in str(exc) or "unable to open" in str(exc):
            raise PermissionError(f"path: cannot read {path} ({exc})") from None
        raise ValueError(f"path: {path} is not an mcsl ledger ({exc})") from None
    if row is None or row[0] not in (_FORMAT, _FORMAT_V1):
        conn.close()
        raise ValueError(f"path: {path} is not an mcsl ledger (format {row[0] if row else None!r})")
    return row[0]


def _open_existing(path: Path, *, read_only: bool, durable: bool = True) -> tuple[sqlite3.Connection, str]:
    """(connection, format) of an existing ledger; its format is read before anything could write."""
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"path: {path} is not readable")
    conn = _connect_ro(path)
    fmt = _read_format(conn, path)
    if read_only:
        return conn, fmt
    conn.close()
    return _connect(path, durable), fmt


# ---------------------------------------------------------------- reading
def _iter_stored(conn: sqlite3.Connection) -> Iterator[tuple[int, bytes, bytes, list[tuple[int, bytes]]]]:
    """(height column, header, certificate, [(idx, tx bytes)]) in height order.

    Transaction rows whose height has no block are reported under height -1.
    Rows of the wrong type raise :class:`StorageError`; SQLite errors propagate
    (the caller names the height it was reading).
    """
    tx_cur = conn.execute(
        "SELECT height, idx, CAST(data AS BLOB) FROM txs "
        "WHERE typeof(height) = 'integer' AND typeof(idx) = 'integer' ORDER BY height, idx"
    )
    pending = tx_cur.fetchone()
    for height, header, cert in conn.execute(
        "SELECT height, CAST(header AS BLOB), CAST(certificate AS BLOB) FROM blocks ORDER BY height"
    ):
        if type(height) is not int or header is None or cert is None:
            raise E.StorageError(
                f"block row {height!r} has a NULL or non-integer column",
                height=height if type(height) is int else None,
            )
        while pending is not None and pending[0] < height:
            yield -1, b"", b"", [(pending[1], _blob(pending))]
            pending = tx_cur.fetchone()
        txs: list[tuple[int, bytes]] = []
        while pending is not None and pending[0] == height:
            txs.append((pending[1], _blob(pending)))
            pending = tx_cur.fetchone()
        yield height, bytes(header), bytes(cert), txs
    if pending is not None:
        yield -1, b"", b"", [(pending[1], _blob(pending))]
    # rows that belong to no height: a block that lost one already failed above at its own height
    bad = conn.execute(
        "SELECT count(*) FROM txs WHERE typeof(height) != 'integer' OR typeof(idx) != 'integer'"
    ).fetchone()[0]
    if bad:
        raise E.StorageError(f"{bad} transaction rows have a non-integer height or index")


def _blob(row: tuple) -> bytes:
    if row[2] is None:
        raise E.StorageError(f"transaction {row[1]} of height {row[0]} is NULL", height=row[0])
    return bytes(row[2])


def _decode_stored(
    col_height: int, expected: int, header: bytes, cert: bytes, txs: list[tuple[int, bytes]]
) -> Block:
    if col_height != expected:
        raise E.BadHeight(
            f"expected a block at height {expected}, found "
            f"{'a transaction without a block' if col_height < 0 else f'height {col_height}'}",
            height=expected,
        )
    if [i for i, _ in txs] != list(range(len(txs))):
        raise E.BadEncoding("transaction indices are not 0..n-1", height=col_height)
    try:
        block = Block.decode_parts(header, cert, [t for _, t in txs])
    except E.BadEncoding as exc:
        raise exc.at(col_height) from None
    except ValueError as exc:
        raise E.BadEncoding(str(exc), height=col_height) from None
    if block.header.height != col_height:
        raise E.BadHeight(
            f"block stored at height {col_height} says height {block.header.height}", height=col_height
        )
    return block


class _Head(NamedTuple):
    height: int  # -1: no anchored block yet
    hash: bytes
    anchor: tuple  # CommitSignatures over anchor_digest(height, hash)


def _read_head(conn: sqlite3.Connection) -> _Head:
    rows = conn.execute("SELECT id, height, CAST(hash AS BLOB), CAST(anchor AS BLOB) FROM head").fetchall()
    if len(rows) != 1:
        raise E.BadAnchor(
            f"the head record is {'missing' if not rows else f'{len(rows)} rows'}: "
            "blocks may have been removed from the top of the chain"
        )
    _, height, hsh, anchor = rows[0]
    if type(height) is not int or not isinstance(hsh, bytes) or not isinstance(anchor, bytes):
        raise E.StorageError("the head record has a NULL or wrongly typed column")
    if height == -1:
        return _Head(-1, ZERO_HASH, ())
    try:
        return _Head(height, hsh, decode_certificate(anchor))
    except E.BadEncoding as exc:
        raise E.BadAnchor(f"the head anchor does not decode ({exc.detail})", height=height) from None


def _check_head(st: ChainState, head: _Head) -> int | None:
    """Height the stored anchor certifies (None when unanchored); raise when it disagrees with the blocks."""
    if head.height == -1:
        return None
    if head.height > st.height:
        raise E.BadAnchor(
            f"the head anchor certifies block {head.height} ({head.hash.hex()[:16]}...) but the file ends "
            f"at height {st.height}: {head.height - st.height} block(s) were removed from the top",
            height=st.height + 1,
        )
    if head.height < 0 or st.hashes[head.height] != head.hash:
        raise E.BadAnchor(
            f"the head anchor certifies another block at height {head.height}", height=head.height
        )
    jobs = quorum_jobs(
        st, st.nodes, head.anchor, anchor_digest(head.height, head.hash), head.height, anchor=True
    )
    bad = run_signature_jobs(jobs, max_workers=1)
    if bad is not None:
        raise sig_error(bad)
    return head.height


def _replay(conn: sqlite3.Connection, st: ChainState, workers: int, pool) -> E.LedgerError | None:
    """Apply every stored block to ``st``; the first failure in chain order, or None."""
    jobs: list[SigJob] = []

    def flush() -> E.LedgerError | None:
        bad = run_signature_jobs(jobs, max_workers=workers, pool=pool)
        jobs.clear()
        return None if bad is None else sig_error(bad)

    err: E.LedgerError | None = None
    expected = 0
    try:
        for col_height, header, cert, txs in _iter_stored(conn):
            apply_block(st, _decode_stored(col_height, expected, header, cert, txs), jobs)
            expected += 1
            if expected % _VERIFY_BATCH == 0 and (err := flush()) is not None:
                break
    except E.LedgerError as exc:  # every rule error carries its height; storage errors where known
        err = exc
    except sqlite3.Error as exc:
        err = E.StorageError(f"cannot read the ledger file ({exc})", height=expected)
    sig = flush()
    if sig is not None and (err is None or err.height is None or sig.height <= err.height):
        err = sig
    return err


def _verify_conn(
    conn: sqlite3.Connection, fmt: str = _FORMAT, *, max_workers: int | None = None
) -> tuple[ChainState, VerifyReport, E.LedgerError | None]:
    """Replay every stored block into a fresh state, then check the head anchor; stop at the first failure.

    Signature checks are batched over ``_VERIFY_BATCH`` blocks and run on a
    thread pool; the first failure in chain order is the one reported.
    """
    st = ChainState()
    workers = max_workers or default_workers()
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    anchored: int | None = None
    try:
        conn.execute("BEGIN")  # one consistent read snapshot
        err = _replay(conn, st, workers, pool)
        if err is None and st.height < 0:
            err = E.GenesisError("the ledger holds no blocks", height=0)
        if err is None and fmt != _FORMAT_V1:
            try:
                anchored = _check_head(st, _read_head(conn))
            except E.LedgerError as exc:
                err = exc
    except sqlite3.Error as exc:
        err = E.StorageError(f"cannot read the ledger file ({exc})", height=st.height + 1)
    finally:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if pool is not None:
            pool.shutdown()
    if err is None:
        return st, VerifyReport(True, st.height + 1, st.n_tx, st.n_sig, None, None, None, anchored), None
    good = err.height if err.height is not None else st.height + 1
    return st, VerifyReport(False, good, None, None, err.height, err.rule, str(err)), err


def verify_file(path: str | os.PathLike, *, max_workers: int | None = None) -> VerifyReport:
    """Re-verify the ledger file at ``path`` without raising on a bad chain, and without writing to it.

    Raises ``FileNotFoundError``, ``PermissionError`` or ``ValueError`` (not a
    ledger); every defect of a ledger file is a report with ``ok=False``.
    """
    path = Path(path)
    for _attempt in range(2):
        before = _stamp(path)
        conn, fmt = _open_existing(path, read_only=True)
        try:
            report = _verify_conn(conn, fmt, max_workers=max_workers)[1]
        finally:
            conn.close()
        if _stamp(path) == before:  # an immutable read is only valid if nothing checkpointed meanwhile
            break
    return report


def _stamp(path: Path) -> tuple[int, int]:
    s = path.stat()
    return s.st_size, s.st_mtime_ns


class Ledger:
    """A verified chain in an SQLite file.

    Create with :meth:`create` (from a genesis block) or :meth:`open` (which
    re-verifies everything, the head anchor included). :meth:`append` validates
    a block against every rule and stores it atomically; queries run on the
    in-memory state that verification rebuilt.
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        state: ChainState,
        *,
        fmt: str = _FORMAT,
        anchored_height: int | None = None,
        read_only: bool = False,
    ):
        self._path = path
        self._conn = conn
        self._st = state
        self._fmt = fmt
        self._anchored = anchored_height
        self._read_only = read_only

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, genesis: Block, *, durable: bool = True) -> Ledger:
        """New ledger file holding ``genesis``; the file must not exist yet.

        ``durable=False`` skips the fsync per append (SQLite ``synchronous=NORMAL``
        in WAL mode): appends stay atomic and survive a killed process, but the
        most recent ones can be lost if the operating system crashes.
        """
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"path: {path} already exists")
        st = ChainState()
        apply_block(st, genesis)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path, durable)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO meta VALUES ('format', ?)", (_FORMAT,))
            conn.execute("INSERT INTO head VALUES (0, -1, ?, ?)", (ZERO_HASH, b"[]"))
            _insert(conn, genesis, _FORMAT)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            path.unlink(missing_ok=True)
            raise
        return cls(path, conn, st, anchored_height=0 if genesis.anchor else None)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        max_workers: int | None = None,
        durable: bool = True,
        read_only: bool = False,
    ) -> Ledger:
        """Open and re-verify the whole chain and its head anchor; a bad chain raises the first failure.

        ``max_workers`` threads check signatures (default: every usable core);
        ``durable`` as in :meth:`create`. ``read_only=True`` opens the file with
        SQLite's read-only URI (nothing is written to it, the folder may be
        read-only); :meth:`append` is then refused. Without a writer's ``-wal``
        beside it the file is read as immutable, so such a ledger does not see
        blocks another process appends later (reopen it).
        """
        path = Path(path)
        conn, fmt = _open_existing(path, read_only=read_only, durable=durable)
        st, report, err = _verify_conn(conn, fmt, max_workers=max_workers)
        if err is not None:
            conn.close()
            raise err
        return cls(path, conn, st, fmt=fmt, anchored_height=report.anchored_height, read_only=read_only)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ writing
    def append(self, block: Block) -> None:
        """Validate ``block`` against every rule and store it in one SQLite transaction.

        A block carrying a head anchor (``block.anchor``, as :meth:`Consortium.propose`
        builds them) must have a valid quorum anchor; it replaces the stored one.
        Raises a :class:`LedgerError` subclass naming the rule (``storage`` when the
        file cannot be written); the ledger is unchanged on any failure.
        """
        if not isinstance(block, Block):
            raise ValueError(f"block must be a Block, got {type(block).__name__}")
        if self._read_only:
            raise ValueError(f"this ledger was opened read_only; reopen {self._path} to append")
        st = self._st
        # Validate on the state; apply_block only mutates it after every rule passed.
        snapshot = (st.height, st.head_hash)
        apply_block(st, block)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            top = self._conn.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
            if top != snapshot[0]:
                raise E.BadHeight(
                    f"the file changed under this ledger (stored top {top}, "
                    f"expected {snapshot[0]}); the state was re-read, propose again",
                    height=block.height,
                )
            _insert(self._conn, block, self._fmt)
            self._conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                # the in-memory state already holds the block: rebuild it from the file
                self._st, report, _ = _verify_conn(self._conn, self._fmt)
                self._anchored = report.anchored_height
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise E.StorageError(f"cannot store the block ({exc})", height=block.height) from None
            raise
        if block.anchor and self._fmt != _FORMAT_V1:
            self._anchored = block.height

    # ------------------------------------------------------------ checking
    def verify(self, *, max_workers: int | None = None) -> VerifyReport:
        """Re-read the file and re-verify every block, signature and the head anchor."""
        return _verify_conn(self._conn, self._fmt, max_workers=max_workers)[1]

    @property
    def anchored_height(self) -> int | None:
        """Height certified by the stored head anchor (None: none stored yet, or a format-1 file).

        Blocks above it could be removed from the file without :meth:`verify` noticing.
        """
        return self._anchored

    # ------------------------------------------------------------ queries
    @property
    def path(self) -> Path:
        return self._path

    @property
    def height(self) -> int:
        """Height of the last block (0 for a ledger holding only genesis)."""
        return self._st.height

    def __len__(self) -> int:
        return self._st.height + 1

    @property
    def head_hash(self) -> bytes:
        return self._st.head_hash

    @property
    def head_timestamp(self) -> int:
        return self._st.head_timestamp

    @property
    def nodes(self) -> tuple[str, ...]:
        """Consortium node ids (sorted), from genesis."""
        return self._st.nodes

    @property
    def members(self) -> dict[str, Member]:
        """Registered members by name (a copy)."""
        return dict(self._st.members)

    def member(self, name: str) -> Member | None:
        return self._st.members.get(name)

    def member_by_key(self, public_key: bytes) -> Member | None:
        name = self._st.by_key.get(bytes(public_key))
        return None if name is None else self._st.members[name]

    def proposer(self, height: int) -> str:
        return self._st.proposers[height]

    def tasks(self) -> list[str]:
        """Task ids in publication order."""
        return [t for t, _ in sorted(self._st.tasks.items(), key=lambda kv: kv[1].height)]

    def task(self, task_id: str) -> TaskInfo:
        t = self._st.tasks.get(task_id)
        if t is None:
            raise KeyError(f"unknown task {task_id!r}")
        return t

    def task_records(self, task_id: str) -> list[TxRecord]:
        """Every transaction of ``task_id`` in chain order (empty for an unknown task)."""
        return list(self._st.task_records.get(task_id, ()))

    def requestor_tasks(self, requestor: str) -> list[str]:
        """Task ids published by ``requestor``, in chain order."""
        return list(self._st.requestor_tasks.get(requestor, ()))

    def block(self, height: int) -> Block:
        """The stored block at ``height`` (decoded from the file); the head block carries its anchor."""
        if isinstance(height, bool) or not isinstance(height, int) or not 0 <= height <= self.height:
            raise ValueError(f"height must be an int in [0, {self.height}], got {height!r}")
        try:
            row = self._conn.execute(
                "SELECT CAST(header AS BLOB), CAST(certificate AS BLOB) FROM blocks WHERE height=?", (height,)
            ).fetchone()
            txs = self._conn.execute(
                "SELECT CAST(data AS BLOB) FROM txs WHERE height=? ORDER BY idx", (height,)
            ).fetchall()
            head = _read_head(self._conn) if height == self._anchored else None
        except sqlite3.Error as exc:
            raise E.StorageError(f"cannot read the block ({exc})", height=height) from None
        if row is None or None in row or any(t[0] is None for t in txs):
            raise E.StorageError("the block's rows are missing or NULL", height=height)
        block = _decode_stored(
            height, height, bytes(row[0]), bytes(row[1]), [(i, bytes(t[0])) for i, t in enumerate(txs)]
        )
        if head is not None and head.height == height and head.hash == block.hash:
            block = Block(block.header, block.txs, block.certificate, head.anchor)
        return block

    def __repr__(self) -> str:
        return f"Ledger({str(self._path)!r}, blocks={len(self)}, tasks={len(self._st.tasks)})"


def _insert(conn: sqlite3.Connection, block: Block, fmt: str) -> None:
    """Store ``block`` (inside the caller's transaction); an anchored block becomes the stored head."""
    header, cert, txs = block.encode_parts()
    conn.execute("INSERT INTO blocks VALUES (?, ?, ?)", (block.height, header, cert))
    conn.executemany("INSERT INTO txs VALUES (?, ?, ?)", [(block.height, i, t) for i, t in enumerate(txs)])
    if block.anchor and fmt != _FORMAT_V1:
        conn.execute(
            "UPDATE head SET height=?, hash=?, anchor=? WHERE id=0",
            (block.height, block.hash, encode_certificate(block.anchor)),
        )
