"""The ledger: a validated chain of blocks persisted in SQLite.

Every append is one SQLite transaction (header, certificate and transactions
of the block, or nothing), so a crash never leaves half a block visible.
``Ledger.open`` re-verifies the whole chain from genesis and raises a
:class:`LedgerError` naming the first bad height and rule.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from mcsl_core.ledger import _errors as E
from mcsl_core.ledger._block import Block
from mcsl_core.ledger._keys import Member
from mcsl_core.ledger._state import (
    ChainState,
    SigJob,
    TaskInfo,
    TxRecord,
    apply_block,
    default_workers,
    run_signature_jobs,
    sig_error,
)

__all__ = ["Ledger", "VerifyReport", "verify_file"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, header BLOB NOT NULL, certificate BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txs (height INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
                                PRIMARY KEY (height, idx));
"""
_FORMAT = "mcsl-ledger/1"
#: Blocks whose signature checks are batched together during whole-chain verification.
_VERIFY_BATCH = 512


class VerifyReport(NamedTuple):
    """Outcome of re-verifying a stored chain."""

    ok: bool
    blocks: int  # blocks that verified (the good prefix below bad_height)
    transactions: int | None  # transactions verified (None when the chain is bad)
    signatures: int | None  # signatures verified (None when the chain is bad)
    bad_height: int | None  # first bad height (None when ok)
    rule: str | None  # rule that failed there
    message: str | None


