"""PBFT simulation: numba kernel vs the pure-Python reference vs the minimal Python heap loop.

Groups ``consensus-n100``, ``consensus-n1000``, ``consensus-n3000``: one block at n
nodes, 10 updates of 300 KB (20,900 / 2,009,000 / 18,027,000 messages); items are
simulated messages. Anchors, where they finish in reasonable time:

- the pure-Python reference simulator (``tests/reference/consensus_ref.py``: heapq,
  one object per message), n = 100 only (about 30 s per block at n = 1,000);
- the minimal Python heap loop: what any pure-Python event simulator does at the
  least per message, one ``heapq`` push and one pop of a ``(time, seq, payload)``
  tuple, with the heap held at one broadcast round (``n (n - 1)`` entries, or the
  message count if smaller). n = 100 and 1,000 (18 M pushes at n = 3,000 take minutes).

The kernel benchmark also alternates kernel and heap loop (A, B, A, B, ...: 20 pairs at
n = 100, where a call takes milliseconds and the machine's noise is as large; 2 at n =
1,000) and records the ratio of the best of each (``ratio_vs_heap_loop``), and the peak
RSS of a fresh interpreter running that one block (``peak_rss_bytes``). The timed rounds
are as many (20 and 2), back to back.
Group ``consensus-sweep``: 1,000 configurations (n in 4..100, 0..20 updates, random
seeds) in one ``sweep`` call, parallel over configurations, vs the serial loop.
In the default tier (``--benchmark-disable``) sizes shrink to a smoke run.
"""

from __future__ import annotations

import heapq
import subprocess
import sys
import time

import numpy as np
import pytest

from mcsl_core.consensus import NetworkModel, pbft_message_counts, simulate_pbft, sweep
from tests.reference.consensus_ref import simulate_ref

U = 10


def heap_loop(messages: int, window: int, seed: int = 0) -> float:
    """Seconds for ``messages`` heapq push + pop pairs of tuples, ``window`` entries pending."""
    rng = np.random.default_rng(seed)
    lat = (0.016 * rng.random(1 << 16) ** -0.2).tolist()  # Pareto(5), mean 20 ms
    L = len(lat)
    h: list = []
    push, pop = heapq.heappush, heapq.heappop
    t0 = time.perf_counter()
    for k in range(window):
        push(h, (lat[k % L], k, k))
    for k in range(window, messages):
        t, _, x = pop(h)
        push(h, (t + lat[k % L], k, x))
    while h:
        pop(h)
    return time.perf_counter() - t0


_RSS = """
import resource, sys
from mcsl_core.consensus import simulate_pbft
r = simulate_pbft(int(sys.argv[1]), int(sys.argv[2]), seed=1)
print(r.messages, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(n: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _RSS, str(n), str(U)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[1])


def _n(benchmark, n):
    return min(n, 13) if benchmark.disabled else n


def _window(n, msgs):
    return min(msgs, n * (n - 1))


def _interleaved_ratio(n, msgs, rounds=3):
    best_k = best_h = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        simulate_pbft(n, U, seed=1)
        best_k = min(best_k, time.perf_counter() - t)
        best_h = min(best_h, heap_loop(msgs, _window(n, msgs)))
    return best_h / best_k, best_k, best_h


def _kernel(benchmark, bench_info, n, rounds):
    n = _n(benchmark, n)
    got = simulate_pbft(n, U, seed=1)  # also compiles (cached) before timing
    assert got.committed and got.phase_messages == pbft_message_counts(n, n_updates=U).messages
    extra = dict(note=f"numba discrete-event kernel, n={n}, {U} updates")
    if not benchmark.disabled:
        ratio, bk, bh = _interleaved_ratio(n, got.messages, rounds=rounds)
        extra.update(
            ratio_vs_heap_loop=round(ratio, 2),
            interleaved_best_kernel_s=bk,
            interleaved_best_heap_loop_s=bh,
            peak_rss_bytes=peak_rss(n),
        )
    bench_info("kernel", got.messages, "message", **extra)
    r = _timed(benchmark, simulate_pbft, n, U, seed=1, rounds=rounds)
    assert r.messages == got.messages


def _heap_anchor(benchmark, bench_info, n, rounds):
    n = _n(benchmark, n)
    msgs = int(pbft_message_counts(n, n_updates=U).messages.total)
    bench_info("anchor", msgs, "message", note=f"minimal Python heap loop, {_window(n, msgs):,} pending")
    _timed(benchmark, heap_loop, msgs, _window(n, msgs), rounds=rounds)


@pytest.mark.benchmark(group="consensus-n100")
def test_kernel_n100(benchmark, bench_info):
    _kernel(benchmark, bench_info, 100, rounds=20)


@pytest.mark.benchmark(group="consensus-n100")
def test_heap_loop_n100(benchmark, bench_info):
    _heap_anchor(benchmark, bench_info, 100, rounds=20)


@pytest.mark.benchmark(group="consensus-n100")
def test_python_reference_n100(benchmark, bench_info):
    n = _n(benchmark, 100)
    net = NetworkModel()
    got = simulate_pbft(n, U, seed=1)
    ref = simulate_ref(n, U, seed=1, network=net)
    assert ref.phase_messages == tuple(got.phase_messages) and ref.time_s == got.time_s
    bench_info("anchor", got.messages, "message", note="pure-Python heapq reference, one object per message")
    _timed(benchmark, simulate_ref, n, U, seed=1, network=net, rounds=3)


@pytest.mark.benchmark(group="consensus-n1000")
def test_kernel_n1000(benchmark, bench_info):
    _kernel(benchmark, bench_info, 1000, rounds=2)


@pytest.mark.benchmark(group="consensus-n1000")
def test_heap_loop_n1000(benchmark, bench_info):
    _heap_anchor(benchmark, bench_info, 1000, rounds=2)


@pytest.mark.benchmark(group="consensus-n3000")
def test_kernel_n3000(benchmark, bench_info):
    n = _n(benchmark, 3000)
    msgs = int(pbft_message_counts(n, n_updates=U).messages.total)
    extra = {} if benchmark.disabled else dict(peak_rss_bytes=peak_rss(n))
    bench_info("kernel", msgs, "message", note=f"numba kernel, n={n}, {U} updates", **extra)
    r = _timed(benchmark, simulate_pbft, n, U, seed=1, rounds=1)
    assert r.committed and r.messages == msgs


def _timed(benchmark, fn, *args, rounds=3, **kwargs):
    if benchmark.disabled:
        return benchmark(fn, *args, **kwargs)
    return benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=rounds, iterations=1, warmup_rounds=0)


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
