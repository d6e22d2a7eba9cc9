"""Fig. 5 in the fast tier (issue 15 item 5): the experiment of
``mcsl_core.experiments.fig5.run``, whole (sampling devices, assigning them to edge
servers, FedAvg per curve, CSV, PNG), on 8 FedProx devices and 3 rounds (evaluated after each) instead
of 180 devices and 30 rounds (every third). Only these are changed, through the ``mcsl_core.fl``
functions the experiment calls; the full-size run is ``mcsl reproduce fig5``.
"""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from mcsl_core import fl
from mcsl_core.experiments import run_figure

DEVICES, ROUNDS = 8, 3


@pytest.fixture(scope="module")
def fig5(tmp_path_factory):
    real_data, real_config = fl.synthetic_fedprox, fl.FLConfig
    mp = pytest.MonkeyPatch()
    mp.setattr(fl, "synthetic_fedprox", lambda *a, **k: real_data(*a, **{**k, "num_clients": DEVICES}))
    mp.setattr(fl, "FLConfig", lambda **k: real_config(**{**k, "rounds": ROUNDS, "eval_every": 1}))
    out = tmp_path_factory.mktemp("fig5")
    try:
        paths = run_figure("fig5", out)
    finally:
        mp.undo()
    with open(out / "fig5.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return paths, rows


def curves(rows) -> dict[tuple[str, str, str], list[tuple[int, float, float]]]:
    by = defaultdict(list)
    for r in rows:
        key = (r["panel"], r["dataset_fraction"], r["edge_servers"])
        by[key].append((int(r["round"]), float(r["test_accuracy"]), float(r["test_loss"])))
    return {k: sorted(v) for k, v in by.items()}


def test_fig5_writes_both_panels(fig5):
    paths, rows = fig5
    assert [p.name for p in paths] == ["fig5.csv", "fig5.png"]
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    c = curves(rows)
    # (a): fractions 0.3 and 1 (35 / 8 is above 1), every kept device on its own server;
    # (b): all devices on 2, 4 and 8 servers (the CPU sizing rule of fig5.run for 8 devices)
    a = sorted((float(f), int(s)) for p, f, s in c if p == "a")
    b = sorted(int(s) for p, f, s in c if p == "b")
    assert a == [(0.3, 2), (1.0, 8)] and b == [2, 4, 8]
    for pts in c.values():
        assert pts[-1][0] == ROUNDS  # every curve is evaluated after its last round


def test_every_fig5_curve_learns(fig5):
    # FedAvg on a convex model: each curve's test loss falls from its first evaluation to its
    # last and its accuracy ends above chance (10 classes)
    _, rows = fig5
    for key, pts in curves(rows).items():
        _, acc, loss = (np.array(x) for x in zip(*pts))
        assert np.all(np.isfinite(loss)) and np.all((acc >= 0) & (acc <= 1)), key
        assert loss[-1] < loss[0], key
        assert acc[-1] > 0.1, key
