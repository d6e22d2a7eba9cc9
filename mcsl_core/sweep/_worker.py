"""What runs on a worker: one task in a scratch folder, its outputs returned as bytes.

This module imports only the standard library at the top, so that a freshly spawned
worker process can cap its numerical libraries' threads (:func:`init_worker`) before
numba, JAX or NumPy are first imported.

The point's outputs travel back to the caller as bytes rather than being written in
place, so a worker needs no file system shared with the sweep's output folder (a
Dask cluster across machines), and only the caller commits, in one atomic rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["WORKER_ENV", "init_worker", "remove_stale_scratch", "run_point", "scratch_root", "worker_env"]

#: One thread per worker for every numerical runtime a task uses: with one worker per
#: core, more threads would only oversubscribe the cores.
WORKER_ENV = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "MCSL_FL_THREADS": "1",  # fl.THREADS_ENV: a round's clients in one thread
}
_XLA_SINGLE = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

#: Files of a task's output folder that a point keeps; ledger and model store only on request.
_KEPT = ("report.json", "rounds.csv")
_LEDGER = ("ledger.sqlite",)

#: Free space a memory-backed scratch folder must have before a point runs in it.
_SHM_MIN_FREE = 2 << 30


def scratch_root() -> str | None:
    """Where a point's scratch folder goes: ``/dev/shm`` when it is a writable folder with
    at least 2 GiB free, else the system's temporary folder (``None``).

    A point's files in the scratch folder are thrown away once their bytes are read back;
    only the caller's commit must survive a crash. On a memory-backed folder every fsync
    the task does for its own durability (about 34 plus SQLite's per task) costs nothing,
    where on this machine's disk each one takes about 2 ms.
    """
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if not os.access(shm, os.W_OK | os.X_OK) or st.f_bavail * st.f_frsize < _SHM_MIN_FREE:
        return None
    return shm


_PREFIX = "mcsl-sweep-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_scratch(root: str | None) -> int:
    """Remove scratch folders left in ``root`` by worker processes that no longer run
    (killed mid-task: a memory-backed folder would hold its memory until a reboot).

    Folders are named ``mcsl-sweep-<pid>-<random>``; only those of a dead ``pid`` go.
    Returns how many were removed.
    """
    base = Path(root if root is not None else tempfile.gettempdir())
    removed = 0
    try:
        entries = list(base.glob(_PREFIX + "*-*"))
    except OSError:
        return 0
    for p in entries:
        pid = p.name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


# run_task draws with matplotlib's pyplot (global state), so a process runs one task at a
# time; thread executors get no speed-up from more threads, process executors do.
_ONE_AT_A_TIME = threading.Lock()


def worker_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with the single-thread caps of :data:`WORKER_ENV` and XLA's."""
    env = dict(os.environ if base is None else base)
    env.update(WORKER_ENV)
    xla = env.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in xla:
        env["XLA_FLAGS"] = f"{xla} {_XLA_SINGLE}".strip()
    return env


def init_worker() -> None:
    """Process-pool initializer: cap threads before any numerical library is imported."""
    os.environ.update(worker_env())


def run_point(config: Any, keep_ledgers: bool = False) -> dict[str, Any]:
    """Run one task; return ``{"status", "error", "traceback", "report", "files", "seconds"}``.

    ``status`` is ``"ok"`` or ``"failed"`` (the task raised: ``error`` is its one-line
    message); ``files`` maps paths relative to the point folder to their bytes
    (``report.json``, ``rounds.csv``; ``ledger.sqlite`` and ``store/...`` with
    ``keep_ledgers``). ``report`` is the TaskReport as a dict (JSON types).
    """
    import json

    from mcsl_core.system import run_task

    t0 = time.perf_counter()
    root = scratch_root()
    remove_stale_scratch(root)
    scratch = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root))
    try:
        with _ONE_AT_A_TIME:
            # the point keeps no per-task figure (the sweep draws one for all points)
            report = run_task(config, scratch / "run", progress=False, figure=False)
        files = {name: (scratch / "run" / name).read_bytes() for name in _KEPT}
        if keep_ledgers:
            files.update(_ledger_files(scratch / "run"))
        return dict(
            status="ok",
            error="",
            traceback="",
            report=json.loads(report.to_json()),
            files=files,
            seconds=time.perf_counter() - t0,
        )
    except Exception as exc:  # a failed task is a result of the sweep, not its end
        return dict(
            status="failed",
            error=one_line(exc),
            traceback=traceback.format_exc(),
            report=None,
            files={},
            seconds=time.perf_counter() - t0,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ledger_files(run: Path) -> dict[str, bytes]:
    files = {name: (run / name).read_bytes() for name in _LEDGER if (run / name).is_file()}
    store = run / "store"
    if store.is_dir():
        for p in sorted(store.rglob("*")):
            if p.is_file():
                files[p.relative_to(run).as_posix()] = p.read_bytes()
    return files


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line, at most ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
