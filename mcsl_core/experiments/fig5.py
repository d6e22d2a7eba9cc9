"""Fig. 5 (paper V-B): test accuracy over FedAvg rounds (a) for several dataset
fractions at 35 edge servers and (b) for several edge-server counts at fixed data.

Devices are data sources (a LEAF writer or a FedProx synthetic device is one
device); "dataset fraction" keeps a seeded share of the devices
(:func:`mcsl_core.fl.sample_devices`) and "participants" is the number of edge
servers the devices are assigned to (:func:`mcsl_core.fl.assign_to_servers`);
every edge server takes part in every round, as in the paper.

Default (CPU, a few minutes): FedProx Synthetic(1, 1) with 180 devices,
multinomial logistic regression, 30 rounds. ``data_dir``: a LEAF FEMNIST
directory (``train/`` and ``test/``) and the LEAF CNN. ``full``: the paper's
settings (dataset fractions 0.001 / 0.005 / 0.05, 35 / 105 / 175 edge servers,
2,000 rounds); meant for a GPU and the whole FEMNIST in LEAF format.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mcsl_core._io import write_csv
from mcsl_core._plot import pyplot, save_figure

__all__ = ["run"]


def _curve(fl, model, devices, test_devices, fraction, servers, cfg):
    keep = fl.sample_devices(devices, fraction, seed=cfg.seed)
    servers = min(servers, keep.num_clients)
    train, _ = fl.assign_to_servers(keep, servers, rule="random", seed=cfg.seed)
    import dataclasses

    res = fl.run_fedavg(model, train, dataclasses.replace(cfg, clients_per_round=servers), test=test_devices)
    return servers, keep.num_samples.sum(), res


def run(out_dir: Path, *, full: bool = False, data_dir: Path | None = None) -> list[Path]:
    """Compute both panels, write ``fig5.csv`` and ``fig5.png`` under ``out_dir``."""
    from mcsl_core import fl

    out_dir = Path(out_dir)
    devices, test, model, cfg, source = _setup(fl, full, data_dir)
    fractions, counts = _sizes(devices.num_clients, full)
    fixed_fraction = 1.0
    rows = []
    curves = {"a": [], "b": []}
    t0 = time.perf_counter()
    for key, f, c in [("a", f, 35) for f in fractions] + [("b", fixed_fraction, c) for c in counts]:
        s, samples, res = _curve(fl, model, devices, test, f, c, cfg)
        label = (
            f"fraction {f:g} ({samples} samples, {s} servers)"
            if key == "a"
            else f"{s} edge servers ({samples} samples)"
        )
        curves[key].append((label, res.history))
        h = res.history
        rows += [
            (key, f, s, int(r), float(a), float(lo))
            for r, a, lo in zip(h.round, h.eval_accuracy, h.eval_loss)
            if np.isfinite(a)
        ]
    csv = write_csv(
        out_dir / "fig5.csv",
        ["panel", "dataset_fraction", "edge_servers", "round", "test_accuracy", "test_loss"],
        rows,
    )
    png = _draw(out_dir / "fig5.png", curves, fixed_fraction, source)
    print(f"fig5: {source}; {cfg.rounds} rounds per curve; {time.perf_counter() - t0:.0f} s")
    for key in ("a", "b"):
        for label, h in curves[key]:
            print(f"  ({key}) {label}: final accuracy {np.nanmax(h.eval_accuracy[-3:]):.3f}")
    return [csv, png]


def _setup(fl, full: bool, data_dir: Path | None):
    """``(devices, test, model, FLConfig, description)``: LEAF FEMNIST + CNN, or the synthetic default."""
    if data_dir is not None:
        data_dir = Path(data_dir)
        devices = fl.load_leaf(data_dir / "train", num_classes=62)
        test = fl.load_leaf(data_dir / "test", num_classes=62)
        cfg = fl.FLConfig(
            rounds=2000 if full else 40,
            batch_size=10,
            client_lr=0.06,
            eval_every=1 if full else 2,
            strategy="auto",
            progress=True,
        )
        source = f"LEAF FEMNIST at {data_dir} ({devices.num_clients} writers), LEAF CNN"
        return devices, test, fl.femnist_cnn(), cfg, source
    devices, test = fl.synthetic_fedprox(1.0, 1.0, num_clients=180, dim=60, num_classes=10, seed=0)
    cfg = fl.FLConfig(
        rounds=2000 if full else 30,
        batch_size=10,
        client_lr=0.01,
        eval_every=1 if full else 3,
        strategy="loop",
        progress=full,
    )  # heavy-tailed sizes: per-client buckets
    return (
        devices,
        test,
        fl.logistic(60, 10),
        cfg,
        "FedProx Synthetic(1, 1), 180 devices, logistic regression",
    )


def _sizes(n: int, full: bool) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Dataset fractions of panel (a) and edge-server counts of panel (b) for ``n`` devices."""
    if full:
        return (0.001, 0.005, 0.05), (35, 105, 175)
    # CPU-sized: the smallest fraction still leaves one device per edge server
    fractions = tuple(sorted({min(1.0, f) for f in (35 / n, 0.3, 1.0)}))
    counts = tuple(c for c in (35, 105, 175) if c <= n) or (n,)
    if len(counts) < 3:
        counts = tuple(sorted({max(1, n // 4), max(1, n // 2), n}))
    return fractions, counts


def _draw(path: Path, curves: dict, fixed_fraction: float, source: str) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in (
        (axes[0], "a", "35 edge servers, varying dataset fraction"),
        (axes[1], "b", f"dataset fraction {fixed_fraction:g}, varying edge servers"),
    ):
        for label, h in curves[key]:
            ok = np.isfinite(h.eval_accuracy)
            ax.plot(h.round[ok], h.eval_accuracy[ok], label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy")
    fig.suptitle(f"Fig. 5: FedAvg on {source}", fontsize=10)
    return save_figure(fig, path)
