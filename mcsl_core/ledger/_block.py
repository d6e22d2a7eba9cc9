"""Blocks: header, transactions, Merkle root and the PBFT commit certificate.

The block hash is ``SHA-256("mcsl-block" || 0 || header)`` over the canonical
header bytes (height, previous hash, proposer, view, Merkle root, timestamp,
transaction count). The certificate holds node signatures over
``SHA-256("mcsl-commit" || 0 || block hash)``: what PBFT's commit phase produces,
a quorum ``ceil((n + f + 1) / 2)`` of them makes the block final.

A block may also carry a *head anchor*: quorum signatures over
``SHA-256("mcsl-head" || 0 || height (8 bytes, big-endian) || block hash)``,
which say "this block is the head of the chain". The ledger keeps the newest
anchor beside the blocks, so removing blocks from the top of a stored chain is
detected (an old anchor is not derivable from the blocks that remain).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mcsl_core.ledger._encoding import canonical_json, check_hex, check_text, loads_json, parse_canonical_json
from mcsl_core.ledger._errors import BadEncoding
from mcsl_core.ledger._tx import SignedTx

__all__ = [
    "ZERO_HASH",
    "Block",
    "BlockHeader",
    "CommitSignature",
    "anchor_digest",
    "commit_digest",
    "merkle_root",
]

ZERO_HASH = bytes(32)
_BLOCK_DOMAIN = b"mcsl-block\x00"
_COMMIT_DOMAIN = b"mcsl-commit\x00"
_HEAD_DOMAIN = b"mcsl-head\x00"
#: Marks the head-anchor part of a transported block (transaction parts start with b"MCSLSTX1").
_ANCHOR_MAGIC = b"MCSLANCHOR1"


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Merkle root over encoded transactions (RFC 6962 style).

    Leaf ``SHA-256(0x00 || tx)``, node ``SHA-256(0x01 || left || right)``; an odd
    node is promoted unchanged (no duplication, so two different lists never
    share a root); the empty list hashes to ``SHA-256("")``.
    """
    level = [hashlib.sha256(b"\x00" + bytes(x)).digest() for x in leaves]
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def commit_digest(block_hash: bytes) -> bytes:
    """What a commit signature signs (domain-separated block hash)."""
    return hashlib.sha256(_COMMIT_DOMAIN + bytes(block_hash)).digest()


def anchor_digest(height: int, block_hash: bytes) -> bytes:
    """What a head-anchor signature signs: the domain, the height and the block hash."""
    if isinstance(height, bool) or not isinstance(height, int) or not 0 <= height < 2**63:
        raise ValueError(f"height must be an int in [0, 2**63), got {height!r}")
    return hashlib.sha256(_HEAD_DOMAIN + height.to_bytes(8, "big") + bytes(block_hash)).digest()


class CommitSignature(NamedTuple):
    node: str  # consortium node id
    signature: bytes  # shape=[64], Ed25519 over commit_digest(block hash)


