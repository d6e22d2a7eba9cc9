"""Transactions: canonical, versioned payloads signed by a chain member.

Each payload class has a ``KIND`` tag, a ``VERSION`` and the ``SIGNER_ROLE``
allowed to sign it. ``encode()`` gives canonical JSON bytes (see
:mod:`._encoding`) that include the kind and version, so one signature covers
exactly one meaning; ``decode()`` accepts only the canonical bytes.

The body of the encoding is derived from the dataclass fields (:func:`_codec`):
every field is encoded, in canonical JSON, by its annotated type, so a field
added to a payload is encoded and signed without further code. A field may
override its codec with ``field(metadata={"encode": f, "decode": g})``. A new
payload kind is a frozen dataclass subclass of :class:`Transaction` with its own
``KIND``, ``VERSION`` and ``SIGNER_ROLE``; it registers itself in ``TX_KINDS``.

A :class:`SignedTx` carries the payload bytes, the signer's raw public key and
an Ed25519 signature over the 32-byte digest ``SHA-256("mcsl-tx" || 0 || payload)``
(paper IV-C step 3: updates are signed with the server's private key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import types
import typing
from collections.abc import Callable
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
    "Installment",
    "MembershipRegistration",
    "ModelUpdate",
    "PaymentCollection",
    "PaymentRecord",
    "ResultBinding",
    "ResultRelease",
    "SignedTx",
    "TaskPublication",
    "Transaction",
    "WorkerRecruitment",
    "decode_tx",
    "tx_digest",
]

_TX_DOMAIN = b"mcsl-tx\x00"
#: Payload class by ``KIND``: every :class:`Transaction` subclass registers itself on definition.
TX_KINDS: dict[str, type[Transaction]] = {}
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


# ---------------------------------------------------------------- field codec
_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})*")
#: (field name, encoder, decoder) per payload class, built once from its dataclass fields.
_Plan = tuple[tuple[str, Callable[[Any], Any], Callable[[Any, str], Any]], ...]
_PLANS: dict[type, _Plan] = {}


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _check_type(kind: type | tuple[type, ...], what: str) -> Callable[[Any, str], Any]:
    def dec(x: Any, name: str) -> Any:
        if isinstance(x, bool) or not isinstance(x, kind):
            raise ValueError(f"{name} must be {what}, got {x!r}")
        return x

    return dec


def _hex_bytes(x: Any, name: str) -> bytes:
    if not isinstance(x, str) or _LOWER_HEX.fullmatch(x) is None:
        raise ValueError(f"{name} must be a lower-case hex string, got {x!r}")
    return bytes.fromhex(x)


def _codec_of(tp: Any) -> tuple[Callable[[Any], Any], Callable[[Any, str], Any]]:
    """(encode, decode) between a value of annotated type ``tp`` and its JSON form.

    str / int pass through, float is written as a float, bytes as lower-case hex,
    ``tuple[X, ...]`` and NamedTuples as JSON lists, ``dict[str, X]`` as objects,
    ``X | None`` as X or null. Decoders check the JSON type and name the field;
    value ranges are the payload's ``__post_init__``'s job.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str:
        return (lambda v: v), _check_type(str, "a string")
    if tp is int:
        return (lambda v: v), _check_type(int, "an int")
    if tp is float:
        return float, _check_type((int, float), "a number")
    if tp is bytes:
        return (lambda v: bytes(v).hex()), _hex_bytes
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        enc, dec = _codec_of(next(a for a in args if a is not type(None)))
        return (lambda v: None if v is None else enc(v)), (lambda x, n: None if x is None else dec(x, n))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        enc, dec = _codec_of(args[0])

        def dec_seq(x: Any, name: str) -> tuple:
            if not isinstance(x, list):
                raise ValueError(f"{name} must be a list, got {type(x).__name__}")
            return tuple(dec(v, f"{name}[{i}]") for i, v in enumerate(x))

        return (lambda v: [enc(x) for x in v]), dec_seq
    if origin is dict and args and args[0] is str:
        enc, dec = _codec_of(args[1])

        def dec_map(x: Any, name: str) -> dict:
            if not isinstance(x, dict):
                raise ValueError(f"{name} must be an object, got {type(x).__name__}")
            return {k: dec(v, f"{name}[{k!r}]") for k, v in x.items()}

        return (lambda v: {k: enc(x) for k, x in v.items()}), dec_map
    if _is_namedtuple(tp):
        hints = typing.get_type_hints(tp)
        parts = [(n, *_codec_of(hints[n])) for n in tp._fields]

        def dec_record(x: Any, name: str) -> tuple:
            if not isinstance(x, list) or len(x) != len(parts):
                raise ValueError(f"{name} must be a list [{', '.join(tp._fields)}]")
            return tp(*(d(v, f"{name}.{n}") for (n, _, d), v in zip(parts, x)))

        return (lambda v: [e(getattr(v, n)) for n, e, _ in parts]), dec_record
    raise TypeError(f"no canonical encoding for field type {tp!r}")


