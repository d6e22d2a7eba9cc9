"""Identities and transactions: key files, canonical encodings, signatures."""

from __future__ import annotations

import json
import os
import stat
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcsl_core.ledger import (
    AggregatedModel,
    BadEncoding,
    DataSubmissionPayment,
    Identity,
    MembershipRegistration,
    ModelUpdate,
    PaymentRecord,
    ResultBinding,
    SignedTx,
    TaskPublication,
    Transaction,
    WorkerRecruitment,
    decode_tx,
)
from mcsl_core.ledger._keys import verify_signature
from mcsl_core.ledger._tx import tx_digest
from tests.conftest import examples

A = "ab" * 32
B = "cd" * 32

SAMPLES = [
    MembershipRegistration("edge_server", "es0", bytes(range(32)), "node0"),
    TaskPublication("req0", "t0", "digits é", 0.8, 100, ("x", "y"), A),
    TaskPublication("req0", "t1", "", 0.0, 0.0),
    WorkerRecruitment(
        "t0",
        (("d0", 1.5, ("x",)), ("d1", 2, ("x", "y"))),
        ("d1",),
        2.0,
        ("x", "y"),
        "greedy-budgeted-max-coverage/1",
    ),
    DataSubmissionPayment("t0", "d1", "es0", 3.25, 0.5),
    ModelUpdate("t0", 3, "es0", A, 120),
    AggregatedModel("t0", 3, "node1", B, ("es0", "es1"), {"loss": 0.25, "accuracy": 0.9}),
    ResultBinding("t0", 3, "req0", B),
    PaymentRecord(
        "t0",
        0.5,
        1.0,
        0.1,
        0.01,
        30,
        (("device", "d1", 10), ("edge_server", "es0", 15), ("node", "node1", 5)),
    ),
]


@pytest.mark.parametrize("tx", SAMPLES, ids=lambda t: t.KIND)
def test_round_trip_every_kind(tx):
    data = tx.encode()
    back = decode_tx(data)
    assert back == tx and type(back) is type(tx)
    assert back.encode() == data
    assert type(tx).decode(data) == tx
    obj = json.loads(data)
    assert obj["kind"] == tx.KIND and obj["v"] == 1


@pytest.mark.parametrize("tx", SAMPLES, ids=lambda t: t.KIND)
def test_signed_round_trip_and_signature(tx):
    ident = Identity.generate(tx.SIGNER_ROLE, "x", seed=1)
    stx = tx.sign(ident)
    assert stx.verify()
    back = SignedTx.decode(stx.encode())
    assert back == stx and back.tx == tx and back.verify()
    # the signature covers the digest of exactly these payload bytes
    assert verify_signature(ident.public_key, stx.signature, tx_digest(stx.payload))
    other = Identity.generate(tx.SIGNER_ROLE, "y", seed=1)
    assert not SignedTx(stx.payload, other.public_key, stx.signature).verify()


def test_non_canonical_bytes_rejected():
    data = SAMPLES[5].encode()
    for bad in (
        data.replace(b",", b", ", 1),
        data.replace(b'"round":3', b'"round":3.0'),
        data.replace(b'"v":1', b'"v":2'),
        data.replace(b'"update"', b'"nope"'),
        data + b" ",
        b"\xff" + data,
        data.replace(b'"num_samples":120,', b""),
    ):
        with pytest.raises(BadEncoding):
            decode_tx(bad)
    with pytest.raises(BadEncoding):
        decode_tx(json.dumps({"body": {}, "kind": "update", "v": 1}, separators=(",", ":")).encode())
    with pytest.raises(BadEncoding):
        ModelUpdate.decode(SAMPLES[4].encode())  # a data payment is not an update


def test_field_checks_name_the_field():
    with pytest.raises(ValueError, match="round"):
        ModelUpdate("t", -1, "es", A, 1)
    with pytest.raises(ValueError, match="address"):
        ModelUpdate("t", 0, "es", "zz", 1)
    with pytest.raises(ValueError, match="requirement"):
        TaskPublication("r", "t", "", 1.5, 1)
    with pytest.raises(ValueError, match="budget"):
        TaskPublication("r", "t", "", 0.5, float("nan"))
    with pytest.raises(ValueError, match="cost"):
        WorkerRecruitment("t", (("d", 0.0, ()),), (), 0.0, (), "r")
    with pytest.raises(ValueError, match="metrics"):
        AggregatedModel("t", 0, "n", A, ("es",), {"acc": float("inf")})
    with pytest.raises(ValueError, match="allocations"):
        PaymentRecord("t", 0, 0, 0, 0.01, 1, (("bank", "x", 1),))
    with pytest.raises(ValueError, match="role"):
        MembershipRegistration("admin", "x", bytes(32), "n")


