"""Shared plotting plumbing (figures of ``experiments`` and the task report): headless
matplotlib and atomic PNG output."""

from __future__ import annotations

import io
from pathlib import Path

from mcsl_core._io import atomic_write_bytes

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, *, dpi: int = 130) -> Path:
    """Render ``fig`` to PNG in memory, write it atomically, and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())
