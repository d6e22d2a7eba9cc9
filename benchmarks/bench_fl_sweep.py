"""FL sweeps and compiled runs (issue 11 items 2 and 3), each beside its anchor,
interleaved in the same run.

- ``fl-sweep-{logistic,mlp}-k64``: K = 64 FedAvg experiments (seeds 0..63) on
  FedProx Synthetic(1, 1) (40 clients, dim 60, 10 classes; 10 clients per
  round, 30 rounds, batch 10, one local epoch, evaluation every round):
  ``run_sweep`` (kernel) against 64 sequential ``run_fedavg`` calls (anchor,
  default strategy ``auto``). Item: one experiment.
- ``fl-compiled-{logistic,mlp}``: one such experiment, ``FLConfig(compiled=True)``
  against the per-round loop. Item: one round.

Interleaving: each kernel test times the kernel with the anchor run untimed
just before it (pytest-benchmark's ``setup``), each anchor test the other way
round, so the recorded kernel and anchor calls alternate (B A A B) on the same
machine state; compilation is warmed up before any timed call.

Smoke mode (``--benchmark-disable``): K = 2 experiments of 2 rounds on 8 clients,
logistic only.
"""

from __future__ import annotations

import time

import jax
import pytest

from mcsl_core import fl

_DATA: dict = {}


def _setup(small: bool, which: str):
    if small and which == "mlp":
        pytest.skip("smoke mode runs the logistic path only (same code, one model's compile)")
    if small not in _DATA:
        n = 8 if small else 40
        _DATA[small] = fl.synthetic_fedprox(1.0, 1.0, num_clients=n, dim=60, num_classes=10, seed=0)
    tr, te = _DATA[small]
    model = fl.logistic(60, 10) if which == "logistic" else fl.mlp(60, 10, (64,))
    rounds, k = (2, 2) if small else (30, 64)
    cfg = fl.FLConfig(rounds=rounds, clients_per_round=4 if small else 10, batch_size=10, progress=False)
    return tr, te, model, cfg, k


def _sweep(tr, te, model, cfg, k):
    res = fl.run_sweep(model, tr, cfg, {"seed": list(range(k))}, test=te)
    jax.block_until_ready(jax.tree_util.tree_leaves(res.params))
    return res


def _sequential(tr, te, model, cfg, k):
    out = [fl.run_fedavg(model, tr, fl.FLConfig(**{**cfg.__dict__, "seed": s}), test=te) for s in range(k)]
    jax.block_until_ready([jax.tree_util.tree_leaves(r.params) for r in out])
    return out


_WARM: set = set()


def _interleaved(benchmark, timed, other, note_other: str, rounds: int = 1, warm=None):
    """Time ``timed`` with ``other`` run (and timed by hand) right before each call;
    both are run once first to compile, unless ``warm`` (a key) was warmed already."""
    other_s: list[float] = []

    def setup():
        t = time.perf_counter()
        other()
        other_s.append(time.perf_counter() - t)

    if benchmark.disabled:
        setup()
        benchmark(timed)
        return
    if warm is None or warm not in _WARM:
        timed(), other()  # compile both
        _WARM.add(warm)
    benchmark.pedantic(timed, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info[f"interleaved_{note_other}_s"] = other_s


def _k64(benchmark, bench_info, which: str, role: str) -> None:
    """Time one side of the K = 64 group (``role``), the other side interleaved."""
    tr, te, model, cfg, k = _setup(benchmark.disabled, which)
    benchmark.group = f"fl-sweep-{which}-k64"
    sides = {
        "kernel": (
            lambda: _sweep(tr, te, model, cfg, k),
            f"run_sweep of {k} seeds, {cfg.rounds} rounds; {_where()}",
        ),
        "anchor": (
            lambda: _sequential(tr, te, model, cfg, k),
            f"{k} sequential run_fedavg calls (strategy auto)",
        ),
    }
    other = "anchor" if role == "kernel" else "kernel"
    bench_info(role, k, "experiment", note=sides[role][1])
    rounds = 1 if benchmark.disabled else 3
    _interleaved(benchmark, sides[role][0], sides[other][0], other, rounds=rounds, warm=("sweep", which))


@pytest.mark.parametrize("which", ["logistic", "mlp"])
def test_fl_sweep_k64(benchmark, bench_info, which):
    _k64(benchmark, bench_info, which, "kernel")


@pytest.mark.parametrize("which", ["logistic", "mlp"])
def test_fl_sweep_k64_anchor_sequential(benchmark, bench_info, which):
    _k64(benchmark, bench_info, which, "anchor")


def _one(tr, te, model, cfg, compiled: bool):
    r = fl.run_fedavg(model, tr, fl.FLConfig(**{**cfg.__dict__, "compiled": compiled}), test=te)
    jax.block_until_ready(jax.tree_util.tree_leaves(r.params))


@pytest.mark.parametrize("which", ["logistic", "mlp"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "per-round-loop"])
def test_fl_compiled_run(benchmark, bench_info, which, compiled):
    tr, te, model, cfg, _ = _setup(benchmark.disabled, which)
    benchmark.group = f"fl-compiled-{which}"
    role = "kernel" if compiled else "anchor"
    what = "FLConfig(compiled=True)" if compiled else "per-round loop (strategy auto)"
    bench_info(role, cfg.rounds, "round", note=f"{what}; one experiment, {cfg.rounds} rounds; {_where()}")
    _interleaved(
        benchmark,
        lambda: _one(tr, te, model, cfg, compiled),
        lambda: _one(tr, te, model, cfg, not compiled),
        "other",
        rounds=3,
        warm=("compiled", which),
    )


def _where() -> str:
    import os

    return f"{jax.devices()[0].device_kind}, load average {os.getloadavg()[0]:.1f}"
