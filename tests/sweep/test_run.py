"""Running sweeps: rows, failures, resuming, crash safety, and equal rows on every executor.

Tasks are tiny (12 devices, 3 edge servers, one round) and share one seed where they
can, so that the XLA programs compiled for the first point serve the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcsl_core import ledger as L
from mcsl_core._io import toml_text
from mcsl_core.cli import main
from mcsl_core.sweep import (
    SerialExecutor,
    _results,
    is_timing_column,
    point_hash,
    read_results,
    run_sweep,
    seed_stats,
    spec_from_mapping,
)
from mcsl_core.system import load_config, run_task

TINY = {
    "task": {"max_rounds": 1, "target_accuracy": 0.0},
    "data": {"num_devices": 12, "num_locations": 16},
    "learning": {"num_edge_servers": 3},
    "payment": {"game_steps": 100},
}
#: Two aggregators x a budget too small to recruit anyone (the task raises) or ample.
GRID = {"learning.aggregator": ["fedavg", "median"], "task.recruitment_budget": [1.0, 1000.0]}


def make_spec(grid=GRID, seeds=(0,), **sections):
    return spec_from_mapping({"sweep": {"grid": grid, "seeds": list(seeds)}, **TINY, **sections})


def write_spec(path: Path, grid=GRID, seeds=(0,)) -> Path:
    sweep = {"sweep": {"seeds": list(seeds)}}
    text = toml_text(sweep) + "[sweep.grid]\n"
    text += "".join(f'"{k}" = {json.dumps(v)}\n' for k, v in grid.items())
    path.write_text(text + toml_text(TINY))
    return path


def outcome(rows):
    """Rows without their wall-clock columns: what must not depend on the executor."""
    return [{k: v for k, v in r.items() if not is_timing_column(k)} for r in rows]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    spec = make_spec()
    return spec, run_sweep(spec, out, workers=1), out


def test_one_whole_row_per_point_holding_every_scalar_report_field(serial):
    spec, _, out = serial
    rows = read_results(out)
    assert [r["point"] for r in rows] == [p.point for p in spec.points]
    assert [r["status"] for r in rows] == ["failed", "ok", "failed", "ok"]
    for r, p in zip(rows, spec.points):
        assert r["learning.aggregator"] == p.config.aggregator and r["seed"] == "0"
        assert float(r["task.recruitment_budget"]) == p.config.recruitment_budget
        if r["status"] != "ok":
            continue
        report = json.loads((out / "points" / p.point / "report.json").read_text())
        for key, value in report.items():  # every scalar field, and dicts one column per key
            if isinstance(value, (str, int, float)) and key != "out_dir":
                want = ("true" if value else "false") if isinstance(value, bool) else str(value)
                assert r[key] == want, key
            elif isinstance(value, dict):
                for k, v in value.items():
                    assert float(r[f"{key}.{k}"]) == v
        assert "accuracy" not in r and "out_dir" not in r  # per-round list: in rounds.csv


def test_rows_agree_with_a_direct_run_of_the_task(serial, tmp_path):
    spec, _, out = serial
    p = spec.points[3]
    ref = run_task(p.config, tmp_path, progress=False)
    row = read_results(out)[3]
    assert float(row["final_accuracy"]) == ref.final_accuracy
    assert float(row["total_bill"]) == ref.total_bill
    assert float(row["consensus_time_s"]) == ref.consensus_time_s
    assert float(row["paid.devices"]) == ref.paid["devices"]
    with open(out / "points" / p.point / "rounds.csv") as fh:
        assert [float(r["accuracy"]) for r in csv.DictReader(fh)] == list(ref.accuracy)


def test_a_failed_point_is_recorded_and_the_sweep_goes_on(serial):
    spec, res, out = serial
    failed = [p.point for p in spec.points if p.config.recruitment_budget == 1.0]
    assert set(res.failed) == set(failed) and not res.ok
    for name in failed:
        row = next(r for r in read_results(out) if r["point"] == name)
        assert (
            row["error"]
            == "ValueError: task.recruitment_budget: no device could be recruited within the budget"
        )
        assert row["final_accuracy"] == ""
        assert "Traceback" in (out / "points" / name / "error.txt").read_text()


def test_point_folder_holds_a_config_that_repeats_the_point(serial):
    spec, _, out = serial
    for p in spec.points:
        folder = out / "points" / p.point
        cfg = load_config(folder / "config.toml")
        assert cfg == p.config and point_hash(cfg) == folder.name
        assert not (folder / "ledger.sqlite").exists() and not (folder / "store").exists()
    assert sorted(x.name for x in (out / "points").iterdir()) == sorted(p.point for p in spec.points)


def test_rerun_skips_finished_points_and_runs_the_failed_again(serial, tmp_path):
    spec, _, out = serial
    again = tmp_path / "again"
    shutil.copytree(out, again)
    before = read_results(again)
    res = run_sweep(spec, again, workers=1)
    assert (res.ran, res.skipped) == (2, 2)
    after = read_results(again)
    assert [r for r in after if r["status"] == "ok"] == [
        r for r in before if r["status"] == "ok"
    ]  # untouched
    assert outcome(after) == outcome(before)  # the failed ones failed again, the same way
    # a changed base config: new names, nothing reused, only the new points listed
    res = run_sweep(make_spec(task={"max_rounds": 2, "target_accuracy": 0.0}), again, workers=1)
    assert (res.ran, res.skipped) == (4, 0)
    assert {r["point"] for r in read_results(again)}.isdisjoint(r["point"] for r in before)


def test_same_rows_on_every_executor(serial, tmp_path):
    """Serial, a thread pool, the default local process pool and a Dask cluster: one outcome."""
    from distributed import Client, LocalCluster

    spec, res, _ = serial
    want = outcome(res.rows)
    with cf.ThreadPoolExecutor(2) as pool:
        assert outcome(run_sweep(spec, tmp_path / "threads", executor=pool).rows) == want
    assert outcome(run_sweep(spec, tmp_path / "procs", workers=2).rows) == want  # spawned, one thread each
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            got = run_sweep(spec, tmp_path / "dask", executor=client.get_executor()).rows
    assert outcome(got) == want


def test_cli_runs_on_a_dask_scheduler_and_exits_1_when_a_point_failed(tmp_path, capsys):
    from distributed import LocalCluster

    grid = {"learning.aggregator": ["median"], "task.recruitment_budget": [1.0, 1000.0]}
    spec = write_spec(tmp_path / "spec.toml", grid=grid)
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        rc = main(
            ["sweep", str(spec), "--out", str(tmp_path / "out"), "--scheduler", cluster.scheduler_address]
        )
    captured = capsys.readouterr()
    assert rc == 1
    assert "sweep: 2 points, 2 run, 0 already finished, 1 ok, 1 failed" in captured.out
    assert "ok 1, failed 1, running 0" in captured.err  # the progress bar's counts
    assert [r["status"] for r in read_results(tmp_path / "out")] == ["failed", "ok"]


def test_cli_reports_an_unreachable_scheduler_in_one_line(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.toml", grid={"learning.aggregator": ["median"]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--scheduler", "nonsense://x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mcsl: error: --scheduler: cannot connect to nonsense://x")


def test_keep_ledgers_keeps_a_ledger_that_verifies(tmp_path):
    spec = make_spec(grid={"learning.aggregator": ["median"]})
    res = run_sweep(spec, tmp_path, executor=SerialExecutor(), keep_ledgers=True)
    folder = tmp_path / "points" / spec.points[0].point
    assert L.verify_file(folder / "ledger.sqlite").ok
    assert any((folder / "store").rglob("*")) and res.ok


def test_a_crash_inside_a_commit_leaves_no_partial_point(serial, tmp_path, monkeypatch):
    spec, _, _ = serial
    real = os.rename

    def crash(src, dst):
        if Path(dst).parent.name == "points" and not Path(dst).name.startswith("."):
            raise KeyboardInterrupt("killed between writing a point's files and its rename")
        real(src, dst)

    monkeypatch.setattr(_results.os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, workers=1)
    assert [p.name for p in (tmp_path / "points").iterdir() if not p.name.startswith(".")] == []
    assert read_results(tmp_path) == []  # header only: the point is not half there
    monkeypatch.setattr(_results.os, "rename", real)
    res = run_sweep(spec, tmp_path, workers=1)
    assert res.ran == 4 and sorted(p.name for p in (tmp_path / "points").iterdir()) == sorted(
        p.point for p in spec.points
    )  # the staging folder of the crashed commit is gone


def _committed(out: Path) -> list[str]:
    points = out / "points"
    return [p.name for p in points.iterdir() if not p.name.startswith(".")] if points.is_dir() else []


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_mid_sweep_loses_no_finished_point_and_resumes(workers, tmp_path):
    """A sweep killed (with its workers) after some points, then run again: one row per point."""
    grid = {
        "learning.aggregator": ["median", "fedavg", "trimmed_mean"],
        "payment.requestor_rule": ["gradient", "bush_mosteller"],
    }
    spec = write_spec(tmp_path / "spec.toml", grid=grid)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "mcsl_core",
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--workers",
        str(workers),
    ]
    cmd.append("--quiet")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(_committed(out)) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
    proc.wait()
    assert alive, proc.stderr.read().decode()[-2000:]
    done = _committed(out)
    assert 1 <= len(done) < 6
    with open(out / "results.csv", newline="") as fh:
        header, *lines = list(csv.reader(fh))
    assert all(len(line) == len(header) for line in lines)  # whole rows only
    before = {r["point"]: r for r in read_results(out)}
    assert set(before) <= set(done)  # results.csv may lag the folders, never lead them
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{len(done)} already finished" in proc.stdout
    after = read_results(out)
    assert len(after) == 6 == len({r["point"] for r in after})
    assert all(r["status"] == "ok" for r in after)
    by_point = {r["point"]: r for r in after}
    assert all(by_point[k] == row for k, row in before.items())  # unchanged, timing columns too
    assert sorted(_committed(out)) == sorted(by_point) and len(list((out / "points").iterdir())) == 6


def test_seed_stats_are_the_mean_and_sample_std_over_seeds():
    table = [
        ("ok", 0, "p", 0, 1.0), ("ok", 0, "p", 1, 2.0), ("ok", 0, "p", 2, 6.0), ("ok", 1, "p", 0, 4.0),
        ("ok", 0, "q", 0, 3.0), ("ok", 0, "q", 1, True), ("failed", 1, "p", 1, None), ("ok", 1, "q", 0, math.nan),
    ]  # fmt: skip
    rows = [dict(status=st, a=x, b=line, seed=s, m=v) for st, x, line, s, v in table]
    stats = seed_stats(rows, ["a", "b"], "m")
    assert stats[("p",)][0] == (statistics.mean([1, 2, 6]), statistics.stdev([1, 2, 6]), 3)
    assert stats[("p",)][1] == (4.0, 0.0, 1)  # the failed seed does not count
    assert stats[("q",)] == {0: (2.0, statistics.stdev([3, 1]), 2)}  # True is 1; NaN left out
    assert seed_stats(rows, [], "m")[()]["all"][2] == 6  # no axes: one group of every usable row


def test_figure_is_written(serial):
    _, res, out = serial
    assert res.figure == out / "sweep.png"
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_plot_list_draws_no_figure(tmp_path):
    spec = spec_from_mapping({"sweep": {"grid": {"learning.aggregator": ["fedavg"]}, "plot": []}, **TINY})
    res = run_sweep(spec, tmp_path, workers=1)
    assert res.ok and res.figure is None and not (tmp_path / "sweep.png").exists()
    assert len(read_results(tmp_path)) == 1


@pytest.mark.slow
def test_a_killed_worker_process_is_replaced_and_its_point_run_again(tmp_path):
    import multiprocessing
    import threading

    spec = make_spec(grid={"learning.aggregator": ["median", "fedavg"]})
    box = {}
    t = threading.Thread(target=lambda: box.update(res=run_sweep(spec, tmp_path, workers=2)))
    t.start()
    deadline = time.monotonic() + 120
    while len(multiprocessing.active_children()) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # inside the first point's task
    os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
    t.join(600)
    res = box["res"]
    assert res.ok and res.ran == 2 and [r["status"] for r in res.rows] == ["ok", "ok"]


def test_points_run_in_a_memory_backed_scratch_folder_and_leave_nothing_there(monkeypatch, tmp_path):
    import os
    import types

    from mcsl_core.sweep import _worker

    if not os.path.isdir("/dev/shm") or _worker.scratch_root() is None:
        pytest.skip("no writable /dev/shm with 2 GiB free here")
    seen = []
    real = _worker.tempfile.mkdtemp

    def spy(*a, **kw):
        made = real(*a, **kw)
        if str(kw.get("prefix", "")).startswith("mcsl-sweep-"):
            seen.append(made)
        return made

    monkeypatch.setattr(_worker.tempfile, "mkdtemp", spy)
    # a folder left by a killed worker (a pid that does not run) goes; a live one's stays
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = Path("/dev/shm") / f"mcsl-sweep-{int(dead.stdout)}-left"
    live = Path("/dev/shm") / f"mcsl-sweep-{os.getpid()}-running"
    for p in (stale, live):
        (p / "run").mkdir(parents=True)
    try:
        result = _worker.run_point(make_spec(grid={"learning.aggregator": ["fedavg"]}).points[0].config)
        assert not stale.exists() and live.is_dir()
    finally:
        shutil.rmtree(live), shutil.rmtree(stale, ignore_errors=True)
    assert result["status"] == "ok" and set(result["files"]) == {"report.json", "rounds.csv"}
    (made,) = seen
    assert Path(made).parent == Path("/dev/shm") and not Path(made).exists()
    # too little free space, or no such folder: the system's temporary folder
    small = types.SimpleNamespace(f_bavail=1, f_frsize=4096)
    monkeypatch.setattr(_worker.os, "statvfs", lambda p: small)
    assert _worker.scratch_root() is None

    def missing(p):
        raise FileNotFoundError(p)

    monkeypatch.setattr(_worker.os, "statvfs", missing)
    assert _worker.scratch_root() is None
