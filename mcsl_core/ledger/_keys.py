"""Identities: Ed25519 key pairs of consortium nodes, edge servers and requestors.

Private keys leave memory only encrypted (``BestAvailableEncryption``, a
passphrase is mandatory) and only into files of mode 0600 (owner read/write);
loading a key file that the group or others can read warns. A :class:`Member`
is the public half that the chain's membership registry records: role, name and
raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mcsl_core._io import atomic_write_bytes
from mcsl_core.ledger._encoding import check_text

__all__ = ["ROLES", "Identity", "Member", "public_key_from_bytes", "verify_signature"]

#: Roles a chain member can hold (SPEC.md: consortium nodes, edge servers, requestors).
ROLES: tuple[str, ...] = ("node", "edge_server", "requestor")

_FILE_FORMAT = "mcsl-identity/1"
_PEM_BEGIN = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_PEM_END = b"-----END ENCRYPTED PRIVATE KEY-----"


def check_role(name: str, role) -> str:
    if role not in ROLES:
        raise ValueError(f"{name} must be one of {ROLES}, got {role!r}")
    return role


class Member(NamedTuple):
    """Public record of a chain member (what the membership registry stores)."""

    role: str  # one of ROLES
    name: str  # unique member id on the chain
    public_key: bytes  # shape=[32], raw Ed25519 public key


def public_key_from_bytes(raw: bytes) -> Ed25519PublicKey:
    """Ed25519 public key object from its 32 raw bytes (ValueError when malformed)."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
        raise ValueError("public_key must be 32 raw bytes")
    return Ed25519PublicKey.from_public_bytes(bytes(raw))


