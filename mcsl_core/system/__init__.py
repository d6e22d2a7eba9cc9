"""One MCS learning task through all four procedures (SPEC.md; paper Fig. 1, Algorithms 1-2).

:func:`run_task` composes four procedures over one explicit
:class:`~mcsl_core.system._state.TaskState`, every step recorded on a
consortium ledger:

1. :mod:`.publish` - parties, genesis, registration, task publication and the
   recruitment contract (paper IV-A);
2. :mod:`.submit` - the mechanism game of each recruited device with its
   nearest edge server, and the data-submission payments (IV-B, Algorithm 1);
3. :mod:`.learn` - rounds of train, sign, verify, aggregate, agree by PBFT,
   certify, until the requirement is met (IV-C, Algorithm 2);
4. :mod:`.settle` - the bill, the payment game played on the chain one
   installment per round, and the collection contract (IV-D).

The simulated environment (devices, data, locations, bids) is
:func:`build_world`, a pure function of the config and a seed; the
configuration and its TOML schema are in ``_config``; the report and the
output files in ``_report``. The output folder receives ``report.json`` (the
:class:`TaskReport`), ``rounds.csv``, ``summary.txt``, ``accuracy.png``,
``config.toml``, the SQLite ledger ``ledger.sqlite`` and the model store
``store/``. Each file is written atomically; each ledger block is one SQLite
transaction, so an interrupted run leaves a ledger that verifies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mcsl_core.system import learn, publish, settle, submit
from mcsl_core.system._config import SECTIONS, TaskConfig, config_from_mapping, config_to_toml, load_config
from mcsl_core.system._report import TaskReport, build_report, write_outputs
from mcsl_core.system._state import StageTimes, TaskState
from mcsl_core.system._world import World, build_world

__all__ = [
    "SECTIONS",
    "StageTimes",
    "TaskConfig",
    "TaskReport",
    "TaskState",
    "World",
    "build_world",
    "config_from_mapping",
    "config_to_toml",
    "demo_command",
    "learn",
    "load_config",
    "publish",
    "run_command",
    "run_task",
    "settle",
    "submit",
]


def run_task(
    cfg: TaskConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    figure: bool = True,
) -> TaskReport:
    """Run one MCS learning task end to end; write its outputs under ``out_dir``.

    Parameters
    ----------
    cfg : TaskConfig (validated when it was built)
    out_dir : folder for ``report.json``, ``rounds.csv``, ``summary.txt``,
        ``accuracy.png``, ``config.toml``, ``ledger.sqlite`` and ``store/``.
        An existing ledger there is replaced (the run starts a new chain).
    progress : show a progress bar over rounds.
    log : where to print one-line stage messages (default: nowhere).
    figure : draw ``accuracy.png`` (about 0.2 s of matplotlib per task, most of a small
        task's time; a sweep, which keeps one figure for all its points, turns it off).
    """
    from mcsl_core import ledger as L

    t_start = time.perf_counter()
    state = publish.open_task(cfg, build_world(cfg), out_dir, log=log)
    publish.publish(state)
    submit.submit(state)
    learn.learn(state, progress=progress)
    settle.settle(state)
    with state.stages("ledger"):  # verify the chain as an outsider would
        height = len(state.chain)
        state.chain.close()
        verified = bool(L.verify_file(state.out / "ledger.sqlite").ok)
    report = build_report(state, height=height, verified=verified, wall_seconds=time.perf_counter() - t_start)
    write_outputs(state.out, cfg, report, state.rounds, figure=figure)
    return report


# ---------------------------------------------------------------- command-line entry points (mcsl_core.cli)
def _run_and_print(cfg: TaskConfig, out: Path, quiet: bool) -> int:
    report = run_task(cfg, out, progress=not quiet, log=None if quiet else (lambda m: print(f"  {m}")))
    print(report.summary())
    print(f"outputs in {out}/ (report.json, rounds.csv, accuracy.png, ledger.sqlite)")
    return 0 if report.ledger_verified else 1


def demo_command(*, out: Path, data_dir: str | None = None, quiet: bool = False) -> int:
    """``mcsl demo``: the embedded default task (synthetic devices), or LEAF FEMNIST with ``data_dir``."""
    cfg = TaskConfig()
    if data_dir is not None:
        cfg = cfg.replace(
            dataset="femnist",
            data_dir=str(Path(data_dir).resolve()),
            model="cnn",
            num_edge_servers=5,
            target_accuracy=0.6,
            max_rounds=30,
            recruitment_budget=600.0,
            client_lr=0.05,
            local_epochs=1,
            batch_size=20,
        )
    return _run_and_print(cfg, out, quiet)


def run_command(config: Path, *, out: Path | None = None, quiet: bool = False) -> int:
    """``mcsl run CONFIG.toml``."""
    cfg = load_config(config)
    return _run_and_print(cfg, out or Path("mcsl_out") / cfg.task_id, quiet)
