"""The explicit state of one task as the four procedures advance it, and the stage timer.

:class:`TaskState` holds everything a procedure reads or writes: the parties
and their keys, the chain and the model store, the recruited and accepted
devices, the learning history, and the wall time spent per stage. Each
procedure (:mod:`.publish`, :mod:`.submit`, :mod:`.learn`, :mod:`.settle`)
takes the state and advances it; nothing else carries information between
them.

Rounds are numbered from 1 everywhere in the system (config, ``rounds.csv``,
the report); the chain numbers a task's rounds from 0, and
:func:`chain_round` is the one place that converts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcsl_core.system._config import TaskConfig
from mcsl_core.system._world import World

__all__ = ["STAGES", "Parties", "RoundRecord", "StageTimes", "TaskState", "chain_round"]

#: Stages of :class:`StageTimes`, in the order the report lists them.
STAGES = ("mechanism", "training", "signing_verification", "consensus_simulation", "settlement", "ledger")


def chain_round(number: int) -> int:
    """The chain's round index (from 0) of the system's round ``number`` (from 1)."""
    return number - 1


@dataclass
class StageTimes:
    """Wall seconds spent in each stage (the end-to-end benchmark's breakdown).

    Used as a context manager factory: ``with stages("ledger"): ...`` adds the
    block's wall time to the ``ledger`` stage.
    """

    mechanism: float = 0.0
    training: float = 0.0
    signing_verification: float = 0.0
    consensus_simulation: float = 0.0
    settlement: float = 0.0
    ledger: float = 0.0  # building, certifying, appending and re-verifying blocks

    def add(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        setattr(self, stage, getattr(self, stage) + seconds)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def as_dict(self) -> dict[str, float]:
        return {s: round(getattr(self, s), 4) for s in STAGES}


@dataclass(frozen=True)
class Parties:
    """Everyone who signs: the consortium, the requestor and the edge servers (ledger identities)."""

    nodes: Any  # ledger.Consortium
    requestor: Any  # ledger.Identity, role "requestor"
    servers: tuple[Any, ...]  # ledger.Identity per edge server, role "edge_server"


@dataclass(frozen=True)
class RoundRecord:
    """One learning round as ``rounds.csv`` shows it."""

    number: int  # from 1
    accuracy: float
    loss: float
    train_loss: float
    updates_kept: int
    consensus_s: float
    messages: int
    view_changes: int
    leader: str

    HEADER = (
        "round",
        "accuracy",
        "loss",
        "train_loss",
        "updates_kept",
        "consensus_s",
        "messages",
        "view_changes",
        "leader",
    )

    def row(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass
class TaskState:
    """One task in progress (advanced in place by the procedures)."""

    cfg: TaskConfig
    world: World
    out: Path
    parties: Parties
    chain: Any  # ledger.Ledger, open for appending
    store: Any  # ledger.ModelStore
    stages: StageTimes = field(default_factory=StageTimes)
    say: Callable[[str], None] = lambda _msg: None
    # procedure 1: recruited devices (indices into the world's devices, sorted)
    recruited: np.ndarray | None = None  # shape=[k], dtype=int64
    # procedure 2: per recruited device, its nearest edge server and whether its data was accepted
    nearest: np.ndarray | None = None  # shape=[k], dtype=int64
    accepted: np.ndarray | None = None  # shape=[k], dtype=bool
    # procedure 3
    rounds: list[RoundRecord] = field(default_factory=list)
    met: bool = False
    final_model: str | None = None  # content address of the bound result
    finaliser: str | None = None  # the node that aggregated the bound result
    updates_dropped: int = 0
    # procedure 4
    settlement: Any = None  # settle.Settled
