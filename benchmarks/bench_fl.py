"""FL engine throughput.

``fl-femnist-cnn-35-clients``: one round of 35 clients (the 35 largest writers
of the FEMNIST LEAF subset), 1 local epoch, batch 10, the LEAF CNN. The kernel
is the default strategy (``auto``); beside it, interleaved in the same run
(default, loop, vmap, FedJAX pattern, PyTorch loop, then again), the explicit
strategies and two anchors: a per-client loop of a jitted SGD step (the FedJAX
pattern, same im2col model, each client's exact batches) and a PyTorch
per-client loop of the same network. ``extra_info`` holds every candidate's
median samples/s, the speed-ups, and each strategy's padded-step overhead.

``fl-cnn-step``: where a CNN training step at batch 10 spends its time
(convolutions, dense layer, gradient, update, gather, shuffle, delta write,
dispatch), beside the measured GEMM FLOP/s and copy bandwidth, plus the
``lax.conv_general_dilated`` model and XLA CPU flags (each in a fresh process).

``fl-many-clients-{logistic,mlp}``: a round of 35, 175 and 1,000 edge servers
on FedProx Synthetic(1, 1) (60 features, 10 classes): clients/s and peak RSS
per strategy, each in a fresh process.

Smoke mode (``--benchmark-disable``): tiny synthetic data and logistic
regression, so the code paths run in seconds without compiling the CNN.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from mcsl_core import fl
from mcsl_core.fl._train import _AUTO_CACHE, _max_width, _plan
from tests.conftest import FEMNIST_DIR

GROUP = "fl-femnist-cnn-35-clients"
FLOP_PER_SAMPLE = 103e6  # forward ~34.4 MFLOP (conv1 1.25, conv2 20.1, dense 13.1) x 3 for training
FEMNIST = str(FEMNIST_DIR)  # the tests' one location of the subset (MCSL_FEMNIST_DIR overrides)


def _synthetic_femnist(num_clients: int, mean: int, seed: int = 0) -> fl.FederatedData:
    rng = np.random.default_rng(seed)
    n = np.clip(rng.normal(mean, mean / 3, num_clients).astype(int), 5, None)
    off = np.concatenate([[0], np.cumsum(n)])
    x = rng.random((off[-1], 784), dtype=np.float32)
    y = rng.integers(0, 62, off[-1]).astype(np.int32)
    return fl.FederatedData(x, y, off, tuple(f"w{i}" for i in range(num_clients)), 62)


_DATA: dict = {}


def bench_data(small: bool) -> tuple[fl.FederatedData, str]:
    if small not in _DATA:
        if small:
            _DATA[small] = (_synthetic_femnist(3, 12), "synthetic 3 clients (smoke)")
        elif os.path.isdir(os.path.join(FEMNIST, "train")):
            tr = fl.load_leaf(os.path.join(FEMNIST, "train"), num_classes=62)
            keep = np.sort(np.argsort(-tr.num_samples, kind="stable")[:35])
            _DATA[small] = (tr.select(keep.tolist()), "FEMNIST LEAF subset, 35 largest writers")
        else:
            _DATA[small] = (_synthetic_femnist(35, 139), "synthetic FEMNIST-shaped, 35 clients")
    return _DATA[small]


def gemm_flops(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a jitted float32 ``n x n`` matmul (best of ``reps``)."""
    a = jnp.asarray(np.random.default_rng(0).random((n, n), dtype=np.float32))
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        mm(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def copy_bandwidth(mib: int = 128, reps: int = 5) -> float:
    """Bytes/s of a large ``np.copyto`` (read + write counted), best of ``reps``."""
    a = np.ones(mib * 2**20 // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def _model(small: bool, conv_impl: str = "im2col"):
    return fl.logistic(784, 62) if small else fl.femnist_cnn(conv_impl=conv_impl)


def _overheads(data: fl.FederatedData, params) -> dict[str, float]:
    """Padded (lockstep or bucket) steps each strategy runs beyond the real ones, as a share."""
    steps = data.steps(10)
    real = int(steps.sum())
    out = {}
    for s, width in (("loop", 1), ("vmap", _max_width(params))):
        ran = sum(c.width * int(t) for c in _plan(s, steps, 10, width) for t in c.trips)
        out[s] = (ran - real) / real
    out["shard"] = (len(steps) * fl.bucket_steps(int(steps.max())) - real) / real
    return out


# ---------------------------------------------------------------------------
# candidates of the CNN round
# ---------------------------------------------------------------------------
def _engine_round(model, params, data, strategy):
    cfg = fl.FLConfig(clients_per_round=data.num_clients, batch_size=10, client_lr=0.01, strategy=strategy)
    clients = np.arange(data.num_clients)

    def run():
        jax.block_until_ready(fl.federated_round(model, params, data, clients, cfg).updates)

    return run


def _fedjax_round(model, params, data):
    """Per-client loop of a jitted SGD step on each client's exact batches (the last one short)."""

    @jax.jit
    def step(p, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        g = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g)

    xd, yd = jnp.asarray(data.x), jnp.asarray(data.y)
    perms = [np.random.default_rng(c).permutation(int(n)) for c, n in enumerate(data.num_samples)]

    def run():
        out = []
        for c in range(data.num_clients):
            p = params
            s = data.offsets[c]
            for b in range(0, len(perms[c]), 10):
                i = jnp.asarray(s + perms[c][b : b + 10])
                p = step(p, xd[i], yd[i])
            out.append(jax.tree_util.tree_map(jnp.subtract, p, params))
        jax.block_until_ready(out)

    return run


def _torch_net(torch, small: bool):
    if small:
        return torch.nn.Linear(784, 62)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 32, 5, padding=2)
            self.c2 = torch.nn.Conv2d(32, 64, 5, padding=2)
            self.d1 = torch.nn.Linear(3136, 2048)
            self.d2 = torch.nn.Linear(2048, 62)

        def forward(self, x):
            x = x.view(-1, 1, 28, 28)
            x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
            return self.d2(torch.relu(self.d1(x.flatten(1))))

    return Net()


def _torch_round(torch, data, small: bool):
    torch.manual_seed(0)
    net = _torch_net(torch, small)
    state0 = {k: v.clone() for k, v in net.state_dict().items()}
    xs, ys = torch.from_numpy(data.x.copy()), torch.from_numpy(data.y.astype(np.int64))
    perms = [np.random.default_rng(c).permutation(int(n)) for c, n in enumerate(data.num_samples)]

    def run():
        for c in range(data.num_clients):
            net.load_state_dict(state0)
            opt = torch.optim.SGD(net.parameters(), lr=0.01)
            s = int(data.offsets[c])
            for b in range(0, len(perms[c]), 10):
                i = torch.from_numpy(s + perms[c][b : b + 10])
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xs[i]), ys[i]).backward()
                opt.step()
            _ = {
                k: v - state0[k] for k, v in net.state_dict().items()
            }  # the update, as the engine returns it

    return run


