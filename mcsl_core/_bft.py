"""The one Byzantine-quorum rule, shared by the ledger's certificates and the PBFT simulator.

With ``n`` nodes of which at most ``f`` are faulty, a quorum of ``q`` nodes is safe when
any two quorums share at least ``f + 1`` nodes, so at least one honest node that never
votes for two conflicting values: ``2q - n >= f + 1``. The smallest such quorum is

    q = ceil((n + f + 1) / 2)

(Castro-Liskov's ``2f + 1`` when ``n = 3f + 1``; at ``n = 5, f = 1`` it is 4, where
``2f + 1 = 3`` would let two quorums meet in the faulty node alone). Liveness needs the
``n - f`` honest nodes to form a quorum, ``q <= n - f``, which holds for ``n >= 3f + 1``.
"""

from __future__ import annotations

__all__ = ["max_faulty", "quorum"]


def _count(name: str, x, lo: int) -> int:
    if isinstance(x, bool) or not hasattr(x, "__index__"):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    v = int(x.__index__())
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def max_faulty(n: int) -> int:
    """Largest ``f`` with ``n >= 3f + 1``: the faults ``n`` nodes tolerate."""
    return (_count("n", n, 1) - 1) // 3


def quorum(n: int, f: int | None = None) -> int:
    """Smallest quorum ``ceil((n + f + 1) / 2)`` whose pairs share ``f + 1`` nodes.

    ``f`` defaults to ``max_faulty(n)`` and must satisfy ``n >= 3f + 1``.
    """
    n = _count("n", n, 1)
    f = max_faulty(n) if f is None else _count("f", f, 0)
    if n < 3 * f + 1:
        raise ValueError(f"f must satisfy n >= 3f + 1, got n = {n}, f = {f}")
    return (n + f + 2) // 2
