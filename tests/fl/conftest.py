"""Shared by the compiled-run and sweep tests: their data, the flattening of a pytree and
the tolerances against the per-round loop (error model in tests/fl/test_compiled.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mcsl_core import fl

ATOL = 2e-6  # see test_compiled's docstring: <= ~2 ulp per round at |p| <= 1, 7 rounds, 2x margin
# losses: per-chunk float32 sums of hundreds of terms may round 1-2 ulp apart, then the
# float64 total is cast to float32 (one more ulp): 4 ulp relative
LOSS_RTOL = 4 * 2.0**-23


@pytest.fixture(scope="module")
def data():
    return fl.synthetic_fedprox(1.0, 1.0, num_clients=12, dim=20, num_classes=5, seed=1)


def flat(t) -> np.ndarray:
    """Every leaf of pytree ``t``, raveled and concatenated."""
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(t)])
