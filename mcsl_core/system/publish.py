"""Procedure 1, task publication (paper IV-A; SPEC.md section 1).

The parties get their keys (:func:`make_parties`), the consortium writes
genesis and admits the requestor and the edge servers (:func:`open_task`); the
requestor signs a :class:`~mcsl_core.ledger.TaskPublication` and the
recruitment contract (greedy budgeted maximum coverage,
:func:`~mcsl_core.ledger.recruit_for_task`) selects devices from their bids
(:func:`publish`). No learning happens here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mcsl_core.system._config import TaskConfig
from mcsl_core.system._state import Parties, TaskState
from mcsl_core.system._world import World

__all__ = ["make_parties", "open_task", "publish"]


def make_parties(cfg: TaskConfig) -> Parties:
    """Deterministic keys for every party, derived from the task's seed."""
    from mcsl_core import ledger as L

    nodes = L.Consortium.generate(cfg.num_nodes, seed=f"{cfg.seed}/nodes")
    requestor = L.Identity.generate("requestor", "requestor", seed=f"{cfg.seed}/requestor")
    servers = tuple(
        L.Identity.generate("edge_server", f"edge{k}", seed=f"{cfg.seed}/edge{k}")
        for k in range(cfg.num_edge_servers)
    )
    return Parties(nodes, requestor, servers)


def _fresh_ledger(path: Path, genesis):
    """A new chain at ``path``; a ledger left there (and its journals) is replaced."""
    from mcsl_core import ledger as L

    for stale in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal")):
        stale.unlink(missing_ok=True)
    return L.Ledger.create(path, genesis)


def open_task(
    cfg: TaskConfig, world: World, out: str | Path, *, log: Callable[[str], None] | None = None
) -> TaskState:
    """A new chain under ``out`` with every party registered: the state before publication."""
    from mcsl_core import ledger as L

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parties = make_parties(cfg)
    state = TaskState(cfg, world, out, parties, chain=None, store=L.ModelStore(out / "store"))
    if log is not None:
        state.say = log
    nodes, admit = parties.nodes, parties.nodes.names[0]
    with state.stages("ledger"):
        state.chain = _fresh_ledger(out / "ledger.sqlite", nodes.genesis())
        regs = [
            L.MembershipRegistration(p.role, p.name, p.public_key, admit).sign(nodes.node(admit))
            for p in (parties.requestor, *parties.servers)
        ]
        state.chain.append(nodes.propose(state.chain, regs))
    return state


def publish(state: TaskState) -> TaskState:
    """The requestor publishes the task; the recruitment contract selects devices.

    Sets ``state.recruited`` (sorted device indices). Raises ``ValueError``
    naming ``task.recruitment_budget`` when no device can be recruited.
    """
    from mcsl_core import ledger as L

    cfg, world, chain, nodes = state.cfg, state.world, state.chain, state.parties.nodes
    requestor = state.parties.requestor
    pub = L.TaskPublication(
        requestor.name,
        cfg.task_id,
        cfg.description,
        cfg.target_accuracy,
        cfg.recruitment_budget,
        world.locations,
    )
    with state.stages("ledger"):
        chain.append(nodes.propose(chain, [pub.sign(requestor)]))
        recruitment = L.recruit_for_task(chain, cfg.task_id, world.bids)
        chain.append(nodes.propose(chain, [recruitment]))
    index = {d: i for i, d in enumerate(world.device_ids)}
    state.recruited = np.array(sorted(index[d] for d in recruitment.selected), dtype=np.int64)
    state.say(
        f"recruitment: {state.recruited.size} of {world.num_devices} devices within budget "
        f"{cfg.recruitment_budget:g}, covering {len(recruitment.covered)} of {len(world.locations)} locations"
    )
    if state.recruited.size == 0:
        raise ValueError("task.recruitment_budget: no device could be recruited within the budget")
    return state
