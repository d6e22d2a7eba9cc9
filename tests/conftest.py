"""Shared test configuration: one tolerance table, keyed by dtype (STYLE.md 8)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

#: Tolerances for comparing a kernel with its reference, by the kernel's dtype.
TOL: dict[type, dict[str, float]] = {
    np.float64: dict(rtol=1e-10, atol=1e-12),
    np.float32: dict(rtol=2e-5, atol=1e-6),
}


#: Hypothesis example counts scale up under CI (CI=true, as CI sets it): write
#: ``@settings(max_examples=examples(40))`` so a local run stays quick and CI searches wider.
EXAMPLE_SCALE = 4 if os.environ.get("CI", "").lower() == "true" else 1


def examples(n: int) -> int:
    """``n`` hypothesis examples locally, ``EXAMPLE_SCALE * n`` in CI."""
    return n * EXAMPLE_SCALE


def tol(dtype) -> dict[str, float]:
    """``rtol``/``atol`` for ``numpy.testing.assert_allclose`` at this dtype."""
    return TOL[np.dtype(dtype).type]


#: The real FEMNIST subset beside the project (never committed; tests skip without it,
#: and fail instead when MCSL_REQUIRE_DATA=1, as in .ci/run).
FEMNIST_DIR = Path(
    os.environ.get(
        "MCSL_FEMNIST_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "femnist_leaf"
    )
)


@pytest.fixture(scope="session")  # a path: module-scoped data fixtures may use it
def femnist_dir() -> Path:
    if not (FEMNIST_DIR / "train").is_dir():
        if os.environ.get("MCSL_REQUIRE_DATA") == "1":  # CI: the data is always there, so this is a failure
            pytest.fail(f"MCSL_REQUIRE_DATA=1 but the FEMNIST LEAF subset is not at {FEMNIST_DIR}")
        pytest.skip(f"FEMNIST LEAF subset not found at {FEMNIST_DIR}")
    return FEMNIST_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)
