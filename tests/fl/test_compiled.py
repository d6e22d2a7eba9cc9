"""Whole runs compiled (issue 11 item 2): ``FLConfig(compiled=True)`` equals the
per-round loop of :func:`run_fedavg` for the same seed.

Tolerance: the compiled program performs the per-round loop's operations in the
same order on the same float32 values (the same client update, the same keys,
the same aggregation code); XLA may fuse or batch an operation differently
(the server step inside the scan, the vmapped client update), which changes a
result by at most ~1 ulp. At |param| <= 1 an ulp is <= 1.2e-7, so R rounds
differ by at most about 2 R ulp when the local training does not amplify errors
(measured: 0 for most aggregators, 4.5e-8 with server_lr=0.7 over 7 rounds).
``ATOL = 2e-6`` covers 7 rounds of 2 ulp with a 2x margin.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from mcsl_core import fl
from mcsl_core.fl._compiled import _keys_batch, _rank_groups, _stop_hits
from tests.fl.conftest import ATOL, LOSS_RTOL, flat


def _same(a: fl.FLResult, b: fl.FLResult) -> None:
    np.testing.assert_allclose(flat(b.params), flat(a.params), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(b.history.round, a.history.round)
    np.testing.assert_allclose(b.history.train_loss, a.history.train_loss, rtol=LOSS_RTOL)
    np.testing.assert_array_equal(np.isnan(b.history.eval_loss), np.isnan(a.history.eval_loss))
    np.testing.assert_allclose(b.history.eval_loss, a.history.eval_loss, rtol=LOSS_RTOL)
    np.testing.assert_array_equal(b.history.eval_accuracy, a.history.eval_accuracy)  # integer hits / total
    assert b.stopped_early == a.stopped_early


_SLOW = pytest.mark.slow  # the sweep test covers these aggregators in the default tier
CASES = [
    dict(server_lr=0.7, eval_every=3),
    dict(target_accuracy=0.3),
    pytest.param(dict(aggregator="median", local_epochs=2), marks=_SLOW),
    pytest.param(dict(aggregator="trimmed_mean", trim_fraction=0.2), marks=_SLOW),
    pytest.param(dict(aggregator="krum", num_byzantine=1, multi_krum=2), marks=_SLOW),
    pytest.param(dict(dp_clip_norm=0.5, dp_noise_multiplier=0.3), marks=_SLOW),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(kw))
def test_compiled_equals_per_round_loop(data, kw):
    tr, te = data
    m = fl.logistic(20, 5)
    cfg = fl.FLConfig(
        rounds=7, clients_per_round=5, client_lr=0.05, seed=3, strategy="loop", progress=False, **kw
    )
    a = fl.run_fedavg(m, tr, cfg, test=te)
    b = fl.run_fedavg(m, tr, fl.FLConfig(**{**cfg.__dict__, "compiled": True}), test=te)
    assert b.strategy == "compiled" and a.strategy == "loop"
    _same(a, b)
    if "target_accuracy" in kw:
        assert a.stopped_early and len(a.history.round) < 7  # the case really stops early


def test_compiled_with_given_params_progress_and_server_optimizer(data, capsys):
    import optax

    tr, _ = data
    m = fl.mlp(20, 5, (8,))
    p0 = fl.init_params(m, 20, 42)
    cfg = fl.FLConfig(
        rounds=4, clients_per_round=4, client_lr=0.05, server_optimizer=optax.adam(0.01), progress=True
    )
    a = fl.run_fedavg(m, tr, cfg, params=p0)
    b = fl.run_compiled(m, tr, cfg, params=p0)
    _same(a, b)
    assert "compiled" in capsys.readouterr().err  # the tqdm bar


def test_compiled_rejects_a_callback(data):
    tr, _ = data
    with pytest.raises(ValueError, match="callback"):
        fl.run_fedavg(fl.logistic(20, 5), tr, fl.FLConfig(rounds=1, compiled=True), callback=lambda *a: None)
    with pytest.raises(ValueError, match="server_lr"):
        fl.FLConfig(server_lr=0.0)
    with pytest.raises(ValueError, match="compiled"):
        fl.FLConfig(compiled="yes")


def _brute_groups(cap: np.ndarray, max_groups: int, rows: int, group_cost: int) -> int:
    """Least cost over every split into <= max_groups contiguous groups."""
    c = cap.size
    best = None
    for g in range(1, max_groups + 1):
        for cuts in itertools.combinations(range(1, c), g - 1):
            b = (0, *cuts, c)
            cost = sum(
                rows * int(cap[hi - 1]) * (hi - lo + 1) + group_cost for lo, hi in itertools.pairwise(b)
            )
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_rank_groups_cover_all_ranks_at_least_cost(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 9))
    steps = np.sort(rng.integers(1, 60, (int(rng.integers(1, 20)), c)), axis=1)
    gc = int(rng.integers(0, 200))
    groups = _rank_groups(steps, max_groups=3, group_cost=gc)
    assert [g[0] for g in groups] == [0] + [g[1] for g in groups[:-1]] and groups[-1][1] == c
    for lo, hi, cap in groups:  # every client of every round gets enough steps
        assert cap >= steps[:, lo:hi].max()
    rows = steps.shape[0]
    cost = sum(rows * cap * (hi - lo + 1) + gc for lo, hi, cap in groups)
    assert cost == _brute_groups(np.maximum(steps.max(axis=0), 1), 3, rows, gc)


@pytest.mark.parametrize("target", [0.0, 0.1, 0.3, 1 / 3, 0.5, 0.75, 0.999, 1.0, None])
@pytest.mark.parametrize("total", [1, 3, 7, 1257])
def test_stop_hits_is_the_least_count_reaching_the_target(target, total):
    h = _stop_hits(target, total)
    if target is None:
        assert h == total + 1
        return
    ok = [k for k in range(total + 1) if k / total >= target]  # run_fedavg's float64 comparison
    assert h == min(ok)


def _keys(seed: int):
    """One experiment's keys as :func:`run_fedavg` splits them, seed by seed."""
    init_key, train_key, noise_key = jax.random.split(jax.random.key(int(seed)), 3)
    return init_key, jax.random.key_data(train_key), jax.random.key_data(noise_key)


def test_keys_batch_equals_keys_seed_by_seed():
    seeds = [0, 1, 11, 2**31 - 1, 2**31 + 5, 2**32 - 1, 2**32, 2**40 + 7, 2**63 - 1]
    init, train, noise = _keys_batch(seeds)
    for i, s in enumerate(seeds):
        ki, kt, kn = _keys(s)
        np.testing.assert_array_equal(
            np.asarray(jax.random.key_data(init[i])), np.asarray(jax.random.key_data(ki))
        )
        np.testing.assert_array_equal(train[i], np.asarray(kt))
        np.testing.assert_array_equal(noise[i], np.asarray(kn))
