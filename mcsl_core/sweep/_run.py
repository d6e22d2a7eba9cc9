"""Run a sweep: submit the unfinished points to an executor, commit each as it finishes."""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcsl_core._io import prepare_out_dir
from mcsl_core._validation import available_cores
from mcsl_core.sweep import _results, _worker
from mcsl_core.sweep._spec import SweepPoint, SweepSpec, load_spec, spec_from_mapping

__all__ = ["SerialExecutor", "SweepResult", "dask_executor", "default_workers", "local_pool", "run_sweep"]


#: Seconds between rebuilds of results.csv during a sweep (and once at its end): the point
#: folders are the committed record, the table is derived from them.
_CSV_EVERY_S = 1.0


@dataclass(frozen=True)
class SweepResult:
    """What a sweep left in its folder.

    ``rows`` are the committed rows of every point of the spec, in the spec's order
    (the rows of ``results.csv``, with their JSON types); ``ran`` the points this call
    ran, ``skipped`` those found finished.
    """

    out_dir: Path
    rows: tuple[dict[str, Any], ...]
    ran: int
    skipped: int
    figure: Path | None = None
    failed: tuple[str, ...] = field(default=())  # points whose task raised

    @property
    def results_csv(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def ok(self) -> bool:
        return not self.failed


class SerialExecutor(cf.Executor):
    """Runs each submitted call at once in the calling thread (one worker, all cores to it)."""

    _max_workers = 1  # one point in flight: each is committed before the next starts

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_running_or_notify_cancel()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


def default_workers() -> int:
    """One worker per core this process may run on."""
    return available_cores()


def local_pool(workers: int) -> cf.ProcessPoolExecutor:
    """``workers`` spawned processes, each capped to one thread (numba, XLA, BLAS, OpenMP).

    Spawned, not forked: a fork of a process that has started JAX's threads can deadlock.
    """
    return cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker.init_worker,
    )


def _capacity(executor: cf.Executor) -> int:
    """How many points to keep in flight: the executor's workers where it says, else 2 per core."""
    n = getattr(executor, "_max_workers", None)
    if isinstance(n, int) and n > 0:
        return n
    client = getattr(executor, "_client", None)  # a Dask ClientExecutor
    if client is not None:
        try:
            return max(1, len(client.nthreads()))  # one task at a time per worker process
        except Exception:
            pass
    return 2 * default_workers()


