"""Contracts: deterministic functions of ledger state that every node computes alike.

- :func:`recruit_for_task`: worker recruitment triggered by a task publication
  (rule in :func:`recruit_workers`);
- :func:`choose_initial_model`: the initial model of a task from historical tasks
  when the requestor gives none (paper IV-A);
- :func:`settle_task`: the payment contract (paper IV-D): reads the task's
  records, calls :func:`mcsl_core.payment.settle` and returns the
  :class:`PaymentRecord` that records the bill and each payee's due share. The
  ledger re-runs it on append and rejects a record that differs;
- :func:`installment_dues` and :func:`collect_task`: the bill is due in
  installments, one per round of the payment game (:class:`Installment`); the
  collection contract allocates what the requestor actually paid
  (:func:`split_collected`) and records the rest as owed.

Every function reads only committed blocks, so any node holding the same chain
gets byte-identical results.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from mcsl_core.ledger._recruit import recruit_workers
from mcsl_core.ledger._tx import (
    AggregatedModel,
    Bid,
    DataSubmissionPayment,
    Installment,
    ModelUpdate,
    PaymentCollection,
    PaymentRecord,
    WorkerRecruitment,
)

__all__ = [
    "SettlementInputs",
    "choose_initial_model",
    "collect_task",
    "installment_dues",
    "recruit_for_task",
    "settle_task",
    "settlement_inputs",
    "split_collected",
]


def _state(ledger):
    return ledger._st


def recruit_for_task(ledger, task_id: str, bids: Sequence[Bid | tuple]) -> WorkerRecruitment:
    """The recruitment transaction for ``task_id`` on ``bids`` (to be signed by the leader)."""
    t = _state(ledger).tasks.get(task_id)
    if t is None:
        raise ValueError(f"task_id: unknown task {task_id!r}")
    r = recruit_workers(bids, t.publication.budget, t.publication.locations)
    return WorkerRecruitment(task_id, tuple(bids), r.selected, r.cost, r.covered, r.rule)


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if (a or b) else 0.0


def choose_initial_model(ledger, task_id: str) -> str | None:
    """Initial model address for ``task_id``.

    The requestor's ``initial_model`` when given. Otherwise, among finished tasks
    (a result bound on the chain), the one whose description is most similar
    (Jaccard index of lower-case word sets), ties broken by location overlap
    (Jaccard), then the most recent binding, then task id; its bound model is
    returned. None when no finished task shares a word (train from scratch).
    """
    st = _state(ledger)
    t = st.tasks.get(task_id)
    if t is None:
        raise ValueError(f"task_id: unknown task {task_id!r}")
    if t.publication.initial_model is not None:
        return t.publication.initial_model
    words, locs = _words(t.publication.description), frozenset(t.publication.locations)
    best_key, best = None, None
    for tid, other in st.tasks.items():
        if tid == task_id or other.binding is None:
            continue
        sim = _jaccard(words, _words(other.publication.description))
        if sim <= 0:
            continue
        bound_at = max(r.height for r in st.task_records[tid] if r.tx is other.binding)
        key = (sim, _jaccard(locs, frozenset(other.publication.locations)), bound_at, tid)
        if best_key is None or key > best_key:
            best_key, best = key, other.binding.address
    return best


class SettlementInputs(NamedTuple):
    """What the payment contract reads from the chain for one task."""

    devices: tuple[str, ...]  # sorted device ids with a data-submission payment
    device_amounts: np.ndarray  # shape=[devices], float64, v + s
    servers: tuple[str, ...]  # sorted edge servers with at least one update
    server_trainings: np.ndarray  # shape=[servers], int64, updates recorded
    producers: tuple[str, ...]  # consortium nodes (sorted)
    producer_aggregations: np.ndarray  # shape=[producers], int64, aggregates led
    producer_blocks: np.ndarray  # shape=[producers], int64, blocks proposed carrying the task


def settlement_inputs(ledger, task_id: str) -> SettlementInputs:
    """Read the bill's ingredients for ``task_id`` from the chain (SPEC.md section 4)."""
    return _inputs(_state(ledger), task_id)


def _inputs(st, task_id: str) -> SettlementInputs:
    recs = st.task_records.get(task_id, ())
    amounts: dict[str, float] = {}
    trainings: dict[str, int] = {}
    aggs = dict.fromkeys(st.nodes, 0)
    for r in recs:
        tx = r.tx
        if isinstance(tx, DataSubmissionPayment):
            amounts[tx.device] = amounts.get(tx.device, 0.0) + tx.amount
        elif isinstance(tx, ModelUpdate):
            trainings[tx.edge_server] = trainings.get(tx.edge_server, 0) + 1
        elif isinstance(tx, AggregatedModel):
            aggs[tx.leader] = aggs.get(tx.leader, 0) + 1
    blocks = dict.fromkeys(st.nodes, 0)
    for h in sorted({r.height for r in recs}):
        p = st.proposers[h]
        blocks[p] = blocks.get(p, 0) + 1
    devs, servers, nodes = sorted(amounts), sorted(trainings), list(st.nodes)
    return SettlementInputs(
        tuple(devs),
        np.array([amounts[d] for d in devs], dtype=np.float64),
        tuple(servers),
        np.array([trainings[s] for s in servers], dtype=np.int64),
        tuple(nodes),
        np.array([aggs[n] for n in nodes], dtype=np.int64),
        np.array([blocks[n] for n in nodes], dtype=np.int64),
    )


