"""Sweeps (issue 11 item 3): experiment ``k`` of ``run_sweep`` equals
``run_fedavg(models[k], train, configs[k], test=test)``.

Tolerances as in ``tests/fl/test_compiled.py`` (same operations, same order;
XLA may fuse the vmapped experiment axis differently: ~1-2 ulp per round at
|param| <= 1, so ``2e-6`` for the 4 rounds here; losses 4 ulp relative).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest

from mcsl_core import fl
from mcsl_core.fl._compiled import GroupSpec, bytes_per_experiment
from tests.fl.conftest import ATOL, LOSS_RTOL, flat


def _check_experiment(res: fl.FLSweepResult, k: int, tr, te) -> None:
    ref = fl.run_fedavg(res.models[k], tr, res.configs[k], test=te)
    p = res.params[k] if isinstance(res.params, list) else jax.tree_util.tree_map(lambda a: a[k], res.params)
    np.testing.assert_allclose(flat(p), flat(ref.params), rtol=0, atol=ATOL, err_msg=f"experiment {k}")
    n = len(ref.history.round)
    h = res.history
    np.testing.assert_array_equal(h.round[k, :n], ref.history.round)
    assert np.all(h.round[k, n:] == 0) and np.all(np.isnan(h.train_loss[k, n:]))
    np.testing.assert_allclose(h.train_loss[k, :n], ref.history.train_loss, rtol=LOSS_RTOL)
    np.testing.assert_allclose(h.eval_loss[k, :n], ref.history.eval_loss, rtol=LOSS_RTOL)
    np.testing.assert_array_equal(h.eval_accuracy[k, :n], ref.history.eval_accuracy)
    assert bool(res.stopped_early[k]) == ref.stopped_early


AXES = dict(
    seed=[0, 1, 2, 3, 4, 5, 6, 7],
    client_lr=[0.05, 0.1, 0.05, 0.02, 0.05, 0.05, 0.05, 0.08],
    aggregator=["fedavg", "fedavg", "median", "krum", "trimmed_mean", "fedavg", "trimmed_mean", "fedavg"],
    num_byzantine=[0, 0, 0, 1, 0, 0, 0, 0],
    dp_clip_norm=[None, None, None, None, None, 0.3, None, 0.2],
    dp_noise_multiplier=[0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 1.0],
    trim_fraction=[0.1, 0.1, 0.1, 0.1, 0.4, 0.1, 0.2, 0.1],
    server_lr=[1.0, 0.5, 1.0, 1.0, 1.0, 1.5, 1.0, 1.0],
    target_accuracy=[0.2, None, None, None, None, None, None, 0.2],
)


def test_sweep_equals_run_fedavg_for_every_aggregator(data):
    tr, te = data
    base = fl.FLConfig(rounds=4, clients_per_round=5, batch_size=10, strategy="loop", progress=False)
    m = fl.logistic(20, 5)
    res = fl.run_sweep(m, tr, base, AXES, test=te)
    assert jax.tree_util.tree_leaves(res.params)[0].shape[0] == 8
    assert res.history.round.shape == (8, 4)
    for k in range(8):
        _check_experiment(res, k, tr, te)
    assert res.configs[5].dp_clip_norm == 0.3 and res.configs[3].aggregator == "krum"
    assert res.stopped_early[0]  # the early stop really happens inside the vmapped group


def test_small_models_run_parts_of_a_chunk_in_threads_with_the_same_result(data, monkeypatch):
    """K = 20 > THREAD_PART: two parts of 10, one thread each on a (patched) 2-core CPU; each
    experiment still equals run_fedavg, and one core (the parts one after another) gives
    the same bits: a part's experiments, not the machine's cores, fix each program."""
    from mcsl_core.fl import _sweep

    tr, te = data
    base = fl.FLConfig(rounds=3, clients_per_round=4, batch_size=10, client_lr=0.05, progress=False)
    m = fl.logistic(20, 5)
    axes = dict(seed=list(range(20)))
    ran = []
    real = _sweep.run_group

    def spy(model, train, configs, **kw):
        ran.append((threading.current_thread().name, len(configs)))
        return real(model, train, configs, **kw)

    monkeypatch.setattr(_sweep, "run_group", spy)
    monkeypatch.setattr(_sweep, "_cpu_cores", lambda: 2)
    res = fl.run_sweep(m, tr, base, axes, test=te)
    assert sorted(n for _, n in ran) == [10, 10] and all(t.startswith("mcsl-sweep") for t, _ in ran)
    for k in (0, 11, 19):
        _check_experiment(res, k, tr, te)
    monkeypatch.setattr(_sweep, "_cpu_cores", lambda: 1)
    one = fl.run_sweep(m, tr, base, axes, test=te)
    np.testing.assert_array_equal(flat(res.params), flat(one.params))
    np.testing.assert_array_equal(res.history.eval_loss, one.history.eval_loss)


def test_large_models_on_one_cpu_run_experiment_by_experiment(data, monkeypatch):
    """Above ONE_BY_ONE_MIN_PARAMS (patched down so a logistic model counts as large) a
    sweep on one CPU device runs each experiment through run_fedavg: no vectorised group
    program, and every experiment's params, history and early stop exactly run_fedavg's."""
    from mcsl_core.fl import _sweep

    tr, te = data
    base = fl.FLConfig(rounds=3, clients_per_round=4, batch_size=10, strategy="loop", progress=False)
    m = fl.logistic(20, 5)
    axes = {k: v[:4] for k, v in AXES.items()}  # fedavg, fedavg, median, krum; an early stop
    monkeypatch.setattr(_sweep, "run_group", lambda *a, **kw: pytest.fail("vectorised path taken"))
    monkeypatch.setattr(_sweep, "ONE_BY_ONE_MIN_PARAMS", 20 * 5)  # 105 parameters: above
    res = fl.run_sweep(m, tr, base, axes, test=te)
    assert res.history.round.shape == (4, 3) and res.stopped_early[0]
    for k in range(4):
        ref = fl.run_fedavg(m, tr, res.configs[k], test=te)
        np.testing.assert_array_equal(
            flat(jax.tree_util.tree_map(lambda a, k=k: a[k], res.params)), flat(ref.params)
        )
        n = len(ref.history.round)
        for name in ("round", "train_loss", "eval_loss", "eval_accuracy"):
            np.testing.assert_array_equal(getattr(res.history, name)[k, :n], getattr(ref.history, name))
        assert np.all(res.history.round[k, n:] == 0) and bool(res.stopped_early[k]) == ref.stopped_early


@pytest.mark.slow
def test_structural_axes_models_rounds_and_chunks(data):
    tr, te = data
    base = fl.FLConfig(rounds=3, clients_per_round=4, batch_size=10, client_lr=0.05, progress=True)
    mods = [fl.logistic(20, 5), fl.mlp(20, 5, (8,)), fl.logistic(20, 5), fl.logistic(20, 5)]
    axes = dict(
        model=mods,
        seed=[3, 3, 4, 5],
        local_epochs=[1, 1, 2, 1],
        rounds=[3, 3, 3, 2],
        batch_size=[10, 10, 10, 7],
    )
    res = fl.run_sweep(None, tr, base, axes, test=te, memory_bytes=1)  # chunks of one experiment
    assert isinstance(res.params, list)  # the MLP's parameters differ in structure
    for k in range(4):
        _check_experiment(res, k, tr, te)
    logi = fl.run_sweep(mods[0], tr, base, dict(seed=[3, 4, 5]), test=te)  # one chunk of three
    alone = fl.run_sweep(mods[0], tr, base, dict(seed=[3, 4, 5]), test=te, memory_bytes=1)
    np.testing.assert_allclose(flat(logi.params), flat(alone.params), rtol=0, atol=ATOL)


def test_table_and_csv(data, tmp_path):
    tr, te = data
    base = fl.FLConfig(rounds=4, clients_per_round=4, eval_every=2, progress=False)
    res = fl.run_sweep(
        fl.logistic(20, 5), tr, base, dict(seed=[0, 1, 2], client_lr=[0.01, 0.02, 0.03]), test=te
    )
    t = res.table
    assert t["experiment"].tolist() == [0, 0, 1, 1, 2, 2] and t["round"].tolist() == [2, 4] * 3
    assert t["client_lr"].tolist() == [0.01, 0.01, 0.02, 0.02, 0.03, 0.03]
    rows = list(csv.DictReader(res.to_csv(tmp_path / "s.csv").open()))
    assert len(rows) == 6 and list(rows[0]) == list(t)
    for row in rows:
        k, r = int(row["experiment"]), int(row["round"])
        assert np.float32(row["eval_accuracy"]) == res.history.eval_accuracy[k, r - 1]
        assert np.float32(row["eval_loss"]) == res.history.eval_loss[k, r - 1]  # shortest float32 repr


@pytest.mark.parametrize(
    ("axes", "match"),
    [
        ({}, "non-empty"),
        ({"seed": [0, 1], "client_lr": [0.1]}, "equal lengths"),
        ({"learning_rate": [0.1]}, "'learning_rate'.*unknown"),
        ({"seed": []}, r"axes\['seed'\] is empty"),
        ({"strategy": ["loop", "vmap"]}, r"axes\['strategy'\].*cannot vary"),
        ({"compiled": [True]}, "compiled.*cannot vary"),
        ({"seed": "01"}, "sequence"),
        ({"client_lr": [0.1, -1.0]}, "experiment 1: client_lr"),
        ({"clients_per_round": [4, 13]}, "experiment 1: clients_per_round=13"),
    ],
)
def test_bad_axes_name_the_field(data, axes, match):
    tr, _ = data
    with pytest.raises(ValueError, match=match):
        fl.run_sweep(fl.logistic(20, 5), tr, fl.FLConfig(rounds=1, clients_per_round=4), axes)


def test_a_sweep_needs_a_model(data):
    with pytest.raises(ValueError, match="model is None"):
        fl.run_sweep(None, data[0], fl.FLConfig(rounds=1, clients_per_round=4), {"seed": [0]})


def test_bytes_per_experiment_counts_parameter_copies():
    spec = GroupSpec(None, 1, 10, 1, 10, 1, "fedavg", 0, 1, None)
    p = 6_603_710  # the LEAF CNN
    # 3 global copies + 3 per client (local params, gradient, update) of 4-byte floats, plus the batches
    assert bytes_per_experiment(p, spec, 784) == 4 * p * 33 + 4 * 10 * 10 * 784


def test_sweep_on_eight_cpu_devices_matches_one_device(data):
    """The experiment axis split over 8 forced host devices (K = 5, padded to 8)."""
    tr, te = data
    m = fl.logistic(20, 5)
    base = fl.FLConfig(rounds=3, clients_per_round=4, client_lr=0.05, progress=False)
    axes = dict(seed=[0, 1, 2, 3, 4], aggregator=["fedavg", "fedavg", "median", "median", "fedavg"])
    ref = fl.run_sweep(m, tr, base, axes, test=te)
    code = textwrap.dedent(
        """
        import jax, numpy as np, sys
        from mcsl_core import fl
        from mcsl_core.fl import _compiled
        assert jax.device_count() == 8 and _compiled._mesh().size == 8
        tr, te = fl.synthetic_fedprox(1.0, 1.0, num_clients=12, dim=20, num_classes=5, seed=1)
        base = fl.FLConfig(rounds=3, clients_per_round=4, client_lr=0.05, progress=False)
        axes = dict(seed=[0, 1, 2, 3, 4], aggregator=["fedavg", "fedavg", "median", "median", "fedavg"])
        res = fl.run_sweep(fl.logistic(20, 5), tr, base, axes, test=te)
        flat = np.concatenate([np.asarray(x).reshape(5, -1) for x in jax.tree_util.tree_leaves(res.params)], 1)
        np.save(sys.argv[1], flat)
        """
    )
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sweep8_{os.getpid()}.npy")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", code, out], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    os.remove(out)
    want = np.concatenate([np.asarray(x).reshape(5, -1) for x in jax.tree_util.tree_leaves(ref.params)], 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_gpu_script_skips_without_a_gpu_and_dry_runs_tiny(tmp_path):
    """benchmarks/gpu.py: exit 0 with a message on a CPU; ``--tiny`` runs every section."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "gpu.py"), "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "no GPU found" in out.stdout, out.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # nothing written
    from benchmarks import gpu

    assert gpu.main(["--tiny", "--out", str(tmp_path)]) == 0
    import json

    res = json.loads(next(tmp_path.glob("gpu-*-tiny.json")).read_text())
    assert {(r["clients"], r["strategy"]) for r in res["strategies"]} == {
        (n, s) for n in (3, 5) for s in ("loop", "vmap", "shard")
    }
    assert [r["model"] for r in res["sweeps"]] == ["logistic", "cnn"]
    assert all(r["speedup"] > 0 and r["sweep_experiments_per_s"] > 0 for r in res["sweeps"])
    assert res["mechanism"]["points"] == 10**4
    rows = (tmp_path / "gpu_summary.md").read_text().splitlines()
    assert rows[-1].startswith(f"| {res['card']} |") and rows[-1].count("|") == 8
