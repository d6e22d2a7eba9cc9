"""Transactions: canonical, versioned payloads signed by a chain member.

Each payload class has a ``KIND`` tag, a ``VERSION`` and the ``SIGNER_ROLE``
allowed to sign it. ``encode()`` gives canonical JSON bytes (see
:mod:`._encoding`) that include the kind and version, so one signature covers
exactly one meaning; ``decode()`` accepts only the canonical bytes.

A :class:`SignedTx` carries the payload bytes, the signer's raw public key and
an Ed25519 signature over the 32-byte digest ``SHA-256("mcsl-tx" || 0 || payload)``
(paper IV-C step 3: updates are signed with the server's private key).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from mcsl_core.ledger._encoding import canonical_json, check_hex, check_text, loads_json
from mcsl_core.ledger._errors import BadEncoding
from mcsl_core.ledger._keys import Identity, check_role, verify_signature

__all__ = [
    "TX_KINDS",
    "AggregatedModel",
    "Allocation",
    "Bid",
    "DataSubmissionPayment",
    "MembershipRegistration",
    "ModelUpdate",
    "PaymentRecord",
    "ResultBinding",
    "SignedTx",
    "TaskPublication",
    "Transaction",
    "WorkerRecruitment",
    "decode_tx",
    "tx_digest",
]

_TX_DOMAIN = b"mcsl-tx\x00"
_STX_MAGIC = b"MCSLSTX1"


def tx_digest(payload: bytes) -> bytes:
    """The 32-byte digest a transaction signature covers."""
    return hashlib.sha256(_TX_DOMAIN + payload).digest()


# ---------------------------------------------------------------- field checks
def _int(name: str, x: Any, lo: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"{name} must be an int, got {x!r}")
    if x < lo:
        raise ValueError(f"{name} must be >= {lo}, got {x}")
    return x


def _float(name: str, x: Any, lo: float | None = 0.0, hi: float | None = None) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{name} must be a number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x!r}")
    if lo is not None and x < lo:
        raise ValueError(f"{name} must be >= {lo:g}, got {x!r}")
    if hi is not None and x > hi:
        raise ValueError(f"{name} must be <= {hi:g}, got {x!r}")
    return x


def _texts(name: str, xs: Any, *, unique: bool = True) -> tuple[str, ...]:
    if isinstance(xs, (str, bytes)) or not isinstance(xs, (list, tuple)):
        raise ValueError(f"{name} must be a list of strings, got {type(xs).__name__}")
    out = tuple(check_text(f"{name}[{i}]", x, max_len=200) for i, x in enumerate(xs))
    if unique and len(set(out)) != len(out):
        raise ValueError(f"{name} has duplicate entries")
    return out


def _address(name: str, x: Any) -> str:
    return check_hex(name, x, 32)


class Bid(NamedTuple):
    """A device's offer to the recruitment contract: the sensing locations it covers at a cost."""

    device: str
    cost: float  # > 0, in currency units
    locations: tuple[str, ...]


def make_bid(i: int, b: Any) -> Bid:
    if isinstance(b, dict):
        b = (b.get("device"), b.get("cost"), b.get("locations"))
    if not isinstance(b, (tuple, list)) or len(b) != 3:
        raise ValueError(f"bids[{i}] must be (device, cost, locations)")
    dev = check_text(f"bids[{i}].device", b[0], max_len=200)
    cost = _float(f"bids[{i}].cost", b[1])
    if cost <= 0:
        raise ValueError(f"bids[{i}].cost must be > 0, got {cost!r}")
    return Bid(dev, cost, _texts(f"bids[{i}].locations", b[2]))


class Allocation(NamedTuple):
    """One payee's share of a settlement, in integer minor units (exact money)."""

    role: str  # "device" | "edge_server" | "node"
    payee: str
    amount: int  # minor units, >= 0


_PAYEE_ROLES = ("device", "edge_server", "node")


