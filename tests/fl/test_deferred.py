"""Deferred dense updates (``mcsl_core.fl._deferred``) against the ordinary SGD step.

Error model. Both paths compute the same SGD iterates; only the float32 rounding
differs. The ordinary step rounds every parameter once per step (``W - lr dW``:
at most half an ulp of ``max|W|`` each) and its delta ``W_final - W_0`` carries
those roundings, so a leaf's delta can differ by up to ``steps * ulp(max|W_0|)``
before any propagation. The deferred kernel is rounded once per fold instead,
and its delta is formed as ``-X^T G`` (relative rounding only). Rounding
differences then propagate through the rest of training: how strongly is a
property of the client's training, which we measure instead of guessing, as
the change of the ordinary path's deltas when the initial parameters move by
one ulp (``nextafter``). The check per client and leaf is

    max|deferred - ordinary| <= 2 * max|nudged - ordinary| + steps * ulp(max|W_0|)

on writers whose training is well conditioned (nudge change below 1e-3 of the
delta, asserted; these four measure <= 7e-5): FEMNIST's flat backgrounds make
max-pool ties that a rounding flips on some writers (writers 1, 6, 9, 13, 16 and
17 measure 1e-2 to 0.7 at two epochs), where any float path differs visibly.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcsl_core import fl
from mcsl_core.fl import _deferred, _train

NEVER = 2**62  # a deferral threshold no kernel reaches: the ordinary step
CLIENTS = [0, 4, 8, 21]  # 155, 150, 154 and 4 rows: 16, 15, 16 and 1 steps of batch 10
CASES = {"loop": 2, "vmap": 1}  # strategy -> local epochs (loop: 32 steps > a 25-step segment, so it folds)


def _round(model, params, data, strategy, epochs, defer_min, monkeypatch):
    monkeypatch.setattr(_deferred, "DEFER_MIN_KERNEL", defer_min)
    cfg = fl.FLConfig(clients_per_round=len(CLIENTS), batch_size=10, client_lr=0.01, local_epochs=epochs)
    ru = fl.federated_round(model, params, data, CLIENTS, cfg, strategy=strategy)
    return {
        jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(ru.updates)[0]
    }


@pytest.fixture(scope="module")
def femnist(femnist_dir):
    return fl.load_leaf(str(femnist_dir / "train"), num_classes=62)


@pytest.fixture(scope="module")
def cnn():
    model = fl.femnist_cnn()
    return model, fl.init_params(model, 784, 0)


@pytest.fixture(scope="module")
def ordinary(femnist, cnn):
    """Per strategy: the ordinary path's deltas from ``params`` and from ``params`` nudged one ulp up."""
    model, params = cnn
    nudged = jax.tree_util.tree_map(lambda a: jnp.nextafter(a, jnp.inf), params)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for s, e in CASES.items():
            out[s] = tuple(_round(model, p, femnist, s, e, NEVER, mp) for p in (params, nudged))
    return out


def _violations(base, nudged, got, params, steps) -> list[str]:
    init = {
        jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    bad = []
    for leaf, ref in base.items():
        axes = tuple(range(1, ref.ndim))
        floor = np.abs(nudged[leaf] - ref).max(axis=axes)
        assert np.all(floor <= 1e-3 * np.abs(ref).max(axis=axes)), (leaf, floor)  # well conditioned
        err = np.abs(got[leaf] - ref).max(axis=axes)
        tol = 2 * floor + steps * np.spacing(np.abs(init[leaf]).max())
        bad += [
            f"{leaf} client {c}: {err[j]:.3g} > {tol[j]:.3g}"
            for j, c in enumerate(CLIENTS)
            if err[j] > tol[j]
        ]
    return bad


def test_plan_defers_only_the_big_dense_kernel():
    d = _deferred.plan(fl.femnist_cnn(), 784, 10)
    assert d.paths == (("dense1",),) and d.dims == ((3136, 2048),) and d.rows == (10,)
    assert _deferred.plan(fl.logistic(784, 62), 784, 10).paths == ()  # 48,608 entries: below 2^20
    assert _deferred.plan(fl.mlp(60, 10, hidden=(64,)), 60, 10).paths == ()


class _Wide(nn.Module):
    precision: object = None

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1024, name="wide", precision=self.precision)(x)


def test_plan_leaves_a_dense_with_its_own_precision_alone():
    """The deferred step computes ``x @ W_0`` at the default precision, so a layer that
    asks for another is not deferred (the same rule routes the lanes' Dense layers)."""
    assert _deferred.plan(_Wide(), 1024, 10).paths == (("wide",),)
    assert _deferred.plan(_Wide(jax.lax.Precision.HIGHEST), 1024, 10).paths == ()


@pytest.mark.parametrize("strategy", list(CASES))
def test_deferred_round_equals_the_ordinary_step_on_femnist_writers(
    strategy, femnist, cnn, ordinary, monkeypatch
):
    """loop: 2 epochs, so the 16-step writers fold their history once; vmap: the
    three 15-16-step writers train in one width-2 chunk (writers 4 and 0, sharing
    W_0; writer 4 through a masked padded step, which must change nothing) and
    one width-1 chunk."""
    model, params = cnn
    epochs = CASES[strategy]
    got = _round(model, params, femnist, strategy, epochs, _deferred.DEFER_MIN_KERNEL, monkeypatch)
    steps = femnist.steps(10)[CLIENTS] * epochs
    assert _violations(*ordinary[strategy], got, params, steps) == []
    again = _round(model, params, femnist, strategy, epochs, _deferred.DEFER_MIN_KERNEL, monkeypatch)
    for leaf in got:  # same seed, same result, bit for bit
        np.testing.assert_array_equal(again[leaf], got[leaf])


def test_a_dropped_history_term_is_caught(femnist, cnn, ordinary, monkeypatch):
    """Planted bug: the history forgets step 0's rank-10 term (its G rows stay
    zero). The check above must report it."""
    record = _deferred.record

    def forgetful(hist, xs, gs, lr, t):
        return record(hist, xs, tuple(jnp.where(t == 0, 0.0, g) for g in gs), lr, t)

    model, params = cnn
    monkeypatch.setattr(_deferred, "record", forgetful)
    _train._chunk_program.cache_clear()
    try:
        got = _round(model, params, femnist, "loop", CASES["loop"], _deferred.DEFER_MIN_KERNEL, monkeypatch)
    finally:
        _train._chunk_program.cache_clear()  # no program with the planted bug survives the test
    steps = femnist.steps(10)[CLIENTS] * CASES["loop"]
    bad = _violations(*ordinary["loop"], got, params, steps)
    assert any(b.startswith("['dense1']['kernel']") for b in bad), bad
