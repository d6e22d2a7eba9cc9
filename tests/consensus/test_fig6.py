"""Fig. 6 plumbing: the fits recover known laws; the figure run writes its files (slow tier)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mcsl_core.experiments import fig6


def test_fits_recover_known_laws():
    U = np.arange(10, 101, 10, dtype=float)
    n = np.array([4, 7, 10, 13, 22, 31, 49, 70, 100], dtype=float)
    out = {(s, p): (v, r2) for s, _, p, v, r2 in fig6.fits(U, 0.3 + 0.02 * U, n, 0.05 * n**1.5, 3 * n**2)}
    assert out[("time_vs_edge_servers", "slope_s_per_server")][0] == pytest.approx(0.02, rel=1e-9)
    assert out[("time_vs_edge_servers", "intercept_s")][0] == pytest.approx(0.3, rel=1e-9)
    assert out[("time_vs_nodes", "exponent")] == pytest.approx((1.5, 1.0), rel=1e-9)
    assert out[("messages_vs_nodes", "exponent")][0] == pytest.approx(2.0, rel=1e-9)
    assert out[("time_vs_nodes", "rate_per_node")][1] < 0.99  # a power law is not exponential
    e = {(s, p): (v, r2) for s, _, p, v, r2 in fig6.fits(U, U, n, np.exp(0.05 * n), n)}
    assert e[("time_vs_nodes", "rate_per_node")] == pytest.approx((0.05, 1.0), rel=1e-9)


@pytest.mark.slow
def test_fig6_run_writes_csv_and_png(tmp_path):
    paths = fig6.run(tmp_path)
    names = {p.name for p in paths}
    assert names == {"fig6_edge_servers.csv", "fig6_nodes.csv", "fig6_fits.csv", "fig6.png"}
    with open(tmp_path / "fig6_edge_servers.csv") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([float(r["time_mean_s"]) for r in rows])
    assert (np.diff(t) > 0).all()
    with open(tmp_path / "fig6_fits.csv") as fh:
        fits = {(r["series"], r["parameter"]): float(r["value"]) for r in csv.DictReader(fh)}
    assert fits[("time_vs_edge_servers", "slope_s_per_server")] > 0