# ---------------------------------------------------------------- base class
class Transaction:
    """Base of every payload: canonical encoding, decoding, signing."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1
    SIGNER_ROLE: ClassVar[str]
    #: True when the signer must be the proposer of the block that carries the tx.
    BY_PROPOSER: ClassVar[bool] = False

    def _fields(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @classmethod
    def _from_fields(cls, d: dict[str, Any]) -> Transaction:  # pragma: no cover
        raise NotImplementedError

    @property
    def actor(self) -> str | None:
        """Member name the signer must have (None: any member of SIGNER_ROLE)."""
        return None

    @property
    def task(self) -> str | None:
        return getattr(self, "task_id", None)

    def encode(self) -> bytes:
        """Canonical versioned bytes (what the signature covers)."""
        return canonical_json(
            {"kind": self.KIND, "v": self.VERSION, "body": self._fields()}, self.KIND, checked=True
        )

    @classmethod
    def decode(cls, data: bytes) -> Transaction:
        tx = decode_tx(data)
        if cls is not Transaction and not isinstance(tx, cls):
            raise BadEncoding(f"expected a {cls.KIND} transaction, got {tx.KIND}")
        return tx

    def sign(self, identity: Identity) -> SignedTx:
        """Sign with ``identity``; the role and name rules are checked by the ledger on append."""
        payload = self.encode()
        return SignedTx(payload, identity.public_key, identity.sign(tx_digest(payload)))


def _expect_keys(kind: str, d: Any, keys: set[str]) -> dict[str, Any]:
    if not isinstance(d, dict) or set(d) != keys:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{kind} body must have fields {sorted(keys)}, got {got}")
    return d


# ---------------------------------------------------------------- payloads
@dataclass(frozen=True)
class MembershipRegistration(Transaction):
    """Admit a member (genesis: each consortium node registers itself; later nodes admit
    edge servers and requestors). The consortium node set is fixed by genesis."""

    KIND: ClassVar[str] = "membership"
    SIGNER_ROLE: ClassVar[str] = "node"

    role: str
    name: str
    public_key: bytes  # shape=[32]
    admitted_by: str

    def __post_init__(self):
        check_role("role", self.role)
        check_text("name", self.name, max_len=200)
        check_text("admitted_by", self.admitted_by, max_len=200)
        if not isinstance(self.public_key, (bytes, bytearray)) or len(self.public_key) != 32:
            raise ValueError("public_key must be 32 raw bytes")
        object.__setattr__(self, "public_key", bytes(self.public_key))

    @property
    def actor(self) -> str:
        return self.admitted_by

    def _fields(self):
        return {
            "role": self.role,
            "name": self.name,
            "public_key": self.public_key.hex(),
            "admitted_by": self.admitted_by,
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"role", "name", "public_key", "admitted_by"})
        return cls(
            d["role"],
            d["name"],
            bytes.fromhex(check_hex("public_key", d["public_key"], 32)),
            d["admitted_by"],
        )


@dataclass(frozen=True)
class TaskPublication(Transaction):
    """An MCS learning request (paper IV-A): requestor, task, description, requirement, budget.

    ``requirement`` is the target performance (e.g. test accuracy in [0, 1]);
    ``locations`` are the sensing locations the task needs covered;
    ``initial_model`` is an optional content address (hex SHA-256) in the model store.
    """

    KIND: ClassVar[str] = "task"
    SIGNER_ROLE: ClassVar[str] = "requestor"

    requestor: str
    task_id: str
    description: str
    requirement: float
    budget: float
    locations: tuple[str, ...] = ()
    initial_model: str | None = None

    def __post_init__(self):
        check_text("requestor", self.requestor, max_len=200)
        check_text("task_id", self.task_id, max_len=200)
        check_text("description", self.description, allow_empty=True)
        object.__setattr__(self, "requirement", _float("requirement", self.requirement, 0.0, 1.0))
        object.__setattr__(self, "budget", _float("budget", self.budget, 0.0))
        object.__setattr__(self, "locations", _texts("locations", self.locations))
        if self.initial_model is not None:
            _address("initial_model", self.initial_model)

    @property
    def actor(self):
        return self.requestor

    def _fields(self):
        return {
            "requestor": self.requestor,
            "task_id": self.task_id,
            "description": self.description,
            "requirement": self.requirement,
            "budget": self.budget,
            "locations": list(self.locations),
            "initial_model": self.initial_model,
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(
            cls.KIND,
            d,
            {"requestor", "task_id", "description", "requirement", "budget", "locations", "initial_model"},
        )
        return cls(
            d["requestor"],
            d["task_id"],
            d["description"],
            d["requirement"],
            d["budget"],
            tuple(d["locations"]) if isinstance(d["locations"], list) else d["locations"],
            d["initial_model"],
        )


@dataclass(frozen=True)
class WorkerRecruitment(Transaction):
    """Output of the worker-recruitment contract for a task, with the bids it ran on.

    The ledger re-runs :func:`recruit_workers` on ``bids`` and the task's budget and
    locations and rejects the block if the result differs (rule ``contract``).
    """

    KIND: ClassVar[str] = "recruitment"
    SIGNER_ROLE: ClassVar[str] = "node"
    BY_PROPOSER: ClassVar[bool] = True

    task_id: str
    bids: tuple[Bid, ...]
    selected: tuple[str, ...]
    cost: float
    covered: tuple[str, ...]
    rule: str

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        if isinstance(self.bids, (str, bytes)) or not isinstance(self.bids, (list, tuple)):
            raise ValueError("bids must be a list of (device, cost, locations)")
        bids = tuple(make_bid(i, b) for i, b in enumerate(self.bids))
        if len({b.device for b in bids}) != len(bids):
            raise ValueError("bids has two bids from one device")
        object.__setattr__(self, "bids", bids)
        object.__setattr__(self, "selected", _texts("selected", self.selected))
        object.__setattr__(self, "covered", _texts("covered", self.covered))
        object.__setattr__(self, "cost", _float("cost", self.cost))
        check_text("rule", self.rule, max_len=200)

    def _fields(self):
        return {
            "task_id": self.task_id,
            "bids": [[b.device, b.cost, list(b.locations)] for b in self.bids],
            "selected": list(self.selected),
            "cost": self.cost,
            "covered": list(self.covered),
            "rule": self.rule,
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "bids", "selected", "cost", "covered", "rule"})
        if not isinstance(d["bids"], list):
            raise ValueError("bids must be a list")
        bids = tuple(
            (b[0], b[1], tuple(b[2]) if isinstance(b[2], list) else b[2])
            if isinstance(b, list) and len(b) == 3
            else b
            for b in d["bids"]
        )
        return cls(d["task_id"], bids, _tuple(d["selected"]), d["cost"], _tuple(d["covered"]), d["rule"])


def _tuple(x):
    return tuple(x) if isinstance(x, list) else x


@dataclass(frozen=True)
class DataSubmissionPayment(Transaction):
    """An edge server's record that it pays a recruited device ``v + s`` for its data (paper IV-B)."""

    KIND: ClassVar[str] = "data_payment"
    SIGNER_ROLE: ClassVar[str] = "edge_server"

    task_id: str
    device: str
    edge_server: str
    v: float
    s: float

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        check_text("device", self.device, max_len=200)
        check_text("edge_server", self.edge_server, max_len=200)
        object.__setattr__(self, "v", _float("v", self.v))
        object.__setattr__(self, "s", _float("s", self.s))

    @property
    def actor(self):
        return self.edge_server

    @property
    def amount(self) -> float:
        return self.v + self.s

    def _fields(self):
        return {
            "task_id": self.task_id,
            "device": self.device,
            "edge_server": self.edge_server,
            "v": self.v,
            "s": self.s,
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "device", "edge_server", "v", "s"})
        return cls(d["task_id"], d["device"], d["edge_server"], d["v"], d["s"])