def _default_settle() -> Callable:
    from mcsl_core.payment import settle

    return settle


def settle_task(
    ledger,
    task_id: str,
    *,
    w_l: float,
    w_a: float,
    w_b: float,
    minor_unit: float = 0.01,
    settle: Callable | None = None,
) -> PaymentRecord:
    """The payment contract: settle a finished task and return its (unsigned) PaymentRecord.

    Calls ``settle(device_amounts, server_trainings, producer_aggregations,
    producer_blocks, w_l=, w_a=, w_b=, minor_unit=)`` (default
    :func:`mcsl_core.payment.settle`) on :func:`settlement_inputs` and lists
    every payee's integer amount: devices, then edge servers, then nodes.
    """
    return _settle_state(
        _state(ledger), task_id, w_l=w_l, w_a=w_a, w_b=w_b, minor_unit=minor_unit, settle=settle
    )


def _settle_state(st, task_id, *, w_l, w_a, w_b, minor_unit, settle=None) -> PaymentRecord:
    t = st.tasks.get(task_id)
    if t is None:
        raise ValueError(f"task_id: unknown task {task_id!r}")
    if t.binding is None:
        raise ValueError(f"task_id: task {task_id!r} has no bound result yet")
    inp = _inputs(st, task_id)
    s = (settle or _default_settle())(
        inp.device_amounts,
        inp.server_trainings,
        inp.producer_aggregations,
        inp.producer_blocks,
        w_l=w_l,
        w_a=w_a,
        w_b=w_b,
        minor_unit=minor_unit,
    )
    allocs = (
        [("device", d, int(a)) for d, a in zip(inp.devices, s.devices)]
        + [("edge_server", e, int(a)) for e, a in zip(inp.servers, s.servers)]
        + [("node", n, int(a)) for n, a in zip(inp.producers, s.producers)]
    )
    return PaymentRecord(task_id, w_l, w_a, w_b, float(s.minor_unit), int(s.total), tuple(allocs))


def installment_dues(total: int, of: int) -> list[int]:
    """``total`` minor units due in ``of`` installments: ``total // of`` each, the
    ``total % of`` remaining units one each to the first installments (sums to ``total``)."""
    q, r = divmod(int(total), int(of))
    return [q + (1 if k < r else 0) for k in range(int(of))]


def split_collected(dues: Sequence[int], collected: int) -> list[int]:
    """Allocate ``collected`` minor units in proportion to ``dues`` (exact integers).

    The rule of :func:`mcsl_core.payment.settle` on the exact shares
    ``dues[i] * collected / sum(dues)``: floors, then the remaining units one each
    to the largest fractional parts, ties by position. Sums to ``collected``;
    no payee gets more than its due (``collected <= sum(dues)``).
    """
    total = sum(int(d) for d in dues)
    if not 0 <= collected <= total:
        raise ValueError(f"collected must lie in [0, {total}], got {collected}")
    if total == 0:
        return [0] * len(dues)
    num = [int(d) * int(collected) for d in dues]
    floors = [n // total for n in num]
    order = sorted(range(len(num)), key=lambda k: (-(num[k] % total), k))
    for k in order[: collected - sum(floors)]:
        floors[k] += 1
    return floors


def collect_task(ledger, task_id: str) -> PaymentCollection:
    """The collection contract: what the requestor paid over the installments recorded for
    ``task_id``, allocated over the payment record's payees, and the owed remainder."""
    return _collect_state(_state(ledger), task_id)


def _collect_state(st, task_id: str, extra=()) -> PaymentCollection:
    t = st.tasks.get(task_id)
    if t is None or t.payment is None:
        raise ValueError(f"task_id: task {task_id!r} has no payment record to collect on")
    recs = [*st.task_records.get(task_id, ()), *extra]
    inst = [r.tx for r in recs if isinstance(r.tx, Installment)]
    if not inst or len(inst) != inst[0].of:
        raise ValueError(f"task_id: task {task_id!r} has {len(inst)} installments recorded, not all of them")
    collected = sum(i.paid for i in inst)
    bill = t.payment
    paid = split_collected([a.amount for a in bill.allocations], collected)
    allocs = tuple((a.role, a.payee, p) for a, p in zip(bill.allocations, paid))
    return PaymentCollection(task_id, collected, bill.total - collected, allocs)
