"""Fig. 6: consensus time vs edge servers (10 nodes) and vs consortium nodes (10 edge servers).

Paper V-B: 300 KB per update; the paper reports time "linearly correlated to the
number of edge servers" and increasing "near-exponentially" with the number of
nodes. The node sweep runs to 1,000 nodes (``full``: 3,000). Here every message of
PBFT is simulated (``mcsl_core.consensus.sweep``, default ``NetworkModel``), averaged
over seeds; the paper's simplified exchange and HotStuff are run beside PBFT in the
node sweep. Fits written to ``fig6_fits.csv``: a line in the number of edge servers; in the number of nodes a power law
(log-log slope) and an exponential (log-linear), each with its R^2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcsl_core._io import write_csv
from mcsl_core._plot import pyplot, save_figure
from mcsl_core.consensus import NetworkModel, sweep

UPDATE_BYTES = 300_000
# node sweep: to 1,000 nodes by default, to 3,000 with --full (PBFT sends about 2 n^2
# messages per block: 2 M at n = 1,000, 18 M at n = 3,000)
NODES = [4, 7, 10, 13, 16, 22, 31, 40, 49, 61, 70, 82, 91, 100, 151, 202, 300, 500, 700, 1000]
FULL_NODES = [1500, 2000, 3000]


def _seeds_at(n: int, seeds: int) -> int:
    """Seeds per node count: all up to 100 nodes, fewer above (the spread shrinks with n)."""
    if n <= 100:
        return seeds
    return max(2, seeds // (8 if n <= 1000 else 16))


def _mean_over_seeds(n, U, seeds, protocol="pbft"):
    C = seeds.size
    r = sweep(
        np.full(C, n),
        np.full(C, U),
        seeds,
        update_bytes=UPDATE_BYTES,
        protocol=protocol,
        network=NetworkModel(),
    )
    if not r.committed.all():
        raise RuntimeError(f"a fault-free run did not commit (n={n}, U={U}, {protocol})")
    return r.time_s.mean(), r.time_s.std(), int(r.messages[0]), float(r.bytes[0])


def _r2(y, fit):
    return float(1.0 - np.sum((y - fit) ** 2) / np.sum((y - y.mean()) ** 2))


def fits(edge_U, edge_t, nodes_n, nodes_t, nodes_m):
    """Linear fit in edge servers; power-law and exponential fits in nodes."""
    a, b = np.polyfit(edge_U, edge_t, 1)
    out = [
        ("time_vs_edge_servers", "linear", "slope_s_per_server", a, _r2(edge_t, a * edge_U + b)),
        ("time_vs_edge_servers", "linear", "intercept_s", b, _r2(edge_t, a * edge_U + b)),
    ]
    ln, lt = np.log(nodes_n), np.log(nodes_t)
    p, q = np.polyfit(ln, lt, 1)
    out.append(("time_vs_nodes", "power", "exponent", p, _r2(lt, p * ln + q)))
    c, d = np.polyfit(nodes_n, lt, 1)
    out.append(("time_vs_nodes", "exponential", "rate_per_node", c, _r2(lt, c * nodes_n + d)))
    lm = np.log(nodes_m)
    pm, qm = np.polyfit(ln, lm, 1)
    out.append(("messages_vs_nodes", "power", "exponent", pm, _r2(lm, pm * ln + qm)))
    # the last decade alone: where the quadratic vote traffic starts to matter
    big = nodes_n >= 0.3 * nodes_n.max()
    pb, qb = np.polyfit(ln[big], lt[big], 1)
    out.append(("time_vs_nodes_upper_range", "power", "exponent", pb, _r2(lt[big], pb * ln[big] + qb)))
    return out


def run(out_dir: Path, *, full: bool = False, data_dir: Path | None = None) -> list[Path]:
    """Compute both panels, write ``fig6_*.csv`` and ``fig6.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    seeds = np.arange(32 if full else 8)
    edge_U = np.arange(10, (201 if full else 101), 10)
    nodes_n = np.array(NODES + (FULL_NODES if full else []))
    edge_rows = []
    for U in edge_U:
        m, s, msgs, byt = _mean_over_seeds(10, int(U), seeds)
        edge_rows.append([10, int(U), m, s, msgs, byt])
    node_rows = [_node_row(int(n), seeds) for n in nodes_n]
    E = np.array(edge_rows, dtype=float)
    N = np.array(node_rows, dtype=float)
    fit_rows = fits(E[:, 1], E[:, 2], N[:, 0], N[:, 2], N[:, 4])
    paths = [
        write_csv(out_dir / "fig6_edge_servers.csv", EDGE_COLUMNS, edge_rows),
        write_csv(out_dir / "fig6_nodes.csv", NODE_COLUMNS, node_rows),
        write_csv(out_dir / "fig6_fits.csv", ["series", "model", "parameter", "value", "r2"], fit_rows),
    ]
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    _draw_edge_servers(ax1, E, fit_rows)
    _draw_nodes(ax2, N, fit_rows)
    fig.suptitle("Fig. 6: PBFT consensus time (discrete-event simulation of every message)")
    fig.subplots_adjust(wspace=0.5)
    paths.append(save_figure(fig, out_dir / "fig6.png"))
    slope, expo = fit_rows[0][3], fit_rows[2][3]
    print(
        f"fig6: time vs edge servers at 10 nodes: {slope * 1e3:.2f} ms per server "
        f"(R^2 {fit_rows[0][4]:.4f}); time vs nodes at 10 servers: exponent {expo:.2f} "
        f"(R^2 {fit_rows[2][4]:.3f}) over n = {int(N[0, 0])}..{int(N[-1, 0])}, exponential fit "
        f"R^2 {fit_rows[3][4]:.3f}; upper range (n >= {int(0.3 * N[-1, 0])}) exponent "
        f"{fit_rows[5][3]:.2f}; messages ~ n^{fit_rows[4][3]:.2f}"
    )
    return paths