def _deferred_paths(model) -> tuple:
    from mcsl_core.fl import _deferred

    return _deferred.plan(model, 784, 10).paths


@pytest.mark.benchmark(group=GROUP)
def test_fl_round_default_vs_anchors_interleaved(benchmark, bench_info):
    """Kernel: the default strategy. Interleaved: default, loop, vmap, FedJAX, PyTorch, repeated."""
    small = benchmark.disabled
    data, what = bench_data(small)
    model = _model(small)
    params = fl.init_params(model, 784, 0)
    _AUTO_CACHE.clear()
    t0 = time.perf_counter()
    default = _engine_round(model, params, data, "auto")
    default()  # auto measures the candidates on this round (and compiles them)
    auto_s = time.perf_counter() - t0
    cands = {
        "loop": _engine_round(model, params, data, "loop"),
        "vmap": _engine_round(model, params, data, "vmap"),
    }
    cands["fedjax_pattern"] = _fedjax_round(model, params, data)
    try:
        import torch

        cands["pytorch_loop"] = _torch_round(torch, data, small)
        torch_note = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_note = "PyTorch not installed: no PyTorch anchor"
    for fn in cands.values():
        fn()  # warm-up: compile / first-touch
    times: dict[str, list[float]] = {"default": [], **{k: [] for k in cands}}

    def others():  # untimed by pytest-benchmark, timed here: the interleaved anchors
        for name, fn in cands.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        return (), {}

    def timed_default():
        t = time.perf_counter()
        default()
        times["default"].append(time.perf_counter() - t)

    n = int(data.num_samples.sum())
    strategy = next(iter(_AUTO_CACHE.values()), "?")
    flops, bw = (0.0, 0.0) if small else (gemm_flops(), copy_bandwidth())
    bench_info(
        "kernel",
        n,
        "sample",
        note=f"default strategy (auto -> {strategy}); {what}; {torch_note}; {jax.devices()[0].device_kind}",
        **({} if small else {"limit_items_per_s": flops / FLOP_PER_SAMPLE}),
    )
    if small:
        benchmark(lambda: (others(), timed_default()))
    else:
        benchmark.pedantic(timed_default, setup=others, rounds=3, iterations=1)
    rate = {k: n / statistics.median(v) for k, v in times.items() if v}
    best = {k: n / min(v) for k, v in times.items() if v}
    benchmark.extra_info.update(
        auto_choice=strategy,
        deferred_dense_layers=[list(p) for p in _deferred_paths(model)],
        auto_first_round_s=auto_s,
        samples_per_s=rate,
        speedup_default_vs={k: rate["default"] / v for k, v in rate.items() if k != "default"},
        samples_per_s_best=best,
        speedup_default_vs_best={k: best["default"] / v for k, v in best.items() if k != "default"},
        padded_step_overhead=_overheads(data, params),
        real_steps=int(data.steps(10).sum()),
        gemm_flop_per_s=flops,
        copy_bandwidth_bytes_per_s=bw,
        interleaved_rounds=len(times["default"]),
    )


