"""Client update, strategies, rounds, FedAvg loop (small synthetic problems)."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcsl_core import fl
from mcsl_core.fl._train import _AUTO_CACHE, VMAP_WASTE, _client_keys, _client_update_fn, _epoch_order, _plan
from tests.conftest import examples, tol
from tests.reference import fl_ref


@pytest.fixture(scope="module")
def synth():
    return fl.synthetic_fedprox(0.5, 0.5, num_clients=12, dim=20, num_classes=5, seed=2)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(tree)])


def test_one_client_fedavg_equals_centralised_sgd(synth):
    """One client, server SGD(1.0): FedAvg is minibatch SGD over that client's data."""
    train, _ = synth
    one = train.select([3])
    x, y = one.client(0)
    model = fl.logistic(20, 5)
    cfg = fl.FLConfig(
        rounds=2,
        clients_per_round=1,
        local_epochs=2,
        batch_size=7,
        client_lr=0.1,
        seed=5,
        strategy="vmap",
        progress=False,
    )
    res = fl.run_fedavg(model, one, cfg)
    # the run's keys: (init, train, noise) = split(key(seed), 3); client c of round r shuffles
    # epoch e with fold_in(fold_in(fold_in(train, r), c), e)
    init_key, train_key, _ = jax.random.split(jax.random.key(5), 3)
    p0 = fl.init_params(model, 20, init_key)
    n = len(y)
    rows = one.padded_steps(7)[0] * 7
    orders = []
    for r in range(2):
        ck = jax.random.fold_in(jax.random.fold_in(train_key, r), 0)
        for e in range(2):
            orders.append(np.asarray(_epoch_order(jax.random.fold_in(ck, e), n, rows))[:n])
    for o in orders:
        assert sorted(o.tolist()) == list(range(n))
    w, b = fl_ref.logistic_sgd(p0["linear"]["kernel"], p0["linear"]["bias"], x, y, orders, 7, 0.1)
    np.testing.assert_allclose(np.asarray(res.params["linear"]["kernel"]), w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.params["linear"]["bias"]), b, rtol=1e-4, atol=1e-5)