@dataclass(frozen=True)
class ModelUpdate(Transaction):
    """A signed local update (paper IV-C step 3): task, round, server, content address, sample count."""

    KIND: ClassVar[str] = "update"
    SIGNER_ROLE: ClassVar[str] = "edge_server"

    task_id: str
    round: int
    edge_server: str
    address: str
    num_samples: int

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        _int("round", self.round)
        check_text("edge_server", self.edge_server, max_len=200)
        _address("address", self.address)
        _int("num_samples", self.num_samples, 1)

    @property
    def actor(self):
        return self.edge_server

    def _fields(self):
        return {
            "task_id": self.task_id,
            "round": self.round,
            "edge_server": self.edge_server,
            "address": self.address,
            "num_samples": self.num_samples,
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "round", "edge_server", "address", "num_samples"})
        return cls(d["task_id"], d["round"], d["edge_server"], d["address"], d["num_samples"])


@dataclass(frozen=True)
class AggregatedModel(Transaction):
    """The leader's aggregate of a round (paper IV-C step 5): which updates it used, the new
    model's content address and its metrics (e.g. ``{"accuracy": 0.81}``)."""

    KIND: ClassVar[str] = "aggregate"
    SIGNER_ROLE: ClassVar[str] = "node"
    BY_PROPOSER: ClassVar[bool] = True

    task_id: str
    round: int
    leader: str
    address: str
    edge_servers: tuple[str, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        _int("round", self.round)
        check_text("leader", self.leader, max_len=200)
        _address("address", self.address)
        object.__setattr__(self, "edge_servers", _texts("edge_servers", self.edge_servers))
        if not self.edge_servers:
            raise ValueError("edge_servers must name at least one update")
        if not isinstance(self.metrics, dict):
            raise ValueError("metrics must be a dict of name -> number")
        m = {
            check_text("metrics key", k, max_len=200): _float(f"metrics[{k!r}]", v, None)
            for k, v in self.metrics.items()
        }
        object.__setattr__(self, "metrics", dict(sorted(m.items())))

    @property
    def actor(self):
        return self.leader

    def _fields(self):
        return {
            "task_id": self.task_id,
            "round": self.round,
            "leader": self.leader,
            "address": self.address,
            "edge_servers": list(self.edge_servers),
            "metrics": self.metrics,
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "round", "leader", "address", "edge_servers", "metrics"})
        return cls(
            d["task_id"], d["round"], d["leader"], d["address"], _tuple(d["edge_servers"]), d["metrics"]
        )


