"""Content-addressed model store."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mcsl_core.ledger import ModelStore, StoreIntegrityError, decode_tree, encode_tree, tree_address
from tests.conftest import examples
from tests.ledger.helpers import tree


def _same(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        a = np.asarray(a)
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(b, a)


def test_put_get_round_trip(tmp_path, rng):
    store = ModelStore(tmp_path / "models")
    t = tree(rng)
    a = store.put(t)
    assert a == tree_address(t) == hashlib.sha256(encode_tree(t)).hexdigest()
    assert a in store and store.path(a).is_file()
    _same(t, store.get(a))
    assert store.put(t) == a  # idempotent
    assert ModelStore(tmp_path / "models").get(a) is not None  # a second instance reads it


def test_address_covers_dtype_shape_and_keys(rng):
    w = rng.standard_normal((4, 3)).astype(np.float32)
    base = tree_address({"w": w})
    assert tree_address({"w": w.astype(np.float64)}) != base
    assert tree_address({"w": w.reshape(3, 4)}) != base
    assert tree_address({"v": w}) != base
    assert tree_address([w]) != base
    assert tree_address({"w": w.copy()}) == base
    assert tree_address({"w": np.asfortranarray(w)}) == base  # layout is not content
    assert tree_address({"w": w.astype(">f4")}) == base  # byte order is not content
    assert tree_address({"a": 1, "b": 2}) == tree_address({"b": 2, "a": 1})


def test_integrity_checked_on_read(tmp_path, rng):
    store = ModelStore(tmp_path)
    a = store.put(tree(rng))
    p = store.path(a)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError, match=a):
        store.get(a)
    with pytest.raises(FileNotFoundError):
        store.get("00" * 32)
    with pytest.raises(ValueError, match="address"):
        store.get("not-an-address")


def test_bad_trees_rejected():
    with pytest.raises(ValueError, match="dtype"):
        encode_tree({"x": np.array(["a"])})
    with pytest.raises(ValueError, match="keys"):
        encode_tree({1: np.zeros(2)})
    with pytest.raises(ValueError):
        decode_tree(b"junk")
    with pytest.raises(ValueError, match="trailing"):
        decode_tree(encode_tree([1.0]) + b"\x00")


def test_no_temporary_files_left(tmp_path, rng):
    store = ModelStore(tmp_path)
    for _ in range(3):
        store.put(tree(rng))
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []


@settings(max_examples=examples(40), deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int8, np.int64, np.bool_, np.complex64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )
)
def test_encode_decode_property(arr):
    t = {"a": arr, "nested": [arr, {"z": arr}]}
    _same(t, decode_tree(encode_tree(t)))


# FIPS 180-2 appendix B.1 and the empty-message digest: published SHA-256 values
_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_put_bytes_known_addresses(tmp_path):
    store = ModelStore(tmp_path)
    assert store.put_bytes(b"abc") == _ABC
    assert store.put_bytes(bytearray(b"")) == _EMPTY
    assert (tmp_path / "ba" / _ABC).read_bytes() == b"abc"
    assert (tmp_path / "e3" / _EMPTY).read_bytes() == b""
    assert store.get_bytes(_ABC) == b"abc" and store.get_bytes(_EMPTY) == b""
    assert store.put_bytes(memoryview(b"abc")) == _ABC and _ABC in store
    with pytest.raises(ValueError, match="data"):
        store.put_bytes("abc")


def test_put_bytes_does_not_rewrite_an_existing_address(tmp_path):
    store = ModelStore(tmp_path)
    a = store.put_bytes(b"payload")
    p = store.path(a)
    before = p.stat().st_mtime_ns
    p.write_bytes(b"tampered")  # a second put must not mask (or repair) what is stored
    os.utime(p, ns=(before, before))
    assert store.put_bytes(b"payload") == a and p.read_bytes() == b"tampered"
    with pytest.raises(StoreIntegrityError, match=a):
        store.get_bytes(a)
    with pytest.raises(StoreIntegrityError, match="not a model tree"):
        store.get(store.put_bytes(b"raw bytes, not a tree"))


@settings(max_examples=examples(40), deadline=None)
@given(data=st.binary(max_size=5000))
def test_put_bytes_round_trip(tmp_path_factory, data):
    store = ModelStore(tmp_path_factory.mktemp("bytes"))
    a = store.put_bytes(data)
    assert a == hashlib.sha256(data).hexdigest() and store.get_bytes(a) == data
    assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == [a]
