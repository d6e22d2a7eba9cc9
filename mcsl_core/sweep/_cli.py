"""``mcsl sweep SPEC.toml --out DIR``: registered by :mod:`mcsl_core.cli` (imports stay cheap)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "check_inputs", "sweep_command"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to the ``mcsl`` subparsers ``sub``."""
    p = sub.add_parser(
        "sweep",
        help="run a resumable parameter sweep of whole tasks (locally or on a Dask cluster)",
        description="Run every point of a sweep spec; finished points in --out are skipped. "
        "Exit 0 when every point succeeded, 1 when any failed, 2 on a bad spec or argument.",
    )
    p.add_argument("spec", help="sweep spec TOML (see mcsl_core/configs/sweep-byzantine.toml)")
    p.add_argument("--out", required=True, help="the sweep's folder (results.csv, points/, sweep.png)")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    p.add_argument("--keep-ledgers", action="store_true", help="keep each point's ledger and model store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=sweep_command, check_inputs=check_inputs)
    return p


def check_inputs(args: argparse.Namespace) -> None:
    """Validate the arguments and every point of the spec (before ``--out`` is created)."""
    from mcsl_core.sweep._spec import load_spec

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {args.workers}")
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("--workers and --scheduler exclude each other (the cluster has its own workers)")
    args.spec_loaded = load_spec(Path(args.spec))


def sweep_command(args: argparse.Namespace) -> int:
    from mcsl_core.sweep._run import dask_executor, run_sweep

    if getattr(args, "spec_loaded", None) is None:  # called without mcsl's main
        check_inputs(args)
    spec = args.spec_loaded
    out = Path(args.out)
    kw = dict(keep_ledgers=args.keep_ledgers, progress=not args.quiet)
    address = args.scheduler or (spec.scheduler if args.workers is None else None)
    if address is not None:
        with dask_executor(address) as executor:
            result = run_sweep(spec, out, executor=executor, **kw)
    else:
        result = run_sweep(spec, out, workers=args.workers, **kw)
    n_failed = len(result.failed)
    print(
        f"sweep: {len(spec.points)} points, {result.ran} run, {result.skipped} already finished, "
        f"{len(result.rows) - n_failed} ok, {n_failed} failed"
    )
    print(f"results in {result.results_csv}" + (f", figure {result.figure}" if result.figure else ""))
    return 1 if n_failed else 0