@dataclass(frozen=True)
class ResultBinding(Transaction):
    """Final model bound to the requestor's identity (paper IV-C step 6); ends the task's rounds."""

    KIND: ClassVar[str] = "binding"
    SIGNER_ROLE: ClassVar[str] = "node"
    BY_PROPOSER: ClassVar[bool] = True

    task_id: str
    round: int
    requestor: str
    address: str

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        _int("round", self.round)
        check_text("requestor", self.requestor, max_len=200)
        _address("address", self.address)

    def _fields(self):
        return {
            "task_id": self.task_id,
            "round": self.round,
            "requestor": self.requestor,
            "address": self.address,
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "round", "requestor", "address"})
        return cls(d["task_id"], d["round"], d["requestor"], d["address"])


@dataclass(frozen=True)
class PaymentRecord(Transaction):
    """Settlement of a finished task (paper IV-D): flat rates, total bill and its allocation.

    Amounts are integers in minor units (``minor_unit`` currency each) so that
    the allocations sum to ``total`` exactly.
    """

    KIND: ClassVar[str] = "payment"
    SIGNER_ROLE: ClassVar[str] = "node"
    BY_PROPOSER: ClassVar[bool] = True

    task_id: str
    w_l: float
    w_a: float
    w_b: float
    minor_unit: float
    total: int
    allocations: tuple[Allocation, ...]

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        for n in ("w_l", "w_a", "w_b"):
            object.__setattr__(self, n, _float(n, getattr(self, n)))
        mu = _float("minor_unit", self.minor_unit)
        if mu <= 0:
            raise ValueError(f"minor_unit must be > 0, got {mu!r}")
        object.__setattr__(self, "minor_unit", mu)
        _int("total", self.total)
        if isinstance(self.allocations, (str, bytes)) or not isinstance(self.allocations, (list, tuple)):
            raise ValueError("allocations must be a list of (role, payee, amount)")
        allocs = []
        for i, a in enumerate(self.allocations):
            if not isinstance(a, (list, tuple)) or len(a) != 3:
                raise ValueError(f"allocations[{i}] must be (role, payee, amount)")
            if a[0] not in _PAYEE_ROLES:
                raise ValueError(f"allocations[{i}].role must be one of {_PAYEE_ROLES}, got {a[0]!r}")
            allocs.append(
                Allocation(
                    a[0],
                    check_text(f"allocations[{i}].payee", a[1], max_len=200),
                    _int(f"allocations[{i}].amount", a[2]),
                )
            )
        if len({(a.role, a.payee) for a in allocs}) != len(allocs):
            raise ValueError("allocations has a payee twice")
        object.__setattr__(self, "allocations", tuple(allocs))

    def _fields(self):
        return {
            "task_id": self.task_id,
            "w_l": self.w_l,
            "w_a": self.w_a,
            "w_b": self.w_b,
            "minor_unit": self.minor_unit,
            "total": self.total,
            "allocations": [list(a) for a in self.allocations],
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "w_l", "w_a", "w_b", "minor_unit", "total", "allocations"})
        return cls(
            d["task_id"], d["w_l"], d["w_a"], d["w_b"], d["minor_unit"], d["total"], _tuple(d["allocations"])
        )


