"""The shared plumbing: input checks, atomic writes, the command line."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from mcsl_core import _validation as V
from mcsl_core._io import atomic_write_text, write_csv
from mcsl_core.cli import main


def test_first_bad_index_is_c_order():
    bad = np.zeros((3, 4), bool)
    bad[2, 0] = bad[1, 3] = True
    assert V.first_bad_index(bad) == (1, 3)
    assert V.first_bad_index(np.zeros(5, bool)) is None


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        ([0.5, np.nan], {}, r"eps must be finite; got nan at index 1"),
        ([[0.1, 0.2], [1.5, 0.3]], dict(lo=0, hi=1), r"eps must lie in \[0, 1\]; got 1.5 at index \(1, 0\)"),
        (0.0, dict(lo=0, lo_open=True), r"eps must lie in \(0, inf\]; got 0.0"),
        ("abc", {}, r"eps must be numeric"),
    ],
)
def test_check_range_names_field_and_index(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        V.check_range("eps", x, **kwargs)


def test_check_range_passes_and_returns_float64():
    out = V.check_range("x", [1, 2], lo=0)
    assert out.dtype == np.float64 and out.flags.c_contiguous


def test_check_nonneg_int():
    np.testing.assert_array_equal(V.check_nonneg_int("n", [0, 3.0]), [0, 3])
    with pytest.raises(ValueError, match=r"n must be >= 0; got -1 at index 1"):
        V.check_nonneg_int("n", [2, -1])
    with pytest.raises(ValueError, match="integer-valued"):
        V.check_nonneg_int("n", [0.5])
    with pytest.raises(ValueError, match="integer-valued"):
        V.check_nonneg_int("n", [True])


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "b.txt"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert [q.name for q in p.parent.iterdir()] == ["b.txt"]  # no temporary left behind
    write_csv(tmp_path / "t.csv", ["a", "b"], [(1, 2.5)])
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,2.5\n"


def test_cli_user_error_is_one_line_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "mcsl_core", "ledger", "verify", "/nonexistent/ledger.sqlite"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mcsl: error: no ledger at /nonexistent/ledger.sqlite"
    assert "Traceback" not in proc.stderr


def test_cli_rejects_unknown_figure(capsys):
    assert main(["reproduce", "fig99"]) == 2  # main returns argparse's exit code too
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mcsl: error:") and "invalid choice" in err[0]


def test_scalars_stay_zero_dimensional():
    assert V.check_range("x", 0.5, lo=0).shape == ()
    assert V.as_float64("x", [[1, 2]]).shape == (1, 2)


def test_atomic_outputs_are_readable_by_others(tmp_path):
    p = atomic_write_text(tmp_path / "f.txt", "x")
    assert p.stat().st_mode & 0o777 == 0o644


def test_shared_scalar_checks():
    """The one set of scalar checks the subpackages share (_validation.check_scalar and
    check_int_scalar): bools, strings, arrays, non-finite and out-of-range values name the
    argument; complex values are refused at the root (as_float64), not silently made real."""
    assert V.check_scalar("x", 2) == 2.0 and type(V.check_scalar("x", np.float32(0.5))) is float
    for bad in (True, "1", [1.0], np.nan, np.inf, None):
        with pytest.raises(ValueError, match="^x "):
            V.check_scalar("x", bad)
    with pytest.raises(ValueError, match=r"x must lie in \(0, 1\]"):
        V.check_scalar("x", 0.0, 0.0, 1.0, lo_open=True)
    assert V.check_int_scalar("k", 3.0, 0) == 3
    for bad in (2.7, True, "3", -1):
        with pytest.raises(ValueError, match="^k "):
            V.check_int_scalar("k", bad, 0)
    with pytest.raises(ValueError, match="z must be real"):
        V.as_float64("z", [1 + 2j])
    with pytest.raises(ValueError, match="^y must fit a float64, got an integer of 1329 bits"):
        V.check_scalar("y", 10**400)  # was an OverflowError from NumPy
    with pytest.raises(ValueError, match="^y must fit a float64, got an integer too large"):
        V.check_range("y", [1, 10**400], 0.0)


def test_check_int_scalar_fast_path_agrees():
    # a plain int takes a short path; the general path (NumPy integers) decides the same
    for x in (-3, 0, 1, 7, 2**62, 2**80):
        for lo, hi in ((None, None), (0, None), (1, 7), (7, 7), (8, None)):
            try:
                want = V.check_int_scalar("k", np.int64(x) if abs(x) < 2**63 else float(x), lo, hi)
            except ValueError as e:
                with pytest.raises(ValueError, match=re.escape(str(e))):
                    V.check_int_scalar("k", x, lo, hi)
            else:
                assert V.check_int_scalar("k", x, lo, hi) == want == x


def test_available_memory_is_read_at_most_every_interval(monkeypatch):
    reads, now = [], [1000.0]
    monkeypatch.setattr(V, "_read_available_memory", lambda: reads.append(now[0]) or 10 * len(reads))
    monkeypatch.setattr(V.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(V, "_MEMORY_READ", [-1e9, 0])
    assert V.available_memory() == 10
    now[0] += V.MEMORY_READ_EVERY_S / 2
    assert V.available_memory() == 10 and len(reads) == 1  # recent enough: not read again
    now[0] += V.MEMORY_READ_EVERY_S / 2
    assert V.available_memory() == 20 and len(reads) == 2


def test_check_scalar_fast_path_agrees():
    # plain Python floats and ints take a short path; it must accept and refuse exactly
    # what the general (NumPy) path does, at and around every kind of bound
    cases = [0.0, -0.0, 1.0, 0.5, 1e-300, -1e-300, 2, -3, 2**53, 2**53 + 1, 1e308, -1e308]
    bounds = [
        (None, None, False, False),
        (0.0, None, False, False),
        (0.0, None, True, False),
        (0.0, 1.0, False, True),
        (-1.0, 1.0, True, True),
        (2.0, None, False, False),
    ]
    for x in cases:
        for lo, hi, lo_open, hi_open in bounds:
            kw = dict(lo_open=lo_open, hi_open=hi_open)
            try:
                want = float(V.check_range("x", np.float64(x), lo, hi, **kw).reshape(()))
            except ValueError as e:
                with pytest.raises(ValueError, match=re.escape(str(e))):
                    V.check_scalar("x", x, lo, hi, **kw)
            else:
                got = V.check_scalar("x", x, lo, hi, **kw)
                assert got == want and type(got) is float and math.copysign(1, got) == math.copysign(1, want)
