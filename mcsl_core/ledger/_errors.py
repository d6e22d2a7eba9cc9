"""Ledger rejections: one exception class per validation rule.

Every rejection is a :class:`LedgerError` (a ``ValueError``) that names the rule
(``err.rule``), the block height and, where one transaction broke the rule, its
index in the block (``err.tx_index``).
"""

from __future__ import annotations

__all__ = [
    "BadAnchor",
    "BadCertificate",
    "BadEncoding",
    "BadHeight",
    "BadMerkleRoot",
    "BadPrevHash",
    "BadSignature",
    "BadTimestamp",
    "ContractMismatch",
    "GenesisError",
    "LedgerError",
    "MembershipError",
    "QuorumNotReached",
    "ReplayedTransaction",
    "RoundOutOfOrder",
    "SignerMismatch",
    "StorageError",
    "StoreIntegrityError",
    "TaskStateError",
    "UnregisteredKey",
    "WrongProposer",
    "WrongRole",
]


class LedgerError(ValueError):
    """A block or transaction broke a ledger rule.

    Attributes
    ----------
    rule : str
        Short rule name (``"prev_hash"``, ``"quorum"``, ``"tx_signature"``, ...).
    height : int or None
        Height of the offending block (None when not known yet).
    tx_index : int or None
        Index of the offending transaction inside the block, if any.
    """

    rule = "ledger"

    def __init__(self, detail: str, *, height: int | None = None, tx_index: int | None = None):
        self.detail = detail
        self.height = height
        self.tx_index = tx_index
        super().__init__(self._message())

    def _message(self) -> str:
        where = "" if self.height is None else f"height {self.height}: "
        tx = "" if self.tx_index is None else f"tx {self.tx_index}: "
        return f"{where}rule '{self.rule}' failed: {tx}{self.detail}"

    def at(self, height: int) -> LedgerError:
        """Return this error with its block height set (used while validating a block)."""
        self.height = height
        self.args = (self._message(),)
        return self


class BadEncoding(LedgerError):
    rule = "encoding"


class BadHeight(LedgerError):
    rule = "height"


class BadPrevHash(LedgerError):
    rule = "prev_hash"


class BadTimestamp(LedgerError):
    rule = "timestamp"


class WrongProposer(LedgerError):
    rule = "proposer"


class BadMerkleRoot(LedgerError):
    rule = "merkle_root"


class BadCertificate(LedgerError):
    rule = "certificate"


class QuorumNotReached(LedgerError):
    rule = "quorum"


class BadSignature(LedgerError):
    rule = "tx_signature"


class UnregisteredKey(LedgerError):
    rule = "unregistered_key"


class WrongRole(LedgerError):
    rule = "role"


class SignerMismatch(LedgerError):
    rule = "signer"


class ReplayedTransaction(LedgerError):
    rule = "replay"


class RoundOutOfOrder(LedgerError):
    rule = "round_order"


class TaskStateError(LedgerError):
    rule = "task_state"


class ContractMismatch(LedgerError):
    rule = "contract"


class GenesisError(LedgerError):
    rule = "genesis"


class MembershipError(LedgerError):
    rule = "membership"


class BadAnchor(LedgerError):
    """The head anchor is invalid, missing, or certifies a block the file no longer holds."""

    rule = "anchor"


class StorageError(LedgerError):
    """The ledger file cannot be read as a ledger (a damaged page, a missing table, a wrong column type)."""

    rule = "storage"


class StoreIntegrityError(ValueError):
    """A stored model's bytes do not hash to the address they are stored under."""
