"""Leader election per (height, view) and the certificate quorum."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from mcsl_core._bft import max_faulty, quorum

__all__ = ["elect_leader", "max_faulty", "quorum_size"]


def quorum_size(n: int) -> int:
    """Certificate quorum for ``n`` consortium nodes: ``ceil((n + f + 1) / 2)``, f = max_faulty(n).

    The rule is the package's one BFT quorum (``mcsl_core._bft``), shared with the PBFT simulator.
    """
    return quorum(n)


def elect_leader(prev_hash: bytes, height: int, view: int, node_ids: Sequence[str]) -> str:
    """Leader of block ``height`` in ``view``: deterministic rotation seeded by the previous hash.

    The nodes are sorted by id; the rotation starts at
    ``int(SHA-256("mcsl-leader" || prev_hash || height || 0)) mod n`` and each view
    change moves to the next node, so within n views every node leads once.
    Every node computes the same leader from the chain alone.
    """
    if not isinstance(prev_hash, (bytes, bytearray)) or len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    if isinstance(height, bool) or not isinstance(height, int) or height < 0:
        raise ValueError(f"height must be a non-negative int, got {height!r}")
    if isinstance(view, bool) or not isinstance(view, int) or view < 0:
        raise ValueError(f"view must be a non-negative int, got {view!r}")
    nodes = sorted(node_ids)
    if not nodes:
        raise ValueError("node_ids must not be empty")
    if len(set(nodes)) != len(nodes):
        raise ValueError("node_ids has duplicates")
    seed = hashlib.sha256(b"mcsl-leader\x00" + bytes(prev_hash) + height.to_bytes(8, "big")).digest()
    start = int.from_bytes(seed[:8], "big") % len(nodes)
    return nodes[(start + view) % len(nodes)]
