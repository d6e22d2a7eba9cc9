"""Fig. 3 of the paper: maximised utilities of the server and the device over eta and xi.

Section V-A: eta, xi in [0, 15] at eps = 0.9, R = 10, alpha_s = 3, beta_s = 2,
v_bar = 50, s_bar = 500, c_d = 2, theta = 0.5. Both the paper's closed-form model
and the feasible (box-constrained) bilevel optimum are computed on an eta x xi grid
and on the diagonal eta = xi. Points with eta*xi <= 1 have no trade (NaN in the
CSV, blank in the plot). Every quantity depends on eta and xi only through
eta*xi, so the grid is constant along the hyperbolas eta*xi = const.
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


def sweep(n: int = 150, eps: float = 0.9):
    """Solve both models on the grid eta, xi in {15 k / n : k = 1..n} (eta, xi > 0).

    Returns ``(axis, {model: MechanismSolution})`` with solutions of shape (n, n),
    first index eta, second xi.
    """
    axis = np.linspace(0.0, 15.0, n + 1)[1:]
    p = MechanismParams.paper_defaults(eta=axis[:, None], xi=axis[None, :], eps=eps)
    return axis, {name: solve(p, constrained=c) for name, c in MODELS}


def _fmt(x) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.10g}"


def _peak(axis1, axis2, u):
    j = np.unravel_index(np.nanargmax(u), u.shape)
    return axis1[j[0]], axis2[j[1]], u[j]


def run(out_dir: Path, *, full: bool = False, data_dir: Path | None = None) -> list[Path]:
    """Compute Fig. 3, write CSV + PNG under ``out_dir``, print where U_s and U_d peak."""
    out_dir = Path(out_dir)
    n = 600 if full else 150
    axis, sols = sweep(n)
    diag = np.linspace(0.0, 15.0, 10 * n + 1)[1:]
    pd = MechanismParams.paper_defaults(eta=diag, xi=diag)
    dsols = {name: solve(pd, constrained=c) for name, c in MODELS}
    paths = _write_tables(out_dir, axis, sols, diag, dsols)
    paths.append(_draw(out_dir / "fig3.png", axis, sols, diag, dsols))
    print(f"fig3: eta, xi grid {n} x {n} on (0, 15], eps = 0.9")
    for name, sol in sols.items():
        _print_peaks(name, axis, sol, diag, dsols[name])
    return paths


def _cells(cols, i) -> list:
    return [_fmt(c[i]) if c.dtype.kind == "f" else int(c[i]) for c in cols]


def _write_tables(out_dir: Path, axis, sols, diag, dsols) -> list[Path]:
    """``fig3_grid.csv`` (every grid point of both models) and ``fig3_diagonal.csv``."""
    rows = []
    E, X = np.meshgrid(axis, axis, indexing="ij")
    for name, sol in sols.items():
        cols = [getattr(sol, c).ravel() for c in COLUMNS]
        rows += [[name, _fmt(E.flat[i]), _fmt(X.flat[i]), *_cells(cols, i)] for i in range(E.size)]
    paths = [write_csv(out_dir / "fig3_grid.csv", ("model", "eta", "xi", *COLUMNS), rows)]
    rows = []
    for name, sol in dsols.items():
        cols = [getattr(sol, c) for c in COLUMNS]
        rows += [[name, _fmt(diag[i]), *_cells(cols, i)] for i in range(diag.size)]
    paths.append(write_csv(out_dir / "fig3_diagonal.csv", ("model", "eta_equals_xi", *COLUMNS), rows))
    return paths


def _draw(path: Path, axis, sols, diag, dsols) -> Path:
    """Two rows (paper's model, constrained): log10 U_s and U_d over the grid, then the diagonal."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
    for r, (name, sol) in enumerate(sols.items()):
        for c, util in enumerate(("U_s", "U_d")):
            _draw_map(fig, axes[r, c], axis, name, sol, util)
        _draw_diagonal(axes[r, 2], diag, name, dsols[name])
    fig.suptitle("Fig. 3: maximised utilities over eta and xi (no trade where eta*xi <= 1)")
    return save_figure(fig, path)


def _draw_map(fig, ax, axis, name: str, sol, util: str) -> None:
    u = getattr(sol, util)
    ext = (axis[0], axis[-1], axis[0], axis[-1])
    im = ax.imshow(
        np.log10(np.where(u > 0, u, np.nan)).T, origin="lower", extent=ext, aspect="auto", cmap="viridis"
    )
    fig.colorbar(im, ax=ax, label=f"log10 {util}")
    if name == "paper":
        neg = (sol.v < 0).T.astype(float)
        ax.contour(axis, axis, neg, levels=[0.5], colors="w", linewidths=1.0, linestyles="--")
    e, x, _ = _peak(axis, axis, u)
    ax.plot([e], [x], "r*", ms=10)
    ax.set_title(
        f"{name}: max {util} (eps = 0.9)" + ("; white dashes: v* = 0" if name == "paper" else ""), fontsize=9
    )
    ax.set_xlabel("eta")
    ax.set_ylabel("xi")


def _draw_diagonal(ax, diag, name: str, dsol) -> None:
    ax.plot(diag, dsol.U_s, label="U_s (server)")
    ax.plot(diag, dsol.U_d, label="U_d (device)")
    if name == "paper":
        neg = dsol.v < 0
        if neg.any():
            ax.axvspan(diag[neg][0], diag[-1], color="0.9", label="v* < 0")
    ax.set_yscale("log")
    ax.set_xlabel("eta = xi")
    ax.set_title(f"{name}: diagonal eta = xi", fontsize=9)
    ax.legend(fontsize=8)


def _print_peaks(name: str, axis, sol, diag, dsol) -> None:
    ok = sol.valid
    for util in ("U_s", "U_d"):
        e, x, m = _peak(axis, axis, getattr(sol, util))
        print(
            f"  {name:11s} {util} peaks at eta*xi = {e * x:.4g} (grid point eta = {e:.3g}, xi = {x:.3g}): {m:.4g}"
        )
    for util in ("U_s", "U_d"):
        u = getattr(dsol, util)
        j = int(np.nanargmax(u))
        print(
            f"  {name:11s} diagonal {util} peaks at eta = xi = {diag[j]:.3g}: {u[j]:.4g};"
            f" at eta = xi = 15: {u[-1]:.4g}"
        )
    if name == "paper":
        print(
            f"  paper model: v* < 0 at {np.mean(sol.v[ok] < 0):.1%} of the traded grid points;"
            f" g outside [0, 1] at {np.mean((sol.g[ok] < 0) | (sol.g[ok] > 1)):.1%};"
            f" on the diagonal v* < 0 from eta = xi = {diag[dsol.v < 0][0]:.3g}"
        )
