"""pytest-benchmark conventions for every suite in this folder.

Each benchmark sits in a pytest-benchmark ``group`` with its anchors and sets
``benchmark.extra_info``:

- ``role``: ``"kernel"`` (ours) or ``"anchor"`` (what we compare against);
- ``items``: work units one call processes (points, pairs, messages, samples),
  so a sampled anchor (scipy on 200 points) compares per item with a kernel
  on millions;
- ``unit``: what an item is (``"point"``, ``"sample"``, ...);
- optionally ``limit_items_per_s`` (on a kernel): the machine's limit for this
  work, e.g. from measured memory bandwidth or GEMM FLOP/s, and ``note``.

``benchmarks/summarize.py`` turns the JSON into ``bench_results/summary.md``.
Without ``--benchmark-disable`` (the default tier passes it) suites time
compilation separately: they warm up before the timed calls.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import pytest

_LIBS = ("numpy", "numba", "jax", "jaxlib", "flax", "optax", "cryptography", "scipy", "torch")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cpu_model"] = cpu_model()
    machine_info["cores"] = os.cpu_count()
    machine_info["libraries"] = library_versions()
    try:
        import jax

        machine_info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:
        pass


@pytest.fixture
def bench_info(benchmark):
    """``bench_info(role, items, unit, **extra)`` fills ``benchmark.extra_info``."""

    def fill(role: str, items: int, unit: str, **extra):
        if role not in ("kernel", "anchor"):
            raise ValueError(f"role must be 'kernel' or 'anchor', got {role!r}")
        benchmark.extra_info.update(role=role, items=int(items), unit=unit, **extra)

    return fill
