"""Mechanism kernel benchmarks: points solved per second.

Two workloads of about 4M points each (20k in smoke mode), for the paper's model
and the constrained one:

- ``grid``: a 4-D parameter grid, eta (40) x xi (40) x eps (50) x R (50), other
  fields scalar, passed as broadcast axes (what a figure sweep does);
- ``points``: 4M random parameter points, every one of the 11 fields a length-N
  array (what the end-to-end system does when it draws per-pair parameters).

In each group the fused numba kernel (``solve``, default backend) is timed beside:
the same closed forms in plain NumPy broadcasting (``backend="numpy"``); the JAX
twin (grid groups only); and what a user without the closed form for s* would do:
``scipy.optimize.minimize_scalar`` of ``-U_s(v*(s), s)`` per point (eq. (4) for the
device's rule; bounded on [0, s_bar] with the box-clipped rule for the constrained
model), timed on a sample of 200 valid points (``items=200``).

The kernel's ``limit_items_per_s`` is the memory-bandwidth limit: a parallel numba
triad measured in the same run divided by the bytes one point moves (outputs: 5
float64 + 2 bool = 42 bytes; plus 11 float64 inputs = 88 bytes for ``points``; the
grid's inputs are a few small cached arrays).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from numba import njit, prange
from scipy.optimize import minimize_scalar

from mcsl_core.mechanism import MechanismParams, solve
from tests.reference.mechanism_ref import random_points

N_TIMED = 4_000_000
N_SMOKE = 20_000
N_SCIPY = 200
BYTES_OUT = 5 * 8 + 2 * 1
BYTES_IN_POINTS = 11 * 8


@njit(cache=True, parallel=True)
def _triad(a, b, c, x):
    for i in prange(a.shape[0]):
        a[i] = b[i] + x * c[i]


def _bandwidth(n: int) -> float:
    """Bytes per second of a parallel triad a = b + x c (3 x 8 bytes per element)."""
    a, b, c = np.zeros(n), np.ones(n), np.full(n, 2.0)
    _triad(a, b, c, 3.0)
    best = np.inf
    for _ in range(7):
        t0 = time.perf_counter()
        _triad(a, b, c, 3.0)
        best = min(best, time.perf_counter() - t0)
    return 24.0 * n / best


@pytest.fixture(scope="module")
def bandwidth(request) -> float:
    disabled = request.config.getoption("benchmark_disable", False)
    return _bandwidth(1_000_000 if disabled else 20_000_000)


def _points(n: int, seed: int = 7) -> MechanismParams:
    """``n`` random parameter points over the whole domain (the references' own sampler)."""
    return MechanismParams(**random_points(np.random.default_rng(seed), n))


def _grid(smoke: bool) -> MechanismParams:
    ne, nx, ns, nr = (10, 10, 10, 20) if smoke else (40, 40, 50, 50)
    return MechanismParams.paper_defaults(
        eta=np.linspace(0.1, 15, ne)[:, None, None, None],
        xi=np.linspace(0.1, 15, nx)[None, :, None, None],
        eps=np.linspace(0, 1, ns)[None, None, :, None],
        R=np.linspace(0, 40, nr),
    )


_CACHE: dict = {}


def _params(benchmark, workload: str) -> tuple[MechanismParams, int]:
    smoke = benchmark.disabled
    key = (workload, smoke)
    if key not in _CACHE:
        if workload == "grid":
            _CACHE[key] = _grid(smoke)
        else:
            _CACHE[key] = _points(N_SMOKE if smoke else N_TIMED)
    p = _CACHE[key]
    return p, int(np.prod(p.shape))


def _sample(p: MechanismParams, m: int, constrained: bool) -> np.ndarray:
    """Indices of the first m points where the model has a maximiser (the scipy anchor
    is not charged for diverging on points the kernel reports as invalid)."""
    return np.flatnonzero(solve(p, constrained=constrained).valid)[:m]


def _scipy_solve(p: MechanismParams, idx: np.ndarray, constrained: bool) -> np.ndarray:
    """Per point: the device's rule from eq. (4), the server's s by scipy."""
    f = [np.broadcast_to(x, p.shape).reshape(-1) for x in p.fields()]
    out = np.empty(idx.size)
    for j, i in enumerate(idx):
        R, al, be, vb, sb, cd, eta, xi, eps, th, T = (float(x[i]) for x in f)
        k = eta * xi
        M = R + al * th + be

        def v_rule(s):
            if eps == 0.0:  # U_d is linear in v with negative slope: the box optimum is 0
                return 0.0
            v = ((1 - eps) * (k - 1) * vb * s - eps * sb * (s - cd)) / (2 * eps * (1 - k) * sb)
            return min(max(v, 0.0), vb) if constrained else v

        def neg_us(s):
            v = v_rule(s)
            return -T * (M - v - s) * (eps * v / vb + (1 - eps) * s / sb)

        if constrained:
            res = minimize_scalar(neg_us, bounds=(0.0, sb), method="bounded")
        else:
            res = minimize_scalar(neg_us)
        out[j] = res.x
    return out


def _run_kernel(benchmark, bench_info, bandwidth, workload, constrained):
    p, n = _params(benchmark, workload)
    solve(p, constrained=constrained)  # compile / load the cache before timing
    nbytes = BYTES_OUT + (BYTES_IN_POINTS if workload == "points" else 0)
    bench_info(
        "kernel",
        n,
        "point",
        limit_items_per_s=bandwidth / nbytes,
        bandwidth_bytes_per_s=bandwidth,
        bytes_per_point=nbytes,
        note=f"fused numba kernel, parallel over points ({workload})",
    )
    sol = benchmark(solve, p, constrained=constrained)
    assert sol.valid.mean() > 0.5


def _run_numpy(benchmark, bench_info, workload, constrained):
    p, n = _params(benchmark, workload)
    bench_info("anchor", n, "point", note="same closed forms, plain NumPy broadcasting")
    sol = benchmark(solve, p, constrained=constrained, backend="numpy")
    assert sol.valid.mean() > 0.5


def _run_jax(benchmark, bench_info, workload, constrained):
    p, n = _params(benchmark, workload)

    def call():
        out = solve(p, constrained=constrained, backend="jax")
        out.U_s.block_until_ready()
        return out

    call()  # compile before timing
    bench_info("anchor", n, "point", note="JAX twin (float64) on the default JAX device")
    benchmark(call)


def _run_scipy(benchmark, bench_info, workload, constrained):
    p, _ = _params(benchmark, workload)
    m = 5 if benchmark.disabled else N_SCIPY
    idx = _sample(p, m, constrained)
    bench_info(
        "anchor", m, "point", note=f"scipy.optimize.minimize_scalar per point, sample of {m} valid points"
    )
    s = benchmark.pedantic(_scipy_solve, args=(p, idx, constrained), rounds=3 if m > 5 else 1, iterations=1)
    ref = solve(p, constrained=constrained).s.reshape(-1)[idx]
    if not constrained:  # Brent finds the unconstrained s*, a maximiser at valid points
        np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-4)


