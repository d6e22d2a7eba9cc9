"""The benchmark summary turns pytest-benchmark JSON into per-item rates and ratios."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.summarize import summarize


def test_summary_ratio_is_per_item(tmp_path):
    data = {
        "machine_info": {
            "cpu_model": "TestCPU",
            "cores": 2,
            "python_version": "3.11",
            "libraries": {"numpy": "2"},
        },
        "benchmarks": [
            # kernel: 1e6 items in 0.01 s -> 1e-8 s/item; anchor: 100 items in 0.1 s -> 1e-3 s/item
            {
                "group": "g",
                "name": "k",
                "stats": {"median": 0.01},
                "extra_info": {
                    "role": "kernel",
                    "items": 1_000_000,
                    "unit": "point",
                    "limit_items_per_s": 2e8,
                },
            },
            {
                "group": "g",
                "name": "a",
                "stats": {"median": 0.1},
                "extra_info": {"role": "anchor", "items": 100, "unit": "point"},
            },
            {"group": "g", "name": "untagged", "stats": {"median": 1.0}, "extra_info": {}},
        ],
    }
    p = tmp_path / "x.json"
    p.write_text(json.dumps(data))
    md = summarize([p])
    row = next(line for line in md.splitlines() if line.startswith("| g |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "k" and cells[3] == "a"
    assert cells[2] == "100M/s points"
    assert cells[5] == "100,000x"
    assert cells[7] == "50%"
    assert "untagged" not in md
    assert "TestCPU, 2 cores" in md