# ---------------------------------------------------------------------------
# per-step breakdown of a CNN training step at batch 10
# ---------------------------------------------------------------------------
def _repeat_ms(fn, *args, reps: int = 10) -> float:
    """Median ms of a jitted ``fn(*args)`` (compiled first)."""
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def _loop_ms(body, carry, n: int = 50) -> float:
    """ms per iteration of ``body`` run ``n`` times inside one jitted ``fori_loop`` (no dispatch)."""
    f = jax.jit(lambda c: lax.fori_loop(0, n, lambda i, c: body(c), c))
    return _repeat_ms(f, carry, reps=5) / n


def _step_parts(small: bool) -> dict[str, float]:
    from mcsl_core.fl._models import _conv_same, _max_pool2
    from mcsl_core.fl._train import _epoch_order, _masked_loss

    model = _model(small)
    params = fl.init_params(model, 784, 0)
    rng = np.random.default_rng(0)
    x_all = jnp.asarray(rng.random((11000, 784), dtype=np.float32))
    y_all = jnp.asarray(rng.integers(0, 62, 11000).astype(np.int32))
    xb, yb, mb = x_all[:10], y_all[:10], jnp.ones(10, bool)
    ib = jnp.asarray(rng.integers(0, 11000, 10).astype(np.int32))
    grad = jax.grad(functools.partial(_masked_loss, model))

    def sgd(p, g):
        return jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g)

    out = {
        "train_step": _repeat_ms(jax.jit(lambda p: sgd(p, grad(p, xb, yb, mb))), params),
        "forward": _repeat_ms(jax.jit(lambda p: model.apply({"params": p}, xb)), params),
        "gradient": _repeat_ms(jax.jit(lambda p: grad(p, xb, yb, mb)), params),
        "update": _repeat_ms(jax.jit(sgd), params, params),
        "gather_x_all[ib]": _loop_ms(lambda c: c + x_all[ib + (c[0, 0] > 1e9)].sum(), jnp.zeros((1, 1))),
        "epoch_shuffle_240_rows": _loop_ms(
            lambda c: c + _epoch_order(jax.random.key(0), 170 + c.astype(jnp.int32), 240)[0], jnp.zeros(())
        ),
    }
    if small:
        return out

    def layer_ms(f, *a):
        return _repeat_ms(jax.jit(jax.grad(lambda *z: jnp.sum(f(*z) ** 2), argnums=tuple(range(len(a))))), *a)

    img = xb.reshape(10, 28, 28, 1)
    h1 = jnp.ones((10, 14, 14, 32))
    h2 = jnp.ones((10, 3136))
    p = params
    out["conv1_fwd_bwd"] = layer_ms(
        lambda k, x: _max_pool2(jax.nn.relu(_conv_same(x, k, 0.0, "im2col"))), p["conv1_kernel"], img
    )
    out["conv2_fwd_bwd"] = layer_ms(
        lambda k, x: _max_pool2(jax.nn.relu(_conv_same(x, k, 0.0, "im2col"))), p["conv2_kernel"], h1
    )
    out["conv2_fwd_bwd_xla_conv"] = layer_ms(
        lambda k, x: _max_pool2(jax.nn.relu(_conv_same(x, k, 0.0, "xla"))), p["conv2_kernel"], h1
    )
    out["dense1_fwd_bwd"] = layer_ms(lambda w, x: jax.nn.relu(x @ w), p["dense1"]["kernel"], h2)
    stack = jax.tree_util.tree_map(lambda a: jnp.zeros((35, *a.shape)), params)
    write = jax.jit(
        lambda s, d, i: jax.tree_util.tree_map(
            lambda a, b: lax.dynamic_update_index_in_dim(a, b, i, 0), s, d
        ),
        donate_argnums=(0,),
    )
    holder = [stack]

    def do_write(i):
        holder[0] = write(holder[0], params, i)
        return holder[0]

    out["delta_write_into_stack"] = _repeat_ms(do_write, jnp.int32(3))
    tiny = jax.jit(lambda a: a + 1)
    out["dispatch_per_call"] = _repeat_ms(tiny, jnp.zeros(()), reps=50)
    out["train_step_deferred_dense"] = _deferred_step_ms(model, params, x_all, y_all, ib)
    xla = fl.femnist_cnn(conv_impl="xla")
    gx = jax.grad(functools.partial(_masked_loss, xla))
    out["train_step_xla_conv_model"] = _repeat_ms(jax.jit(lambda p: sgd(p, gx(p, xb, yb, mb))), params)
    return out


