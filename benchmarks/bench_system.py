"""End-to-end time of one MCS learning task, broken down by procedure.

The kernel row is the whole demo task (``mcsl demo``'s configuration); the
breakdown by procedure (mechanism, training, signing/verification, consensus
simulation, settlement, ledger) goes into ``extra_info`` and
``bench_results/system_stages.md`` so the slowest stage is visible. Compilation
is paid by a warm-up run first (numba caches, XLA compiles). In smoke mode a
tiny task runs once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mcsl_core.system import TaskConfig, run_task

RESULTS = Path(__file__).resolve().parents[1] / "bench_results"
TINY = TaskConfig(
    num_devices=24,
    num_locations=36,
    num_edge_servers=3,
    max_rounds=2,
    target_accuracy=0.0,
    recruitment_budget=1000.0,
    game_steps=200,
)


@pytest.mark.benchmark(group="system: demo task end to end")
def test_demo_task(benchmark, bench_info, tmp_path):
    cfg = TINY if benchmark.disabled else TaskConfig()
    if not benchmark.disabled:
        run_task(cfg, tmp_path / "warmup", progress=False)  # compile everything first
    reports = []

    def once():
        reports.append(run_task(cfg, tmp_path / f"run{len(reports)}", progress=False))

    benchmark.pedantic(once, rounds=1 if benchmark.disabled else 3, iterations=1)
    rep = reports[-1]
    bench_info("kernel", rep.rounds, "round", note="whole task; stages in extra_info")
    benchmark.extra_info["stage_seconds"] = rep.stage_seconds
    benchmark.extra_info["wall_seconds"] = rep.wall_seconds
    assert rep.ledger_verified
    if not benchmark.disabled:
        total = sum(rep.stage_seconds.values())
        lines = [
            "# Demo task: time by procedure",
            "",
            f"One run of `mcsl demo` after a warm-up run; {rep.rounds} rounds, "
            f"{rep.devices_accepted} devices accepted, {rep.edge_servers_active} edge servers, "
            f"wall {rep.wall_seconds:.2f} s.",
            "",
            "| procedure | seconds | share |",
            "|---|---|---|",
            *[
                f"| {k} | {v:.3f} | {v / total:.0%} |"
                for k, v in sorted(rep.stage_seconds.items(), key=lambda kv: -kv[1])
            ],
            "",
        ]
        (RESULTS / "system_stages.md").write_text("\n".join(lines))