def _tests():
    for workload in ("grid", "points"):
        for model, constrained in (("paper", False), ("constrained", True)):
            group = f"mechanism-{workload}-{model}"
            yield group, workload, constrained


def _define():
    g = globals()
    for group, workload, constrained in _tests():
        tag = group.replace("mechanism-", "").replace("-", "_")

        @pytest.mark.benchmark(group=group)
        def kernel(benchmark, bench_info, bandwidth, _w=workload, _c=constrained):
            _run_kernel(benchmark, bench_info, bandwidth, _w, _c)

        @pytest.mark.benchmark(group=group)
        def numpy_(benchmark, bench_info, _w=workload, _c=constrained):
            _run_numpy(benchmark, bench_info, _w, _c)

        @pytest.mark.benchmark(group=group)
        def scipy_(benchmark, bench_info, _w=workload, _c=constrained):
            _run_scipy(benchmark, bench_info, _w, _c)

        g[f"test_{tag}_numba"] = kernel
        g[f"test_{tag}_numpy"] = numpy_
        g[f"test_{tag}_scipy"] = scipy_
        if workload == "grid":

            @pytest.mark.benchmark(group=group)
            def jax_(benchmark, bench_info, _w=workload, _c=constrained):
                _run_jax(benchmark, bench_info, _w, _c)

            g[f"test_{tag}_jax"] = jax_


_define()
