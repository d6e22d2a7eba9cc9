"""Record or check benchmarks.

    python benchmarks/run.py record [SUITE ...]   # time, write bench_results/<suite>.json, regenerate summary.md
    python benchmarks/run.py compare [SUITE ...]  # time again; fail on a median slowdown > 30 % vs the JSON

SUITE is a file name in benchmarks/ without ``bench_`` and ``.py`` (e.g. ``mechanism``);
none means every suite. ``compare`` is pytest-benchmark's ``--benchmark-compare`` with
``--benchmark-compare-fail=median:30%`` against the committed ``bench_results/<suite>.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench_results"
THRESHOLD = "median:30%"


# suites whose JSON keeps summary statistics only (pytest-benchmark's --benchmark-json
# always writes every raw sample under stats.data)
def suites(names: list[str]) -> list[str]:
    found = sorted(p.stem[len("bench_") :] for p in (ROOT / "benchmarks").glob("bench_*.py"))
    if not names:
        return found
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise SystemExit(f"unknown suite(s) {unknown}; available: {found}")
    return names


def pytest_cmd(suite: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        f"benchmarks/bench_{suite}.py",
        "-q",
        "-m",
        "",
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "--benchmark-warmup=on",
        *extra,
    ]


def keep_summary_only(path: Path) -> None:
    """Drop pytest-benchmark's raw per-round samples (``stats.data``) from a result file.

    bench_results/ keeps summary statistics (min, median, quartiles, rounds, ...); the raw
    samples made a single suite's file tens of thousands of lines long.
    """
    doc = json.loads(path.read_text())
    for bench in doc.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def record(names: list[str]) -> int:
    RESULTS.mkdir(exist_ok=True)
    for suite in suites(names):
        out = RESULTS / f"{suite}.json"
        rc = subprocess.call(pytest_cmd(suite, f"--benchmark-json={out}"), cwd=ROOT)
        if rc != 0:
            return rc
        keep_summary_only(out)
    summary = subprocess.run(
        [sys.executable, "benchmarks/summarize.py", *map(str, sorted(RESULTS.glob("*.json")))],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (RESULTS / "summary.md").write_text(summary)
    print(summary)
    return 0


def compare(names: list[str]) -> int:
    worst = 0
    for suite in suites(names):
        baseline = RESULTS / f"{suite}.json"
        if not baseline.exists():
            print(f"no committed baseline for {suite}; run `record` first")
            return 2
        with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
            storage = Path(tmp) / "storage" / "baseline"
            storage.mkdir(parents=True)
            shutil.copy(baseline, storage / "0001_baseline.json")
            rc = subprocess.call(
                pytest_cmd(
                    suite,
                    f"--benchmark-storage=file://{Path(tmp) / 'storage'}",
                    "--benchmark-compare=*/0001",
                    f"--benchmark-compare-fail={THRESHOLD}",
                ),
                cwd=ROOT,
            )
        worst = max(worst, rc)
    return worst


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("record", "compare"):
        raise SystemExit(__doc__)
    sys.exit(record(sys.argv[2:]) if sys.argv[1] == "record" else compare(sys.argv[2:]))
