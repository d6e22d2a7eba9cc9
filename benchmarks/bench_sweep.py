"""Sweep throughput: 16 small tasks on the local worker pool vs a sequential loop of run_task,
and the per-point overhead of the Dask path against the pool.

- anchor: ``run_task`` on the 16 point configs one after another in this process, with
  its defaults (what a user's loop does: every task's outputs, ``accuracy.png``
  included, written durably to disk), numba and XLA free to use every core;
- anchor ``no figure``: the same loop with ``run_task(..., figure=False)``;
- kernel: :func:`mcsl_core.sweep.run_sweep` on the default local pool (one spawned
  worker per core, one thread each), committing every point, rebuilding
  ``results.csv`` and drawing ``sweep.png`` as a real sweep does. Its workers draw no
  per-task figure (a point keeps none) and run each task in a memory-backed scratch
  folder (the point's durability is the caller's one atomic commit);
- kernel ``no figure``: the same sweep with ``[sweep] plot = []`` (no ``sweep.png``),
  against the no-figure loop: the same task work on both sides, so the ratio is the
  pool's parallel speed-up plus the fsyncs the scratch folder saves;
- dask: the same sweep on a ``distributed.LocalCluster`` (one single-threaded worker
  process per core), through ``Client.get_executor()``; its extra wall time per point
  against the pool is ``extra_info["interleaved"]["dask_overhead_per_point_s"]``.

All three share one seed, so every XLA program is compiled in the warm-up (each worker
process warms up on the same points) and the timed rounds measure steady-state
throughput. The rounds are interleaved (sequential, pool, Dask, sequential, ...) in a
module fixture; its medians give ``extra_info["interleaved"]``; each test then times its
own variant for pytest-benchmark's table. Smoke mode (``--benchmark-disable``): two
points, a thread pool and an in-process Dask cluster, once each, without warm-up.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import statistics
import time

import pytest

from mcsl_core.sweep import default_workers, run_sweep, spec_from_mapping
from mcsl_core.sweep._run import local_pool
from mcsl_core.sweep._worker import worker_env
from mcsl_core.system import run_task

GROUP = "sweep: 16 small tasks"
BASE = {
    "task": {"max_rounds": 3, "target_accuracy": 0.99},  # never met: every point runs 3 rounds
    "data": {"num_devices": 30, "num_locations": 36},
    "learning": {"num_edge_servers": 3},
    "payment": {"game_steps": 500},
}
GRID = {
    "learning.aggregator": ["fedavg", "median"],
    "learning.byzantine_servers": [0, 1],
    "learning.byzantine_attack": ["sign_flip", "scale"],
    "payment.requestor_rule": ["gradient", "bush_mosteller"],
}
ROUNDS = 3  # interleaved rounds in the fixture; each test then times 2 more of its own variant


def _spec(small: bool):
    if small:
        task = {"max_rounds": 1, "target_accuracy": 0.99}
        return spec_from_mapping(
            {"sweep": {"grid": {"learning.aggregator": ["fedavg", "median"]}}, **BASE, "task": task}
        )
    return spec_from_mapping({"sweep": {"grid": GRID, "seeds": [0]}, **BASE})


class _Bench:
    """The spec, warm executors, and a fresh output folder for every timed sweep."""

    def __init__(self, small: bool, tmp):
        from distributed import Client, LocalCluster

        self.small, self.tmp, self.count = small, tmp, itertools.count()
        self.spec = _spec(small)
        self.workers = 2 if small else default_workers()
        if small:
            self.pool = cf.ThreadPoolExecutor(2)
            self.cluster = LocalCluster(n_workers=1, processes=False, dashboard_address=None)
        else:
            self.pool = local_pool(self.workers)
            env = worker_env({})  # the thread caps of the local pool
            self.cluster = LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=True, dashboard_address=None, env=env
            )
        self.client = Client(self.cluster)
        self.dask = self.client.get_executor()

    def sequential(self, figure: bool = True):
        for p in self.spec.points:
            run_task(p.config, self.tmp / f"seq{next(self.count)}", progress=False, figure=figure)

    def on(self, executor, figure: bool = True):
        spec = self.spec if figure else dataclasses.replace(self.spec, plot=())
        res = run_sweep(spec, self.tmp / f"sweep{next(self.count)}", executor=executor)
        assert res.ok and res.ran == len(self.spec.points)
        return res

    def close(self):
        self.client.close()
        self.cluster.close()
        self.pool.shutdown()


@pytest.fixture(scope="module")
def bench(request, tmp_path_factory):
    small = request.config.getoption("benchmark_disable")
    b = _Bench(small, tmp_path_factory.mktemp("sweep-bench"))
    variants = {
        "sequential": b.sequential,
        "pool": lambda: b.on(b.pool),
        "sequential_no_figure": lambda: b.sequential(figure=False),
        "pool_no_figure": lambda: b.on(b.pool, figure=False),
        "dask": lambda: b.on(b.dask),
    }
    b.times = {k: [] for k in variants}
    for name, fn in variants.items() if not small else ():  # warm-up: compile here and in every worker
        fn()
        if name.startswith(("pool", "dask")):
            fn()  # a second pass: both workers of each pool have now seen every program
    for _ in range(0 if small else ROUNDS):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            b.times[name].append(time.perf_counter() - t0)
    yield b
    b.close()


def _interleaved(b: _Bench) -> dict:
    n = len(b.spec.points)
    if not b.times["pool"]:
        return {}  # smoke mode: no interleaved rounds
    med = {k: statistics.median(v) for k, v in b.times.items()}
    return {
        "points": n,
        "workers": b.workers,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "points_per_s": {k: round(n / v, 3) for k, v in med.items()},
        "pool_speedup_vs_sequential": round(med["sequential"] / med["pool"], 3),
        "pool_speedup_vs_sequential_no_figure": round(med["sequential_no_figure"] / med["pool"], 3),
        "no_figure_pool_speedup_vs_no_figure_sequential": round(
            med["sequential_no_figure"] / med["pool_no_figure"], 3
        ),
        # each of the W workers runs n / W points, so the extra wall time per point it runs is
        # (t_dask - t_pool) / (n / W)
        "dask_overhead_per_point_s": round((med["dask"] - med["pool"]) / n * b.workers, 4),
    }


def _time(benchmark, b: _Bench, fn):
    benchmark.pedantic(fn, rounds=1 if b.small else 2, iterations=1)
    benchmark.extra_info["interleaved"] = _interleaved(b)


@pytest.mark.benchmark(group=GROUP)
def test_sequential_run_task(benchmark, bench_info, bench):
    bench_info("anchor", len(bench.spec.points), "point", note="run_task in a loop, one process, all cores")
    _time(benchmark, bench, bench.sequential)


@pytest.mark.benchmark(group=GROUP)
def test_sweep_local_pool(benchmark, bench_info, bench):
    bench_info(
        "kernel",
        len(bench.spec.points),
        "point",
        note=f"run_sweep, {bench.workers} spawned single-threaded workers; target >= 1.6x on 2 cores",
    )
    _time(benchmark, bench, lambda: bench.on(bench.pool))


@pytest.mark.benchmark(group=GROUP + ", no figures")
def test_sequential_run_task_no_figure(benchmark, bench_info, bench):
    bench_info("anchor", len(bench.spec.points), "point", note="run_task(figure=False) in a loop")
    _time(benchmark, bench, lambda: bench.sequential(figure=False))


@pytest.mark.benchmark(group=GROUP + ", no figures")
def test_sweep_local_pool_no_figure(benchmark, bench_info, bench):
    bench_info("kernel", len(bench.spec.points), "point", note="run_sweep with plot = [] (no sweep.png)")
    _time(benchmark, bench, lambda: bench.on(bench.pool, figure=False))


@pytest.mark.benchmark(group=GROUP)
def test_sweep_dask_local_cluster(benchmark, bench_info, bench):
    bench_info("kernel", len(bench.spec.points), "point", note="run_sweep on a Dask LocalCluster")
    _time(benchmark, bench, lambda: bench.on(bench.dask))