@dataclass(frozen=True)
class BlockHeader:
    """Block header; its canonical encoding is what the block hash covers."""

    height: int
    prev_hash: bytes  # shape=[32]
    proposer: str
    view: int
    merkle_root: bytes  # shape=[32]
    timestamp: int  # milliseconds since the epoch (or any monotone clock)
    n_tx: int
    VERSION = 1

    def __post_init__(self):
        for n in ("height", "view", "timestamp", "n_tx"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{n} must be a non-negative int, got {v!r}")
        for n in ("prev_hash", "merkle_root"):
            v = getattr(self, n)
            if not isinstance(v, (bytes, bytearray)) or len(v) != 32:
                raise ValueError(f"{n} must be 32 bytes")
            object.__setattr__(self, n, bytes(v))  # immutable: the encoding is cached
        check_text("proposer", self.proposer, max_len=200)

    def encode(self) -> bytes:
        cached = self.__dict__.get("_bytes")
        if cached is not None:
            return cached
        data = canonical_json(
            {
                "v": self.VERSION,
                "height": self.height,
                "prev_hash": self.prev_hash.hex(),
                "proposer": self.proposer,
                "view": self.view,
                "merkle_root": self.merkle_root.hex(),
                "timestamp": self.timestamp,
                "n_tx": self.n_tx,
            },
            "header",
            checked=True,
        )
        object.__setattr__(self, "_bytes", data)
        return data

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        d = loads_json(data, "block header")  # canonical form: checked by re-encoding below
        keys = {"v", "height", "prev_hash", "proposer", "view", "merkle_root", "timestamp", "n_tx"}
        if not isinstance(d, dict) or set(d) != keys:
            raise BadEncoding("block header has wrong fields")
        if d["v"] != cls.VERSION or isinstance(d["v"], bool):
            raise BadEncoding(f"unsupported block version {d['v']!r}")
        try:
            h = cls(
                d["height"],
                bytes.fromhex(check_hex("prev_hash", d["prev_hash"], 32)),
                d["proposer"],
                d["view"],
                bytes.fromhex(check_hex("merkle_root", d["merkle_root"], 32)),
                d["timestamp"],
                d["n_tx"],
            )
        except (ValueError, TypeError) as exc:
            raise BadEncoding(f"block header: {exc}") from None
        if h.encode() != bytes(data):
            raise BadEncoding("block header is not canonical")
        return h

    @property
    def hash(self) -> bytes:
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hashlib.sha256(_BLOCK_DOMAIN + self.encode()).digest()
            object.__setattr__(self, "_hash", cached)
        return cached


def encode_certificate(cert: Sequence[CommitSignature]) -> bytes:
    return canonical_json([[c.node, bytes(c.signature).hex()] for c in cert], "certificate")


def decode_certificate(data: bytes) -> tuple[CommitSignature, ...]:
    obj = parse_canonical_json(data, "certificate")
    if not isinstance(obj, list):
        raise BadEncoding("certificate must be a list")
    out = []
    for i, item in enumerate(obj):
        try:
            if not isinstance(item, list) or len(item) != 2:
                raise ValueError("entry must be [node, signature]")
            out.append(
                CommitSignature(
                    check_text("node", item[0], max_len=200),
                    bytes.fromhex(check_hex("signature", item[1], 64)),
                )
            )
        except ValueError as exc:
            raise BadEncoding(f"certificate[{i}]: {exc}") from None
    return tuple(out)


@dataclass(frozen=True)
class Block:
    """A header, its transactions, the commit certificate and (optionally) a head anchor.

    ``anchor`` holds node signatures over :func:`anchor_digest` of this block;
    like the certificate it is outside the block hash. The ledger stores only
    the newest block's anchor, so blocks read back from a ledger carry none.
    """

    header: BlockHeader
    txs: tuple[SignedTx, ...]
    certificate: tuple[CommitSignature, ...]
    anchor: tuple[CommitSignature, ...] = ()

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def encode_parts(self) -> tuple[bytes, bytes, list[bytes]]:
        """(header bytes, certificate bytes, [signed tx bytes]): what the ledger stores."""
        return self.header.encode(), encode_certificate(self.certificate), [t.encode() for t in self.txs]

    @classmethod
    def decode_parts(cls, header: bytes, certificate: bytes, txs: Sequence[bytes]) -> Block:
        return cls(
            BlockHeader.decode(header),
            tuple(SignedTx.decode(t) for t in txs),
            decode_certificate(certificate),
        )

    def encode(self) -> bytes:
        """One self-delimiting byte string (for transport between processes), anchor included."""
        h, c, ts = self.encode_parts()
        parts = [h, c, *ts]
        if self.anchor:
            parts.append(_ANCHOR_MAGIC + encode_certificate(self.anchor))
        return b"".join(len(p).to_bytes(4, "big") + p for p in parts)

    @classmethod
    def decode(cls, data: bytes) -> Block:
        data = bytes(data)
        parts, i = [], 0
        while i < len(data):
            if i + 4 > len(data):
                raise BadEncoding("truncated block")
            n = int.from_bytes(data[i : i + 4], "big")
            if i + 4 + n > len(data):
                raise BadEncoding("truncated block")
            parts.append(data[i + 4 : i + 4 + n])
            i += 4 + n
        if len(parts) < 2:
            raise BadEncoding("block needs a header and a certificate")
        anchor: tuple[CommitSignature, ...] = ()
        if len(parts) > 2 and parts[-1].startswith(_ANCHOR_MAGIC):
            anchor = decode_certificate(parts.pop()[len(_ANCHOR_MAGIC) :])
        block = cls.decode_parts(parts[0], parts[1], parts[2:])
        return block if not anchor else cls(block.header, block.txs, block.certificate, anchor)