def _codec(cls: type) -> _Plan:
    """The encoding plan of payload class ``cls``: one entry per dataclass field."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        entries = []
        for f in dataclasses.fields(cls):
            enc, dec = _codec_of(hints[f.name])
            entries.append((f.name, f.metadata.get("encode", enc), f.metadata.get("decode", dec)))
        plan = _PLANS[cls] = tuple(entries)
    return plan


# ---------------------------------------------------------------- base class
class Transaction:
    """Base of every payload: canonical encoding, decoding, signing.

    Subclasses are frozen dataclasses that set ``KIND``, ``VERSION`` and
    ``SIGNER_ROLE``; their fields are the body of the encoding (all of them,
    in canonical JSON by their annotated types), so everything a payload holds
    is covered by its signature.
    """

    KIND: ClassVar[str]
    VERSION: ClassVar[int]
    SIGNER_ROLE: ClassVar[str]
    #: True when the signer must be the proposer of the block that carries the tx.
    BY_PROPOSER: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("KIND", "VERSION", "SIGNER_ROLE"):
            if name not in cls.__dict__:
                raise TypeError(f"transaction payload {cls.__name__} must set {name}")
        check_text("KIND", cls.KIND, max_len=200)
        _int("VERSION", cls.VERSION, 1)
        check_role("SIGNER_ROLE", cls.SIGNER_ROLE)
        if cls.KIND in TX_KINDS:
            raise TypeError(
                f"transaction kind {cls.KIND!r} is already taken by {TX_KINDS[cls.KIND].__name__}"
            )
        TX_KINDS[cls.KIND] = cls

    def _fields(self) -> dict[str, Any]:
        """The encoding's body: every dataclass field, by its codec."""
        return {name: enc(getattr(self, name)) for name, enc, _ in _codec(type(self))}

    @classmethod
    def _from_fields(cls, d: Any) -> Transaction:
        plan = _codec(cls)
        d = _expect_keys(cls.KIND, d, {name for name, _, _ in plan})
        return cls(**{name: dec(d[name], name) for name, _, dec in plan})

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
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class TaskPublication(Transaction):
    """An MCS learning request (paper IV-A): requestor, task, description, requirement, budget.

    ``requirement`` is the target performance (e.g. test accuracy in [0, 1]);
    ``locations`` are the sensing locations the task needs covered;
    ``initial_model`` is an optional content address (hex SHA-256) in the model store.
    """

    KIND: ClassVar[str] = "task"
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class WorkerRecruitment(Transaction):
    """Output of the worker-recruitment contract for a task, with the bids it ran on.

    The ledger re-runs :func:`recruit_workers` on ``bids`` and the task's budget and
    locations and rejects the block if the result differs (rule ``contract``).
    """

    KIND: ClassVar[str] = "recruitment"
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class DataSubmissionPayment(Transaction):
    """An edge server's record that it pays a recruited device ``v + s`` for its data (paper IV-B)."""

    KIND: ClassVar[str] = "data_payment"
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class ModelUpdate(Transaction):
    """A signed local update (paper IV-C step 3): task, round, server, content address, sample count."""

    KIND: ClassVar[str] = "update"
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class AggregatedModel(Transaction):
    """The leader's aggregate of a round (paper IV-C step 5): which updates it used, the new
    model's content address and its metrics (e.g. ``{"accuracy": 0.81}``)."""

    KIND: ClassVar[str] = "aggregate"
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class ResultBinding(Transaction):
    """Final model bound to the requestor's identity (paper IV-C step 6); ends the task's rounds."""

    KIND: ClassVar[str] = "binding"
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class PaymentRecord(Transaction):
    """Settlement of a finished task (paper IV-D): flat rates, total bill and its allocation.

    Amounts are integers in minor units (``minor_unit`` currency each) so that
    the allocations sum to ``total`` exactly.
    """

    KIND: ClassVar[str] = "payment"
    VERSION: ClassVar[int] = 1
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
        object.__setattr__(self, "allocations", _allocations(self.allocations))


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
    """Checked ``(role, payee, amount)`` triples: known roles, each payee once, integer amounts."""
    if isinstance(xs, (str, bytes)) or not isinstance(xs, (list, tuple)):
        raise ValueError("allocations must be a list of (role, payee, amount)")
    out = []
    for i, a in enumerate(xs):
        if not isinstance(a, (list, tuple)) or len(a) != 3:
            raise ValueError(f"allocations[{i}] must be (role, payee, amount)")
        if a[0] not in _PAYEE_ROLES:
            raise ValueError(f"allocations[{i}].role must be one of {_PAYEE_ROLES}, got {a[0]!r}")
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
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class ResultRelease(Transaction):
    """The leader's move in round ``index`` of the payment game: it releases the next share
    of the final result (``share``: its content address, action c) or withholds it
    (``share`` None, action d). Signed by the leader that finalised the model."""

    KIND: ClassVar[str] = "release"
    VERSION: ClassVar[int] = 1
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


@dataclass(frozen=True)
class PaymentCollection(Transaction):
    """What the requestor actually paid over the installments (``collected``), allocated by
    the payment contract to the payees of the task's payment record, and the unpaid
    remainder of the bill (``owed``). Integer minor units."""

    KIND: ClassVar[str] = "collection"
    VERSION: ClassVar[int] = 1
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
