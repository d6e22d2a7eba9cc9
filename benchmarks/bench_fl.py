"""FL engine throughput: training samples/s for 35 clients, 1 local epoch,
batch 10, the LEAF FEMNIST CNN; each strategy beside its anchors (a PyTorch
per-client loop of the same model, a per-client jitted JAX step loop without
donation or bucketing: the FedJAX pattern) and the limit from measured GEMM
FLOP/s (about 103 MFLOP per training sample). Plus the peak memory of one
175-client round.

Smoke mode (``--benchmark-disable``): 3 tiny clients and logistic regression in
place of the CNN (and a linear PyTorch model), so a smoke run checks the code
paths in seconds without compiling the CNN. Recorded runs use the real
FEMNIST subset when present (the 35 largest writers' rows), else synthetic
FEMNIST-shaped data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcsl_core import fl

GROUP = "fl-femnist-cnn-35-clients"
FLOP_PER_SAMPLE = 103e6  # forward ~34.4 MFLOP (conv1 1.25, conv2 20.1, dense 13.1) x 3 for training
FEMNIST = os.environ.get(
    "MCSL_FEMNIST_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "femnist_leaf")
)


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
    a = jnp.asarray(np.random.default_rng(0).random((n, n), dtype=np.float32))
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        mm(a).block_until_ready()
    return 2.0 * n**3 * reps / (time.perf_counter() - t)


def _model(small: bool):
    return fl.logistic(784, 62) if small else fl.femnist_cnn()


def _timed(benchmark, fn):
    if benchmark.disabled:
        benchmark(fn)
    else:
        benchmark.pedantic(fn, rounds=2, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("strategy", ["loop", "vmap", "shard"])
def test_fl_strategy(benchmark, bench_info, strategy):
    data, what = bench_data(benchmark.disabled)
    model = _model(benchmark.disabled)
    params = fl.init_params(model, 784, 0)
    cfg = fl.FLConfig(clients_per_round=data.num_clients, local_epochs=1, batch_size=10, client_lr=0.01)
    clients = np.arange(data.num_clients)

    def run():
        ru = fl.federated_round(model, params, data, clients, cfg, strategy=strategy)
        jax.block_until_ready(ru.updates)

    limit = None if benchmark.disabled else gemm_flops() / FLOP_PER_SAMPLE
    bench_info(
        "kernel",
        int(data.num_samples.sum()),
        "sample",
        note=f"{strategy}; {what}; {jax.devices()[0].device_kind}",
        **({} if limit is None else {"limit_items_per_s": limit}),
    )
    _timed(benchmark, run)


@pytest.mark.benchmark(group=GROUP)
def test_fl_anchor_fedjax_pattern(benchmark, bench_info):
    """Per-client loop of a jitted SGD step (no scan, donation or bucketing)."""
    import optax

    data, what = bench_data(benchmark.disabled)
    model = fl.logistic(784, 62) if benchmark.disabled else fl.femnist_cnn(conv_impl="xla")
    params = fl.init_params(model, 784, 0)

    @jax.jit
    def step(p, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        g = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g)

    xd, yd = data.x, data.y
    perms = [np.random.default_rng(c).permutation(int(n)) for c, n in enumerate(data.num_samples)]

    def run():
        out = []
        for c in range(data.num_clients):
            p = params
            s = data.offsets[c]
            for b in range(0, len(perms[c]), 10):
                i = s + perms[c][b : b + 10]
                p = step(p, xd[i], yd[i])
            out.append(p)
        jax.block_until_ready(out)

    bench_info(
        "anchor",
        int(data.num_samples.sum()),
        "sample",
        note=f"jitted step per batch (FedJAX pattern); {what}",
    )
    _timed(benchmark, run)


@pytest.mark.benchmark(group=GROUP)
def test_fl_anchor_pytorch_loop(benchmark, bench_info):
    torch = pytest.importorskip("torch")
    data, what = bench_data(benchmark.disabled)
    torch.manual_seed(0)

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

    net0 = torch.nn.Linear(784, 62) if benchmark.disabled else Net()
    state0 = {k: v.clone() for k, v in net0.state_dict().items()}
    xs, ys = torch.from_numpy(data.x), torch.from_numpy(data.y.astype(np.int64))
    perms = [np.random.default_rng(c).permutation(int(n)) for c, n in enumerate(data.num_samples)]

    def run():
        out = []
        for c in range(data.num_clients):
            net0.load_state_dict(state0)
            opt = torch.optim.SGD(net0.parameters(), lr=0.01)
            s = int(data.offsets[c])
            for b in range(0, len(perms[c]), 10):
                i = torch.from_numpy(s + perms[c][b : b + 10])
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net0(xs[i]), ys[i]).backward()
                opt.step()
            out.append({k: v.clone() for k, v in net0.state_dict().items()})

    bench_info(
        "anchor",
        int(data.num_samples.sum()),
        "sample",
        note=f"PyTorch {torch.__version__} per-client loop, {torch.get_num_threads()} threads; {what}",
    )
    _timed(benchmark, run)


_MEM_SCRIPT = """
import resource, sys, time, numpy as np, jax
from mcsl_core import fl
k, per = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
off = np.arange(k + 1) * per
data = fl.FederatedData(rng.random((k * per, 784), dtype=np.float32), rng.integers(0, 62, k * per), off,
                        tuple(map(str, range(k))), 62)
m = fl.logistic(784, 62) if k < 10 else fl.femnist_cnn()
p = fl.init_params(m, 784, 0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ru = fl.federated_round(m, p, data, np.arange(k), fl.FLConfig(batch_size=10), strategy="loop")
agg = fl.fedavg(ru.updates, ru.num_samples)
jax.block_until_ready(agg)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.benchmark(group="fl-memory-175-clients")
def test_fl_peak_memory_175_clients(benchmark, bench_info):
    """Peak RSS of one loop-strategy round with 175 clients (stacked updates included)."""
    k = 4 if benchmark.disabled else 175
    res = {}

    def run():
        out = subprocess.run(
            [sys.executable, "-c", _MEM_SCRIPT, str(k), "10"],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")},
        )
        assert out.returncode == 0, out.stderr[-2000:]
        res["base"], res["peak"] = (int(v) for v in out.stdout.split())

    bench_info(
        "kernel", k * 10, "sample", note="loop strategy, 10 samples per client; CNN (logistic in smoke mode)"
    )
    benchmark.pedantic(run, rounds=1, iterations=1)
    stacked = k * (785 * 62 if benchmark.disabled else 6_603_710) * 4
    benchmark.extra_info.update(
        peak_rss_mib=res["peak"] / 1024,
        rss_before_round_mib=res["base"] / 1024,
        stacked_updates_mib=stacked / 2**20,
    )
    assert res["peak"] * 1024 >= stacked  # the stacked updates alone need this much
