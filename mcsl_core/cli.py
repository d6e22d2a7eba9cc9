"""The ``mcsl`` command.

Exit codes
----------
- ``0``: done.
- ``1``: a check failed (``mcsl ledger verify`` found a bad block, or a task's
  ledger did not verify).
- ``2``: the input was wrong: a bad argument, a missing, unreadable or malformed
  file (TOML, UTF-8, SQLite), an invalid value, an output folder that cannot be
  written, a size that cannot fit in memory. Exactly one line on stderr,
  ``mcsl: error: ...``, and never a traceback. Output folders (``--out``) are
  created and test-written before any work starts.
- ``70``: an internal error, that is a bug (any exception the input cannot
  explain). One line, ``mcsl: internal error: ...``; set ``MCSL_DEBUG=1`` to get
  the traceback as well (it is printed for exit code 2 too).
- ``130``: interrupted (Ctrl-C).

Which exceptions count as the input's fault is :data:`INPUT_ERRORS`; the
messages are flattened to one printable line by :func:`error_line`.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import traceback
from pathlib import Path

from mcsl_core._io import prepare_out_dir

__all__ = ["EX_INTERNAL", "EX_USAGE", "INPUT_ERRORS", "UserError", "build_parser", "error_line", "main"]

EX_USAGE = 2  # the input was wrong
EX_INTERNAL = 70  # EX_SOFTWARE in sysexits.h: a bug


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


#: Exceptions that mean the input was wrong (exit code 2). ``ValueError`` covers
#: ``UnicodeDecodeError``, ``tomllib.TOMLDecodeError``, ``json.JSONDecodeError`` and
#: the ledger's ``LedgerError``; ``OSError`` covers missing files, permissions and
#: full disks; ``sqlite3.Error`` a file that is not a (readable) SQLite database;
#: ``MemoryError`` and ``OverflowError`` sizes and numbers too large to represent;
#: ``RecursionError`` a file nested too deeply to parse.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    OSError,
    sqlite3.Error,
    MemoryError,
    OverflowError,
    RecursionError,
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors reported as one ``mcsl: error:`` line (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see '{self.prog} --help')")


def _data_dir(value: str | None, *, arg: str = "--data-dir") -> None:
    """A LEAF data folder must hold ``train/`` and ``test/``: checked before any work."""
    if value is not None:
        root = Path(value)
        if not (root / "train").is_dir() or not (root / "test").is_dir():
            raise UserError(f"{arg}: {root} must be a folder holding LEAF train/ and test/ folders")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mcsl_core.experiments import FIGURES, run_figure

    names = list(FIGURES) if args.figure == "all" else [args.figure]
    for name in names:
        print(f"== {name}: {FIGURES[name]}")
        paths = run_figure(name, args.out, full=args.full, data_dir=args.data_dir)
        for p in paths:
            print(f"   wrote {p}")
    return 0


def _cmd_ledger(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise UserError(f"no ledger at {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a ledger file")
    from mcsl_core.ledger import _cli as ledger_cli

    try:
        if args.ledger_cmd == "verify":
            return ledger_cli.verify_command(path)
        return ledger_cli.show_command(path, task=args.task)
    except sqlite3.Error as exc:
        raise UserError(f"{path}: not a readable ledger: {exc}") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from mcsl_core import system

    return system.demo_command(out=args.out, data_dir=args.data_dir, quiet=args.quiet)


def _load_config(path: Path):
    """The task config at ``path``; every reading error names the file."""
    from mcsl_core import system

    if not path.is_file():
        raise UserError(f"no config file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return system.load_config(path)  # malformed files: a ValueError naming the file
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _run_inputs(args: argparse.Namespace) -> None:
    """``mcsl run``: the config is validated (and its task id gives the default ``--out``)
    before any folder is made."""
    cfg = _load_config(Path(args.config))
    if cfg.dataset == "femnist":
        _data_dir(cfg.data_dir, arg=f"{args.config}: data.data_dir")
    if args.out is None:
        args.out = Path("mcsl_out") / cfg.task_id


def _cmd_run(args: argparse.Namespace) -> int:
    from mcsl_core import system

    return system.run_command(Path(args.config), out=args.out, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    """The ``mcsl`` argument parser. A sub-command that writes files takes ``--out``
    (stored as ``args.out``): :func:`main` prepares that folder before dispatch; one
    with inputs to validate first sets ``check_inputs`` (a function of the namespace)."""
    from mcsl_core.experiments import FIGURES

    parser = _Parser(
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
    p.add_argument("--out", default=None, help="output folder (default: mcsl_out/TASK_ID)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run, check_inputs=_run_inputs)

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


def error_line(exc: BaseException) -> str:
    """The message of ``exc`` as one printable line (newlines and control characters escaped)."""
    if isinstance(exc, OSError) and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    elif isinstance(exc, MemoryError):
        msg = f"out of memory: {exc}" if str(exc) else "out of memory"
    elif isinstance(exc, RecursionError):
        msg = "input nested too deeply"
    elif isinstance(exc, sqlite3.Error):
        msg = f"SQLite: {exc}"
    else:
        msg = str(exc) or type(exc).__name__
    msg = " ".join(msg.splitlines())
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in msg)


def _prepare(args: argparse.Namespace) -> None:
    """What every command checks before any work: its inputs (``--data-dir``, and a
    command's own ``check_inputs``), then its output folder ``--out``, created and
    test-written. A new command gets this by naming its option ``--out``."""
    _data_dir(getattr(args, "data_dir", None))
    check_inputs = getattr(args, "check_inputs", None)
    if check_inputs is not None:
        check_inputs(args)
    if getattr(args, "out", None) is not None:
        args.out = prepare_out_dir(args.out, arg="--out")


def main(argv: list[str] | None = None) -> int:
    """Run the ``mcsl`` command on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    debug = os.environ.get("MCSL_DEBUG") == "1"
    try:  # a path that is not valid UTF-8 must not crash a later print
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    try:
        args = build_parser().parse_args(argv)
        _prepare(args)
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else EX_USAGE
    except KeyboardInterrupt:
        print("mcsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (mcsl ... | head): not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except INPUT_ERRORS as exc:
        if debug:
            traceback.print_exc()
        print(f"mcsl: error: {error_line(exc)}", file=sys.stderr)
        return EX_USAGE
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(
            f"mcsl: internal error: {type(exc).__name__}: {error_line(exc)} "
            "(a bug; MCSL_DEBUG=1 prints the traceback)",
            file=sys.stderr,
        )
        return EX_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
