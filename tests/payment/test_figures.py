"""Figs. 7 and 8 run end to end and their numbers obey the model."""

from __future__ import annotations

import csv

import numpy as np

from mcsl_core.experiments import run_figure
from mcsl_core.experiments.fig7 import CHI
from mcsl_core.payment import PAPER_X, PAPER_Y


def read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_fig7_and_fig8(tmp_path):
    paths = run_figure("fig7", tmp_path)
    assert {p.name for p in paths} == {"fig7.csv", "fig7.png"}
    rows = read(tmp_path / "fig7.csv")
    assert {r["rule"] for r in rows} == {"gradient", "bush_mosteller"}
    last = {}
    for r in rows:
        last[(r["rule"], r["leader"], r["q0"])] = r
    # long-run maximiser against ZD: full cooperation after a leader c, payoffs (x1, y1)
    for q0 in ("0.2", "0.4", "0.6", "0.8"):
        r = last[("gradient", "ZD", q0)]
        assert float(r["q1"]) == 1.0
        assert abs(float(r["E_b"]) - PAPER_X[0]) < 1e-5 and abs(float(r["E_r"]) - PAPER_Y[0]) < 1e-5
    # ZD relation on every valid gradient row (CSV keeps 6 significant digits)
    for r in rows:
        if r["rule"] == "gradient" and r["leader"] == "ZD" and float(r["valid"]) == 1.0:
            assert abs((float(r["E_b"]) - 6) - CHI * (float(r["E_r"]) - 6)) < 1e-4
    paths = run_figure("fig8", tmp_path)
    assert {p.name for p in paths} == {"fig8_stable.csv", "fig8_dynamics.csv", "fig8.png"}
    stable = read(tmp_path / "fig8_stable.csv")
    assert len(stable) == 2 * 3 * 4
    for r in stable:
        if r["rule"] == "bush_mosteller" and r["leader"] == "ZD":
            # a myopic learner defects, but the ZD relation still pins the payoffs
            assert np.isclose(float(r["E_b"]) - 6, CHI * (float(r["E_r"]) - 6), atol=1e-3)
    assert all(p.stat().st_size > 10_000 for p in (tmp_path / "fig7.png", tmp_path / "fig8.png"))
