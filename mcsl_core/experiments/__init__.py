"""One module per paper figure: sweep -> CSV -> PNG.

Every figure module ``figN`` exposes::

    def run(out_dir: pathlib.Path, *, full: bool = False,
            data_dir: pathlib.Path | None = None) -> list[pathlib.Path]

which computes the figure's data, writes CSV and PNG files under ``out_dir``
(atomically), prints a short summary, and returns the paths written. ``full``
asks for the paper's scale (may need a GPU); the default is sized for a laptop.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["FIGURES", "run_figure"]

#: Figure name -> one-line description.
FIGURES: dict[str, str] = {
    "fig3": "mechanism: maximised utilities over eta and xi at eps = 0.9",
    "fig4": "mechanism: maximised utilities over eps",
    "fig5": "federated learning: accuracy vs data fraction and edge-server count",
    "fig6": "consensus: PBFT time vs edge servers and vs consortium nodes",
    "fig7": "payment: requestor cooperation over time under ZD, TFT, WSLS",
    "fig8": "payment: utilities at the stable state and over time",
}


def run_figure(
    name: str, out_dir: str | Path, *, full: bool = False, data_dir: str | Path | None = None
) -> list[Path]:
    """Run one figure's experiment by name (``"fig3"`` ... ``"fig8"``)."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose from {', '.join(FIGURES)}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.run(Path(out_dir), full=full, data_dir=None if data_dir is None else Path(data_dir))
