"""``mcsl ledger verify PATH`` and ``mcsl ledger show PATH [--task ID]``."""

from __future__ import annotations

from pathlib import Path

from mcsl_core.ledger._chain import Ledger, verify_file
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
    """Re-verify every block and signature; 0 when all check out, 1 with the first bad height."""
    report = verify_file(path)
    if report.ok:
        print(
            f"ok: {report.blocks} blocks, {report.transactions} transactions, "
            f"{report.signatures} signatures verified"
        )
        return 0
    print(f"verification failed: {report.message}")
    return 1


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
    """Print the chain (one line per block) or, with ``task``, that task's records."""
    with Ledger.open(path) as ledger:
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