@contextmanager
def dask_executor(address: str) -> Iterator[cf.Executor]:
    """A ``concurrent.futures`` executor on the Dask distributed scheduler at ``address``.

    Needs the ``cluster`` extra (``pip install "mcsl_core[cluster]"``). Start the
    workers with one thread each and the thread caps of :func:`worker_env`, e.g.
    ``env NUMBA_NUM_THREADS=1 ... dask worker ADDRESS --nthreads 1 --nworkers N``.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ValueError(
            "--scheduler: Dask distributed is not installed (pip install 'mcsl_core[cluster]')"
        ) from None
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"--scheduler: cannot connect to {address}: {_worker.one_line(exc)}") from None
    try:
        yield client.get_executor()
    finally:
        client.close()


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One sweep at a time per folder (the lock dies with its process, even on SIGKILL)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fh = open(out_dir / ".sweep.lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"--out: another sweep is running in {out_dir}") from None
        yield
    finally:
        fh.close()


def _as_spec(spec: SweepSpec | str | os.PathLike | Mapping[str, Any]) -> SweepSpec:
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, Mapping):
        return spec_from_mapping(spec)
    return load_spec(spec)


def _clean_staging(out_dir: Path) -> None:
    """Remove half-written commits of a killed run (hidden folders, never a point's own)."""
    points = out_dir / "points"
    if points.is_dir():
        for p in points.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def run_sweep(
    spec: SweepSpec | str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    executor: cf.Executor | None = None,
    workers: int | None = None,
    keep_ledgers: bool = False,
    progress: bool = False,
) -> SweepResult:
    """Run every unfinished point of ``spec`` and write ``out_dir/results.csv`` and ``sweep.png``.

    Parameters
    ----------
    spec : a :class:`SweepSpec`, a spec TOML path, or its mapping.
    out_dir : the sweep's folder; points already finished there are skipped.
    executor : any ``concurrent.futures.Executor`` (a Dask ``Client.get_executor()``,
        a thread or process pool); it is not shut down. Default: ``workers`` local
        worker processes, one thread each (``workers=1``: run in this process).
    workers : local worker processes (default: one per core); only without ``executor``.
        Without either, a spec's ``[sweep] scheduler`` runs the points on that Dask cluster.
    keep_ledgers : also keep each point's ``ledger.sqlite`` and model ``store/``.
    progress : show a progress bar (done / failed / running, ETA).

    A point whose task raises is recorded ``failed``; the sweep goes on.
    """
    spec = _as_spec(spec)
    out_dir = prepare_out_dir(out_dir, arg="out_dir")
    if executor is not None and workers is not None:
        raise ValueError("workers: give either an executor or a number of local workers, not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: must be an int >= 1, got {workers!r}")
    if executor is None and workers is None and spec.scheduler is not None:
        with dask_executor(spec.scheduler) as dask:
            return run_sweep(spec, out_dir, executor=dask, keep_ledgers=keep_ledgers, progress=progress)
    with _locked(out_dir):
        _clean_staging(out_dir)
        names = [p.point for p in spec.points]
        rows = _results.load_rows(out_dir, names)
        todo = [p for p in spec.points if rows.get(p.point, {}).get("status") != "ok"]
        skipped = len(spec.points) - len(todo)
        if spec.source is not None:
            _copy_spec(spec.source, out_dir)
        _results.write_results(out_dir, [rows[n] for n in names if n in rows], spec.axes)
        slot = _Slot(executor)
        if executor is None and todo:
            n = min(workers or default_workers(), len(todo))
            slot = _Slot(SerialExecutor()) if n == 1 else _Slot(local_pool(n), lambda: local_pool(n))
        try:
            if todo:
                _drive(spec, out_dir, todo, rows, slot, keep_ledgers, progress, skipped)
        except BaseException:
            slot.close(wait=False)  # interrupted: do not wait for the points still running
            raise
        slot.close(wait=True)
        ordered = tuple(rows[n] for n in names if n in rows)
        figure = _figure(spec, out_dir, ordered)
    failed = tuple(r["point"] for r in ordered if r["status"] != "ok")
    return SweepResult(out_dir, ordered, len(todo), skipped, figure, failed)


def _copy_spec(source: Path, out_dir: Path) -> None:
    from mcsl_core._io import atomic_write_bytes

    atomic_write_bytes(out_dir / "spec.toml", source.read_bytes())


class _Slot:
    """The executor points go to; an owned local pool is replaced when one of its workers dies."""

    def __init__(self, executor: cf.Executor | None, renew: Callable[[], cf.Executor] | None = None):
        self.executor = executor
        self.renew = renew  # None: the caller's executor (never shut down here) or the serial one

    def replace(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self.renew()

    def close(self, *, wait: bool) -> None:
        if self.renew is not None:
            self.executor.shutdown(wait=wait, cancel_futures=True)


def _drive(
    spec: SweepSpec,
    out_dir: Path,
    todo: list[SweepPoint],
    rows: dict[str, dict[str, Any]],
    slot: _Slot,
    keep_ledgers: bool,
    progress: bool,
    skipped: int,
) -> None:
    """Keep the executor's workers busy; commit each finished point and rebuild results.csv."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="sweep", unit="point", disable=not progress, dynamic_ncols=True)
    d = _Driver(spec, out_dir, todo, rows, slot, keep_ledgers, bar)
    bar.set_postfix_str(f"skipped {skipped}")
    try:
        while d.queue or d.running:
            d.submit()
            done, _ = cf.wait(d.running, return_when=cf.FIRST_COMPLETED)
            d.collect(done)
            c = d.counts
            bar.set_postfix_str(
                f"ok {c['ok']}, failed {c['failed']}, running {min(len(d.running), d.workers)}, skipped {skipped}"
            )
    except BaseException:
        for fut in d.running:
            fut.cancel()
        raise
    finally:
        bar.close()
        d.write_csv()


class _Driver:
    """The points waiting, the futures in flight, and how each finished one is committed.

    A worker process that dies (killed, out of memory) breaks a local pool and every
    point in flight on it: the pool is replaced and those points run once more; a point
    whose second attempt breaks the pool again is recorded failed.
    """

    def __init__(self, spec, out_dir, todo, rows, slot, keep_ledgers, bar):
        self.spec, self.out_dir, self.rows, self.slot = spec, out_dir, rows, slot
        self.keep, self.bar = keep_ledgers, bar
        self.queue = list(reversed(todo))  # popped from the end: the spec's order
        self.workers = _capacity(slot.executor)
        # one point queued per worker beyond the one it runs, so a worker never waits for
        # the caller to commit the point it just finished (the serial executor runs at submit)
        self.cap = self.workers if isinstance(slot.executor, SerialExecutor) else 2 * self.workers
        self.running: dict[cf.Future, tuple[SweepPoint, cf.Executor]] = {}
        self.attempts: dict[str, int] = {}
        self.counts = {"ok": 0, "failed": 0}
        self.written = time.monotonic()

    def submit(self) -> None:
        while self.queue and len(self.running) < self.cap:
            point = self.queue.pop()
            self.attempts[point.point] = self.attempts.get(point.point, 0) + 1
            try:
                fut = self.slot.executor.submit(_worker.run_point, point.config, self.keep)
                self.running[fut] = (point, self.slot.executor)
            except Exception as exc:  # a broken or shut-down executor fails the point, not the sweep
                self.commit(point, _broken(exc))

    def collect(self, done) -> None:
        broken = False
        for fut in done:
            point, ran_on = self.running.pop(fut)
            try:
                result = fut.result()
            except Exception as exc:  # the worker died, or the executor could not run it
                if isinstance(exc, cf.BrokenExecutor) and self.slot.renew and self.attempts[point.point] < 2:
                    self.queue.append(point)
                    broken |= ran_on is self.slot.executor
                    continue
                result = _broken(exc)
            self.commit(point, result)
        if time.monotonic() - self.written > _CSV_EVERY_S:  # the point folders are committed already
            self.write_csv()
        if broken:
            self.slot.replace()

    def commit(self, point: SweepPoint, result: Mapping[str, Any]) -> None:
        # through JSON, so a fresh row has the same types as one read back from row.json
        row = json.loads(json.dumps(_results.make_row(point, result)))
        _results.write_point(self.out_dir, point, result, row)
        self.rows[point.point] = row
        self.counts["ok" if row["status"] == "ok" else "failed"] += 1
        self.bar.update(1)

    def write_csv(self) -> None:
        names = [p.point for p in self.spec.points]
        _results.write_results(self.out_dir, [self.rows[n] for n in names if n in self.rows], self.spec.axes)
        self.written = time.monotonic()


def _broken(exc: BaseException) -> dict[str, Any]:
    return dict(
        status="failed",
        error=_worker.one_line(exc),
        traceback=f"{type(exc).__name__}: {exc}\n",
        report=None,
        files={},
        seconds=0.0,
    )


def _figure(spec: SweepSpec, out_dir: Path, rows: tuple[dict[str, Any], ...]) -> Path | None:
    if not spec.plot or not any(r["status"] == "ok" for r in rows):
        return None
    from mcsl_core.sweep._plot import plot_sweep

    return plot_sweep(rows, spec.axes, spec.plot, out_dir / "sweep.png")
