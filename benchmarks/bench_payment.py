"""Payment kernels beside their anchors (DESIGN.md, performance method).

- ``long_run_pairs``: long-run payoffs of 10^6 leader-follower (p, q) pairs. Kernel:
  the closed form in a parallel numba loop (``long_run``). Anchors: the stacked
  4x4 systems ``pi (P - I) = 0, sum(pi) = 1`` solved with ``numpy.linalg.solve``
  (matrices built with NumPy in the timed call), and per-pair match play with
  the axelrod package (what its user would run; simultaneous game, 10^4 turns
  per pair, a sample of 20 pairs; skipped when axelrod is missing and in smoke
  mode, where its import alone takes 40-70 s).
- ``gth_n4`` / ``gth_n16``: stationary vectors of 10^5 dense random chains of 4 and
  16 states: ``stationary`` (GTH, numba, parallel) against ``numpy.linalg.solve``.

``limit_items_per_s`` on the kernels: measured copy bandwidth / bytes each item
must move at least (inputs read once, outputs written once).
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import pytest

from mcsl_core.payment import PAPER_X, PAPER_Y, long_run, stationary, zd_strategy

X = np.array(PAPER_X)
Y = np.array(PAPER_Y)


@lru_cache(maxsize=1)
def copy_bandwidth() -> float:
    """Bytes per second of a large ``np.copyto`` (read + write counted)."""
    a = np.ones(16 * 2**20)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = np.inf
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 4)), rng.random((n, 2))


def numpy_solve_stationary(P: np.ndarray) -> np.ndarray:
    """pi from the stacked systems (P^T - I) with the last row replaced by ones."""
    n = P.shape[-1]
    A = np.swapaxes(P, -1, -2) - np.eye(n)
    A[..., -1, :] = 1.0
    b = np.zeros(P.shape[:-1])
    b[..., -1] = 1.0
    return np.linalg.solve(A, b[..., None])[..., 0]


def numpy_long_run(p: np.ndarray, q: np.ndarray):
    ps = p[:, :, None]
    q1 = q[:, None, 0:1]
    q2 = q[:, None, 1:2]
    P = np.concatenate([ps * q1, ps * (1 - q1), (1 - ps) * q2, (1 - ps) * (1 - q2)], axis=-1)
    v = numpy_solve_stationary(P)
    return v @ X, v @ Y


def n_pairs(benchmark) -> int:
    return 2_000 if benchmark.disabled else 1_000_000


@pytest.mark.benchmark(group="long_run_pairs")
def test_long_run_kernel(benchmark, bench_info):
    n = n_pairs(benchmark)
    p, q = pairs(n)
    long_run(p[:10], q[:10], X, Y)  # compile / load the cache outside the timing
    bench_info(
        "kernel",
        n,
        "pair",
        limit_items_per_s=copy_bandwidth() / ((4 + 2 + 4 + 2) * 8 + 1),
        note="closed-form leader-follower stationary vector, numba prange",
    )
    out = benchmark(long_run, p, q, X, Y)
    eb, er = numpy_long_run(p[:1000], q[:1000])
    np.testing.assert_allclose(out.E_b[:1000], eb, rtol=1e-9)
    np.testing.assert_allclose(out.E_r[:1000], er, rtol=1e-9)


@pytest.mark.benchmark(group="long_run_pairs")
def test_long_run_numpy_solve(benchmark, bench_info):
    n = n_pairs(benchmark)
    p, q = pairs(n)
    bench_info("anchor", n, "pair", note="stacked 4x4 numpy.linalg.solve, matrices built in NumPy")
    benchmark(numpy_long_run, p, q)


@pytest.mark.benchmark(group="long_run_pairs")
def test_long_run_axelrod_match_sample(benchmark, bench_info):
    if benchmark.disabled:
        pytest.skip("axelrod anchor is not run in smoke mode (its import takes 40-70 s)")
    axl = pytest.importorskip("axelrod")
    game = axl.Game(r=6, s=3, t=8, p=5)
    rng = np.random.default_rng(1)
    sample = [(rng.random(4), rng.random(4)) for _ in range(20)]
    turns = 10_000
    bench_info(
        "anchor", len(sample), "pair", note=f"axelrod Match per pair, simultaneous game, {turns} turns"
    )

    def play_all():
        out = []
        for k, (p, q) in enumerate(sample):
            m = axl.Match(
                (axl.MemoryOnePlayer(four_vector=tuple(p)), axl.MemoryOnePlayer(four_vector=tuple(q))),
                turns=turns,
                game=game,
                seed=k,
            )
            m.play()
            out.append(m.final_score_per_turn())
        return out

    benchmark.pedantic(play_all, rounds=3, iterations=1, warmup_rounds=0)


def chains(B: int, n: int, seed: int = 2) -> np.ndarray:
    P = np.random.default_rng(seed).random((B, n, n))
    return P / P.sum(axis=-1, keepdims=True)


def n_chains(benchmark) -> int:
    return 500 if benchmark.disabled else 100_000


@pytest.mark.parametrize("n", [4, 16])
def test_gth_kernel(benchmark, bench_info, n):
    benchmark.group = f"gth_n{n}"
    B = n_chains(benchmark)
    P = chains(B, n)
    stationary(P[:4])  # compile / load the cache outside the timing
    bench_info(
        "kernel",
        B,
        "chain",
        limit_items_per_s=copy_bandwidth() / ((n * n + n) * 8),
        note=f"GTH elimination, numba prange, {n} states (input checks included)",
    )
    pi = benchmark(stationary, P)
    np.testing.assert_allclose(pi[:200], numpy_solve_stationary(P[:200]), rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("n", [4, 16])
def test_gth_numpy_solve(benchmark, bench_info, n):
    benchmark.group = f"gth_n{n}"
    B = n_chains(benchmark)
    P = chains(B, n)
    bench_info("anchor", B, "chain", note=f"numpy.linalg.solve on stacked {n}x{n} systems")
    benchmark(numpy_solve_stationary, P)


def test_zd_long_run_smoke():
    """The benchmark's inputs are meaningful: ZD relation on the benchmark pairs."""
    p = zd_strategy(X, Y, 2.0, 0.1)
    _, q = pairs(1000)
    lr = long_run(p, q, X, Y)
    np.testing.assert_allclose(lr.E_b - X[0], 2.0 * (lr.E_r - Y[0]), atol=1e-10)
