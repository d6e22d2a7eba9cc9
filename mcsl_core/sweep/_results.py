"""The sweep's output folder: one committed folder per point, ``results.csv`` derived from them.

Commit protocol (crash safety). A finished point's files are written into a fresh
hidden folder ``points/.tmp-<point>-<random>/``, the row last (``row.json``), and the
folder is then renamed to ``points/<point>/`` in one ``os.rename``: a point folder
exists whole or not at all, whenever the sweep is killed. The row and the folders are
also fsynced, so a finished point's row survives a power loss as well; its other files
are not (each fsync costs milliseconds, about a tenth of a small task). ``results.csv`` is never
appended to: it is rebuilt from the committed rows and replaced atomically
(:func:`mcsl_core._io.write_csv`), so it always holds whole rows, and a kill between a
point's rename and the rebuild loses nothing (the next run rebuilds it from the
folders). A point folder with ``status = ok`` is finished and skipped on the next run;
a failed one is run again.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import tempfile
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mcsl_core._io import fsync_dir, toml_text, write_csv
from mcsl_core.sweep._spec import SweepPoint
from mcsl_core.system import TaskReport

__all__ = ["is_timing_column", "load_rows", "make_row", "read_results", "write_point", "write_results"]

_HEAD = ("point", "status", "error")
#: Report fields that are not results of the task (the worker's scratch folder).
_SKIP = frozenset({"out_dir"})
#: Columns that measure time on the machine that ran the point, not the task's outcome.
_TIMING = ("wall_seconds", "stage_seconds", "point_seconds")


def is_timing_column(name: str) -> bool:
    """Whether a results column is a wall-clock measurement (differs between runs of one point)."""
    return name.split(".")[0] in _TIMING


def _report_fields() -> list[tuple[str, str]]:
    """``(name, kind)`` of every TaskReport field a row holds: kind "scalar" or "dict" (flattened)."""
    hints = typing.get_type_hints(TaskReport)
    out = []
    for f in dataclasses.fields(TaskReport):
        if f.name in _SKIP:
            continue
        hint = hints[f.name]
        if hint in (str, int, float, bool):
            out.append((f.name, "scalar"))
        elif typing.get_origin(hint) is dict:
            out.append((f.name, "dict"))
    return out


def make_row(point: SweepPoint, result: Mapping[str, Any]) -> dict[str, Any]:
    """The row of a point: name, status, error, axis values, seed, every scalar report field.

    Dict fields of the report (``paid``, ``stage_seconds``) give one column per key,
    ``paid.devices``; tuple fields (per-round accuracy) are in ``rounds.csv`` instead.
    ``point_seconds`` is the worker's wall time for the whole point.
    """
    row: dict[str, Any] = {"point": point.point, "status": result["status"], "error": result["error"]}
    row.update(point.values)
    row["seed"] = point.seed
    report = result.get("report")
    if report is not None:
        for name, kind in _report_fields():
            if name not in report:
                continue
            if kind == "scalar":
                row[name] = report[name]
            else:
                row.update({f"{name}.{k}": v for k, v in report[name].items()})
    row["point_seconds"] = round(float(result["seconds"]), 4)
    return row


def _write(path: Path, data: bytes, *, durable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


def write_point(out_dir: Path, point: SweepPoint, result: Mapping[str, Any], row: Mapping[str, Any]) -> Path:
    """Commit one point: its files and ``row.json`` in a hidden folder, then one rename.

    ``config.toml`` is the point's explicit config (``mcsl run`` on it repeats the task);
    ``error.txt`` the traceback of a failed point. A previous (failed) attempt at the same
    point is replaced.
    """
    points = out_dir / "points"
    points.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{point.point}-", dir=points))
    files = dict(result["files"])
    files["config.toml"] = toml_text(point.mapping).encode()
    if result["status"] != "ok":
        files["error.txt"] = result.get("traceback", "").encode()
    for rel, data in files.items():
        _write(tmp / rel, data)
    _write(tmp / "row.json", (json.dumps(dict(row), sort_keys=True) + "\n").encode(), durable=True)
    fsync_dir(tmp)
    final = points / point.point
    if final.exists():  # an earlier failed attempt: move it aside first (rename is atomic)
        old = points / f".old-{point.point}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(points)
    return final


def load_rows(out_dir: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Committed rows of the points ``names`` found under ``out_dir/points`` (others ignored)."""
    rows = {}
    for name in names:
        path = out_dir / "points" / name / "row.json"
        try:
            rows[name] = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # cannot happen through write_point (row.json is written before the rename)
    return rows


def columns(rows: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> list[str]:
    """Header: point, status, error, axes, seed, report fields in TaskReport order, point_seconds."""
    cols = [*_HEAD, *axes, "seed"]
    for name, kind in _report_fields():
        if kind == "scalar":
            cols.append(name)
        else:
            keys = dict.fromkeys(k for r in rows for k in r if k.startswith(f"{name}."))
            cols.extend(keys)
    cols.append("point_seconds")
    return cols


def write_results(out_dir: Path, rows: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> Path:
    """Replace ``out_dir/results.csv`` atomically with ``rows`` (in the spec's point order)."""

    def cell(v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return json.dumps(v)
        return v

    cols = columns(rows, axes)
    return write_csv(out_dir / "results.csv", cols, ([cell(r.get(c)) for c in cols] for r in rows))


def read_results(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``results.csv`` (or of ``DIR/results.csv``) as dicts of strings."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