TX_KINDS: dict[str, type[Transaction]] = {
    c.KIND: c
    for c in (
        MembershipRegistration,
        TaskPublication,
        WorkerRecruitment,
        DataSubmissionPayment,
        ModelUpdate,
        AggregatedModel,
        ResultBinding,
        PaymentRecord,
    )
}


def decode_tx(data: bytes) -> Transaction:
    """Decode canonical payload bytes into the matching transaction class."""
    obj = loads_json(data, "transaction")  # canonical form: checked by re-encoding below
    if not isinstance(obj, dict) or set(obj) != {"kind", "v", "body"}:
        raise BadEncoding("transaction must be {kind, v, body}")
    cls = TX_KINDS.get(obj["kind"]) if isinstance(obj["kind"], str) else None
    if cls is None:
        raise BadEncoding(f"unknown transaction kind {obj['kind']!r}")
    if obj["v"] != cls.VERSION or isinstance(obj["v"], bool):
        raise BadEncoding(f"unsupported {cls.KIND} version {obj['v']!r}")
    try:
        tx = cls._from_fields(obj["body"])
    except (ValueError, TypeError, IndexError) as exc:
        raise BadEncoding(f"{cls.KIND}: {exc}") from None
    if tx.encode() != bytes(data):
        raise BadEncoding(f"{cls.KIND} is not in canonical form")
    return tx


# ---------------------------------------------------------------- signed envelope
@dataclass(frozen=True)
class SignedTx:
    """Payload bytes + signer public key + Ed25519 signature over :func:`tx_digest`."""

    payload: bytes
    signer: bytes  # shape=[32], raw public key
    signature: bytes  # shape=[64]

    def __post_init__(self):
        for n, size in (("signer", 32), ("signature", 64)):
            v = getattr(self, n)
            if not isinstance(v, (bytes, bytearray)) or len(v) != size:
                raise ValueError(f"{n} must be {size} bytes")
        if not isinstance(self.payload, (bytes, bytearray)):
            raise ValueError("payload must be bytes")
        for n in ("payload", "signer", "signature"):  # immutable: decodings are cached
            object.__setattr__(self, n, bytes(getattr(self, n)))

    @property
    def tx(self) -> Transaction:
        """Decoded payload (cached)."""
        cached = self.__dict__.get("_tx")
        if cached is None:
            cached = decode_tx(self.payload)
            object.__setattr__(self, "_tx", cached)
        return cached

    @property
    def digest(self) -> bytes:
        """The 32-byte digest the signature covers (cached)."""
        d = self.__dict__.get("_digest")
        if d is None:
            d = tx_digest(self.payload)
            object.__setattr__(self, "_digest", d)
        return d

    @property
    def txid(self) -> str:
        """Hex SHA-256 of the whole signed envelope (its Merkle leaf content)."""
        return hashlib.sha256(self.encode()).hexdigest()

    def verify(self) -> bool:
        """True when the signature is valid for the payload and the embedded key."""
        return verify_signature(self.signer, self.signature, self.digest)

    def encode(self) -> bytes:
        return _STX_MAGIC + bytes(self.signer) + bytes(self.signature) + bytes(self.payload)

    @classmethod
    def decode(cls, data: bytes) -> SignedTx:
        data = bytes(data)
        if len(data) < 8 + 96 or data[:8] != _STX_MAGIC:
            raise BadEncoding("signed transaction has a bad header")
        stx = cls(data[104:], data[8:40], data[40:104])
        _ = stx.tx  # decode now: a malformed payload is an encoding error
        return stx