def _deferred_step_ms(model, params, x_all, y_all, ib, steps: int = 16) -> float:
    """ms per step of the engine's deferred-dense SGD step (``mcsl_core.fl._deferred``):
    ``steps`` steps of batch 10 with a ``steps``-slot history, inside one ``fori_loop``."""
    from mcsl_core.fl import _deferred
    from mcsl_core.fl._train import _dvg

    d = _deferred.plan(model, 784, 10)
    rest, kern = _deferred.split(params, d)
    vg = _dvg(model, d)
    mb = jnp.ones(10, bool)

    def body(t, c):
        r, h = c
        (_, xs), (g, gp) = vg(r, _deferred.probes(d), kern, h, x_all[(ib + t) % 11000], y_all[ib], mb)
        r = jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, r, g)
        return r, _deferred.record(h, xs, gp, jnp.float32(0.01), t)

    def epoch(c):
        r, h = lax.fori_loop(0, steps, body, c)
        return r, _deferred.kernel_deltas(h)

    return _repeat_ms(jax.jit(epoch), (rest, _deferred.history(d, steps)), reps=5) / steps


_FLAG_SCRIPT = """
import json, statistics, time, numpy as np, jax, jax.numpy as jnp, functools
from mcsl_core import fl
from mcsl_core.fl._train import _masked_loss
m = fl.femnist_cnn(); p = fl.init_params(m, 784, 0)
x = jnp.asarray(np.random.default_rng(0).random((10, 784), dtype=np.float32)); y = jnp.zeros(10, jnp.int32)
g = jax.grad(functools.partial(_masked_loss, m))
f = jax.jit(lambda p: jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g(p, x, y, jnp.ones(10, bool))))
jax.block_until_ready(f(p)); ts = []
for _ in range(10):
    t = time.perf_counter(); jax.block_until_ready(f(p)); ts.append(time.perf_counter() - t)
print(json.dumps(1e3 * statistics.median(ts)))
"""

XLA_FLAG_SETS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_enable_fast_math=true",
)


