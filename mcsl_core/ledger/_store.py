"""Content-addressed model store: the off-chain storage of the paper's footnote 2.

Models are too big for the chain; the chain records their address, the hex
SHA-256 of a canonical encoding of the parameter tree (structure, key names,
dtypes, shapes and little-endian C-order bytes), and the store maps addresses
back to trees. Reads re-hash and refuse bytes that do not match the address.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from mcsl_core._io import atomic_write_bytes
from mcsl_core.ledger._encoding import check_hex
from mcsl_core.ledger._errors import StoreIntegrityError

__all__ = ["ModelStore", "decode_tree", "encode_tree", "tree_address"]

_MAGIC = b"MCSLTREE1"


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def _enc(x: Any, out: list[bytes], path: str, depth: int) -> None:
    if depth > 64:
        raise ValueError(f"tree is nested deeper than 64 levels at {path}")
    if isinstance(x, dict):
        keys = list(x)
        if any(not isinstance(k, str) for k in keys):
            raise ValueError(f"tree{path}: dict keys must be strings")
        out.append(b"D" + _u32(len(keys)))
        for k in sorted(keys):
            kb = k.encode("utf-8")
            out.append(_u32(len(kb)) + kb)
            _enc(x[k], out, f"{path}[{k!r}]", depth + 1)
        return
    if isinstance(x, (list, tuple)):
        out.append(b"L" + _u32(len(x)))
        for i, v in enumerate(x):
            _enc(v, out, f"{path}[{i}]", depth + 1)
        return
    try:
        a = np.asarray(x)
    except Exception as exc:
        raise ValueError(f"tree{path}: not array-like ({exc})") from None
    if a.dtype.kind not in "biufc":
        raise ValueError(f"tree{path}: dtype {a.dtype} is not numeric or bool")
    # order="C" keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d)
    a = np.asarray(a, dtype=a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype, order="C")
    dt = a.dtype.str.encode("ascii")  # e.g. b'<f4', b'|b1'
    out.append(b"A" + _u32(len(dt)) + dt + _u32(a.ndim) + b"".join(struct.pack("<Q", s) for s in a.shape))
    out.append(a.tobytes(order="C"))


def encode_tree(tree: Any) -> bytes:
    """Canonical bytes of a nested dict (str keys) / list / tuple of numeric array-likes.

    Tuples encode as lists; dict keys are sorted; arrays carry dtype and shape.
    """
    out = [_MAGIC]
    _enc(tree, out, "", 0)
    return b"".join(out)


def tree_address(tree: Any) -> str:
    """Hex SHA-256 of :func:`encode_tree` (the address :meth:`ModelStore.put` returns)."""
    return hashlib.sha256(encode_tree(tree)).hexdigest()


class _Reader:
    def __init__(self, data: bytes):
        self.b = memoryview(data)
        self.i = 0

    def take(self, n: int) -> memoryview:
        if self.i + n > len(self.b):
            raise ValueError("truncated tree encoding")
        v = self.b[self.i : self.i + n]
        self.i += n
        return v

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]


def _dec(r: _Reader, depth: int) -> Any:
    if depth > 64:
        raise ValueError("tree nested too deep")
    tag = bytes(r.take(1))
    if tag == b"D":
        n = r.u32()
        out = {}
        for _ in range(n):
            k = bytes(r.take(r.u32())).decode("utf-8")
            out[k] = _dec(r, depth + 1)
        return out
    if tag == b"L":
        return [_dec(r, depth + 1) for _ in range(r.u32())]
    if tag == b"A":
        dt = np.dtype(bytes(r.take(r.u32())).decode("ascii"))
        ndim = r.u32()
        shape = tuple(struct.unpack("<Q", r.take(8))[0] for _ in range(ndim))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        buf = r.take(count * dt.itemsize)
        return np.frombuffer(buf, dtype=dt).reshape(shape).copy()
    raise ValueError(f"unknown tag {tag!r}")


def decode_tree(data: bytes) -> Any:
    """Inverse of :func:`encode_tree` (lists come back as lists, arrays as numpy arrays)."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a tree encoding")
    r = _Reader(data)
    r.take(len(_MAGIC))
    tree = _dec(r, 0)
    if r.i != len(data):
        raise ValueError("trailing bytes after tree encoding")
    return tree


class ModelStore:
    """Filesystem store ``root/ab/abcdef...`` keyed by the SHA-256 address of the content.

    Writes are atomic (temporary file, fsync, rename); writing an address that
    already exists is a no-op. :meth:`get` re-hashes on every read.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, address: str) -> Path:
        check_hex("address", address, 32)
        return self.root / address[:2] / address

    def __contains__(self, address: str) -> bool:
        return self.path(address).is_file()

    def put_bytes(self, data: bytes) -> str:
        """Store raw bytes; returns their hex SHA-256 address (an existing address is not rewritten)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        address = hashlib.sha256(data).hexdigest()
        p = self.path(address)
        if not p.is_file():
            atomic_write_bytes(p, data)
        return address

    def get_bytes(self, address: str) -> bytes:
        """Raw bytes at ``address``; raises StoreIntegrityError when they do not hash to it."""
        p = self.path(address)
        if not p.is_file():
            raise FileNotFoundError(f"address {address} not in the model store {self.root}")
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() != address:
            raise StoreIntegrityError(f"stored content at {address} fails its hash check")
        return data

    def put(self, tree: Any) -> str:
        """Store a parameter tree (nested dict/list of arrays); returns its address."""
        return self.put_bytes(encode_tree(tree))

    def get(self, address: str) -> Any:
        """The tree stored at ``address``, integrity-checked."""
        data = self.get_bytes(address)
        try:
            return decode_tree(data)
        except ValueError as exc:
            raise StoreIntegrityError(f"content at {address} is not a model tree ({exc})") from None
