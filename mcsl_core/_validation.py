"""Input checks shared by every subpackage.

Each check raises ``ValueError`` naming the argument and, for arrays, the first
offending index (DESIGN.md, "Bad input"). Nothing is clipped.
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = [
    "as_float64",
    "check_finite",
    "check_nonneg_int",
    "check_range",
    "first_bad_index",
]


def first_bad_index(bad: np.ndarray) -> tuple[int, ...] | None:
    """Index (a tuple, C order) of the first True in ``bad``, or None."""
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return None
    if bad.ndim == 0:
        return ()
    flat = int(np.flatnonzero(bad.ravel())[0])
    return tuple(int(i) for i in np.unravel_index(flat, bad.shape))


def _where(idx: tuple[int, ...]) -> str:
    return "" if idx == () else f" at index {idx if len(idx) > 1 else idx[0]}"


def as_float64(name: str, x) -> np.ndarray:
    """``x`` as a C-contiguous float64 array; a clear error when it is not numeric."""
    if np.iscomplexobj(x):  # NumPy would drop the imaginary part with only a warning
        raise ValueError(f"{name} must be real, got a complex value")
    try:
        arr = np.asarray(x, dtype=np.float64, order="C")  # keeps 0-d inputs 0-d
    except OverflowError as exc:  # a Python int beyond float64
        what = f"an integer of {x.bit_length()} bits" if isinstance(x, int) else "an integer too large"
        raise ValueError(f"{name} must fit a float64, got {what}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {x!r}") from exc
    return arr


def check_finite(name: str, x) -> np.ndarray:
    """Float64 copy of ``x``; raises when any entry is NaN or infinite."""
    arr = as_float64(name, x)
    idx = first_bad_index(~np.isfinite(arr))
    if idx is not None:
        raise ValueError(f"{name} must be finite; got {arr[idx].item()!r}{_where(idx)}")
    return arr


def check_range(
    name: str,
    x,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> np.ndarray:
    """Finite float64 array with every entry in the interval (bounds optional)."""
    arr = check_finite(name, x)
    bad = np.zeros(arr.shape, dtype=bool)
    if lo is not None:
        bad |= (arr <= lo) if lo_open else (arr < lo)
    if hi is not None:
        bad |= (arr >= hi) if hi_open else (arr > hi)
    idx = first_bad_index(bad)
    if idx is not None:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(
            f"{name} must lie in {left}{lo_s}, {hi_s}{right}; got {arr[idx].item()!r}{_where(idx)}"
        )
    return arr


def check_nonneg_int(name: str, x) -> np.ndarray:
    """int64 array of non-negative integers (integral floats are accepted)."""
    arr = np.asarray(x)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be integer-valued, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        idx = first_bad_index(~np.isfinite(arr) | (arr != np.round(arr)))
        if idx is not None:
            raise ValueError(f"{name} must be integer-valued; got {arr[idx].item()!r}{_where(idx)}")
    out = arr.astype(np.int64)
    idx = first_bad_index(out < 0)
    if idx is not None:
        raise ValueError(f"{name} must be >= 0; got {out[idx].item()!r}{_where(idx)}")
    return np.ascontiguousarray(out)


#: Smallest positive normal float64. XLA (the JAX backend) flushes smaller
#: (subnormal) values to zero, so kernels with a JAX twin refuse them upfront.
SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)


def check_real(name: str, x) -> None:
    """Raise when ``x`` is complex: a float64 cast would silently drop the imaginary part."""
    if np.iscomplexobj(x):
        raise ValueError(f"{name} must be real, got a complex value")


def check_not_subnormal(name: str, arr: np.ndarray) -> None:
    """Raise at the first nonzero entry of magnitude below :data:`SMALLEST_NORMAL`."""
    arr = np.asarray(arr, dtype=np.float64)
    idx = first_bad_index((arr != 0.0) & (np.abs(arr) < SMALLEST_NORMAL))
    if idx is not None:
        raise ValueError(
            f"{name} must not be subnormal (nonzero with magnitude below {SMALLEST_NORMAL:.6g}: the "
            f"JAX backend flushes such floats to zero); got {arr[idx].item()!r}{_where(idx)}"
        )


def check_int_scalar(name: str, x, lo: int | None = None, hi: int | None = None) -> int:
    """A Python int from an integer or an integral float (not bool, NaN, inf or 2.7) in [lo, hi]."""
    if type(x) is int and (lo is None or x >= lo) and (hi is None or x <= hi):
        return x  # the common case, fast
    if isinstance(x, (bool, np.bool_, str, bytes)) or np.ndim(x) != 0:
        raise ValueError(f"{name} must be an integer scalar, got {x!r}")
    if isinstance(x, (int, np.integer)):
        v = int(x)
    else:
        try:
            f = float(x)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be an integer, got {x!r}") from exc
        if not np.isfinite(f) or f != int(f):
            raise ValueError(f"{name} must be an integer, got {x!r}")
        v = int(f)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


_MEMORY_READ = [-1e9, 0]  # (time.monotonic() of the last reading, bytes)
MEMORY_READ_EVERY_S = 0.25


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (Linux ``MemAvailable``; else
    physical pages free). Kernels compare their documented need with this upfront.

    Read at most every ``MEMORY_READ_EVERY_S`` seconds: a reading that recent serves an
    upfront check as well as a fresh one, and a loop of small calls (a millisecond
    simulation each) would otherwise spend more on reading ``/proc/meminfo`` than on work."""
    now = time.monotonic()
    if now - _MEMORY_READ[0] >= MEMORY_READ_EVERY_S:
        _MEMORY_READ[1] = _read_available_memory()
        _MEMORY_READ[0] = now
    return _MEMORY_READ[1]


def _read_available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no way to tell
        return 2**62


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask on Linux, else the machine's)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def check_memory(name: str, nbytes: int, detail: str = "", avail: int | None = None) -> None:
    """Raise ``ValueError`` naming the argument ``name`` when a kernel's estimated need
    of ``nbytes`` exceeds ``avail`` (default :func:`available_memory`), before anything is
    allocated, so a parallel worker never meets a failed allocation."""
    avail = available_memory() if avail is None else avail
    if nbytes > avail:
        extra = f" ({detail})" if detail else ""
        raise ValueError(
            f"{name} is too large: the kernel needs about {nbytes / 2**20:,.0f} MiB{extra}, "
            f"{avail / 2**20:,.0f} MiB are available"
        )


def check_scalar(
    name: str,
    x,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real scalar (not bool, str or an array) in the interval, as a float."""
    if type(x) is float or (type(x) is int and -(2**53) <= x <= 2**53):  # the common case, fast
        v = float(x)
        if (
            math.isfinite(v)
            and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi))
        ):
            return v
    if isinstance(x, (bool, np.bool_, str, bytes)) or np.ndim(x) != 0:
        raise ValueError(f"{name} must be a real scalar, got {x!r}")
    return float(check_range(name, x, lo, hi, lo_open=lo_open, hi_open=hi_open).reshape(()))
