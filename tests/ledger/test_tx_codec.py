"""Transaction encodings derived from the dataclass fields.

Golden vectors: ``golden_tx.json`` holds payload and signed-envelope bytes (and a
whole chain's block hashes) produced by the hand-written codec this derivation
replaced; every kind must still encode to exactly those bytes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from mcsl_core.ledger import (
    AggregatedModel,
    Allocation,
    BadEncoding,
    DataSubmissionPayment,
    Identity,
    Installment,
    LedgerError,
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
    decode_tx,
)
from mcsl_core.ledger._tx import TX_KINDS
from tests.conftest import examples
from tests.ledger.helpers import make_world, run_task
from tests.ledger.test_keys_tx import SAMPLES

GOLDEN = json.loads((Path(__file__).parent / "golden_tx.json").read_text())

EXTRA = [
    MembershipRegistration("requestor", "r\u00e9q", bytes(range(100, 132)), "node3"),
    TaskPublication("req0", "t2", "x" * 50, 1.0, 1e-300, ("z", "a", "m"), None),
    TaskPublication("req0", "t3", "uni \u4e2d", 0.123456789012345, 12345678901234567.0, (), "00" * 32),
    WorkerRecruitment("t9", (), (), 0.0, (), "r"),
    DataSubmissionPayment("t0", "d1", "es0", 0.0, 1e20),
    ModelUpdate("t0", 2**40, "es1", "ff" * 32, 2**31),
    AggregatedModel("t0", 0, "node0", "01" * 32, ("a",), {}),
    AggregatedModel("t0", 1, "node0", "01" * 32, ("b", "a"), {"z": -1.5, "a": 3}),
    PaymentRecord("t0", 0, 0, 0, 1, 0, ()),
]


@pytest.mark.parametrize("i", range(len(SAMPLES) + len(EXTRA)))
def test_golden_bytes(i):
    tx = (SAMPLES + EXTRA)[i]
    ref = GOLDEN["txs"][i]
    assert tx.KIND == ref["kind"]
    assert tx.encode().hex() == ref["payload"]
    signed = tx.sign(Identity.generate(tx.SIGNER_ROLE, ref["signer"], seed=11))
    assert signed.encode().hex() == ref["signed"]
    assert SignedTx.decode(bytes.fromhex(ref["signed"])).tx == tx


def test_golden_chain(tmp_path):
    w = make_world(tmp_path / "c.db")
    run_task(w, "t0", rounds=2)
    run_task(w, "t1", rounds=1, settle=False)
    L = w.ledger
    assert [L.block(h).hash.hex() for h in range(len(L))] == GOLDEN["chain"]["block_hashes"]
    L.close()


# ---------------------------------------------------------------- strategies over every kind
_text = st.text(st.characters(min_codepoint=32, exclude_categories=("Cs",)), min_size=1, max_size=12)
_any_text = st.text(st.characters(min_codepoint=32, exclude_categories=("Cs",)), max_size=30)
_texts = st.lists(_text, max_size=4, unique=True).map(tuple)
_nonneg = st.floats(0.0, 1e300, allow_nan=False, allow_infinity=False)
_positive = st.floats(0.0, 1e300, allow_nan=False, allow_infinity=False, exclude_min=True)
_address = st.binary(min_size=32, max_size=32).map(bytes.hex)
_count = st.integers(0, 2**70)
_bids = st.lists(st.tuples(_text, _positive, _texts), max_size=4, unique_by=lambda b: b[0]).map(tuple)
_allocs = st.lists(
    st.tuples(st.sampled_from(["device", "edge_server", "node"]), _text, _count),
    max_size=5,
    unique_by=lambda a: (a[0], a[1]),
).map(tuple)

STRATEGIES: dict[str, st.SearchStrategy] = {
    "membership": st.builds(
        MembershipRegistration,
        st.sampled_from(["node", "edge_server", "requestor"]),
        _text,
        st.binary(min_size=32, max_size=32),
        _text,
    ),
    "task": st.builds(
        TaskPublication,
        _text,
        _text,
        _any_text,
        st.floats(0.0, 1.0),
        _nonneg,
        _texts,
        st.none() | _address,
    ),
    "recruitment": st.builds(WorkerRecruitment, _text, _bids, _texts, _nonneg, _texts, _text),
    "data_payment": st.builds(DataSubmissionPayment, _text, _text, _text, _nonneg, _nonneg),
    "update": st.builds(ModelUpdate, _text, _count, _text, _address, st.integers(1, 2**70)),
    "aggregate": st.builds(
        AggregatedModel,
        _text,
        _count,
        _text,
        _address,
        st.lists(_text, min_size=1, max_size=4, unique=True).map(tuple),
        st.dictionaries(_text, st.floats(allow_nan=False, allow_infinity=False), max_size=3),
    ),
    "binding": st.builds(ResultBinding, _text, _count, _text, _address),
    "payment": st.builds(PaymentRecord, _text, _nonneg, _nonneg, _nonneg, _positive, _count, _allocs),
    # the payment game's moves: installment ``index`` of ``of`` paid in full or not at all
    "installment": st.integers(1, 40).flatmap(
        lambda of: st.builds(
            lambda task, i, who, due, pay: Installment(task, i, of, who, due, due if pay else 0),
            _text,
            st.integers(0, of - 1),
            _text,
            _count,
            st.booleans(),
        )
    ),
    "release": st.builds(ResultRelease, _text, _count, _text, st.none() | _address),
    "collection": st.builds(PaymentCollection, _text, _count, _count, _allocs),
}


def test_every_kind_has_a_strategy():
    assert set(STRATEGIES) == set(TX_KINDS)


def _field_names(tx: Transaction) -> set[str]:
    return {f.name for f in dataclasses.fields(tx)}


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
@settings(max_examples=examples(40), deadline=None)
@given(data=st.data())
def test_every_field_round_trips(kind, data):
    tx = data.draw(STRATEGIES[kind])
    enc = tx.encode()
    body = json.loads(enc)["body"]
    assert set(body) == _field_names(tx)  # no field left out of the signed bytes
    back = decode_tx(enc)
    assert type(back) is type(tx)
    for f in dataclasses.fields(tx):  # field by field, so a failure names the field
        assert getattr(back, f.name) == getattr(tx, f.name), f.name
    assert back.encode() == enc


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
@settings(max_examples=examples(40), deadline=None)
@given(data=st.data())
def test_a_changed_field_breaks_the_signature(kind, data):
    tx = data.draw(STRATEGIES[kind])
    other = data.draw(STRATEGIES[kind])
    name = data.draw(st.sampled_from(sorted(_field_names(tx))))
    new_value = getattr(other, name)
    if new_value == getattr(tx, name):
        return  # the same value: nothing changed, nothing to detect
    signer = Identity.generate(tx.SIGNER_ROLE, "s", seed=5)
    stx = tx.sign(signer)
    try:
        changed = dataclasses.replace(tx, **{name: new_value})
    except ValueError:  # the swapped value breaks a cross-field rule (an installment's index < of)
        assume(False)
    forged = SignedTx(changed.encode(), stx.signer, stx.signature)
    assert forged.payload != stx.payload
    assert stx.verify() and not forged.verify()


@settings(max_examples=examples(40), deadline=None)
@given(kind=st.sampled_from(sorted(STRATEGIES)), data=st.data())
@example(kind="update", data=None)  # a string where an int belongs
def test_wrong_json_type_is_a_bad_encoding(kind, data):
    if data is None:
        bad = SAMPLES[5].encode().replace(b'"round":3', b'"round":"3"')
    else:
        tx = data.draw(STRATEGIES[kind])
        obj = json.loads(tx.encode())
        name = data.draw(st.sampled_from(sorted(obj["body"])))
        obj["body"][name] = {"not": ["a", "field", "value"]}  # no field type is an object of lists
        bad = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(BadEncoding):
        decode_tx(bad)


# ---------------------------------------------------------------- a new kind needs only its fields
def _upper(v: str) -> str:
    return v.upper()


def _lower(x, name: str) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{name} must be a string")
    return x.lower()


def test_a_new_kind_needs_only_kind_version_and_fields():
    @dataclass(frozen=True)
    class Probe(Transaction):
        KIND: ClassVar[str] = "test_probe"
        VERSION: ClassVar[int] = 3
        SIGNER_ROLE: ClassVar[str] = "requestor"

        name: str
        count: int
        rate: float
        blob: bytes
        tags: tuple[str, ...]
        note: str | None
        metrics: dict[str, float]
        shares: tuple[Allocation, ...]
        code: str = field(default="ab", metadata={"encode": _upper, "decode": _lower})

    try:
        tx = Probe("p", 7, 2, b"\x00\xff", ("a", "b"), None, {"m": 1.5}, (Allocation("node", "n0", 3),))
        obj = json.loads(tx.encode())
        assert obj == {
            "kind": "test_probe",
            "v": 3,
            "body": {
                "name": "p",
                "count": 7,
                "rate": 2.0,
                "blob": "00ff",
                "tags": ["a", "b"],
                "note": None,
                "metrics": {"m": 1.5},
                "shares": [["node", "n0", 3]],
                "code": "AB",
            },
        }
        assert b'"rate":2.0' in tx.encode()  # a float field is written as a float, whatever was passed
        back = decode_tx(tx.encode())
        assert type(back) is Probe and back == tx
        assert isinstance(back.shares[0], Allocation) and back.tags == ("a", "b")
        with pytest.raises(BadEncoding, match="count"):
            decode_tx(tx.encode().replace(b'"count":7', b'"count":"7"'))
        with pytest.raises(BadEncoding, match="v"):
            decode_tx(tx.encode().replace(b'"v":3', b'"v":1'))
        with pytest.raises(TypeError, match="already taken"):

            @dataclass(frozen=True)
            class Twin(Transaction):
                KIND: ClassVar[str] = "test_probe"
                VERSION: ClassVar[int] = 1
                SIGNER_ROLE: ClassVar[str] = "node"
    finally:
        TX_KINDS.pop("test_probe", None)
    with pytest.raises(TypeError, match="VERSION"):

        @dataclass(frozen=True)
        class NoVersion(Transaction):
            KIND: ClassVar[str] = "test_no_version"
            SIGNER_ROLE: ClassVar[str] = "node"

    assert "test_no_version" not in TX_KINDS


def test_a_kind_without_a_chain_rule_is_refused_by_the_ledger(tmp_path):
    @dataclass(frozen=True)
    class Unruled(Transaction):
        KIND: ClassVar[str] = "test_unruled"
        VERSION: ClassVar[int] = 1
        SIGNER_ROLE: ClassVar[str] = "node"
        note: str

    try:
        w = make_world(tmp_path / "c.db")
        before = len(w.ledger)
        with pytest.raises(LedgerError, match="no chain rule .*test_unruled"):
            w.ledger.append(w.consortium.propose(w.ledger, [Unruled("x")]))
        assert len(w.ledger) == before and w.ledger.verify().ok
        w.ledger.close()
    finally:
        TX_KINDS.pop("test_unruled", None)
