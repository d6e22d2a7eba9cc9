"""The simulated environment of a task: devices, their data, locations, positions, bids.

:func:`build_world` is a pure function of the config and a seed: the same
arguments give the same world, and nothing in it depends on what the
procedures later do. Each device carries its private mechanism parameters
(``eta``, ``xi``, ``eps``, ``theta`` for the game with its nearest edge server,
drawn uniformly from the config's ranges) so that data submission only reads
them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcsl_core.system._config import TaskConfig

__all__ = ["MECHANISM_DRAWS", "World", "build_world", "grid_locations", "load_devices"]

#: Mechanism parameters each device draws from the config's uniform ranges.
MECHANISM_DRAWS = ("eta", "xi", "eps", "theta")


@dataclass(frozen=True)
class World:
    """Devices with their data, sensing locations and edge servers on the unit square."""

    train: Any  # fl.FederatedData, one client per device
    test: Any  # fl.FederatedData, the devices' held-out data
    device_ids: tuple[str, ...]  # shape=[devices]
    locations: tuple[str, ...]  # shape=[locations]
    location_xy: np.ndarray  # shape=[locations, 2], dtype=float64
    device_xy: np.ndarray  # shape=[devices, 2], dtype=float64
    server_xy: np.ndarray  # shape=[edge_servers, 2], dtype=float64
    bids: tuple[Any, ...]  # ledger.Bid per device: cost and the locations it senses
    mechanism: dict[str, np.ndarray]  # name in MECHANISM_DRAWS -> shape=[devices], dtype=float64

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)


def load_devices(cfg: TaskConfig) -> tuple[Any, Any]:
    """Per-device train and test data (a LEAF writer or a synthetic device is one device)."""
    from mcsl_core import fl

    if cfg.dataset == "synthetic":
        return fl.synthetic_fedprox(
            cfg.synthetic_alpha, cfg.synthetic_beta, num_clients=cfg.num_devices, seed=cfg.seed
        )
    root = Path(cfg.data_dir)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise ValueError(f"data.data_dir: {root} must hold LEAF train/ and test/ folders")
    train = fl.load_leaf(root / "train")
    test = fl.load_leaf(root / "test", num_classes=train.num_classes)
    return train, test


def grid_locations(n: int) -> tuple[tuple[str, ...], np.ndarray]:
    """``n`` sensing locations on a square grid over the unit square (cell centres, row by row)."""
    side = math.ceil(math.sqrt(n))
    k = np.arange(n)
    xy = np.stack([(k % side + 0.5) / side, (k // side + 0.5) / side], axis=1)
    return tuple(f"loc{i:03d}" for i in range(n)), xy


def _bids(device_ids, costs, device_xy, locations, location_xy, reach) -> tuple[Any, ...]:
    """A device bids for the locations within sensing range, or else for its nearest one."""
    from mcsl_core import ledger as L

    dist = np.linalg.norm(device_xy[:, None, :] - location_xy[None, :, :], axis=-1)
    bids = []
    for i, dev in enumerate(device_ids):
        near = np.flatnonzero(dist[i] <= reach)
        covered = tuple(locations[j] for j in near) or (locations[int(np.argmin(dist[i]))],)
        bids.append(L.Bid(dev, round(float(costs[i]), 2), covered))
    return tuple(bids)


def build_world(cfg: TaskConfig, seed: int | None = None) -> World:
    """The world of ``cfg`` drawn from ``seed`` (default ``cfg.seed``); a pure function."""
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    train, test = load_devices(cfg)
    n = train.num_clients
    device_ids = tuple(f"dev{i:04d}" for i in range(n))
    locations, location_xy = grid_locations(cfg.num_locations)
    device_xy = rng.uniform(0.0, 1.0, size=(n, 2))
    server_xy = rng.uniform(0.0, 1.0, size=(cfg.num_edge_servers, 2))
    costs = rng.uniform(*cfg.bid_cost, size=n)
    mech = {name: rng.uniform(*getattr(cfg, name), size=n) for name in MECHANISM_DRAWS}
    reach = 1.0 / math.ceil(math.sqrt(cfg.num_locations))  # one grid cell
    bids = _bids(device_ids, costs, device_xy, locations, location_xy, reach)
    return World(train, test, device_ids, locations, location_xy, device_xy, server_xy, bids, mech)
