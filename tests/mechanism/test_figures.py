"""fig3 / fig4 write their CSV and PNG, and the CSV holds what solve() returns."""

from __future__ import annotations

import csv

import numpy as np

from mcsl_core.experiments import run_figure
from mcsl_core.mechanism import MechanismParams, solve


def _read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_fig3_and_fig4_outputs(tmp_path, capsys):
    p3 = run_figure("fig3", tmp_path)
    p4 = run_figure("fig4", tmp_path)
    names = sorted(p.name for p in p3 + p4)
    assert names == ["fig3.png", "fig3_diagonal.csv", "fig3_grid.csv", "fig4.csv", "fig4.png"]
    for p in p3 + p4:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "U_s peaks" in out and "U_d peaks" in out and "v* < 0" in out

    rows = _read(tmp_path / "fig3_grid.csv")
    assert len(rows) == 2 * 150 * 150
    for row in rows[::997]:
        p = MechanismParams.paper_defaults(eta=float(row["eta"]), xi=float(row["xi"]))
        sol = solve(p, constrained=row["model"] == "constrained")
        assert int(row["valid"]) == int(sol.valid)
        for k in ("s", "v", "U_s", "U_d"):
            np.testing.assert_allclose(float(row[k]), float(getattr(sol, k)), rtol=1e-9)
        assert float(row["eta"]) * float(row["xi"]) > 1 or row["U_s"] == "nan"

    rows = _read(tmp_path / "fig4.csv")
    assert len(rows) == 2 * 3 * 1001
    for row in rows[::211]:
        p = MechanismParams.paper_defaults(
            eps=float(row["eps"]), eta=float(row["eta_equals_xi"]), xi=float(row["eta_equals_xi"])
        )
        sol = solve(p, constrained=row["model"] == "constrained")
        assert int(row["valid"]) == int(sol.valid)
        if sol.valid:
            np.testing.assert_allclose(float(row["U_s"]), float(sol.U_s), rtol=1e-9)
            np.testing.assert_allclose(float(row["U_d"]), float(sol.U_d), rtol=1e-9)
    # constrained: feasible everywhere in the sweep
    con = [r for r in rows if r["model"] == "constrained"]
    assert all(
        0 <= float(r["v"]) <= 50 and 0 <= float(r["s"]) <= 500 and 0 <= float(r["g"]) <= 1 for r in con
    )