def verify_signature(public_key: bytes | Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    try:
        pk = public_key if isinstance(public_key, Ed25519PublicKey) else public_key_from_bytes(public_key)
        pk.verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _seed_bytes(seed) -> bytes:
    if isinstance(seed, bool):
        raise ValueError(f"seed must be int, str or bytes, got {seed!r}")
    if isinstance(seed, int):
        return b"i" + str(seed).encode()
    if isinstance(seed, str):
        return b"s" + seed.encode("utf-8")
    if isinstance(seed, (bytes, bytearray)):
        return b"b" + bytes(seed)
    raise ValueError(f"seed must be int, str or bytes, got {type(seed).__name__}")


def _passphrase_bytes(passphrase) -> bytes:
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not isinstance(passphrase, (bytes, bytearray)) or len(passphrase) == 0:
        raise ValueError("passphrase must be a non-empty str or bytes (keys are only stored encrypted)")
    return bytes(passphrase)


@dataclass(frozen=True, eq=False)
class Identity:
    """A member's key pair: role, name and the Ed25519 private key.

    Create with :meth:`generate`; persist with :meth:`save` / :meth:`load`.
    """

    role: str
    name: str
    private_key: Ed25519PrivateKey

    def __post_init__(self):
        check_role("role", self.role)
        check_text("name", self.name, max_len=200)
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise ValueError("private_key must be an Ed25519PrivateKey")
        # Cache the public bytes: they are read on every signature check.
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        object.__setattr__(self, "_public_bytes", raw)

    @classmethod
    def generate(cls, role: str, name: str, *, seed: int | str | bytes | None = None) -> Identity:
        """New identity; with ``seed`` the key is ``SHA-256(domain, role, name, seed)`` (reproducible demos).

        Seeded keys are for simulations only: anyone who knows the seed knows the key.
        """
        check_role("role", role)
        check_text("name", name, max_len=200)
        if seed is None:
            key = Ed25519PrivateKey.generate()
        else:
            material = b"\x00".join(
                [b"mcsl-identity-seed", role.encode(), name.encode("utf-8"), _seed_bytes(seed)]
            )
            key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(material).digest())
        return cls(role, name, key)

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte Ed25519 public key."""
        return self._public_bytes  # type: ignore[attr-defined]

    @property
    def member(self) -> Member:
        return Member(self.role, self.name, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """64-byte Ed25519 signature of ``message``."""
        return self.private_key.sign(bytes(message))

    def save(self, path: str | os.PathLike, passphrase: str | bytes) -> Path:
        """Write the identity encrypted with ``passphrase`` (PKCS#8, BestAvailableEncryption), atomically.

        The file has mode 0600 from its creation (a temporary file renamed over
        ``path``); an existing file's mode is tightened to at most 0600, never loosened.
        """
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(_passphrase_bytes(passphrase)),
        )
        doc = {"format": _FILE_FORMAT, "role": self.role, "name": self.name, "key": pem.decode("ascii")}
        return _write_private(Path(path), json.dumps(doc, indent=1).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike, passphrase: str | bytes) -> Identity:
        """Read an identity written by :meth:`save`.

        Raises ``ValueError`` for a wrong passphrase, a truncated file (said so) or
        a file that is not an identity; warns (``UserWarning``) when the group or
        others may read the file, as the key is then only as safe as its passphrase.
        """
        path = Path(path)
        raw = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            warnings.warn(
                f"path: key file {path} is readable or writable by group or others (mode {mode:04o}); "
                f"restrict it with chmod 600",
                UserWarning,
                stacklevel=2,
            )
        role, name, pem = _parse_identity_file(path, raw)
        try:
            key = serialization.load_pem_private_key(pem, password=_passphrase_bytes(passphrase))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"passphrase: cannot decrypt identity {path}: wrong passphrase?") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"path: {path} does not hold an Ed25519 key")
        return cls(role, name, key)

    def __repr__(self) -> str:
        return f"Identity(role={self.role!r}, name={self.name!r}, public_key={self.public_key.hex()[:16]}...)"


def _parse_identity_file(path: Path, raw: bytes) -> tuple[str, str, bytes]:
    """(role, name, PEM bytes) of a key file; ``ValueError`` saying whether it is truncated."""
    text = raw.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        if not text.rstrip().endswith("}"):  # save() writes one JSON object: a cut file ends early
            raise ValueError(f"path: identity file {path} is truncated ({len(raw)} bytes, {exc})") from None
        raise ValueError(f"path: {path} is not an mcsl identity file ({exc})") from None
    try:
        if doc.get("format") != _FILE_FORMAT:
            raise ValueError("unknown format")
        pem = doc["key"].encode("ascii")
        role, name = doc["role"], doc["name"]
    except (ValueError, KeyError, AttributeError, UnicodeEncodeError) as exc:
        raise ValueError(f"path: {path} is not an mcsl identity file ({exc})") from None
    if b"ENCRYPTED" not in pem:
        raise ValueError(f"path: {path} holds an unencrypted key; refusing to load it")
    short = _pem_shortfall(pem)
    if short is not None:
        raise ValueError(f"path: the key in identity file {path} is truncated ({short})")
    return role, name, pem


def _pem_shortfall(pem: bytes) -> str | None:
    """Why the PEM block is incomplete (None when its DER length header is satisfied)."""
    body = pem.strip()
    if not body.startswith(_PEM_BEGIN) or not body.endswith(_PEM_END):
        return "the PEM block has no END line"
    try:
        der = base64.b64decode(b"".join(body[len(_PEM_BEGIN) : -len(_PEM_END)].split()), validate=True)
    except binascii.Error:
        return "the PEM body is not whole base64"
    # DER SEQUENCE: 0x30, then the length in short form (< 0x80) or long form (0x80 | n bytes)
    if len(der) < 2 or der[0] != 0x30:
        return f"{len(der)} bytes of DER, no SEQUENCE header"
    n = der[1]
    head, length = (2, n) if n < 0x80 else (2 + (n & 0x7F), int.from_bytes(der[2 : 2 + (n & 0x7F)], "big"))
    if len(der) < head + length:
        return f"{len(der)} of {head + length} DER bytes"
    return None


def _write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically with mode 0600 (or the existing file's, if stricter)."""
    mode = 0o600
    if path.exists():
        mode &= stat.S_IMODE(path.stat().st_mode)  # tighten to 0600, never loosen
    return atomic_write_bytes(path, data, mode=mode)