EDGE_COLUMNS = ["n_nodes", "n_edge_servers", "time_mean_s", "time_std_s", "messages", "bytes"]
NODE_COLUMNS = [
    *EDGE_COLUMNS,
    "paper_time_mean_s",
    "paper_messages",
    "hotstuff_time_mean_s",
    "hotstuff_messages",
    "seeds",
]


def _node_row(n: int, seeds: np.ndarray) -> list:
    """PBFT (mean, std, messages, bytes), the paper's exchange and HotStuff at ``n`` nodes, 10 servers."""
    sd = seeds[: _seeds_at(n, seeds.size)]
    m, s, msgs, byt = _mean_over_seeds(n, 10, sd)
    mp, _, msgs_p, _ = _mean_over_seeds(n, 10, sd, "paper")
    mh, _, msgs_h, _ = _mean_over_seeds(n, 10, sd, "hotstuff")
    return [n, 10, m, s, msgs, byt, mp, msgs_p, mh, msgs_h, sd.size]


def _draw_edge_servers(ax1, E: np.ndarray, fit_rows) -> None:
    slope = fit_rows[0][3]
    icpt = fit_rows[1][3]
    ax1.errorbar(E[:, 1], E[:, 2], yerr=E[:, 3], fmt="o", color="C0", label="PBFT (simulated)")
    ax1.plot(
        E[:, 1],
        slope * E[:, 1] + icpt,
        "-",
        color="C0",
        alpha=0.6,
        label=f"linear fit: {slope * 1e3:.1f} ms / edge server (R²={fit_rows[0][4]:.4f})",
    )
    ax1.set_xlabel("number of edge servers (10 nodes, 300 KB updates)")
    ax1.set_ylabel("consensus time (s)")
    a1 = ax1.twinx()
    a1.plot(E[:, 1], E[:, 4], "s--", color="C3", alpha=0.5, label="messages")
    a1.set_ylabel("messages per block", color="C3")
    ax1.legend(loc="upper left", fontsize=8)


def _draw_nodes(ax2, N: np.ndarray, fit_rows) -> None:
    expo = fit_rows[2][3]
    ax2.errorbar(N[:, 0], N[:, 2], yerr=N[:, 3], fmt="o", color="C0", label="PBFT (simulated)")
    ax2.plot(N[:, 0], N[:, 6], "^-", color="C2", alpha=0.7, label="paper's exchange")
    ax2.plot(N[:, 0], N[:, 8], "v-", color="C4", alpha=0.7, label="HotStuff (basic)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("number of consortium nodes (10 edge servers)")
    ax2.set_ylabel("consensus time (s)")
    ax2.set_title(
        f"time ~ n^{expo:.2f} (R²={fit_rows[2][4]:.3f}); exp. fit R²={fit_rows[3][4]:.3f}", fontsize=9
    )
    a2 = ax2.twinx()
    a2.set_yscale("log")
    a2.plot(N[:, 0], N[:, 4], "s--", color="C3", alpha=0.5, label=f"PBFT messages ~ n^{fit_rows[4][3]:.2f}")
    a2.set_ylabel("messages per block", color="C3")
    ax2.legend(loc="upper left", fontsize=8)
    a2.legend(loc="lower right", fontsize=8)
