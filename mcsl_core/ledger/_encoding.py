"""Canonical byte encodings: one meaning, one byte string.

Records are encoded as canonical JSON (UTF-8, sorted keys, no whitespace, no
NaN/inf, floats in Python's shortest round-trip form). Decoding re-encodes and
rejects any input that is not byte-identical to the canonical form, so a
signature or a hash covers exactly one meaning and no byte can change silently.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from mcsl_core.ledger._errors import BadEncoding

__all__ = ["canonical_json", "check_hex", "check_text", "loads_json", "parse_canonical_json"]


def _check_value(x: Any, path: str) -> None:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return
    if isinstance(x, int):
        return
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"{path} must be finite, got {x!r}")
        return
    if isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            _check_value(v, f"{path}[{i}]")
        return
    if isinstance(x, dict):
        for k, v in x.items():
            if not isinstance(k, str):
                raise ValueError(f"{path} keys must be strings, got {k!r}")
            _check_value(v, f"{path}.{k}")
        return
    raise ValueError(f"{path} has unsupported type {type(x).__name__}")


_DUMPS = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def canonical_json(obj: Any, name: str = "record", *, checked: bool = False) -> bytes:
    """Canonical JSON bytes of ``obj`` (dict/list/str/int/finite float/bool/None).

    ``checked=True`` skips the type walk for values built from validated fields
    (NaN and infinities are still refused by the encoder).
    """
    if not checked:
        _check_value(obj, name)
    try:
        return _DUMPS(obj).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def loads_json(data: bytes, what: str = "record") -> Any:
    """``json.loads`` that rejects NaN/Infinity; canonical form is checked by the caller
    (by re-encoding the decoded record and comparing bytes)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadEncoding(f"{what} must be bytes, got {type(data).__name__}")
    try:
        return json.loads(bytes(data).decode("ascii"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadEncoding(f"{what} is not valid JSON ({exc})") from None


def _reject_constant(c: str):
    raise ValueError(f"non-finite constant {c}")


def parse_canonical_json(data: bytes, what: str = "record") -> Any:
    """Inverse of :func:`canonical_json`; raises :class:`BadEncoding` on non-canonical bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadEncoding(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        obj = json.loads(data.decode("ascii"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadEncoding(f"{what} is not valid canonical JSON ({exc})") from None
    try:
        again = canonical_json(obj, what)
    except ValueError as exc:
        raise BadEncoding(f"{what}: {exc}") from None
    if again != data:
        raise BadEncoding(f"{what} is not in canonical form")
    return obj


_HEX = re.compile(r"[0-9a-f]*")
_CONTROL = re.compile(r"[\x00-\x1f]")


def check_hex(name: str, value: Any, nbytes: int) -> str:
    """Lower-case hex string of exactly ``nbytes`` bytes."""
    if not isinstance(value, str) or len(value) != 2 * nbytes:
        raise ValueError(f"{name} must be a {2 * nbytes}-character hex string, got {value!r}")
    if _HEX.fullmatch(value) is None:
        raise ValueError(f"{name} must be lower-case hex, got {value!r}")
    return value


def check_text(name: str, value: Any, *, allow_empty: bool = False, max_len: int = 10_000) -> str:
    """A printable string identifier or text field."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{name} longer than {max_len} characters")
    if _CONTROL.search(value) is not None:
        raise ValueError(f"{name} must not contain control characters, got {value!r}")
    return value