def test_strategies_agree(synth):
    train, _ = synth
    model = fl.mlp(20, 5, hidden=(16,))
    params = fl.init_params(model, 20, 0)
    clients = [0, 4, 5, 9, 11]
    assert len(set(train.padded_steps(10)[clients])) > 1  # several buckets: padding differs per strategy
    cfg = fl.FLConfig(clients_per_round=5, local_epochs=2, batch_size=10, client_lr=0.05)
    out = {
        s: fl.federated_round(model, params, train, clients, cfg, round_index=3, strategy=s)
        for s in ("loop", "vmap", "shard")
    }
    for s in ("vmap", "shard"):
        np.testing.assert_allclose(_flat(out[s].updates), _flat(out["loop"].updates), rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(out[s].loss, out["loop"].loss, rtol=1e-4)
    ru = out["loop"]
    np.testing.assert_array_equal(ru.num_samples, train.num_samples[clients])
    assert ru.updates["out"]["kernel"].shape == (5, 16, 5)
    # a client's update depends neither on the strategy nor on who else takes part
    solo = fl.federated_round(model, params, train, [9], cfg, round_index=3, strategy="vmap")
    np.testing.assert_allclose(
        _flat(solo.updates), _flat(jax.tree_util.tree_map(lambda u: u[3], ru.updates)), rtol=1e-4, atol=2e-6
    )


def test_masked_padding_steps_leave_state_unchanged(synth):
    train, _ = synth
    model = fl.logistic(20, 5)
    params = fl.init_params(model, 20, 1)
    x_all, y_all = jnp.asarray(train.x), jnp.asarray(train.y)
    kd = jax.random.key_data(jax.random.key(4))
    start, n = int(train.offsets[2]), 23
    exact = jax.jit(_client_update_fn(model, 3, 8, 2))(params, x_all, y_all, start, n, kd, 0.1)
    padded = jax.jit(_client_update_fn(model, 12, 8, 2))(params, x_all, y_all, start, n, kd, 0.1)
    np.testing.assert_array_equal(_flat(exact[0]), _flat(padded[0]))
    np.testing.assert_array_equal(np.asarray(exact[1]), np.asarray(padded[1]))
    # a client with no rows at all: every step is padding, update exactly zero
    empty = jax.jit(_client_update_fn(model, 4, 8, 1))(params, x_all, y_all, start, 0, kd, 0.1)
    assert not _flat(empty[0]).any()


def test_same_seed_same_result_and_history(synth):
    train, test = synth
    cfg = fl.FLConfig(
        rounds=4,
        clients_per_round=4,
        batch_size=10,
        client_lr=0.05,
        seed=9,
        strategy="vmap",
        eval_every=2,
        progress=False,
    )
    a = fl.run_fedavg(fl.logistic(20, 5), train, cfg, test=test)
    b = fl.run_fedavg(fl.logistic(20, 5), train, cfg, test=test)
    np.testing.assert_array_equal(_flat(a.params), _flat(b.params))
    np.testing.assert_array_equal(a.history.eval_accuracy, b.history.eval_accuracy)
    assert a.history.round.tolist() == [1, 2, 3, 4]
    assert np.isnan(a.history.eval_accuracy[0]) and not np.isnan(a.history.eval_accuracy[1])
    ev = fl.evaluate(fl.logistic(20, 5), a.params, test)
    assert ev.accuracy == pytest.approx(float(a.history.eval_accuracy[-1]))
    c = fl.run_fedavg(fl.logistic(20, 5), train, dataclasses.replace(cfg, seed=10), test=test)
    assert not np.array_equal(_flat(a.params), _flat(c.params))


def test_evaluate_against_numpy(synth):
    _, test = synth
    model = fl.logistic(20, 5)
    p = fl.init_params(model, 20, 3)
    logits = test.x.astype(np.float64) @ np.asarray(p["linear"]["kernel"]) + np.asarray(p["linear"]["bias"])
    z = logits - logits.max(axis=1, keepdims=True)
    ce = -(z[np.arange(len(test.y)), test.y] - np.log(np.exp(z).sum(axis=1)))
    ev = fl.evaluate(model, p, test, batch_size=64)
    assert ev.accuracy == pytest.approx(np.mean(logits.argmax(axis=1) == test.y))
    assert ev.loss == pytest.approx(ce.mean(), rel=1e-4)


def test_learning_improves_accuracy(synth):
    train, test = synth
    cfg = fl.FLConfig(
        rounds=15,
        clients_per_round=6,
        batch_size=10,
        client_lr=0.05,
        strategy="vmap",
        eval_every=15,
        progress=False,
    )
    model = fl.logistic(20, 5)
    before = fl.evaluate(
        model, fl.init_params(model, 20, jax.random.split(jax.random.key(0), 3)[0]), test
    ).accuracy
    res = fl.run_fedavg(model, train, cfg, test=test)
    assert res.history.eval_accuracy[-1] > before + 0.15
    assert np.all(np.isfinite(res.history.train_loss)) and np.all(res.history.round_time > 0)


def test_target_accuracy_stops_early_and_callback(synth):
    train, test = synth
    seen = []
    cfg = fl.FLConfig(
        rounds=50,
        clients_per_round=6,
        batch_size=10,
        client_lr=0.05,
        strategy="vmap",
        target_accuracy=0.3,
        progress=False,
    )
    res = fl.run_fedavg(
        fl.logistic(20, 5), train, cfg, test=test, callback=lambda r, p, rec: seen.append(rec["round"])
    )
    assert res.stopped_early and len(res.history.round) < 50 and res.history.eval_accuracy[-1] >= 0.3
    assert seen == res.history.round.tolist()
    stop2 = fl.run_fedavg(
        fl.logistic(20, 5),
        train,
        fl.FLConfig(rounds=9, clients_per_round=2, strategy="vmap"),
        callback=lambda r, p, rec: r == 2,
    )
    assert len(stop2.history.round) == 2


def test_no_recompilation_after_first_round(synth, caplog):
    train, test = synth
    model = fl.logistic(20, 5)
    for strategy in ("loop", "vmap"):
        cfg = fl.FLConfig(
            rounds=3, clients_per_round=12, batch_size=10, client_lr=0.05, strategy=strategy, progress=False
        )
        compiles = []

        def count(r, p, rec):
            compiles.append(sum("Compiling" in m.getMessage() for m in caplog.records))
            caplog.clear()

        with jax.log_compiles(True), caplog.at_level(logging.DEBUG):
            fl.run_fedavg(model, train, cfg, test=test, callback=count)
        assert compiles[0] > 0, "the counter must see the first round's compilations"
        assert compiles[1:] == [0, 0], (strategy, compiles)


def test_server_optimizer_and_federated_round_flow(synth):
    """The system-layer flow: round -> (replace updates) -> aggregate -> server step."""
    train, _ = synth
    model = fl.logistic(20, 5)
    params = fl.init_params(model, 20, 0)
    cfg = fl.FLConfig(clients_per_round=3, strategy="loop")
    ru = fl.federated_round(model, params, train, [1, 2, 3], cfg)
    agg = fl.aggregate(ru.updates, ru.num_samples, cfg)
    opt = optax.sgd(1.0)
    new, _ = fl.server_update(opt, params, opt.init(params), agg)
    want = _flat(params) + _flat(fl.fedavg(ru.updates, ru.num_samples))
    np.testing.assert_allclose(_flat(new), want, **tol(np.float32))
    # server momentum: two identical pseudo-gradients move further the second time
    m = optax.sgd(1.0, momentum=0.9)
    s = m.init(params)
    p1, s = fl.server_update(m, params, s, agg)
    p2, s = fl.server_update(m, p1, s, agg)
    np.testing.assert_allclose(_flat(p2) - _flat(p1), 1.9 * (_flat(p1) - _flat(params)), rtol=1e-4, atol=1e-6)


def _byzantine_run(train, test, aggregator, n_bad, rounds=12):
    model = fl.logistic(20, 5)
    cfg = fl.FLConfig(
        clients_per_round=10,
        batch_size=10,
        client_lr=0.05,
        aggregator=aggregator,
        num_byzantine=n_bad,
        multi_krum=3,
        trim_fraction=0.3,
        strategy="vmap",
    )
    params = fl.init_params(model, 20, 0)
    opt = optax.sgd(1.0)
    state = opt.init(params)
    for r in range(rounds):
        clients = fl.select_clients(train.num_clients, 10, 0, r)
        ru = fl.federated_round(model, params, train, clients, cfg, round_index=r)
        # the first n_bad participants are Byzantine: sign-flipped, scaled by 10
        upd = jax.tree_util.tree_map(lambda u: u.at[:n_bad].multiply(-10.0), ru.updates)
        params, state = fl.server_update(opt, params, state, fl.aggregate(upd, ru.num_samples, cfg))
    return fl.evaluate(model, params, test).accuracy


def test_byzantine_updates_wreck_fedavg_not_median_or_krum():
    # IID clients sharing one labelling rule, so honest updates agree and outliers stand out
    rng = np.random.default_rng(4)
    w = rng.normal(size=(20, 5))
    x = rng.normal(size=(1100, 20)).astype(np.float32)
    y = np.argmax(x @ w, axis=1)
    off = np.arange(0, 1001, 100)
    train = fl.FederatedData(x[:1000], y[:1000], off, tuple(f"d{i}" for i in range(10)), 5)
    test = fl.FederatedData(x[1000:], y[1000:], [0, 100], ("t",), 5)
    clean = _byzantine_run(train, test, "fedavg", 0)
    wrecked = _byzantine_run(train, test, "fedavg", 3)
    assert clean > 0.6 and wrecked < 0.3  # 5 classes: chance is about 0.2
    for agg in ("median", "krum", "trimmed_mean"):  # trimmed mean drops 3 per side here
        assert _byzantine_run(train, test, agg, 3) > max(0.6, wrecked + 0.35), agg


def test_dp_fedavg_in_the_loop(synth):
    train, _test = synth
    base = dict(rounds=3, clients_per_round=4, client_lr=0.05, strategy="vmap", progress=False)
    a = fl.run_fedavg(
        fl.logistic(20, 5), train, fl.FLConfig(**base, dp_clip_norm=0.5, dp_noise_multiplier=1.0)
    )
    b = fl.run_fedavg(
        fl.logistic(20, 5), train, fl.FLConfig(**base, dp_clip_norm=0.5, dp_noise_multiplier=1.0)
    )
    c = fl.run_fedavg(
        fl.logistic(20, 5), train, fl.FLConfig(**base, dp_clip_norm=0.5, dp_noise_multiplier=0.0)
    )
    np.testing.assert_array_equal(_flat(a.params), _flat(b.params))
    assert np.abs(_flat(a.params) - _flat(c.params)).max() > 1e-3


class _FakeClock:
    """A clock the fake runners below advance by a cost model of the clients they run."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _fake_runner(clock, cost, calls, name):
    """A strategy runner costing ``cost(steps)`` fake seconds (0 when ``warm``), returning zeros."""

    def run(model, params, data, clients, keys, cfg, *, warm=False, deadline=None):
        calls.append((name, warm, tuple(int(c) for c in clients)))
        if not warm:
            clock.t += cost(data.steps(cfg.batch_size)[clients])
        if deadline is not None and clock.t > deadline:
            return None
        k = len(clients)
        return jax.tree_util.tree_map(lambda p: jnp.zeros((k, *p.shape)), params), jnp.zeros(k)

    return run


def test_auto_picks_the_fastest_on_the_whole_round(monkeypatch):
    """First clients small, later ones large: a trial on the first few would pick
    ``vmap`` (one lockstep program), the whole round favours ``loop``."""
    sizes = [3, 4, 2, 5, 180, 260, 240]  # ceil(n / 10) steps: 1, 1, 1, 1, 18, 26, 24
    off = np.concatenate([[0], np.cumsum(sizes)])
    data = fl.FederatedData(
        np.zeros((off[-1], 3), np.float32), np.zeros(off[-1], np.int32), off, tuple("abcdefg"), 2
    )
    clock, calls = _FakeClock(), []
    costs = {
        "loop": lambda st: 1.0 * st.sum() + 0.5 * len(st),  # exact steps, a dispatch per client
        "vmap": lambda st: 3.0 * st.max(),  # lockstep: the longest client, cheap per width
    }
    # whole round: loop 1*72 + 3.5 = 75.5 < vmap 3*26 = 78; first four: loop 6 > vmap 3
    monkeypatch.setattr(fl._train, "_clock", clock)
    monkeypatch.setattr(
        fl._train, "_RUNNERS", {s: _fake_runner(clock, c, calls, s) for s, c in costs.items()}
    )
    _AUTO_CACHE.clear()
    model = fl.logistic(3, 2)
    params = fl.init_params(model, 3, 0)
    cfg = fl.FLConfig(clients_per_round=7, batch_size=10)
    assert fl.choose_strategy(model, params, data, cfg, range(7)) == "loop"
    # every candidate compiled (warm) and ran the whole round
    assert {(s, w) for s, w, _ in calls} == {("loop", True), ("loop", False), ("vmap", True), ("vmap", False)}
    assert all(c == tuple(range(7)) for _, _, c in calls)
    # the trial the old rule used would have chosen vmap
    assert costs["vmap"](data.steps(10)[:4]) < costs["loop"](data.steps(10)[:4])
    n = len(calls)
    assert fl.choose_strategy(model, params, data, cfg, range(7)) == "loop" and len(calls) == n  # cached
    ru = fl.federated_round(model, params, data, range(7), dataclasses.replace(cfg, strategy="auto"))
    assert ru.strategy == "loop" and len(calls) == n + 1  # the cached choice runs once


def test_auto_round_returns_the_winners_own_result(synth):
    """auto measures on the real round and keeps the winner's output: equal to that strategy's round."""
    train, _ = synth
    model = fl.logistic(20, 5)
    params = fl.init_params(model, 20, 0)
    cfg = fl.FLConfig(clients_per_round=5, batch_size=10, client_lr=0.05, strategy="auto")
    _AUTO_CACHE.clear()
    ru = fl.federated_round(model, params, train, [0, 3, 4, 7, 9], cfg, round_index=2)
    assert ru.strategy in ("loop", "vmap")
    again = fl.federated_round(
        model, params, train, [0, 3, 4, 7, 9], cfg, round_index=2, strategy=ru.strategy
    )
    np.testing.assert_array_equal(_flat(ru.updates), _flat(again.updates))
    res = fl.run_fedavg(model, train, dataclasses.replace(cfg, rounds=2, progress=False))
    assert res.strategy in ("loop", "vmap")


def test_bad_config_and_round_input(synth):
    train, _ = synth
    for kw in (
        dict(rounds=0),
        dict(client_lr=-1.0),
        dict(strategy="gpu"),
        dict(aggregator="mean"),
        dict(trim_fraction=0.5),
        dict(dp_clip_norm=0.0),
        dict(target_accuracy=1.5),
        dict(batch_size=2.5),
        # issue 10 item 12: strings, None and non-integers name the field
        dict(num_byzantine=1.5),
        dict(num_byzantine="1"),
        dict(rounds="3"),
        dict(rounds=None),
        dict(clients_per_round=True),
        dict(eval_every=2.0),
        dict(seed=None),
        dict(seed=-1),
        dict(seed=2**63),
        dict(client_lr="0.1"),
        dict(client_lr=None),
        dict(client_lr=float("nan")),
        dict(trim_fraction="0.1"),
        dict(trim_fraction=None),
        dict(dp_noise_multiplier=None),
        dict(dp_noise_multiplier=-0.5),
        dict(dp_clip_norm="1"),
        dict(target_accuracy="0.5"),
        dict(aggregator=None),
        dict(aggregator=["fedavg"]),
        dict(strategy=None),
        dict(server_optimizer="sgd"),
        dict(progress="yes"),
    ):
        with pytest.raises(ValueError, match=next(iter(kw))):
            fl.FLConfig(**kw)
    # integers of NumPy type and the boundary values are accepted
    fl.FLConfig(rounds=np.int64(2), seed=2**63 - 1, num_byzantine=0, trim_fraction=0, client_lr=1)
    model = fl.logistic(20, 5)
    p = fl.init_params(model, 20, 0)
    for clients, match in (([], "non-empty"), ([0, 12], r"\[0, 12\)"), ([1, 1], "repeat")):
        with pytest.raises(ValueError, match=match):
            fl.federated_round(model, p, train, clients, fl.FLConfig())
    with pytest.raises(ValueError, match="clients_per_round"):
        fl.run_fedavg(model, train, fl.FLConfig(clients_per_round=13))


def test_aggregator_registry_drives_validation():
    """fl.AGGREGATORS is the one list: every name configures and aggregates; others are refused."""
    assert isinstance(fl.AGGREGATORS, tuple) and fl.AGGREGATORS == fl._aggregate.AGGREGATORS
    assert set(fl.AGGREGATORS) == {"fedavg", "median", "trimmed_mean", "krum"}  # the rules _aggregate defines
    u = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)}
    ref = {
        "fedavg": np.asarray(u["w"]).mean(axis=0),  # equal weights
        "median": np.median(np.asarray(u["w"]), axis=0),
        "trimmed_mean": np.sort(np.asarray(u["w"]), axis=0)[1:4].mean(axis=0),  # trim 0.2 of 5: one per side
    }
    for name in fl.AGGREGATORS:
        cfg = fl.FLConfig(aggregator=name, trim_fraction=0.2, num_byzantine=1)
        out = np.asarray(fl.aggregate(u, np.ones(5), cfg)["w"])
        if name in ref:
            np.testing.assert_allclose(out, ref[name], **tol(np.float32))
        else:  # krum: one of the clients' own updates
            assert any(np.array_equal(out, row) for row in np.asarray(u["w"]))
    with pytest.raises(ValueError, match="aggregator must be one of"):
        fl.FLConfig(aggregator="krum2")


def test_shard_on_eight_cpu_devices_matches_vmap():
    """XLA_FLAGS must be set before JAX starts, hence a subprocess."""
    code = textwrap.dedent(
        """
        import jax, numpy as np
        from mcsl_core import fl
        assert jax.device_count() == 8, jax.devices()
        tr, _ = fl.synthetic_fedprox(0.5, 0.5, num_clients=12, dim=20, num_classes=5, seed=2)
        m = fl.logistic(20, 5)
        p = fl.init_params(m, 20, 0)
        cfg = fl.FLConfig(clients_per_round=5, batch_size=10, client_lr=0.05)
        flat = lambda t: np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(t)])
        a = fl.federated_round(m, p, tr, [0, 4, 5, 9, 11], cfg, strategy="vmap")
        b = fl.federated_round(m, p, tr, [0, 4, 5, 9, 11], cfg, strategy="shard")
        c8 = fl.federated_round(m, p, tr, [0, 1, 2, 4, 5, 8, 9, 11], cfg, strategy="shard")
        leaf = jax.tree_util.tree_leaves(c8.updates)[0]
        print("DEVICES", len(leaf.sharding.device_set) if hasattr(leaf, "sharding") else 0)
        print("MAXDIFF", float(np.abs(flat(a.updates) - flat(b.updates)).max()))
        res = fl.run_fedavg(m, tr, fl.FLConfig(rounds=1, clients_per_round=8, strategy="shard", progress=False))
        print("RUN", res.strategy)
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert float(lines["MAXDIFF"]) <= 1e-6
    assert int(lines["DEVICES"]) == 8  # the client axis really is split over the 8 devices
    assert lines["RUN"].strip() == "shard"


