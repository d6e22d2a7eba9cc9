"""Closed-form message and byte counts per phase for one block (paper IV-C, SPEC.md 3)."""

from __future__ import annotations

from typing import NamedTuple

from mcsl_core._bft import max_faulty as fault_tolerance
from mcsl_core._bft import quorum
from mcsl_core._names import PROTOCOLS
from mcsl_core._validation import check_int_scalar, check_scalar

__all__ = [
    "BLOCK_CARRIES",
    "PROTOCOLS",
    "MessageCounts",
    "PhaseCounts",
    "fault_tolerance",
    "pbft_message_counts",
]

BLOCK_CARRIES = ("updates", "digests")
SIG_BYTES = 64.0
DIGEST_BYTES = 32.0


class MessageCounts(NamedTuple):
    """One number per message kind (a count, a byte total or a time)."""

    submit: float  # edge server -> every consortium node, one signed update each
    pre_prepare: (
        float  # primary -> backups: the block (PBFT pre-prepare, paper's broadcast, HotStuff proposal)
    )
    prepare: float  # PBFT: backup -> all others
    commit: float  # PBFT: every node -> all others
    reply: float  # node -> client (PBFT, HotStuff) or follower -> leader (paper)
    view_change: float  # PBFT view change: node -> all others
    new_view: float  # new primary -> all others
    vote: float  # HotStuff: replica -> leader, three phases
    qc: float  # HotStuff: leader -> replicas, quorum certificate, three phases

    @property
    def total(self) -> float:
        return sum(self)


class PhaseCounts(NamedTuple):
    """Closed-form ``messages`` and ``bytes`` per phase of one block's agreement."""

    messages: MessageCounts
    bytes: MessageCounts


def pbft_message_counts(
    n: int,
    *,
    n_updates: int = 0,
    view_changes: int = 0,
    update_bytes: float = 300_000,
    header_bytes: float = 256.0,
    block_carries: str = "updates",
    protocol: str = "pbft",
) -> PhaseCounts:
    """Messages and bytes of each phase for agreeing on one block among ``n`` nodes.

    PBFT normal case (Castro-Liskov, paper IV-C): pre-prepare ``n-1``, prepare
    ``(n-1)^2`` (backups only), commit ``n(n-1)``, replies ``n``; before them the
    ``n_updates`` edge servers each send their signed update to all ``n`` nodes
    (``n * n_updates`` submissions). With ``view_changes = k`` the primaries of views
    ``0..k-1`` are silent (the only faulty nodes, ``k <= f``): every other node sends one
    view-change message per view to the ``n-1`` others (``k (n-k)(n-1)``), the primary of
    view ``k`` sends ``n-1`` new-view messages and then the pre-prepare, and the silent
    nodes send no prepare, commit or reply.

    ``protocol="paper"``: broadcast ``n-1`` and follower replies ``n-1`` (paper IV-C text).
    ``protocol="hotstuff"``: proposal ``n-1``, three vote rounds and three certificate
    broadcasts of ``n-1`` each, replies ``n``.

    Bytes: a message is ``header_bytes``; a submission adds ``update_bytes``; the block
    adds ``n_updates * update_bytes`` (``block_carries="updates"``) or 32 bytes per update
    (``"digests"``); a new-view carries ``2f+1`` view-change messages; a HotStuff
    certificate ``2f+1`` signatures of 64 bytes.
    """
    n = check_int_scalar("n", n, 4)
    U = check_int_scalar("n_updates", n_updates, 0)
    k = check_int_scalar("view_changes", view_changes, 0)
    upd = check_scalar("update_bytes", update_bytes, 0.0)
    H = check_scalar("header_bytes", header_bytes, 0.0)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if block_carries not in BLOCK_CARRIES:
        raise ValueError(f"block_carries must be one of {BLOCK_CARRIES}, got {block_carries!r}")
    f = fault_tolerance(n)
    if k > f:
        raise ValueError(f"view_changes must be <= f = {f} for n = {n} (else nothing commits); got {k}")
    if protocol != "pbft" and k:
        raise ValueError(f"view_changes is modelled for protocol='pbft' only; got {k} with {protocol!r}")
    payload = U * (upd if block_carries == "updates" else DIGEST_BYTES)
    zero = dict(
        submit=0, pre_prepare=0, prepare=0, commit=0, reply=0, view_change=0, new_view=0, vote=0, qc=0
    )
    m = dict(zero, submit=n * U, pre_prepare=n - 1)
    if protocol == "pbft":
        m.update(
            prepare=(n - 1 - k) * (n - 1),
            commit=(n - k) * (n - 1),
            reply=n - k,
            view_change=k * (n - k) * (n - 1),
            new_view=(n - 1) if k else 0,
        )
    elif protocol == "paper":
        m.update(reply=n - 1)
    else:
        m.update(vote=3 * (n - 1), qc=3 * (n - 1), reply=n)
    size = dict(
        submit=H + upd,
        pre_prepare=H + payload,
        prepare=H,
        commit=H,
        reply=H,
        view_change=H,
        new_view=H * (quorum(n, f) + 1),
        vote=H,
        qc=H + SIG_BYTES * quorum(n, f),
    )
    msgs = MessageCounts(**{key: int(v) for key, v in m.items()})
    byts = MessageCounts(**{key: float(m[key] * size[key]) for key in m})
    return PhaseCounts(msgs, byts)