def _connect(path: Path, durable: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: an append survives power loss once it returns. NORMAL (WAL): appends are
    # still atomic and survive a killed process, but the last few may be lost on an
    # operating-system crash; no fsync per block.
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    return conn


def _iter_stored(conn: sqlite3.Connection) -> Iterator[tuple[int, bytes, bytes, list[tuple[int, bytes]]]]:
    """(height column, header, certificate, [(idx, tx bytes)]) in height order.

    Transaction rows whose height has no block are reported under height -1.
    """
    tx_cur = conn.execute("SELECT height, idx, CAST(data AS BLOB) FROM txs ORDER BY height, idx")
    pending = tx_cur.fetchone()
    for height, header, cert in conn.execute(
        "SELECT height, CAST(header AS BLOB), CAST(certificate AS BLOB) FROM blocks ORDER BY height"
    ):
        while pending is not None and pending[0] < height:
            yield -1, b"", b"", [(pending[1], bytes(pending[2]))]
            pending = tx_cur.fetchone()
        txs: list[tuple[int, bytes]] = []
        while pending is not None and pending[0] == height:
            txs.append((pending[1], bytes(pending[2])))
            pending = tx_cur.fetchone()
        yield height, bytes(header), bytes(cert), txs
    if pending is not None:
        yield -1, b"", b"", [(pending[1], bytes(pending[2]))]


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


def _verify_conn(
    conn: sqlite3.Connection, *, max_workers: int | None = None
) -> tuple[ChainState, VerifyReport, E.LedgerError | None]:
    """Replay every stored block into a fresh state; stop at the first failure.

    Signature checks are batched over ``_VERIFY_BATCH`` blocks and run on a
    thread pool; the first failure in chain order is the one reported.
    """
    st = ChainState()
    jobs: list[SigJob] = []
    workers = max_workers or default_workers()
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None

    def flush() -> E.LedgerError | None:
        bad = run_signature_jobs(jobs, max_workers=workers, pool=pool)
        jobs.clear()
        return None if bad is None else sig_error(bad)

    err: E.LedgerError | None = None
    began = False
    try:
        conn.execute("BEGIN")  # one consistent read snapshot
        began = True
        expected = 0
        for col_height, header, cert, txs in _iter_stored(conn):
            try:
                apply_block(st, _decode_stored(col_height, expected, header, cert, txs), jobs)
            except E.LedgerError as exc:
                err = exc
                break
            expected += 1
            if expected % _VERIFY_BATCH == 0:
                err = flush()
                if err is not None:
                    break
        sig = flush()
        if sig is not None and (err is None or err.height is None or sig.height <= err.height):
            err = sig
    finally:
        if began and conn.in_transaction:
            conn.execute("ROLLBACK")
        if pool is not None:
            pool.shutdown()
    if err is None and st.height < 0:
        err = E.GenesisError("the ledger holds no blocks", height=0)
    if err is None:
        return st, VerifyReport(True, st.height + 1, st.n_tx, st.n_sig, None, None, None), None
    return st, VerifyReport(False, err.height or 0, None, None, err.height, err.rule, str(err)), err


def verify_file(path: str | os.PathLike, *, max_workers: int | None = None) -> VerifyReport:
    """Re-verify the ledger file at ``path`` without raising on a bad chain."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}")
    conn = _open_existing(path)
    try:
        return _verify_conn(conn, max_workers=max_workers)[1]
    finally:
        conn.close()


def _open_existing(path: Path, durable: bool = True) -> sqlite3.Connection:
    try:
        conn = _connect(path, durable)
        row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"path: {path} is not an mcsl ledger ({exc})") from None
    if row is None or row[0] != _FORMAT:
        conn.close()
        raise ValueError(f"path: {path} is not an mcsl ledger (format {row[0] if row else None!r})")
    return conn


class Ledger:
    """A verified chain in an SQLite file.

    Create with :meth:`create` (from a genesis block) or :meth:`open` (which
    re-verifies everything). :meth:`append` validates a block against every
    rule and stores it atomically; queries run on the in-memory state that
    verification rebuilt.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, state: ChainState):
        self._path = path
        self._conn = conn
        self._st = state

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
            _insert(conn, genesis)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            path.unlink(missing_ok=True)
            raise
        return cls(path, conn, st)

    @classmethod
    def open(cls, path: str | os.PathLike, *, max_workers: int | None = None, durable: bool = True) -> Ledger:
        """Open and re-verify the whole chain; a bad chain raises the first failure (height, rule).

        ``max_workers`` threads check signatures (default: every usable core);
        ``durable`` as in :meth:`create`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ledger at {path}")
        conn = _open_existing(path, durable)
        st, _report, err = _verify_conn(conn, max_workers=max_workers)
        if err is not None:
            conn.close()
            raise err
        return cls(path, conn, st)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ writing
    def append(self, block: Block) -> None:
        """Validate ``block`` against every rule and store it in one SQLite transaction.

        Raises a :class:`LedgerError` subclass naming the rule; the ledger is
        unchanged on any failure.
        """
        if not isinstance(block, Block):
            raise ValueError(f"block must be a Block, got {type(block).__name__}")
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
            _insert(self._conn, block)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            # the in-memory state already holds the block: rebuild it from the file
            self._st = _verify_conn(self._conn)[0]
            raise

    # ------------------------------------------------------------ checking
    def verify(self, *, max_workers: int | None = None) -> VerifyReport:
        """Re-read the file and re-verify every block and signature."""
        return _verify_conn(self._conn, max_workers=max_workers)[1]

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
        """The stored block at ``height`` (decoded from the file)."""
        if isinstance(height, bool) or not isinstance(height, int) or not 0 <= height <= self.height:
            raise ValueError(f"height must be an int in [0, {self.height}], got {height!r}")
        row = self._conn.execute(
            "SELECT CAST(header AS BLOB), CAST(certificate AS BLOB) FROM blocks WHERE height=?", (height,)
        ).fetchone()
        txs = [
            bytes(r[0])
            for r in self._conn.execute(
                "SELECT CAST(data AS BLOB) FROM txs WHERE height=? ORDER BY idx", (height,)
            )
        ]
        return Block.decode_parts(bytes(row[0]), bytes(row[1]), txs)

    def __repr__(self) -> str:
        return f"Ledger({str(self._path)!r}, blocks={len(self)}, tasks={len(self._st.tasks)})"


def _insert(conn: sqlite3.Connection, block: Block) -> None:
    header, cert, txs = block.encode_parts()
    conn.execute("INSERT INTO blocks VALUES (?, ?, ?)", (block.height, header, cert))
    conn.executemany("INSERT INTO txs VALUES (?, ?, ?)", [(block.height, i, t) for i, t in enumerate(txs)])