@settings(max_examples=examples(60), deadline=None)
@given(
    task=st.text(min_size=1, max_size=20).filter(lambda s: all(ord(c) >= 32 for c in s)),
    rnd=st.integers(0, 2**40),
    n=st.integers(1, 2**31),
    v=st.floats(0, 1e9, allow_nan=False),
    s=st.floats(0, 1e9, allow_nan=False),
)
def test_round_trip_property(task, rnd, n, v, s):
    for tx in (ModelUpdate(task, rnd, "es", A, n), DataSubmissionPayment(task, "d", "es", v, s)):
        assert decode_tx(tx.encode()) == tx


def test_identity_seeded_is_deterministic_and_role_bound():
    a = Identity.generate("node", "n0", seed=3)
    assert a.public_key == Identity.generate("node", "n0", seed=3).public_key
    assert a.public_key != Identity.generate("node", "n0", seed=4).public_key
    assert a.public_key != Identity.generate("requestor", "n0", seed=3).public_key
    assert Identity.generate("node", "n0").public_key != Identity.generate("node", "n0").public_key
    with pytest.raises(ValueError, match="role"):
        Identity.generate("miner", "x")


def test_identity_save_load(tmp_path):
    ident = Identity.generate("edge_server", "es7", seed=1)
    p = ident.save(tmp_path / "es7.key", "correct horse")
    text = p.read_text()
    assert "ENCRYPTED PRIVATE KEY" in text and ident.private_key.private_bytes_raw().hex() not in text
    back = Identity.load(p, "correct horse")
    assert (back.role, back.name, back.public_key) == ("edge_server", "es7", ident.public_key)
    assert back.sign(b"m") == ident.sign(b"m")
    with pytest.raises(ValueError, match="passphrase"):
        Identity.load(p, "wrong")
    with pytest.raises(ValueError, match="passphrase"):
        ident.save(tmp_path / "x.key", "")
    (tmp_path / "junk.key").write_text("not a key}")
    (tmp_path / "junk.key").chmod(0o600)
    with pytest.raises(ValueError, match="identity file"):
        Identity.load(tmp_path / "junk.key", "pw")


def test_base_class_decode_dispatches():
    assert isinstance(Transaction.decode(SAMPLES[0].encode()), MembershipRegistration)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_identity_files_are_private(tmp_path, monkeypatch):
    ident = Identity.generate("node", "n0", seed=2)
    seen = []
    real_replace = os.replace

    def spy(src, dst):  # the mode of the temporary file, with every byte written, before its rename
        seen.append(_mode(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    p = ident.save(tmp_path / "n0.key", "pw")
    assert _mode(p) == 0o600 and seen == [0o600]
    p.chmod(0o644)  # an existing looser file is tightened
    ident.save(p, "pw")
    assert _mode(p) == 0o600
    p.chmod(0o400)  # a stricter one is kept as strict
    ident.save(p, "pw")
    assert _mode(p) == 0o400
    assert [q.name for q in tmp_path.iterdir()] == ["n0.key"]  # no temporary file left


def test_identity_load_warns_on_a_readable_key(tmp_path):
    ident = Identity.generate("node", "n0", seed=2)
    p = ident.save(tmp_path / "n0.key", "pw")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Identity.load(p, "pw").public_key == ident.public_key
    for mode in (0o640, 0o604, 0o660):
        p.chmod(mode)
        with pytest.warns(UserWarning, match=f"mode {mode:04o}"):
            assert Identity.load(p, "pw").public_key == ident.public_key


def test_a_truncated_key_file_says_so(tmp_path):
    ident = Identity.generate("requestor", "r0", seed=2)
    full = ident.save(tmp_path / "r0.key", "pw").read_bytes()
    cut = tmp_path / "cut.key"
    for n in range(len(full)):  # every prefix of the file
        cut.write_bytes(full[:n])
        cut.chmod(0o600)
        with pytest.raises(ValueError, match=r"is truncated \(") as ei:
            Identity.load(cut, "pw")
        assert "passphrase" not in str(ei.value)
    doc = json.loads(full)
    pem = doc["key"]
    for k in range(len("-----BEGIN ENCRYPTED PRIVATE KEY-----"), len(pem) - 1, 7):  # cut inside the key
        cut.write_text(json.dumps({**doc, "key": pem[:k]}))
        cut.chmod(0o600)
        with pytest.raises(ValueError, match=r"is truncated \("):
            Identity.load(cut, "pw")
    # a whole key with a wrong passphrase is still a passphrase problem
    with pytest.raises(ValueError, match="wrong passphrase"):
        Identity.load(tmp_path / "r0.key", "nope")
