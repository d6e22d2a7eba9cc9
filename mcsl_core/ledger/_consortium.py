"""The consortium: nodes that elect a leader, build blocks and certify them.

This is the block-producing side used by simulations and the end-to-end system:
it holds every node's key, so it can produce the quorum of commit signatures PBFT's
commit phase would gather (the message exchange itself is simulated in
:mod:`mcsl_core.consensus`).
"""

from __future__ import annotations

from collections.abc import Sequence

from mcsl_core.ledger._block import (
    ZERO_HASH,
    Block,
    BlockHeader,
    CommitSignature,
    anchor_digest,
    commit_digest,
    merkle_root,
)
from mcsl_core.ledger._chain import Ledger
from mcsl_core.ledger._election import elect_leader, quorum_size
from mcsl_core.ledger._keys import Identity
from mcsl_core.ledger._tx import MembershipRegistration, SignedTx, Transaction

__all__ = ["Consortium"]


class Consortium:
    """Consortium nodes (``Identity`` objects of role ``"node"``), sorted by name."""

    def __init__(self, nodes: Sequence[Identity]):
        nodes = list(nodes)
        if not nodes:
            raise ValueError("nodes must not be empty")
        for i, n in enumerate(nodes):
            if not isinstance(n, Identity) or n.role != "node":
                raise ValueError(f"nodes[{i}] must be an Identity with role 'node'")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError("nodes has two nodes with one name")
        self._nodes = {n.name: n for n in sorted(nodes, key=lambda n: n.name)}

    @classmethod
    def generate(cls, n: int, *, seed: int | str | bytes | None = None, prefix: str = "node") -> Consortium:
        """``n`` nodes named ``{prefix}0..`` (deterministic keys when ``seed`` is given)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        return cls([Identity.generate("node", f"{prefix}{i}", seed=seed) for i in range(n)])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    @property
    def quorum(self) -> int:
        """The certificate quorum ``ceil((n + f + 1) / 2)`` for this consortium's size."""
        return quorum_size(len(self._nodes))

    def node(self, name: str) -> Identity:
        try:
            return self._nodes[name]
        except KeyError:
            raise ValueError(f"name: {name!r} is not a consortium node") from None

    def leader(self, ledger: Ledger, view: int = 0) -> Identity:
        """The elected leader of the next block of ``ledger`` in ``view``."""
        return self._nodes[elect_leader(ledger.head_hash, len(ledger), view, self.names)]

    def _signers(self, header: BlockHeader, signers: Sequence[str] | None) -> Sequence[str]:
        if signers is not None:
            return signers
        rest = [n for n in self._nodes if n != header.proposer]
        return (([header.proposer] if header.proposer in self._nodes else []) + rest)[: self.quorum]

    def certify(
        self, header: BlockHeader, signers: Sequence[str] | None = None
    ) -> tuple[CommitSignature, ...]:
        """Commit signatures on ``header``'s hash; default signers: the proposer then the
        other nodes in name order, up to the quorum ``ceil((n + f + 1) / 2)``."""
        msg = commit_digest(header.hash)
        return tuple(CommitSignature(s, self.node(s).sign(msg)) for s in self._signers(header, signers))

    def anchor(
        self, header: BlockHeader, signers: Sequence[str] | None = None
    ) -> tuple[CommitSignature, ...]:
        """Head-anchor signatures ("this block is the head") by the same signers as :meth:`certify`."""
        msg = anchor_digest(header.height, header.hash)
        return tuple(CommitSignature(s, self.node(s).sign(msg)) for s in self._signers(header, signers))

    def genesis(self, *, timestamp: int = 0, view: int = 0) -> Block:
        """Block 0: every node registers itself; certified by a quorum."""
        txs = tuple(
            MembershipRegistration("node", n.name, n.public_key, n.name).sign(n) for n in self._nodes.values()
        )
        return self._seal(0, ZERO_HASH, view, timestamp, txs, None)

    def propose(
        self,
        ledger: Ledger,
        txs: Sequence[SignedTx | Transaction],
        *,
        view: int = 0,
        timestamp: int | None = None,
        signers: Sequence[str] | None = None,
    ) -> Block:
        """The next block of ``ledger``, built by the elected leader of (height, view), certified and anchored.

        Unsigned transactions whose signer role is ``"node"`` (recruitment,
        aggregate, binding, payment) are signed by the leader; anything else
        must arrive signed. ``timestamp`` defaults to the previous block's + 1
        (a logical clock, for reproducible chains).
        """
        leader = self.leader(ledger, view)
        signed = []
        for i, t in enumerate(txs):
            if isinstance(t, SignedTx):
                signed.append(t)
            elif isinstance(t, Transaction) and t.SIGNER_ROLE == "node":
                signed.append(t.sign(leader))
            else:
                raise ValueError(f"txs[{i}] must be a SignedTx (only node transactions are signed here)")
        ts = ledger.head_timestamp + 1 if timestamp is None else timestamp
        return self._seal(len(ledger), ledger.head_hash, view, ts, tuple(signed), signers)

    def _seal(self, height, prev, view, timestamp, txs, signers) -> Block:
        proposer = elect_leader(prev, height, view, self.names)
        header = BlockHeader(
            height, prev, proposer, view, merkle_root([t.encode() for t in txs]), int(timestamp), len(txs)
        )
        return Block(header, txs, self.certify(header, signers), self.anchor(header, signers))
