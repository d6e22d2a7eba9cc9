"""Output files: atomic writes (a reader sees the old file or the new one, never half
of one) and the one check that an output folder can be written."""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "prepare_out_dir",
    "read_toml",
    "toml_text",
    "write_csv",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``.

    The file gets ``mode`` before any byte is written (outputs are shared, 0644; key
    files pass 0600, so a secret is never readable by others, not even briefly).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)  # make the rename itself durable
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Atomically write a CSV file with a header row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow(list(row))
    return atomic_write_text(path, buf.getvalue())


def prepare_out_dir(path: str | os.PathLike, *, arg: str = "--out") -> Path:
    """Create the output folder ``path`` (with its parents) and prove it can be written.

    Every command that writes outputs calls this before doing any work, so a bad
    folder fails in a second, not after an hour of training. Writability is checked
    by creating and removing a temporary file in the folder: unlike permission bits
    (which root ignores) this also catches read-only mounts, ACLs and full quotas,
    exactly as the real writes would meet them.

    Parameters
    ----------
    path : the folder; it may exist (and keep its files) or not.
    arg : the option the folder came from, named in the error (``"--out"``).

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    ValueError
        Naming ``arg`` and the path, when the path is an existing file, lies below
        a file, cannot be created, or is a folder in which no file can be created.
    """
    try:
        if not os.fspath(path):
            raise ValueError(f"{arg}: the output folder must not be empty")
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise ValueError(f"{arg}: {p} exists and is not a folder")
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a dangling link, or a file on the way
        raise ValueError(f"{arg}: cannot create folder {p}: a part of the path is a file") from None
    except OSError as exc:
        raise ValueError(f"{arg}: cannot create folder {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # embedded NUL and the like, from the OS layer
        if str(exc).startswith(f"{arg}:"):
            raise
        raise ValueError(f"{arg}: not a usable path {str(path)!r}: {exc}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".mcsl-write-check.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{arg}: cannot write in folder {p}: {exc.strerror or exc}") from None
    return p


# ---------------------------------------------------------------- TOML
def _toml_string(s: str) -> str:
    """A TOML basic string: quote, backslash and control characters (with DEL) escaped."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)  # any other character, astral ones too, stands for itself
    return '"' + "".join(out) + '"'


def toml_text(mapping: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text of a ``{section: {key: value}}`` mapping (``tomllib`` reads it back equal)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return _toml_string(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, float) and not math.isfinite(v):
            return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan")
        return repr(v)

    lines = []
    for section, body in mapping.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {fmt(v)}" for k, v in body.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def read_toml(path: str | os.PathLike, *, missing: str | None = None) -> dict[str, Any]:
    """Parse the TOML file ``path``; a malformed file (not UTF-8, not TOML, nested too
    deeply to parse) raises ``ValueError`` naming it.

    With ``missing`` (e.g. ``"no sweep spec at"``) an absent file is a ``ValueError``
    ``"{missing} {path}"`` too; without it the ``OSError`` of the read stands.
    """
    path = Path(path)
    if missing is not None and not path.is_file():
        raise ValueError(f"{missing} {path}")
    raw = path.read_bytes()
    try:
        return tomllib.loads(raw.decode("utf-8"))  # TOML is UTF-8, whatever the locale says
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to read") from None
