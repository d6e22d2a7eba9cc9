"""Fig. 4 of the paper: maximised utilities of the server and the device over eps.

Section V-A: eps in [0, 1] with R = 10, alpha_s = 3, beta_s = 2, v_bar = 50,
s_bar = 500, c_d = 2, theta = 0.5 and eta = xi = 5 (the headline curve; eta = xi
= 2 and 10 are drawn as well). Both the paper's closed-form model and the
feasible (box-constrained) bilevel optimum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcsl_core._io import write_csv
from mcsl_core._plot import pyplot, save_figure
from mcsl_core.mechanism import MechanismParams, solve

__all__ = ["run", "sweep"]

MODELS = (("paper", False), ("constrained", True))
COLUMNS = ("s", "v", "g", "U_s", "U_d", "valid", "accepted")
ETA_XI = (2.0, 5.0, 10.0)


def sweep(n: int = 200, eta_xi: tuple[float, ...] = ETA_XI):
    """Solve both models for eps in {k / n : k = 0..n} and each eta = xi in ``eta_xi``.

    Returns ``(eps, {model: MechanismSolution})`` with solutions of shape
    ``(len(eta_xi), n + 1)``.
    """
    eps = np.linspace(0.0, 1.0, n + 1)
    e = np.asarray(eta_xi, dtype=float)[:, None]
    p = MechanismParams.paper_defaults(eps=eps[None, :], eta=e, xi=e)
    return eps, {name: solve(p, constrained=c) for name, c in MODELS}


def _fmt(x) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.10g}"


def run(out_dir: Path, *, full: bool = False, data_dir: Path | None = None) -> list[Path]:
    """Compute Fig. 4, write CSV + PNG under ``out_dir``, print where U_s and U_d peak."""
    out_dir = Path(out_dir)
    n = 10000 if full else 1000
    eps, sols = sweep(n)
    rows = []
    for name, sol in sols.items():
        for r, ex in enumerate(ETA_XI):
            cols = [getattr(sol, c)[r] for c in COLUMNS]
            for i in range(eps.size):
                cells = [_fmt(c[i]) if c.dtype.kind == "f" else int(c[i]) for c in cols]
                rows.append([name, _fmt(ex), _fmt(eps[i]), *cells])
    paths = [write_csv(out_dir / "fig4.csv", ("model", "eta_equals_xi", "eps", *COLUMNS), rows)]
    paths.append(_draw(out_dir / "fig4.png", eps, sols))
    print(f"fig4: eps grid of {n + 1} points on [0, 1], eta = xi in {ETA_XI}")
    for name, sol in sols.items():
        for r, ex in enumerate(ETA_XI):
            print(f"  {name:11s} eta = xi = {ex:g}: " + _peaks_line(name, eps, sol, r))
    return paths


def _draw(path: Path, eps: np.ndarray, sols) -> Path:
    """max U_s and max U_d over eps (both models, three eta = xi), then the device's v."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    colors = dict(zip(ETA_XI, ("tab:green", "tab:blue", "tab:purple")))
    for ax, util in zip(axes[:2], ("U_s", "U_d")):
        for name, sol in sols.items():
            for r, ex in enumerate(ETA_XI):
                ax.plot(
                    eps,
                    getattr(sol, util)[r],
                    color=colors[ex],
                    ls="-" if name == "paper" else "--",
                    lw=1.8 if ex == 5.0 else 1.0,
                    label=f"{name}, eta = xi = {ex:g}",
                )
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("eps")
        ax.set_title(f"max {util} (solid: paper's model, dashed: constrained)", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[2]
    for r, ex in enumerate(ETA_XI):
        ax.plot(eps, sols["paper"].v[r], color=colors[ex], label=f"paper v*, eta = xi = {ex:g}")
        ax.plot(eps, sols["constrained"].v[r], color=colors[ex], ls="--")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("eps")
    ax.set_title("device's v at the solution (dashed: constrained)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle("Fig. 4: maximised utilities over eps")
    return save_figure(fig, path)


def _peaks_line(name: str, eps: np.ndarray, sol, r: int) -> str:
    """Where U_s and U_d peak over eps at row ``r`` (and, for the paper's model, where v* < 0)."""
    ok = sol.valid[r]
    parts = []
    for util in ("U_s", "U_d"):
        u = getattr(sol, util)[r]
        j = int(np.nanargmax(u))
        parts.append(f"{util} peaks at eps = {eps[j]:.4g} ({u[j]:.4g}), {u[-1]:.4g} at eps = 1")
    extra = ""
    if name == "paper":
        neg = ok & (sol.v[r] < 0)
        extra = f"; no maximiser for eps < {eps[ok][0]:.4g}" if not ok[0] else ""
        if neg.any():
            extra += f"; v* < 0 for eps in [{eps[neg][0]:.4g}, {eps[neg][-1]:.4g}]"
    return "; ".join(parts) + extra
