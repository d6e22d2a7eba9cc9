"""Parallel verification of one round of signed model updates (paper IV-C step 4).

Each update's content is hashed once (SHA-256, which is its content address)
and the Ed25519 signature is checked over the 32-byte transaction digest.
Both release the GIL, so a thread pool uses every core.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from cryptography.exceptions import InvalidSignature

from mcsl_core.ledger._keys import Member, public_key_from_bytes
from mcsl_core.ledger._state import default_workers
from mcsl_core.ledger._tx import ModelUpdate, SignedTx

__all__ = ["RoundCheck", "verify_update_round"]


class RoundCheck(NamedTuple):
    valid: np.ndarray  # shape=[updates], bool: keep (broadcast) or drop
    reasons: tuple[str | None, ...]  # why an update was dropped (None when valid)


def _members_by_key(members) -> dict[bytes, Member]:
    if hasattr(members, "members") and not isinstance(members, Mapping):  # a Ledger
        members = members.members
    if not isinstance(members, Mapping):
        raise ValueError("members must be a Ledger or a mapping name -> Member")
    return {m.public_key: m for m in members.values()}


def _check_one(item, by_key, task_id, rnd, keys) -> str | None:
    stx, content = item
    if not isinstance(stx, SignedTx):
        return "not a SignedTx"
    try:
        tx = stx.tx
    except ValueError as exc:
        return f"malformed payload: {exc}"
    if not isinstance(tx, ModelUpdate):
        return f"not a model update ({tx.KIND})"
    m = by_key.get(stx.signer)
    if m is None:
        return "unregistered key"
    if m.role != "edge_server":
        return f"signer {m.name!r} is a {m.role}, not an edge_server"
    if m.name != tx.edge_server:
        return f"update names {tx.edge_server!r} but is signed by {m.name!r}"
    if task_id is not None and tx.task_id != task_id:
        return f"update for task {tx.task_id!r}, expected {task_id!r}"
    if rnd is not None and tx.round != rnd:
        return f"update for round {tx.round}, expected {rnd}"
    if hashlib.sha256(content).hexdigest() != tx.address:
        return "content does not hash to the update's address"
    key = keys.get(stx.signer)
    if key is None:
        key = keys[stx.signer] = public_key_from_bytes(stx.signer)
    try:
        key.verify(stx.signature, stx.digest)
    except InvalidSignature:
        return "bad signature"
    return None


def verify_update_round(
    members,
    updates: Sequence[tuple[SignedTx, bytes]],
    *,
    task_id: str | None = None,
    round: int | None = None,
    max_workers: int | None = None,
) -> RoundCheck:
    """Check a round of signed updates; invalid ones are to be dropped, valid ones broadcast.

    Parameters
    ----------
    members : Ledger or mapping name -> Member
        The membership registry the signers must be in (as edge servers).
    updates : sequence of (SignedTx, bytes)
        Each signed :class:`ModelUpdate` with the update's content (e.g.
        :func:`encode_tree` bytes); the content must hash to ``tx.address``.
    task_id, round : optional
        When given, updates for another task or round are invalid.
    max_workers : int, optional
        Threads (default: every core this process may use); 1 runs a plain loop.

    Returns
    -------
    RoundCheck
        ``valid[i]`` and, for invalid updates, the reason. Duplicate
        (task, round, server) triples after the first are invalid ("replayed").
    """
    by_key = _members_by_key(members)
    items = list(updates)
    for i, it in enumerate(items):
        if (
            not isinstance(it, (tuple, list))
            or len(it) != 2
            or not isinstance(it[1], (bytes, bytearray, memoryview))
        ):
            raise ValueError(f"updates[{i}] must be (SignedTx, bytes)")
    workers = max_workers or default_workers()
    keys: dict[bytes, object] = {}
    # pre-build key objects once (dict writes from threads are safe but wasteful)
    for m in by_key.values():
        keys[m.public_key] = public_key_from_bytes(m.public_key)
    if workers <= 1 or len(items) < 2:
        reasons = [_check_one(it, by_key, task_id, round, keys) for it in items]
    else:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            reasons = list(ex.map(lambda it: _check_one(it, by_key, task_id, round, keys), items))
    seen: set[tuple] = set()
    for i, (it, r) in enumerate(zip(items, reasons)):
        if r is None:
            tx = it[0].tx
            k = (tx.task_id, tx.round, tx.edge_server)
            if k in seen:
                reasons[i] = "replayed (task, round, server)"
            seen.add(k)
    valid = np.array([r is None for r in reasons], dtype=bool)
    return RoundCheck(valid, tuple(reasons))
