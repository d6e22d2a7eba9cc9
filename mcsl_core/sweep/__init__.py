"""Resumable parameter sweeps of whole MCS learning tasks, on local cores or a Dask cluster.

A spec (TOML; ``docs/task-sweeps.md``) names a base task config, axes (``[sweep.grid]``
cartesian, ``[sweep.zip]`` varied together) and seeds; :func:`run_sweep` runs every
point through :func:`mcsl_core.system.run_task` on any ``concurrent.futures``
executor and commits each finished point atomically under ``DIR/points/<point>/``,
with ``DIR/results.csv`` (one row per point) and ``DIR/sweep.png``.

Names are loaded on first use: a spawned worker process imports this package before
it caps its numerical libraries' threads, so importing it must not import NumPy,
numba or JAX.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "SweepPoint": "_spec",
    "SweepSpec": "_spec",
    "load_spec": "_spec",
    "point_hash": "_spec",
    "spec_from_mapping": "_spec",
    "SerialExecutor": "_run",
    "SweepResult": "_run",
    "default_workers": "_run",
    "run_sweep": "_run",
    "is_timing_column": "_results",
    "read_results": "_results",
    "seed_stats": "_plot",
    "WORKER_ENV": "_worker",
    "worker_env": "_worker",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