def test_strategies_equal_the_pure_client_update(synth):
    """Every strategy trains each client as the pure per-client update (its static
    padded scan) does: the same order, batches and steps; extra padded steps are no-ops.
    Same float operations per client (vmap only batches them), so the tolerance is a
    few float32 ulps of reordering inside batched kernels."""
    train, _ = synth
    model = fl.mlp(20, 5, hidden=(16,))
    params = fl.init_params(model, 20, 0)
    clients = np.arange(12)
    cfg = fl.FLConfig(clients_per_round=12, local_epochs=2, batch_size=10, client_lr=0.05)
    kd = np.asarray(_client_keys(jax.random.key(0), jnp.uint32(3), jnp.asarray(clients, jnp.uint32)))
    x_all, y_all = jnp.asarray(train.x), jnp.asarray(train.y)
    want, want_loss = [], []
    pure = jax.jit(_client_update_fn(model, int(train.padded_steps(10).max()) + 1, 10, 2))  # more padding
    for j, c in enumerate(clients):
        d, loss = pure(params, x_all, y_all, int(train.offsets[c]), int(train.num_samples[c]), kd[j], 0.05)
        want.append(_flat(d))
        want_loss.append(float(loss))
    for s in ("loop", "vmap", "shard"):
        ru = fl.federated_round(model, params, train, clients, cfg, round_index=3, strategy=s)
        got = [_flat(jax.tree_util.tree_map(lambda u, j=j: u[j], ru.updates)) for j in range(12)]
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5, atol=1e-7, err_msg=s)
        np.testing.assert_allclose(ru.loss, want_loss, rtol=1e-5, err_msg=s)


