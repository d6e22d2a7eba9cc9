"""Shared builders for the ledger tests: a small consortium and a full task lifecycle."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcsl_core.ledger import (
    AggregatedModel,
    Consortium,
    DataSubmissionPayment,
    Identity,
    Ledger,
    MembershipRegistration,
    ModelUpdate,
    ResultBinding,
    TaskPublication,
    encode_tree,
    recruit_for_task,
    settle_task,
)

BIDS = [("d0", 2.0, ("a", "b")), ("d1", 1.0, ("b",)), ("d2", 3.0, ("c", "d", "e")), ("d3", 5.0, ("a", "e"))]


@dataclass
class World:
    consortium: Consortium
    servers: list[Identity]
    requestor: Identity
    ledger: Ledger


def addr(i: int) -> str:
    return hashlib.sha256(f"model-{i}".encode()).hexdigest()


def make_world(
    path: Path, *, n_nodes: int = 4, n_servers: int = 3, seed: int = 7, durable: bool = True
) -> World:
    """Genesis + one block registering the edge servers and a requestor."""
    c = Consortium.generate(n_nodes, seed=seed)
    ledger = Ledger.create(path, c.genesis(), durable=durable)
    servers = [Identity.generate("edge_server", f"es{i}", seed=seed) for i in range(n_servers)]
    req = Identity.generate("requestor", "req0", seed=seed)
    admitter = c.node(c.names[0])
    regs = [
        MembershipRegistration(m.role, m.name, m.public_key, admitter.name).sign(admitter)
        for m in (*servers, req)
    ]
    ledger.append(c.propose(ledger, regs))
    return World(c, servers, req, ledger)


def publish(
    w: World,
    task_id: str = "t0",
    *,
    description: str = "handwritten digits",
    budget: float = 6.0,
    initial_model: str | None = None,
) -> None:
    pub = TaskPublication(
        w.requestor.name, task_id, description, 0.8, budget, ("a", "b", "c", "d", "e"), initial_model
    )
    w.ledger.append(w.consortium.propose(w.ledger, [pub.sign(w.requestor)]))


def run_task(
    w: World,
    task_id: str = "t0",
    *,
    rounds: int = 2,
    description: str = "handwritten digits",
    settle: bool = True,
    settle_fn=None,
) -> None:
    """Publish, recruit, pay data, `rounds` FL rounds, bind, settle: one block per step."""
    L, c = w.ledger, w.consortium
    publish(w, task_id, description=description)
    L.append(c.propose(L, [recruit_for_task(L, task_id, BIDS)]))
    sel = L.task(task_id).recruitment.selected
    pays = [
        DataSubmissionPayment(task_id, d, w.servers[k % len(w.servers)].name, 1.5 + k, 0.25).sign(
            w.servers[k % len(w.servers)]
        )
        for k, d in enumerate(sel)
    ]
    L.append(c.propose(L, pays))
    for r in range(rounds):
        ups = [
            ModelUpdate(task_id, r, s.name, addr(100 * r + k), 10 + k).sign(s)
            for k, s in enumerate(w.servers)
        ]
        L.append(c.propose(L, ups))
        leader = c.leader(L).name
        agg = AggregatedModel(
            task_id,
            r,
            leader,
            addr(10_000 + r),
            tuple(s.name for s in w.servers),
            {"accuracy": 0.5 + 0.1 * r},
        )
        L.append(c.propose(L, [agg]))
    bind = ResultBinding(task_id, rounds - 1, w.requestor.name, addr(10_000 + rounds - 1))
    L.append(c.propose(L, [bind]))
    if settle:
        L.append(c.propose(L, [settle_task(L, task_id, w_l=0.5, w_a=1.25, w_b=0.1, settle=settle_fn)]))


def tree(rng: np.random.Generator, size: int = 10) -> dict:
    return {
        "dense": {"w": rng.standard_normal((size, 3)).astype(np.float32), "b": np.zeros(3, np.float32)},
        "layers": [rng.integers(0, 9, size=4), np.float64(2.5)],
    }


def update_content(i: int, nbytes: int) -> bytes:
    return encode_tree(
        {"w": np.frombuffer(hashlib.sha256(str(i).encode()).digest() * (nbytes // 32), dtype=np.uint8)}
    )