@pytest.mark.benchmark(group="fl-cnn-step")
def test_fl_cnn_step_breakdown(benchmark, bench_info):
    small = benchmark.disabled
    parts: dict = {}

    def run():
        parts.update(_step_parts(small))

    bench_info(
        "kernel", 10, "sample", note="one CNN train step at batch 10 (im2col), parts in extra_info (ms)"
    )
    benchmark.pedantic(run, rounds=1, iterations=1)
    flags = {}
    for f in XLA_FLAG_SETS[: 1 if small else None]:
        if small:
            break
        out = subprocess.run(
            [sys.executable, "-c", _FLAG_SCRIPT],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "XLA_FLAGS": f},
        )
        flags[f or "(none)"] = (
            json.loads(out.stdout) if out.returncode == 0 else f"failed: {out.stderr[-200:]}"
        )
    dense_bytes = 3136 * 2048 * 4
    benchmark.extra_info.update(
        step_ms=parts,
        xla_flags_train_step_ms=flags,
        gemm_flop_per_s=0.0 if small else gemm_flops(),
        copy_bandwidth_bytes_per_s=0.0 if small else copy_bandwidth(),
        dense1_weight_bytes=dense_bytes,
    )


# ---------------------------------------------------------------------------
# many clients: logistic and MLP at 35, 175, 1000 edge servers
# ---------------------------------------------------------------------------
_MANY_SCRIPT = """
import json, sys, time, numpy as np, jax
from mcsl_core import fl
def hwm():  # this process's peak RSS in MiB (VmHWM; ru_maxrss would carry the parent's peak over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
model_name, strategy, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
tr, _ = fl.synthetic_fedprox(1.0, 1.0, num_clients=k, dim=60, num_classes=10, seed=0)
m = fl.logistic(60, 10) if model_name == "logistic" else fl.mlp(60, 10, hidden=(64,))
p = fl.init_params(m, 60, 0)
cfg = fl.FLConfig(clients_per_round=k, batch_size=10, client_lr=0.01, strategy=strategy)
cl = np.arange(k)
base = hwm()
t = time.perf_counter()
jax.block_until_ready(fl.federated_round(m, p, tr, cl, cfg).updates)
first = time.perf_counter() - t
ts = []
for _ in range(3):
    t = time.perf_counter()
    ru = fl.federated_round(m, p, tr, cl, cfg)
    jax.block_until_ready(ru.updates)
    ts.append(time.perf_counter() - t)
dt = sorted(ts)[1]
n = int(tr.num_samples.sum())
print(json.dumps(dict(clients_per_s=k / dt, samples_per_s=n / dt, round_s=dt, first_round_s=first,
    peak_rss_mib=hwm(), rss_before_round_mib=base, strategy=ru.strategy, samples=n)))
"""


def _many(model_name: str, strategy: str, k: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MANY_SCRIPT, model_name, strategy, str(k)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="fl-many-clients")
@pytest.mark.parametrize("model_name", ["logistic", "mlp"])
def test_fl_many_clients(benchmark, bench_info, model_name):
    """Kernel: the default strategy's round of 1,000 clients (in this process); the
    table (each strategy x 35/175/1000 clients, fresh processes) in extra_info."""
    small = benchmark.disabled
    sizes = (6,) if small else (35, 175, 1000)
    strategies = ("vmap",) if small else ("loop", "vmap")
    table = {f"{s}@{k}": _many(model_name, s, k) for k in sizes for s in strategies}
    k = sizes[-1]
    tr, _ = fl.synthetic_fedprox(1.0, 1.0, num_clients=k, dim=60, num_classes=10, seed=0)
    m = fl.logistic(60, 10) if model_name == "logistic" else fl.mlp(60, 10, hidden=(64,))
    p = fl.init_params(m, 60, 0)
    cfg = fl.FLConfig(clients_per_round=k, batch_size=10, client_lr=0.01)

    def run():
        jax.block_until_ready(fl.federated_round(m, p, tr, np.arange(k), cfg).updates)

    run()
    bench_info(
        "kernel", k, "client", note=f"{model_name}, {k} clients, FedProx Synthetic(1, 1), default strategy"
    )
    if small:
        benchmark(run)
    else:
        benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(table=table)
