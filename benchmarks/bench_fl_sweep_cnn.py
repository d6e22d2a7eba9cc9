"""A sweep of K = 8 FedAvg experiments (seeds 0..7) of the LEAF CNN on 10
writers of the FEMNIST subset (the 10 smallest with at least 80 rows; every
writer in every round, one round, batch 10, one local epoch), ``run_sweep``
against 8 sequential ``run_fedavg`` calls, interleaved (see
``bench_fl_sweep.py``), plus the process's peak memory after the sweep beside
the documented estimate (``bytes_per_experiment`` times the chunk size). On one
CPU device the CNN sweep runs experiment by experiment through ``run_fedavg``
(``fl._sweep.ONE_BY_ONE_MIN_PARAMS``), so there the two sides do the same work.

Its own suite (``benchmarks/run.py record fl_sweep_cnn``) so that each recorded
run stays under 5 minutes. Smoke mode (``--benchmark-disable``): logistic
regression on 3 synthetic FEMNIST-shaped clients, K = 2.
"""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest

from benchmarks.bench_fl import FEMNIST, _synthetic_femnist
from benchmarks.bench_fl_sweep import _interleaved, _sequential, _sweep, _where
from mcsl_core import fl
from mcsl_core.fl._compiled import bytes_per_experiment, group_spec, memory_budget
from mcsl_core.fl._sweep import _one_by_one


def _data(small: bool):
    if small:
        return _synthetic_femnist(3, 12), "synthetic 3 clients (smoke)"
    if not os.path.isdir(os.path.join(FEMNIST, "train")):
        return _synthetic_femnist(10, 100), "synthetic FEMNIST-shaped, 10 clients"
    tr = fl.load_leaf(os.path.join(FEMNIST, "train"), num_classes=62)
    order = np.argsort(tr.num_samples, kind="stable")
    keep = np.sort([int(c) for c in order if tr.num_samples[c] >= 80][:10])
    return tr.select(keep.tolist()), "FEMNIST LEAF subset, 10 writers"


@pytest.mark.parametrize("role", ["kernel", "anchor"])
def test_fl_sweep_cnn_k8(benchmark, bench_info, role):
    small = benchmark.disabled
    if small and role == "anchor":
        pytest.skip("smoke mode runs the kernel path (it runs the anchor too)")
    tr, what = _data(small)
    model = fl.logistic(784, 62) if small else fl.femnist_cnn()
    k = 2 if small else 8
    cfg = fl.FLConfig(
        rounds=1, clients_per_round=tr.num_clients, batch_size=10, client_lr=0.01, progress=False
    )
    benchmark.group = "fl-sweep-cnn-k8"
    sweep = lambda: _sweep(tr, tr, model, cfg, k)  # noqa: E731
    seq = lambda: _sequential(tr, tr, model, cfg, k)  # noqa: E731
    samples = int(tr.num_samples.sum())
    if role == "kernel":
        bench_info(
            "kernel", k, "experiment", note=f"run_sweep, {k} seeds; {what}, {samples} rows; {_where()}"
        )
        _interleaved(benchmark, sweep, seq, "anchor", warm="cnn")
        nparams = fl.num_params(fl.init_params(model, 784, 0))
        per = bytes_per_experiment(nparams, group_spec(model, cfg), 784)
        chunk = max(1, min(k, memory_budget() // per))
        alone = _one_by_one(nparams)
        benchmark.extra_info.update(
            peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            path="experiment by experiment (run_fedavg)" if alone else "vectorised groups",
            estimate_bytes_per_experiment=per,
            chunk_experiments=1 if alone else int(-(-k // -(-k // chunk))),
        )
    else:
        bench_info("anchor", k, "experiment", note=f"{k} sequential run_fedavg calls (strategy auto); {what}")
        _interleaved(benchmark, seq, sweep, "kernel", warm="cnn")
