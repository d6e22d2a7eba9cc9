"""``mcsl ledger verify PATH`` and ``mcsl ledger show PATH [--task ID]``.

Both only read the file (SQLite's read-only URI). Exit codes: 0 all checks
out, 1 a corrupt or incomplete ledger (one line naming the first bad height
where one is known), 2 not a ledger / unreadable (raised to ``mcsl``'s one-line
error handler).
"""

from __future__ import annotations

from pathlib import Path

from mcsl_core.ledger._chain import Ledger, VerifyReport, verify_file
from mcsl_core.ledger._errors import LedgerError
from mcsl_core.ledger._tx import (
    AggregatedModel,
    DataSubmissionPayment,
    MembershipRegistration,
    ModelUpdate,
    PaymentRecord,
    ResultBinding,
    TaskPublication,
    Transaction,
    WorkerRecruitment,
)

__all__ = ["describe_tx", "show_command", "verify_command"]


def verify_command(path: Path) -> int:
    """Re-verify every block, signature and the head anchor; 0 when all check out, else 1.

    A chain whose head is not anchored at its last block also fails (exit 1):
    blocks above the anchor could have been removed without trace.
    """
    report = verify_file(path)
    if not report.ok:
        print(f"verification failed: {report.message}")
        return 1
    gap = _unanchored(report)
    if gap is not None:
        print(f"verification failed: {gap}")
        return 1
    print(
        f"ok: {report.blocks} blocks, {report.transactions} transactions, "
        f"{report.signatures} signatures verified, head anchored at height {report.anchored_height}"
    )
    return 0


def _unanchored(report: VerifyReport) -> str | None:
    top = report.blocks - 1
    if report.anchored_height is None:
        return (
            f"the chain's {report.blocks} blocks verify, but no head anchor is stored: "
            "blocks removed from the top would go unnoticed"
        )
    if report.anchored_height < top:
        return (
            f"height {report.anchored_height + 1}: blocks {report.anchored_height + 1}..{top} verify but are "
            f"above the head anchor (height {report.anchored_height}): their removal would go unnoticed"
        )
    return None


def describe_tx(tx: Transaction) -> str:
    """One line describing a transaction."""
    if isinstance(tx, MembershipRegistration):
        return f"member {tx.name} ({tx.role}) admitted by {tx.admitted_by}"
    if isinstance(tx, TaskPublication):
        init = tx.initial_model[:12] if tx.initial_model else "none"
        return (
            f"task {tx.task_id} by {tx.requestor}: requirement {tx.requirement:g}, budget {tx.budget:g}, "
            f"{len(tx.locations)} locations, initial model {init}"
        )
    if isinstance(tx, WorkerRecruitment):
        return (
            f"recruitment {tx.task_id}: {len(tx.selected)} of {len(tx.bids)} devices, cost {tx.cost:g}, "
            f"{len(tx.covered)} locations covered"
        )
    if isinstance(tx, DataSubmissionPayment):
        return f"data payment {tx.task_id}: {tx.edge_server} pays {tx.device} v+s = {tx.amount:g}"
    if isinstance(tx, ModelUpdate):
        return (
            f"update {tx.task_id} round {tx.round} from {tx.edge_server}: {tx.address[:12]} "
            f"({tx.num_samples} samples)"
        )
    if isinstance(tx, AggregatedModel):
        metrics = ", ".join(f"{k}={v:g}" for k, v in tx.metrics.items())
        return (
            f"aggregate {tx.task_id} round {tx.round} by {tx.leader}: {tx.address[:12]} "
            f"from {len(tx.edge_servers)} updates" + (f" [{metrics}]" if metrics else "")
        )
    if isinstance(tx, ResultBinding):
        return f"result {tx.task_id} round {tx.round} bound to {tx.requestor}: {tx.address[:12]}"
    if isinstance(tx, PaymentRecord):
        return f"payment {tx.task_id}: total {tx.total} x {tx.minor_unit:g} to {len(tx.allocations)} payees"
    return tx.KIND  # pragma: no cover - every kind is handled above


def show_command(path: Path, task: str | None) -> int:
    """Print the chain (one line per block) or, with ``task``, that task's records; 1 on a bad chain."""
    try:
        with Ledger.open(path, read_only=True) as ledger:
            return _show(ledger, task)
    except LedgerError as exc:
        print(f"verification failed: {exc}")
        return 1


def _show(ledger: Ledger, task: str | None) -> int:
    if task is None:
        print(f"{len(ledger)} blocks, nodes {', '.join(ledger.nodes)}, {len(ledger.tasks())} tasks")
        for h in range(len(ledger)):
            b = ledger.block(h)
            kinds: dict[str, int] = {}
            for t in b.txs:
                kinds[t.tx.KIND] = kinds.get(t.tx.KIND, 0) + 1
            summary = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no transactions"
            print(
                f"#{h} {b.hash.hex()[:16]} by {b.header.proposer} (view {b.header.view}, "
                f"{len(b.certificate)} commits): {summary}"
            )
        return 0
    try:
        info = ledger.task(task)
    except KeyError:
        raise ValueError(f"--task: no task {task!r} on this ledger") from None
    state = "paid" if info.payment else "finalized" if info.finalized else f"round {info.next_round}"
    print(f"task {task} ({state})")
    for r in ledger.task_records(task):
        print(f"#{r.height}.{r.index} [{r.signer}] {describe_tx(r.tx)}")
    return 0