# ---------------------------------------------------------------- the payment game (paper IV-D)
def _allocations(xs: Any) -> tuple[Allocation, ...]:
    if isinstance(xs, (str, bytes)) or not isinstance(xs, (list, tuple)):
        raise ValueError("allocations must be a list of (role, payee, amount)")
    out = []
    for i, a in enumerate(xs):
        if not isinstance(a, (list, tuple)) or len(a) != 3 or a[0] not in _PAYEE_ROLES:
            raise ValueError(f"allocations[{i}] must be (role in {_PAYEE_ROLES}, payee, amount)")
        payee = check_text(f"allocations[{i}].payee", a[1], max_len=200)
        out.append(Allocation(a[0], payee, _int(f"allocations[{i}].amount", a[2])))
    if len({(a.role, a.payee) for a in out}) != len(out):
        raise ValueError("allocations has a payee twice")
    return tuple(out)


@dataclass(frozen=True)
class Installment(Transaction):
    """The requestor's move in round ``index`` of the payment game: of the bill's ``of``
    installments it pays number ``index`` in full (``paid == due``: action c) or not
    (``paid == 0``: action d). Amounts in minor units of the task's payment record."""

    KIND: ClassVar[str] = "installment"
    SIGNER_ROLE: ClassVar[str] = "requestor"

    task_id: str
    index: int
    of: int
    requestor: str
    due: int
    paid: int

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        _int("index", self.index)
        _int("of", self.of, 1)
        check_text("requestor", self.requestor, max_len=200)
        _int("due", self.due)
        _int("paid", self.paid)
        if self.index >= self.of:
            raise ValueError(f"index must be < of = {self.of}, got {self.index}")
        if self.paid not in (0, self.due):
            raise ValueError(f"paid must be 0 or the whole installment {self.due}, got {self.paid}")

    @property
    def actor(self):
        return self.requestor

    def _fields(self):
        return {k: getattr(self, k) for k in ("task_id", "index", "of", "requestor", "due", "paid")}

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "index", "of", "requestor", "due", "paid"})
        return cls(d["task_id"], d["index"], d["of"], d["requestor"], d["due"], d["paid"])


@dataclass(frozen=True)
class ResultRelease(Transaction):
    """The leader's move in round ``index`` of the payment game: it releases the next share
    of the final result (``share``: its content address, action c) or withholds it
    (``share`` None, action d). Signed by the leader that finalised the model."""

    KIND: ClassVar[str] = "release"
    SIGNER_ROLE: ClassVar[str] = "node"

    task_id: str
    index: int
    leader: str
    share: str | None

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        _int("index", self.index)
        check_text("leader", self.leader, max_len=200)
        if self.share is not None:
            _address("share", self.share)

    @property
    def actor(self):
        return self.leader

    def _fields(self):
        return {"task_id": self.task_id, "index": self.index, "leader": self.leader, "share": self.share}

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "index", "leader", "share"})
        return cls(d["task_id"], d["index"], d["leader"], d["share"])


@dataclass(frozen=True)
class PaymentCollection(Transaction):
    """What the requestor actually paid over the installments (``collected``), allocated by
    the payment contract to the payees of the task's payment record, and the unpaid
    remainder of the bill (``owed``). Integer minor units."""

    KIND: ClassVar[str] = "collection"
    SIGNER_ROLE: ClassVar[str] = "node"
    BY_PROPOSER: ClassVar[bool] = True

    task_id: str
    collected: int
    owed: int
    allocations: tuple[Allocation, ...]

    def __post_init__(self):
        check_text("task_id", self.task_id, max_len=200)
        _int("collected", self.collected)
        _int("owed", self.owed)
        object.__setattr__(self, "allocations", _allocations(self.allocations))

    def _fields(self):
        return {
            "task_id": self.task_id,
            "collected": self.collected,
            "owed": self.owed,
            "allocations": [list(a) for a in self.allocations],
        }

    @classmethod
    def _from_fields(cls, d):
        d = _expect_keys(cls.KIND, d, {"task_id", "collected", "owed", "allocations"})
        return cls(d["task_id"], d["collected"], d["owed"], _tuple(d["allocations"]))


TX_KINDS.update({c.KIND: c for c in (Installment, ResultRelease, PaymentCollection)})
__all__ += ["Installment", "PaymentCollection", "ResultRelease"]
