"""The sweep spec: a base task config, axes to vary, seeds; every point resolved and validated.

A spec is a TOML file (``docs/task-sweeps.md``)::

    base = "other.toml"            # optional, relative to the spec; inline sections apply on top
    [sweep]
    seeds = 3                      # task.seed 0, 1, 2 (or a list of seeds)
    plot = ["final_accuracy"]      # metrics of DIR/sweep.png
    scheduler = "tcp://host:8786"  # optional: run on this Dask cluster
    [sweep.grid]                   # cartesian product, keys "section.key" of the run config
    "learning.byzantine_servers" = [0, 1, 2]
    [sweep.zip]                    # varied together (equal lengths), one axis of the product
    "learning.num_edge_servers" = [3, 6]
    "chain.num_nodes" = [4, 7]
    [task]                         # any section of an ``mcsl run`` config: the base of every point
    max_rounds = 10

Points are the product grid x zip x seeds, in that order (the grid's first axis varies
slowest). A point is named by :func:`point_hash` of its whole resolved
:class:`~mcsl_core.system.TaskConfig`, so a changed base config gives new names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcsl_core._io import read_toml
from mcsl_core.system import TaskConfig, TaskReport, config_from_mapping

__all__ = ["SweepPoint", "SweepSpec", "load_spec", "point_hash", "spec_from_mapping"]

_SWEEP_KEYS = ("seeds", "grid", "zip", "plot", "scheduler", "base")
#: Default metrics of the figure, those of them the TaskReport has.
DEFAULT_PLOT = ("final_accuracy", "collected_fraction", "total_bill", "consensus_time_s")


@dataclass(frozen=True)
class SweepPoint:
    """One task of the sweep.

    ``values`` maps each axis name (``"section.key"``) to this point's value; ``mapping``
    is the explicit TOML-shaped config (base sections, axis values and ``task.seed``)
    that :func:`mcsl_core.system.config_from_mapping` turns into ``config``.
    """

    point: str  # point_hash(config): 16 hex digits
    values: dict[str, Any]
    seed: int
    config: TaskConfig
    mapping: dict[str, dict[str, Any]]

    def label(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.values.items()]
        return ", ".join([*parts, f"seed {self.seed}"])


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated sweep: its axes, seeds, figure metrics and every point."""

    base: TaskConfig  # the config every point starts from, before its axis values and seed
    axes: tuple[str, ...]  # "section.key", grid axes first, then zip axes
    seeds: tuple[int, ...]
    plot: tuple[str, ...]
    scheduler: str | None
    points: tuple[SweepPoint, ...]
    source: Path | None = None  # the spec file, when read from one


def _canon(v: Any) -> Any:
    """A JSON value equal for equal configs: integral floats as ints (1 and 1.0 are one value)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in v.items()}
    raise TypeError(f"cannot hash config value {v!r}")


def point_hash(config: TaskConfig) -> str:
    """A stable name for a config: the first 16 hex digits of the SHA-256 of its canonical JSON.

    Every field takes part, so any change of the resolved config gives a new name; the
    value is the same in every process, Python version and machine.
    """
    blob = json.dumps(_canon(dataclasses.asdict(config)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec TOML file (errors name the file and the key)."""
    path = Path(path)
    data = read_toml(path, missing="no sweep spec at")
    try:
        return spec_from_mapping(data, root=path.parent, source=path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def spec_from_mapping(
    data: Mapping[str, Any], *, root: str | Path = ".", source: Path | None = None
) -> SweepSpec:
    """A :class:`SweepSpec` from a TOML-shaped mapping; relative paths resolve against ``root``.

    Every point's full config is built and validated here, before anything runs:
    a bad axis value raises ``ValueError`` naming ``sweep.grid."section.key"[i]``, a
    bad base value names ``section.key``.
    """
    root = Path(root)
    data = dict(data)
    sweep = data.pop("sweep", {})
    if not isinstance(sweep, dict):
        raise ValueError("[sweep] must be a table")
    for key in sweep:
        if key not in _SWEEP_KEYS:
            raise ValueError(f"unknown key sweep.{key}; keys of [sweep] are {', '.join(_SWEEP_KEYS)}")
    base_map = _base_mapping(data, sweep, root)
    try:
        base = config_from_mapping(base_map)
    except ValueError as exc:
        raise ValueError(f"base config: {exc}") from None
    grid = _axes(sweep.get("grid", {}), "grid")
    zipped = _axes(sweep.get("zip", {}), "zip")
    for name in set(grid) & set(zipped):
        raise ValueError(f'sweep.zip."{name}": already an axis of [sweep.grid]')
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f'"{k}" {len(v)}' for k, v in zipped.items())
        raise ValueError(f"sweep.zip: axes varied together need equal lengths, got {sizes}")
    axes = {**grid, **zipped}
    for name, values in axes.items():
        _check_axis(name, values, "grid" if name in grid else "zip", base_map)
    seeds = _seeds(sweep.get("seeds"), base.seed)
    plot = _plot(sweep.get("plot"))
    scheduler = sweep.get("scheduler")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler):
        raise ValueError(f"sweep.scheduler: must be an address like 'tcp://host:8786', got {scheduler!r}")
    points = _points(base_map, grid, zipped, seeds)
    return SweepSpec(base, tuple(axes), seeds, plot, scheduler, points, source)