@settings(max_examples=examples(60), deadline=None)
@given(
    steps=st.lists(st.integers(0, 400), min_size=1, max_size=80),
    max_width=st.sampled_from([1, 2, 8, 1024]),
)
@example(steps=[1, 1, 1, 1, 18, 26, 24], max_width=1024)
@example(steps=[0, 0, 5], max_width=8)
@example(steps=[16] * 22 + [17] * 13, max_width=8)  # the FEMNIST benchmark round
def test_round_plans_cover_each_client_once_within_the_waste_bound(steps, max_width):
    """loop: every client alone for exactly its steps; vmap: chunks of power-of-two
    width <= max_width whose lockstep steps exceed the real ones by <= VMAP_WASTE."""
    steps = np.asarray(steps)
    real = int(steps.sum())
    for strategy in ("loop", "vmap"):
        calls = _plan(strategy, steps, 10, max_width)
        seen = np.concatenate([c.pos.ravel() for c in calls])
        assert sorted(seen.tolist()) == list(range(len(steps)))  # each client exactly once
        ran = 0
        for c in calls:
            assert c.width & (c.width - 1) == 0 and c.width <= (1 if strategy == "loop" else max_width)
            for row, trip in zip(c.pos, c.trips):
                assert trip == steps[row].max()  # a chunk runs its longest member's steps
                assert c.rows >= 10 * trip  # the epoch order covers every row it walks
                ran += c.width * int(trip)
        if strategy == "loop":
            assert ran == real
        else:
            assert ran <= (1.0 + VMAP_WASTE) * real + 1e-9


