"""Chain state and the validation rules every block must pass.

:class:`ChainState` is what the chain implies (members, tasks, rounds, seen
transactions). :func:`apply_block` checks a block against it and, only when
every rule holds, applies the block's effects; a rejected block leaves the
state untouched (effects are staged in an overlay and merged at the end).

Signature checks can be deferred into a job list and run in parallel
(:func:`run_signature_jobs`): hashing and Ed25519 release the GIL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mcsl_core._validation import available_cores
from mcsl_core.ledger import _errors as E
from mcsl_core.ledger._block import (
    ZERO_HASH,
    Block,
    CommitSignature,
    anchor_digest,
    commit_digest,
    merkle_root,
)
from mcsl_core.ledger._election import elect_leader, quorum_size
from mcsl_core.ledger._keys import Member, public_key_from_bytes
from mcsl_core.ledger._recruit import recruit_workers
from mcsl_core.ledger._tx import (
    AggregatedModel,
    DataSubmissionPayment,
    Installment,
    MembershipRegistration,
    ModelUpdate,
    PaymentCollection,
    PaymentRecord,
    ResultBinding,
    ResultRelease,
    SignedTx,
    TaskPublication,
    Transaction,
    WorkerRecruitment,
)

__all__ = ["ChainState", "SigJob", "TaskInfo", "TxRecord", "apply_block", "quorum_jobs", "run_signature_jobs"]


class TxRecord(NamedTuple):
    """A transaction as recorded on the chain."""

    height: int
    index: int  # position in its block
    tx: Transaction
    signer: str  # member name of the signing key


@dataclass(frozen=True)
class TaskInfo:
    """Where a task stands, as implied by the chain."""

    publication: TaskPublication
    height: int  # block that published it
    recruitment: WorkerRecruitment | None = None
    next_round: int = 0  # round the next updates / aggregate must carry
    binding: ResultBinding | None = None
    payment: PaymentRecord | None = None

    @property
    def finalized(self) -> bool:
        return self.binding is not None


class SigJob(NamedTuple):
    height: int
    tx_index: int | None  # None: a certificate (or anchor) signature
    key: Ed25519PublicKey
    signature: bytes
    message: bytes
    what: str
    anchor: bool = False  # a head-anchor signature


def _check(job: SigJob) -> bool:
    try:
        job.key.verify(job.signature, job.message)
    except InvalidSignature:
        return False
    return True


def _check_chunk(jobs: Sequence[SigJob]) -> int:
    """Index of the first bad job in ``jobs`` or -1."""
    for i, j in enumerate(jobs):
        if not _check(j):
            return i
    return -1


def default_workers() -> int:
    return available_cores()


# one thread pool per worker count, kept for the process: a task verifies a few hundred small
# batches, and starting fresh threads for each cost more than checking the signatures
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _shared_pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        ex = _POOLS.get(workers)
        if ex is None:
            ex = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mcsl-verify")
        return ex


def _forget_pools() -> None:  # a forked child has none of the parent's threads
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def run_signature_jobs(
    jobs: Sequence[SigJob], *, max_workers: int | None = None, pool: ThreadPoolExecutor | None = None
) -> SigJob | None:
    """Verify ``jobs`` (in parallel when worth it); return the first bad one in order, or None."""
    if not jobs:
        return None
    workers = max_workers or default_workers()
    if workers <= 1 or len(jobs) < 16:
        i = _check_chunk(jobs)
        return None if i < 0 else jobs[i]
    chunk = max(8, -(-len(jobs) // (4 * workers)))
    starts = range(0, len(jobs), chunk)
    ex = pool or _shared_pool(workers)
    results = list(ex.map(lambda s: _check_chunk(jobs[s : s + chunk]), starts))
    for s, r in zip(starts, results):
        if r >= 0:
            return jobs[s + r]
    return None


def sig_error(job: SigJob) -> E.LedgerError:
    if job.anchor:
        return E.BadAnchor(f"invalid head-anchor signature by {job.what}", height=job.height)
    if job.tx_index is None:
        return E.BadCertificate(f"invalid commit signature by {job.what}", height=job.height)
    return E.BadSignature(f"invalid signature on {job.what}", height=job.height, tx_index=job.tx_index)


@dataclass
class ChainState:
    """Everything the chain implies so far (empty before genesis)."""

    height: int = -1
    head_hash: bytes = ZERO_HASH
    head_timestamp: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    by_key: dict[bytes, str] = field(default_factory=dict)
    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)  # name -> key object
    nodes: tuple[str, ...] = ()
    tasks: dict[str, TaskInfo] = field(default_factory=dict)
    updates: dict[tuple[str, int, str], ModelUpdate] = field(default_factory=dict)
    data_payments: dict[tuple[str, str], DataSubmissionPayment] = field(default_factory=dict)
    txids: set[bytes] = field(default_factory=set)
    task_records: dict[str, list[TxRecord]] = field(default_factory=dict)
    requestor_tasks: dict[str, list[str]] = field(default_factory=dict)
    proposers: list[str] = field(default_factory=list)  # by height
    hashes: list[bytes] = field(default_factory=list)  # block hashes by height
    n_tx: int = 0
    n_sig: int = 0


class _Overlay:
    """Staged effects of one block, merged into the state only if the block passes."""

    def __init__(self, st: ChainState):
        self.st = st
        self.members: dict[str, Member] = {}
        self.by_key: dict[bytes, str] = {}
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.tasks: dict[str, TaskInfo] = {}
        self.updates: dict[tuple[str, int, str], ModelUpdate] = {}
        self.data_payments: dict[tuple[str, str], DataSubmissionPayment] = {}
        self.txids: set[bytes] = set()
        self.records: list[TxRecord] = []
        self.nodes: tuple[str, ...] | None = None

    def member_by_key(self, key: bytes) -> str | None:
        return self.by_key.get(key) or self.st.by_key.get(key)

    def member(self, name: str) -> Member | None:
        return self.members.get(name) or self.st.members.get(name)

    def key(self, name: str) -> Ed25519PublicKey:
        k = self.keys.get(name) or self.st.keys.get(name)
        assert k is not None
        return k

    def task(self, tid: str) -> TaskInfo | None:
        return self.tasks.get(tid) or self.st.tasks.get(tid)

    def has_update(self, k) -> bool:
        return k in self.updates or k in self.st.updates

    def register(self, m: Member) -> None:
        self.members[m.name] = m
        self.by_key[m.public_key] = m.name
        self.keys[m.name] = public_key_from_bytes(m.public_key)

    def merge(self, block: Block) -> None:
        st = self.st
        st.members.update(self.members)
        st.by_key.update(self.by_key)
        st.keys.update(self.keys)
        if self.nodes is not None:
            st.nodes = self.nodes
        st.tasks.update(self.tasks)
        st.updates.update(self.updates)
        st.data_payments.update(self.data_payments)
        st.txids |= self.txids
        for r in self.records:
            tid = r.tx.task
            if tid is not None:
                st.task_records.setdefault(tid, []).append(r)
            if isinstance(r.tx, TaskPublication):
                st.requestor_tasks.setdefault(r.tx.requestor, []).append(r.tx.task_id)
        st.height = block.header.height
        st.head_hash = block.hash
        st.head_timestamp = block.header.timestamp
        st.proposers.append(block.header.proposer)
        st.hashes.append(block.hash)
        st.n_tx += len(block.txs)
        st.n_sig += len(block.certificate) + len(block.txs)


def apply_block(st: ChainState, block: Block, jobs: list[SigJob] | None = None) -> None:
    """Validate ``block`` against ``st`` and apply it; raise a :class:`LedgerError` naming the rule.

    With ``jobs=None`` signatures are checked here (in parallel for big blocks)
    and a rejected block leaves ``st`` unchanged. Otherwise signature checks are
    appended to ``jobs`` and the caller must run :func:`run_signature_jobs`
    before trusting the new state (the whole-chain verifier batches them).
    """
    local: list[SigJob] = [] if jobs is None else jobs
    n0 = len(local)
    try:
        ov = _stage(st, block, local)
    except E.LedgerError as exc:
        if exc.height is None:
            exc.at(block.header.height)
        if jobs is None:  # a bad signature earlier in the block is the first failure
            bad = run_signature_jobs(local[n0:])
            if bad is not None:
                raise sig_error(bad) from None
        raise
    if jobs is None:
        bad = run_signature_jobs(local)
        if bad is not None:
            raise sig_error(bad)
    ov.merge(block)


def _stage(st: ChainState, block: Block, jobs: list[SigJob]) -> _Overlay:
    h = block.header
    height = h.height
    ov = _Overlay(st)
    if height != st.height + 1:
        raise E.BadHeight(f"expected height {st.height + 1}, got {height}")
    if h.prev_hash != st.head_hash:
        raise E.BadPrevHash(
            f"previous hash {h.prev_hash.hex()[:16]}... does not match head {st.head_hash.hex()[:16]}..."
        )
    if height > 0 and h.timestamp < st.head_timestamp:
        raise E.BadTimestamp(f"timestamp {h.timestamp} is before the previous block's {st.head_timestamp}")
    if h.n_tx != len(block.txs):
        raise E.BadMerkleRoot(f"header counts {h.n_tx} transactions, block has {len(block.txs)}")
    if merkle_root([t.encode() for t in block.txs]) != h.merkle_root:
        raise E.BadMerkleRoot("Merkle root does not match the transactions")

    if height == 0:
        _genesis_members(ov, block)
        nodes = ov.nodes
    else:
        nodes = st.nodes
    assert nodes is not None
    leader = elect_leader(h.prev_hash, height, h.view, nodes)
    if h.proposer != leader:
        raise E.WrongProposer(
            f"proposer {h.proposer!r} is not the elected leader {leader!r} for height {height}, view {h.view}"
        )
    # commit certificate: registered consortium nodes, each once, at least the quorum ceil((n + f + 1) / 2)
    msg = commit_digest(block.hash)
    jobs.extend(quorum_jobs(ov, nodes, block.certificate, msg, height, anchor=False))

    for i, stx in enumerate(block.txs):
        try:
            _apply_tx(ov, stx, i, height, h.proposer, jobs)
        except E.LedgerError as exc:
            exc.tx_index = i if exc.tx_index is None else exc.tx_index
            exc.at(height)
            raise
    if block.anchor:  # checked last, so a bad block reports its own rule first
        jobs.extend(
            quorum_jobs(ov, nodes, block.anchor, anchor_digest(height, block.hash), height, anchor=True)
        )
    return ov


def quorum_jobs(
    ov: _Overlay | ChainState,
    nodes: Sequence[str],
    sigs: Sequence[CommitSignature],
    message: bytes,
    height: int,
    *,
    anchor: bool,
) -> list[SigJob]:
    """Signature jobs of a certificate (or head anchor) over ``message``; raise on a bad signer set.

    Every signer must be a distinct consortium node and there must be at least
    ``quorum_size(len(nodes))`` of them; the signatures themselves are checked by the jobs.
    """
    what = "head anchor" if anchor else "certificate"
    seen: set[str] = set()
    member = ov.member if isinstance(ov, _Overlay) else ov.members.get
    for c in sigs:
        if c.node in seen:
            err = f"node {c.node!r} signs the {what} twice"
            raise E.BadAnchor(err, height=height) if anchor else E.BadCertificate(err)
        seen.add(c.node)
        m = member(c.node)
        if m is None or m.role != "node" or c.node not in nodes:
            err = f"{what} signer {c.node!r} is not a consortium node"
            raise E.BadAnchor(err, height=height) if anchor else E.BadCertificate(err)
    need = quorum_size(len(nodes))
    if len(seen) < need:
        err = f"{what} has {len(seen)} node signatures, quorum is {need} of {len(nodes)}"
        raise E.BadAnchor(err, height=height) if anchor else E.QuorumNotReached(err)
    key = ov.key if isinstance(ov, _Overlay) else ov.keys.__getitem__
    return [SigJob(height, None, key(c.node), c.signature, message, f"node {c.node!r}", anchor) for c in sigs]


def _genesis_members(ov: _Overlay, block: Block) -> None:
    if not block.txs:
        raise E.GenesisError("genesis must register at least one consortium node")
    names = []
    for i, stx in enumerate(block.txs):
        tx = stx.tx
        if not isinstance(tx, MembershipRegistration) or tx.role != "node":
            raise E.GenesisError("genesis may only register consortium nodes", tx_index=i)
        if tx.admitted_by != tx.name or tx.public_key != stx.signer:
            raise E.GenesisError("each genesis node must register itself with its own key", tx_index=i)
        if ov.member(tx.name) is not None or ov.member_by_key(tx.public_key) is not None:
            raise E.GenesisError(f"node {tx.name!r} or its key registered twice", tx_index=i)
        ov.register(Member("node", tx.name, tx.public_key))
        names.append(tx.name)
    ov.nodes = tuple(sorted(names))


def _apply_tx(ov: _Overlay, stx: SignedTx, i: int, height: int, proposer: str, jobs: list[SigJob]) -> None:
    tx = stx.tx
    signer = ov.member_by_key(stx.signer)
    if signer is None:
        raise E.UnregisteredKey(f"{tx.KIND} signed by unregistered key {stx.signer.hex()[:16]}...")
    role = ov.member(signer).role  # type: ignore[union-attr]
    if role != tx.SIGNER_ROLE:
        raise E.WrongRole(f"{tx.KIND} must be signed by a {tx.SIGNER_ROLE}, signer {signer!r} is a {role}")
    if tx.actor is not None and tx.actor != signer:
        raise E.SignerMismatch(f"{tx.KIND} names {tx.actor!r} but is signed by {signer!r}")
    if tx.BY_PROPOSER and height > 0 and signer != proposer:
        raise E.SignerMismatch(
            f"{tx.KIND} must be signed by the block's proposer {proposer!r}, not {signer!r}"
        )
    jobs.append(SigJob(height, i, ov.key(signer), stx.signature, stx.digest, f"{tx.KIND} by {signer!r}"))
    txid = stx.digest
    if txid in ov.txids or txid in ov.st.txids:
        raise E.ReplayedTransaction(f"{tx.KIND} already recorded on the chain")
    ov.txids.add(txid)
    if height > 0:
        rule = _RULES.get(type(tx))
        if rule is None:  # a payload kind registered without a chain rule cannot be validated
            raise E.LedgerError(f"no chain rule is defined for {tx.KIND!r} transactions")
        rule(ov, tx, height)
    ov.records.append(TxRecord(height, i, tx, signer))


def _open_task(ov: _Overlay, tid: str) -> TaskInfo:
    t = ov.task(tid)
    if t is None:
        raise E.TaskStateError(f"unknown task {tid!r}")
    if t.finalized:
        raise E.TaskStateError(f"task {tid!r} is already finalized")
    return t


def _rule_membership(ov: _Overlay, tx: MembershipRegistration, height: int) -> None:
    if tx.role == "node":
        raise E.MembershipError("consortium nodes are fixed by genesis")
    if ov.member(tx.name) is not None:
        raise E.MembershipError(f"member {tx.name!r} already registered")
    if ov.member_by_key(tx.public_key) is not None:
        raise E.MembershipError(f"key of {tx.name!r} already registered")
    ov.register(Member(tx.role, tx.name, tx.public_key))


def _rule_task(ov: _Overlay, tx: TaskPublication, height: int) -> None:
    if ov.task(tx.task_id) is not None:
        raise E.TaskStateError(f"task {tx.task_id!r} already published")
    ov.tasks[tx.task_id] = TaskInfo(tx, height=height)


def _rule_recruitment(ov: _Overlay, tx: WorkerRecruitment, height: int) -> None:
    t = _open_task(ov, tx.task_id)
    if t.recruitment is not None:
        raise E.TaskStateError(f"task {tx.task_id!r} already has its workers")
    want = recruit_workers(tx.bids, t.publication.budget, t.publication.locations)
    got = (tx.selected, tx.cost, tx.covered, tx.rule)
    if got != tuple(want):
        raise E.ContractMismatch(
            f"recruitment for {tx.task_id!r} differs from the contract's result "
            f"{want.selected} (cost {want.cost})"
        )
    ov.tasks[tx.task_id] = replace(t, recruitment=tx)


def _rule_data_payment(ov: _Overlay, tx: DataSubmissionPayment, height: int) -> None:
    t = _open_task(ov, tx.task_id)
    if t.recruitment is None or tx.device not in t.recruitment.selected:
        raise E.TaskStateError(f"device {tx.device!r} was not recruited for task {tx.task_id!r}")
    key = (tx.task_id, tx.device)
    if key in ov.data_payments or key in ov.st.data_payments:
        raise E.ReplayedTransaction(f"device {tx.device!r} already paid for task {tx.task_id!r}")
    ov.data_payments[key] = tx


def _rule_update(ov: _Overlay, tx: ModelUpdate, height: int) -> None:
    t = _open_task(ov, tx.task_id)
    key = (tx.task_id, tx.round, tx.edge_server)
    if ov.has_update(key):
        raise E.ReplayedTransaction(
            f"update for task {tx.task_id!r}, round {tx.round}, server {tx.edge_server!r} already recorded"
        )
    if tx.round != t.next_round:
        raise E.RoundOutOfOrder(
            f"update for round {tx.round} of task {tx.task_id!r}, which expects round {t.next_round}"
        )
    ov.updates[key] = tx


def _rule_aggregate(ov: _Overlay, tx: AggregatedModel, height: int) -> None:
    t = _open_task(ov, tx.task_id)
    if tx.round != t.next_round:
        raise E.RoundOutOfOrder(
            f"aggregate for round {tx.round} of task {tx.task_id!r}, which expects round {t.next_round}"
        )
    missing = [s for s in tx.edge_servers if not ov.has_update((tx.task_id, tx.round, s))]
    if missing:
        raise E.TaskStateError(f"aggregate uses updates not on the chain: {missing[:3]}")
    ov.tasks[tx.task_id] = replace(t, next_round=t.next_round + 1)


def _rule_binding(ov: _Overlay, tx: ResultBinding, height: int) -> None:
    t = _open_task(ov, tx.task_id)
    if tx.requestor != t.publication.requestor:
        raise E.TaskStateError(
            f"task {tx.task_id!r} belongs to {t.publication.requestor!r}, not {tx.requestor!r}"
        )
    agg = _aggregate_of(ov, tx.task_id, tx.round)
    if agg is None or agg.address != tx.address:
        raise E.TaskStateError(
            f"no aggregate of round {tx.round} with address {tx.address[:16]}... for task {tx.task_id!r}"
        )
    ov.tasks[tx.task_id] = replace(t, binding=tx)


def _aggregate_of(ov: _Overlay, tid: str, rnd: int) -> AggregatedModel | None:
    for r in (*ov.st.task_records.get(tid, ()), *ov.records):
        if isinstance(r.tx, AggregatedModel) and r.tx.task_id == tid and r.tx.round == rnd:
            return r.tx
    return None


def _rule_payment(ov: _Overlay, tx: PaymentRecord, height: int) -> None:
    from mcsl_core.ledger._contracts import _settle_state

    committed = ov.st.tasks.get(tx.task_id)
    if committed is None or not committed.finalized:
        raise E.TaskStateError(f"task {tx.task_id!r} has no result bound in an earlier block to settle")
    t = ov.task(tx.task_id)
    if t.payment is not None:
        raise E.TaskStateError(f"task {tx.task_id!r} is already settled")
    paid = sum(a.amount for a in tx.allocations)
    if paid != tx.total:
        raise E.ContractMismatch(f"allocations sum to {paid} minor units, total is {tx.total}")
    # the payment contract over the committed chain, with the recorded rates
    try:
        want = _settle_state(ov.st, tx.task_id, w_l=tx.w_l, w_a=tx.w_a, w_b=tx.w_b, minor_unit=tx.minor_unit)
    except ValueError as exc:
        raise E.ContractMismatch(f"payment contract cannot run: {exc}") from None
    if want != tx:
        raise E.ContractMismatch(
            f"payment record for {tx.task_id!r} differs from the contract's (total {want.total} minor units)"
        )
    ov.tasks[tx.task_id] = replace(t, payment=tx)


def _task_txs(ov: _Overlay, tid: str, cls: type) -> list:
    """Transactions of kind ``cls`` for task ``tid``: committed, then staged in this block."""
    recs = (*ov.st.task_records.get(tid, ()), *ov.records)
    return [r.tx for r in recs if isinstance(r.tx, cls) and r.tx.task_id == tid]


def _billed_task(ov: _Overlay, tid: str, kind: str) -> TaskInfo:
    """A task whose payment record (the bill) is committed and not yet collected."""
    t = ov.st.tasks.get(tid)
    if t is None or t.payment is None:
        raise E.TaskStateError(f"{kind} for task {tid!r}, which has no payment record in an earlier block")
    if _task_txs(ov, tid, PaymentCollection):
        raise E.TaskStateError(f"{kind} for task {tid!r}, whose payment is already collected")
    return t


def _rule_installment(ov: _Overlay, tx: Installment, height: int) -> None:
    from mcsl_core.ledger._contracts import installment_dues

    t = _billed_task(ov, tx.task_id, "installment")
    if tx.requestor != t.publication.requestor:
        raise E.TaskStateError(
            f"task {tx.task_id!r} belongs to {t.publication.requestor!r}, not {tx.requestor!r}"
        )
    prev = _task_txs(ov, tx.task_id, Installment)
    released = len(_task_txs(ov, tx.task_id, ResultRelease))
    if tx.index != len(prev) or released != len(prev) or (prev and tx.of != prev[0].of):
        raise E.RoundOutOfOrder(
            f"installment {tx.index} of {tx.of} for task {tx.task_id!r} after {len(prev)} installments "
            f"and {released} releases"
        )
    due = installment_dues(t.payment.total, tx.of)[tx.index]
    if tx.due != due:
        raise E.ContractMismatch(
            f"installment {tx.index} of task {tx.task_id!r} is {due} minor units, not {tx.due}"
        )


def _rule_release(ov: _Overlay, tx: ResultRelease, height: int) -> None:
    t = _billed_task(ov, tx.task_id, "release")
    agg = _aggregate_of(ov, tx.task_id, t.binding.round)
    if agg is None or agg.leader != tx.leader:
        raise E.SignerMismatch(
            f"the result of task {tx.task_id!r} is released by the leader that finalised it"
        )
    installed = len(_task_txs(ov, tx.task_id, Installment))
    prev = len(_task_txs(ov, tx.task_id, ResultRelease))
    if tx.index != prev or installed != prev + 1:
        raise E.RoundOutOfOrder(
            f"release {tx.index} for task {tx.task_id!r} after {installed} installments and {prev} releases"
        )


def _rule_collection(ov: _Overlay, tx: PaymentCollection, height: int) -> None:
    from mcsl_core.ledger._contracts import _collect_state

    _billed_task(ov, tx.task_id, "collection")
    inst = [r.tx for r in ov.st.task_records.get(tx.task_id, ()) if isinstance(r.tx, Installment)]
    rel = [r.tx for r in ov.st.task_records.get(tx.task_id, ()) if isinstance(r.tx, ResultRelease)]
    if not inst or len(rel) != inst[0].of:
        raise E.TaskStateError(f"task {tx.task_id!r}: collection before every round of the payment game")
    try:
        want = _collect_state(ov.st, tx.task_id)
    except ValueError as exc:
        raise E.ContractMismatch(f"collection contract cannot run: {exc}") from None
    if want != tx:
        raise E.ContractMismatch(
            f"collection for {tx.task_id!r} differs from the contract's ({want.collected} minor units collected)"
        )


_RULES: dict[type, Callable] = {
    MembershipRegistration: _rule_membership,
    TaskPublication: _rule_task,
    WorkerRecruitment: _rule_recruitment,
    DataSubmissionPayment: _rule_data_payment,
    ModelUpdate: _rule_update,
    AggregatedModel: _rule_aggregate,
    ResultBinding: _rule_binding,
    PaymentRecord: _rule_payment,
    Installment: _rule_installment,
    ResultRelease: _rule_release,
    PaymentCollection: _rule_collection,
}
