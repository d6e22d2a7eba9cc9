"""The ``mcsl`` command.

User mistakes (bad arguments, missing files, invalid values) end with one line
on stderr and exit code 2, never a traceback. Exit code 1 means a check failed
(for example ``mcsl ledger verify`` found a bad block).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mcsl_core.experiments import FIGURES, run_figure

    names = list(FIGURES) if args.figure == "all" else [args.figure]
    out = Path(args.out)
    for name in names:
        print(f"== {name}: {FIGURES[name]}")
        paths = run_figure(name, out, full=args.full, data_dir=args.data_dir)
        for p in paths:
            print(f"   wrote {p}")
    return 0


def _cmd_ledger(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise UserError(f"no ledger at {path}")
    from mcsl_core.ledger import _cli as ledger_cli

    if args.ledger_cmd == "verify":
        return ledger_cli.verify_command(path)
    return ledger_cli.show_command(path, task=args.task)


def _cmd_demo(args: argparse.Namespace) -> int:
    from mcsl_core import system

    return system.demo_command(out=Path(args.out), data_dir=args.data_dir, quiet=args.quiet)


def _cmd_run(args: argparse.Namespace) -> int:
    from mcsl_core import system

    config = Path(args.config)
    if not config.is_file():
        raise UserError(f"no config file at {config}")
    return system.run_command(config, out=None if args.out is None else Path(args.out), quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    from mcsl_core.experiments import FIGURES

    parser = argparse.ArgumentParser(
        prog="mcsl",
        description="MCS learning: mechanism design, federated learning on a consortium "
        "chain, PBFT consensus and ZD payment enforcement.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run one MCS learning task end to end on the embedded default")
    p.add_argument("--out", default="mcsl_out/demo", help="output folder (default: mcsl_out/demo)")
    p.add_argument(
        "--data-dir", default=None, help="LEAF FEMNIST folder (train/ and test/) instead of synthetic data"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="run one MCS learning task described by a TOML config")
    p.add_argument("config", help="path to a TOML config (see configs/example.toml)")
    p.add_argument("--out", default=None, help="output folder (overrides the config's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    from mcsl_core.sweep import _cli as sweep_cli

    sweep_cli.add_parser(sub)

    p = sub.add_parser("reproduce", help="reproduce a figure of the paper: CSV + PNG")
    p.add_argument("figure", choices=[*FIGURES, "all"], help="which figure")
    p.add_argument("--out", default="mcsl_out", help="output folder (default: mcsl_out)")
    p.add_argument("--full", action="store_true", help="the paper's full scale (slow; GPU for fig5)")
    p.add_argument("--data-dir", default=None, help="LEAF FEMNIST folder for fig5")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("ledger", help="inspect or verify a ledger file")
    lsub = p.add_subparsers(dest="ledger_cmd", required=True, metavar="ACTION")
    v = lsub.add_parser("verify", help="re-verify every block and signature; exit 0 only if all check out")
    v.add_argument("path")
    s = lsub.add_parser("show", help="print the chain (optionally one task's records)")
    s.add_argument("path")
    s.add_argument("--task", default=None, help="only records of this task id")
    p.set_defaults(func=_cmd_ledger)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"mcsl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mcsl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
