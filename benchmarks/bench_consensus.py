"""PBFT simulation: numba kernel vs the pure-Python heapq simulator vs the closed form.

Group ``consensus-n100``: one block at n = 100 nodes, 10 updates of 300 KB (20,900
messages). The kernel and the pure-Python reference are first checked to give the
same per-phase counts and the same client time; items are simulated messages.
Group ``consensus-sweep``: 1,000 configurations (n in 4..100, 0..20 updates, random
seeds) in one ``sweep`` call, parallel over configurations.
In the default tier (``--benchmark-disable``) sizes shrink to a smoke run.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcsl_core.consensus import pbft_message_counts, simulate_pbft, sweep
from tests.reference.consensus_ref import simulate_ref


def _size(benchmark):
    return (13, 2) if benchmark.disabled else (100, 10)


@pytest.mark.benchmark(group="consensus-n100")
def test_kernel_n100(benchmark, bench_info):
    n, U = _size(benchmark)
    ref = simulate_ref(n, U, seed=1)
    got = simulate_pbft(n, U, seed=1)  # also compiles (cached) before timing
    assert got.phase_messages == ref.phase_messages
    np.testing.assert_allclose(got.time_s, ref.time_s, rtol=1e-10)
    bench_info("kernel", got.messages, "message", note=f"numba discrete-event kernel, n={n}, {U} updates")
    r = benchmark(simulate_pbft, n, U, seed=1)
    assert r.messages == got.messages


@pytest.mark.benchmark(group="consensus-n100")
def test_python_reference_n100(benchmark, bench_info):
    n, U = _size(benchmark)
    msgs = simulate_pbft(n, U, seed=1).messages
    bench_info("anchor", msgs, "message", note="pure-Python heapq simulator, one object per message")
    r = _timed(benchmark, simulate_ref, n, U, seed=1)
    assert r.messages == msgs


@pytest.mark.benchmark(group="consensus-n100")
def test_closed_form_n100(benchmark, bench_info):
    n, U = _size(benchmark)
    c = pbft_message_counts(n, n_updates=U)
    bench_info("anchor", int(c.messages.total), "message", note="closed-form counts (no timing model)")
    out = benchmark(pbft_message_counts, n, n_updates=U)
    assert out == c


def _timed(benchmark, fn, *args, **kwargs):
    if benchmark.disabled:
        return benchmark(fn, *args, **kwargs)
    return benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=3, iterations=1, warmup_rounds=0)


def _configs(C):
    rng = np.random.default_rng(2026)
    return rng.integers(4, 101, C), rng.integers(0, 21, C), rng.integers(0, 2**31, C)


@pytest.mark.benchmark(group="consensus-sweep")
def test_sweep_1000(benchmark, bench_info):
    C = 20 if benchmark.disabled else 1000
    ns, us, seeds = _configs(C)
    warm = sweep(ns[:4], us[:4], seeds[:4])  # compile outside the timing
    assert warm.committed.all()
    msgs = int(sum(pbft_message_counts(int(n), n_updates=int(u)).messages.total for n, u in zip(ns, us)))
    bench_info("kernel", msgs, "message", note=f"{C} configurations n in 4..100, prange over configurations")
    r = _timed(benchmark, sweep, ns, us, seeds)
    assert r.committed.all() and int(r.messages.sum()) == msgs


@pytest.mark.benchmark(group="consensus-sweep")
def test_sweep_1000_serial(benchmark, bench_info):
    C = 20 if benchmark.disabled else 1000
    ns, us, seeds = _configs(C)
    sweep(ns[:4], us[:4], seeds[:4], parallel=False)
    msgs = int(sum(pbft_message_counts(int(n), n_updates=int(u)).messages.total for n, u in zip(ns, us)))
    bench_info("anchor", msgs, "message", note="the same sweep on one thread")
    r = _timed(benchmark, sweep, ns, us, seeds, parallel=False)
    assert int(r.messages.sum()) == msgs