def _base_mapping(data: dict, sweep: dict, root: Path) -> dict[str, dict[str, Any]]:
    """The base file's sections (if any) with the spec's inline sections on top."""
    base_path = data.pop("base", None)
    if "base" in sweep:
        if base_path is not None:
            raise ValueError("base is given twice (top level and sweep.base)")
        base_path = sweep["base"]
    merged: dict[str, dict[str, Any]] = {}
    if base_path is not None:
        if not isinstance(base_path, str):
            raise ValueError(f"base: must be a path to a TOML config, got {base_path!r}")
        path = root / base_path
        try:
            sections = read_toml(path, missing="no config file at")
        except ValueError as exc:
            raise ValueError(f"base: {exc}") from None
        _merge(merged, sections, path.parent)
    _merge(merged, data, root)
    return merged


def _merge(into: dict, sections: Mapping[str, Any], root: Path) -> None:
    for section, body in sections.items():
        if not isinstance(body, dict):
            raise ValueError(f"[{section}] must be a table of key = value pairs")
        body = dict(body)
        # a data folder is relative to the file that names it, as in ``mcsl run``
        if section == "data" and isinstance(body.get("data_dir"), str):
            if not Path(body["data_dir"]).is_absolute():
                body["data_dir"] = str((root / body["data_dir"]).resolve())
        into.setdefault(section, {}).update(body)


def _axes(table: Any, kind: str) -> dict[str, list]:
    """``{"section.key": [values]}``; ``section.key = [...]`` unquoted (a nested table) works too."""
    if not isinstance(table, dict):
        raise ValueError(f'sweep.{kind}: must be a table of "section.key" = [values]')
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    for name, values in flat.items():
        if name.count(".") != 1 or not all(name.split(".")):
            raise ValueError(f'sweep.{kind}."{name}": axis names are "section.key" of the run config')
        if not isinstance(values, list) or not values:
            raise ValueError(f'sweep.{kind}."{name}": must be a non-empty list of values, got {values!r}')
    return flat


def _with(mapping: dict, updates: Mapping[str, Any]) -> dict:
    out = {s: dict(body) for s, body in mapping.items()}
    for name, value in updates.items():
        section, key = name.split(".")
        out.setdefault(section, {})[key] = value
    return out


def _check_axis(name: str, values: list, kind: str, base_map: dict) -> None:
    """Each value alone on the base config must be valid; equal values are one point."""
    if name == "task.seed":
        raise ValueError(f'sweep.{kind}."task.seed": seeds are set by sweep.seeds')
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        try:
            cfg = config_from_mapping(_with(base_map, {name: value}))
        except ValueError as exc:
            raise ValueError(f'sweep.{kind}."{name}"[{i}]: {exc}') from None
        h = point_hash(cfg)
        if h in seen:
            raise ValueError(f'sweep.{kind}."{name}": values [{seen[h]}] and [{i}] are the same setting')
        seen[h] = i


def _seeds(value: Any, default: int) -> tuple[int, ...]:
    if value is None:
        return (default,)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"sweep.seeds: a count must be >= 1, got {value}")
        return tuple(range(value))
    if isinstance(value, list) and value:
        for i, s in enumerate(value):
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise ValueError(f"sweep.seeds[{i}]: seeds are ints >= 0, got {s!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"sweep.seeds: repeated seed in {value}")
        return tuple(value)
    raise ValueError(f"sweep.seeds: must be a count or a non-empty list of seeds, got {value!r}")


def _plot(value: Any) -> tuple[str, ...]:
    """Figure metrics: scalar TaskReport fields, or ``field.key`` of a dict field (``paid.devices``).

    An empty list means no figure (a large sweep whose table is read elsewhere)."""
    fields = {f.name: f for f in dataclasses.fields(TaskReport)}
    if value is None:
        return tuple(m for m in DEFAULT_PLOT if m in fields)
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ValueError(f"sweep.plot: must be a list of TaskReport field names, got {value!r}")
    for i, m in enumerate(value):
        if m.split(".")[0] not in fields or m == "out_dir":
            raise ValueError(
                f"sweep.plot[{i}]: unknown metric {m!r}; metrics are fields of TaskReport "
                f"({', '.join(f for f in fields if f != 'out_dir')})"
            )
    return tuple(value)


def _points(base_map: dict, grid: dict, zipped: dict, seeds: tuple[int, ...]) -> tuple[SweepPoint, ...]:
    names = list(grid)
    zip_names = list(zipped)
    combos = list(itertools.product(*grid.values())) if grid else [()]
    zip_rows = list(zip(*zipped.values())) if zipped else [()]
    points, seen = [], {}
    for combo, zrow, seed in itertools.product(combos, zip_rows, seeds):
        values = {**dict(zip(names, combo)), **dict(zip(zip_names, zrow))}
        mapping = _with(base_map, {**values, "task.seed": seed})
        try:
            cfg = config_from_mapping(mapping)
        except ValueError as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ValueError(f"sweep point {where} (seed {seed}): {exc}") from None
        point = SweepPoint(point_hash(cfg), values, seed, cfg, mapping)
        if point.point in seen:
            raise ValueError(
                f"sweep points {seen[point.point].label()} and {point.label()} are the same task"
            )
        seen[point.point] = point
        points.append(point)
    if not points:
        raise ValueError("the sweep has no points")
    return tuple(points)
