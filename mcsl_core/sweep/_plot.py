"""``DIR/sweep.png``: each metric against the first axis, one line per value of the others."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_sweep", "seed_stats"]


def _key(v: Any) -> Any:
    """A hashable stand-in for an axis value (lists, e.g. ``bid_cost`` ranges, become tuples)."""
    return tuple(v) if isinstance(v, list) else v


def seed_stats(
    rows: Sequence[Mapping[str, Any]], axes: Sequence[str], metric: str
) -> dict[tuple, dict[Any, tuple[float, float, int]]]:
    """Mean and spread of ``metric`` over seeds, for each line and each first-axis value.

    Returns ``{line: {x: (mean, std, n)}}`` where ``x`` is a value of ``axes[0]`` and
    ``line`` the tuple of the other axes' values (``()`` with one axis or none). ``std``
    is the sample standard deviation (``ddof = 1``; 0 for a single seed). Only rows with
    ``status = ok`` and a finite value count; booleans count as 0/1 (a rate).
    """
    groups: dict[tuple, dict[Any, list[float]]] = {}
    for r in rows:
        v = r.get(metric)
        if r.get("status") != "ok" or v is None or isinstance(v, str):
            continue
        v = float(v)
        if not math.isfinite(v):
            continue
        x = _key(r[axes[0]]) if axes else "all"
        line = tuple(_key(r[a]) for a in axes[1:])
        groups.setdefault(line, {}).setdefault(x, []).append(v)
    return {
        line: {
            x: (float(np.mean(vs)), float(np.std(vs, ddof=1)) if len(vs) > 1 else 0.0, len(vs))
            for x, vs in xs.items()
        }
        for line, xs in groups.items()
    }


def plot_sweep(
    rows: Sequence[Mapping[str, Any]], axes: Sequence[str], metrics: Sequence[str], path: str | Path
) -> Path:
    """Draw one panel per metric: mean over seeds (line) and mean +- one std (band)."""
    from mcsl_core._plot import pyplot, save_figure

    plt = pyplot()
    n = max(1, len(metrics))
    fig, panels = plt.subplots(1, n, figsize=(4.3 * n, 3.5), squeeze=False)
    order = list(dict.fromkeys(_key(r[axes[0]]) for r in rows)) if axes else ["all"]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in order)
    pos = {x: (float(x) if numeric else i) for i, x in enumerate(order)}
    for ax, metric in zip(panels[0], metrics):
        stats = seed_stats(rows, axes, metric)
        for line, xs in stats.items():  # lines in the order their values first appear
            pts = sorted(xs.items(), key=lambda kv: pos[kv[0]])
            xv = np.array([pos[x] for x, _ in pts])
            mean = np.array([m for _, (m, _, _) in pts])
            std = np.array([s for _, (_, s, _) in pts])
            label = ", ".join(f"{a.split('.')[-1]}={v}" for a, v in zip(axes[1:], line)) or None
            (h,) = ax.plot(xv, mean, marker="o", ms=4, label=label)
            ax.fill_between(xv, mean - std, mean + std, color=h.get_color(), alpha=0.18, lw=0)
        if not numeric or len(order) <= 12:  # a long numeric axis keeps matplotlib's ticks
            ax.set_xticks([pos[x] for x in order], [str(x) for x in order])
        ax.set(xlabel=axes[0] if axes else "", ylabel=metric, title=metric)
        if not stats:
            ax.set_title(f"{metric}: no data")
        elif len(axes) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    seeds = len({r.get("seed") for r in rows})
    fig.suptitle(f"mean and +-1 std over {seeds} seed(s)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