def test_cnn_trains_a_few_steps_and_its_loss_falls():
    """The real LEAF CNN (im2col, as femnist_cnn() builds it) in the default tier:
    2 clients of 12 tiny 28x28 images whose class is the position of a bright
    3x3 square; 4 rounds of 1 local epoch (batch 6). The training loss of the last
    round is below half the first's (random init gives about ln 62 = 4.1)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 24).astype(np.int32)
    img = 0.05 * rng.random((24, 28, 28), dtype=np.float32)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        img[i, 5 + 12 * r : 8 + 12 * r, 5 + 12 * q : 8 + 12 * q] = 1.0
    data = fl.FederatedData(img.reshape(24, 784), y, [0, 12, 24], ("a", "b"), 62)
    cfg = fl.FLConfig(
        rounds=4,
        clients_per_round=2,
        batch_size=6,
        client_lr=0.05,
        strategy="loop",
        eval_every=4,
        progress=False,
    )
    res = fl.run_fedavg(fl.femnist_cnn(), data, cfg)
    loss = res.history.train_loss
    assert np.all(np.isfinite(loss)) and 3.0 < loss[0] < 5.5
    assert loss[-1] < 0.5 * loss[0], loss
    assert res.history.eval_accuracy[-1] > 0.5  # 4 classes: chance is 0.25


def test_loop_round_in_parts_equals_one_part_bit_for_bit(synth, monkeypatch):
    """A ``loop`` round split into parts run side by side (threads, merged into one stack)
    gives every client exactly the update and loss of the one-part round: a client's
    program does the same float operations whichever part it is in. Also with the
    deferred dense update (threshold lowered so the MLP's 20 x 16 kernel takes that path).
    ``vmap`` ignores the setting (its lockstep chunks would change with a split)."""
    from mcsl_core.fl import _deferred, _train

    train, _ = synth
    model = fl.mlp(20, 5, hidden=(16,))
    params = fl.init_params(model, 20, 0)
    clients = np.array([11, 0, 5, 3, 8, 1, 9, 2, 7])  # not sorted: slots follow this order
    monkeypatch.setattr(_train, "SPLIT_MIN_WORK", 0)  # this small round splits too
    merged = []
    real_merge = _train._merge
    monkeypatch.setattr(_train, "_merge", lambda *a: merged.append(1) or real_merge(*a))
    cfg = fl.FLConfig(clients_per_round=9, local_epochs=2, batch_size=10, client_lr=0.05)
    for defer in (_deferred.DEFER_MIN_KERNEL, 64):
        monkeypatch.setattr(_deferred, "DEFER_MIN_KERNEL", defer)
        got = {}
        for parts in ("1", "2", "3"):
            monkeypatch.setenv(fl.THREADS_ENV, parts)
            merged.clear()
            ru = fl.federated_round(model, params, train, clients, cfg, round_index=1, strategy="loop")
            got[parts] = (_flat(ru.updates), np.asarray(ru.loss))
            assert len(merged) == int(parts) - 1  # the helper parts really ran
        for parts in ("2", "3"):
            assert np.array_equal(got[parts][0], got["1"][0]), (defer, parts)
            assert np.array_equal(got[parts][1], got["1"][1]), (defer, parts)


def test_round_parts_split_and_environment(monkeypatch):
    """Parts: a partition of the round, each at most ceil(k / p) clients, near-equal work
    (the snake deal: part totals within the largest client's steps); the part count
    follows MCSL_FL_THREADS, one for a small round or without memory to spare, and a bad
    value is refused."""
    from mcsl_core.fl import _train

    steps = np.random.default_rng(3).integers(0, 40, 35)
    for p in (1, 2, 3, 5):
        parts = _train._split(steps, p)
        assert sorted(np.concatenate(parts).tolist()) == list(range(35))
        assert max(len(q) for q in parts) <= -(-35 // p)
        totals = [int(steps[q].sum()) for q in parts]
        assert max(totals) - min(totals) <= steps.max()
    monkeypatch.setenv(fl.THREADS_ENV, "3")
    assert _train.round_parts(35, 1000) == 3 and _train.round_parts(2, 1000) == 2
    assert _train.round_parts(35, 1000, _train.SPLIT_MIN_WORK - 1) == 1  # too little work
    assert _train.round_parts(35, 1000, _train.SPLIT_MIN_WORK) == 3
    monkeypatch.setattr(_train, "available_memory", lambda: 4 * 2 * 12 * 1000 - 1)
    assert _train.round_parts(35, 1000) == 1  # two helper stacks of 12 clients do not fit
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv(fl.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=fl.THREADS_ENV):
            _train.round_parts(35, 1000)
