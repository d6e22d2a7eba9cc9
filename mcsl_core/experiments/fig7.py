"""Fig. 7: the requestor's cooperation probability over time under ZD, TFT and WSLS.

Paper V-C: x = (6, 3, 8, 5), y = (6, 8, 3, 5), several initial requestor
cooperation probabilities q0 (q = (q0, q0) at the start). The paper does not say
how the requestor adapts; two documented rules are run (see
:func:`mcsl_core.payment.evolve_requestor`):

- ``gradient``: projected gradient ascent on the requestor's long-run payoff
  (a long-run utility maximiser, the premise of Theorem IV.2); deterministic.
- ``bush_mosteller``: reinforcement from realised payoffs (a myopic learner),
  averaged over seeded replicates.

The leader's ZD strategy uses chi = 2 and half the largest feasible phi (the
paper gives neither; these are fixed here, not tuned).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcsl_core._io import write_csv
from mcsl_core._plot import pyplot, save_figure
from mcsl_core.payment import (
    PAPER_X,
    PAPER_Y,
    evolve_requestor,
    tit_for_tat,
    win_stay_lose_shift,
    zd_phi_bounds,
    zd_strategy,
)

__all__ = ["CHI", "PHI_FRACTION", "Q0", "leaders", "run", "simulate"]

Q0 = (0.2, 0.4, 0.6, 0.8)
CHI = 2.0
PHI_FRACTION = 0.5
GRADIENT = dict(steps=1000, lr=0.01, record_every=5)
BUSH_MOSTELLER = dict(lr=0.05, record_every=100)


def leaders() -> dict[str, np.ndarray]:
    """The three leader strategies compared in Figs. 7 and 8."""
    x, y = np.array(PAPER_X), np.array(PAPER_Y)
    phi = PHI_FRACTION * zd_phi_bounds(x, y, CHI)[1]
    return {"ZD": zd_strategy(x, y, CHI, phi), "TFT": tit_for_tat(), "WSLS": win_stay_lose_shift(x)}


def simulate(*, full: bool = False, seed: int = 7) -> list[dict]:
    """Mean trajectories for every (rule, leader, q0).

    Returns a list of dicts with keys rule, leader, q0, t, q1, q2, E_b, E_r, valid
    (arrays over recorded steps; Bush-Mosteller: means over replicates, E over
    valid replicates, ``valid`` = fraction of replicates with a unique long run).
    """
    L = leaders()
    names = list(L)
    p = np.stack([L[n] for n in names])[:, None, None, :]  # [leader, q0, rep, 4]
    q0 = np.array(Q0)
    out: list[dict] = []
    grad = evolve_requestor(p[:, :, 0], np.stack([q0, q0], -1)[None], rule="gradient", **GRADIENT)
    for a, name in enumerate(names):
        for b, q in enumerate(Q0):
            out.append(
                dict(
                    rule="gradient",
                    leader=name,
                    q0=q,
                    t=grad.t,
                    q1=grad.q[:, a, b, 0],
                    q2=grad.q[:, a, b, 1],
                    E_b=grad.E_b[:, a, b],
                    E_r=grad.E_r[:, a, b],
                    valid=grad.valid[:, a, b].astype(float),
                )
            )
    reps, rounds = (1000, 50_000) if full else (100, 20_000)
    q0b = np.broadcast_to(q0[None, :, None, None], (1, len(Q0), reps, 2))
    bm = evolve_requestor(p, q0b, rule="bush_mosteller", steps=rounds, seed=seed, **BUSH_MOSTELLER)
    for a, name in enumerate(names):
        for b, q in enumerate(Q0):
            val = bm.valid[:, a, b]
            with np.errstate(invalid="ignore"):
                eb = np.where(val, bm.E_b[:, a, b], 0).sum(-1) / np.maximum(val.sum(-1), 1)
                er = np.where(val, bm.E_r[:, a, b], 0).sum(-1) / np.maximum(val.sum(-1), 1)
            out.append(
                dict(
                    rule="bush_mosteller",
                    leader=name,
                    q0=q,
                    t=bm.t,
                    q1=bm.q[:, a, b, :, 0].mean(-1),
                    q2=bm.q[:, a, b, :, 1].mean(-1),
                    E_b=eb,
                    E_r=er,
                    valid=val.mean(-1),
                )
            )
    return out


def write_trajectories(path: Path, rows: list[dict]) -> Path:
    return write_csv(
        path,
        ["rule", "leader", "q0", "t", "q1", "q2", "E_b", "E_r", "valid"],
        (
            (
                r["rule"],
                r["leader"],
                r["q0"],
                int(t),
                f"{q1:.6g}",
                f"{q2:.6g}",
                f"{eb:.6g}",
                f"{er:.6g}",
                f"{v:.4g}",
            )
            for r in rows
            for t, q1, q2, eb, er, v in zip(r["t"], r["q1"], r["q2"], r["E_b"], r["E_r"], r["valid"])
        ),
    )


def run(out_dir: Path, *, full: bool = False, data_dir: Path | None = None) -> list[Path]:
    """Write fig7.csv (all trajectories) and fig7.png; print the final q1 values."""
    out_dir = Path(out_dir)
    rows = simulate(full=full)
    paths = [write_trajectories(out_dir / "fig7.csv", rows)]
    plt = pyplot()
    rules = ["gradient", "bush_mosteller"]
    fig, axes = plt.subplots(2, len(Q0), figsize=(4 * len(Q0), 7), sharey=True)
    colors = {"ZD": "tab:blue", "TFT": "tab:orange", "WSLS": "tab:green"}
    for i, rule in enumerate(rules):
        for j, q in enumerate(Q0):
            ax = axes[i, j]
            for r in rows:
                if r["rule"] == rule and r["q0"] == q:
                    ax.plot(r["t"], r["q1"], color=colors[r["leader"]], label=f"{r['leader']} q1")
                    ax.plot(
                        r["t"], r["q2"], color=colors[r["leader"]], ls="--", lw=0.8, label=f"{r['leader']} q2"
                    )
            ax.set_title(f"{rule}, q0 = {q}")
            ax.set_xlabel("gradient step" if rule == "gradient" else "round")
            ax.set_ylim(-0.03, 1.03)
            if j == 0:
                ax.set_ylabel("requestor cooperation probability")
    axes[0, 0].legend(fontsize=7)
    fig.subplots_adjust(hspace=0.4)
    fig.suptitle("Fig. 7: requestor cooperation (q1 after leader c, q2 after leader d)")
    paths.append(save_figure(fig, out_dir / "fig7.png"))
    print("fig7: final q1 (requestor's cooperation after a leader c)")
    for rule in rules:
        for name in leaders():
            finals = [f"{r['q1'][-1]:.3f}" for r in rows if r["rule"] == rule and r["leader"] == name]
            print(f"  {rule:15s} {name:5s} q0={list(Q0)}: {finals}")
    return paths
