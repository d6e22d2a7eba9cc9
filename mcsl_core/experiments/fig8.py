"""Fig. 8: utilities of the leader and the requestor at the stable state and over time.

Same runs as Fig. 7 (:mod:`mcsl_core.experiments.fig7`): long-run payoffs
``E_b``, ``E_r`` at the requestor's current strategy. Left: the stable state
(last recorded step) for each q0 under every leader and both learning rules;
right: ``E_b`` and ``E_r`` over time under ZD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcsl_core._io import write_csv
from mcsl_core._plot import pyplot, save_figure
from mcsl_core.experiments.fig7 import Q0, leaders, simulate, write_trajectories

__all__ = ["run"]


def run(out_dir: Path, *, full: bool = False, data_dir: Path | None = None) -> list[Path]:
    """Write fig8_stable.csv, fig8_dynamics.csv and fig8.png; print the stable utilities."""
    out_dir = Path(out_dir)
    rows = simulate(full=full)
    stable = [
        (r["rule"], r["leader"], r["q0"], f"{r['E_b'][-1]:.6g}", f"{r['E_r'][-1]:.6g}", f"{r['q1'][-1]:.6g}")
        for r in rows
    ]
    paths = [
        write_csv(out_dir / "fig8_stable.csv", ["rule", "leader", "q0", "E_b", "E_r", "q1"], stable),
        write_trajectories(out_dir / "fig8_dynamics.csv", [r for r in rows if r["leader"] == "ZD"]),
    ]
    plt = pyplot()
    rules = ["gradient", "bush_mosteller"]
    fig = plt.figure(figsize=(4 * (len(Q0) + 2), 7))
    gs = fig.add_gridspec(2, len(Q0) + 2, hspace=0.4, wspace=0.35)
    names = list(leaders())
    for i, rule in enumerate(rules):
        ax = fig.add_subplot(gs[i, 0:2])
        width = 0.8 / (2 * len(names))
        for a, name in enumerate(names):
            sel = [r for r in rows if r["rule"] == rule and r["leader"] == name]
            xs = np.arange(len(Q0))
            ax.bar(xs + (2 * a) * width - 0.4, [r["E_b"][-1] for r in sel], width, label=f"{name} leader")
            ax.bar(
                xs + (2 * a + 1) * width - 0.4,
                [r["E_r"][-1] for r in sel],
                width,
                hatch="//",
                label=f"{name} requestor",
            )
        ax.set_xticks(np.arange(len(Q0)) - 0.4 + len(names) * width - width / 2, [f"q0={q}" for q in Q0])
        ax.set_ylim(0, 8)
        ax.set_ylabel("utility at the stable state")
        ax.set_title(f"stable state, {rule}")
        if i == 0:
            ax.legend(fontsize=6, ncol=3)
        for j, q in enumerate(Q0):
            ax = fig.add_subplot(gs[i, 2 + j])
            r = next(r for r in rows if r["rule"] == rule and r["leader"] == "ZD" and r["q0"] == q)
            ax.plot(r["t"], r["E_b"], label="leader E_b")
            ax.plot(r["t"], r["E_r"], label="requestor E_r")
            ax.set_ylim(2.5, 8.5)
            ax.set_title(f"ZD, {rule}, q0 = {q}", fontsize=9)
            ax.set_xlabel("gradient step" if rule == "gradient" else "round")
            if j == 0:
                ax.legend(fontsize=7)
    fig.suptitle("Fig. 8: utilities at the stable state (bars) and over time under ZD (lines)")
    paths.append(save_figure(fig, out_dir / "fig8.png"))
    print("fig8: stable-state utilities (E_b, E_r) per q0")
    for rule in rules:
        for name in names:
            vals = [
                f"({r['E_b'][-1]:.3f}, {r['E_r'][-1]:.3f})"
                for r in rows
                if r["rule"] == rule and r["leader"] == name
            ]
            print(f"  {rule:15s} {name:5s}: {' '.join(vals)}")
    return paths
