"""GTH stationary vectors against exact rational references and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from mcsl_core.payment import stationary
from mcsl_core.payment._markov import _stationary_batch
from tests.conftest import tol
from tests.reference.payment_ref import stationary_exact


def random_chains(rng, B, n, *, sparse=0.0, tiny=False):
    P = rng.random((B, n, n))
    if sparse:
        P[rng.random((B, n, n)) < sparse] = 0.0
        P[:, np.arange(n), (np.arange(n) + 1) % n] += 0.1  # keep a cycle: irreducible
    if tiny:
        # near-singular: weak links of size 1e-14 between two otherwise closed halves
        h = n // 2
        P[:, :h, h:] *= 1e-14
        P[:, h:, :h] *= 1e-14
    return P / P.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("n", [2, 3, 4, 7])
@pytest.mark.parametrize("kind", ["dense", "sparse", "tiny"])
def test_gth_against_exact_reference(rng, n, kind):
    P = random_chains(rng, 40, n, sparse=0.5 if kind == "sparse" else 0.0, tiny=kind == "tiny")
    pi = stationary(P)
    assert pi.dtype == np.float64 and pi.shape == (40, n)
    for b in range(40):
        ref = stationary_exact(P[b])
        # GTH keeps relative accuracy entrywise, even for 1e-14 links
        np.testing.assert_allclose(pi[b], ref, rtol=1e-12 * n, atol=0)


def test_invariants_many_chains(rng):
    P = random_chains(rng, 2000, 6, sparse=0.3)
    P[:500] = random_chains(rng, 500, 6, tiny=True)
    pi = stationary(P)
    assert (pi >= 0).all()
    np.testing.assert_allclose(pi.sum(-1), 1.0, **tol(np.float64))
    np.testing.assert_allclose(np.einsum("bi,bij->bj", pi, P), pi, rtol=1e-10, atol=1e-15)


def test_probabilities_near_zero_and_one():
    e = 1e-14
    P = np.array([[1 - e, e, 0.0], [0.0, 1 - e, e], [e, 0.0, 1 - e]])
    np.testing.assert_allclose(stationary(P), [1 / 3] * 3, rtol=1e-13)
    P = np.array([[1 - e, e], [0.5, 0.5]])
    ref = stationary_exact(P)
    np.testing.assert_allclose(stationary(P), ref, rtol=1e-13)
    assert stationary(P)[1] > 0  # ~2e-14, resolved, not lost to cancellation


def test_transient_states_get_zero():
    P = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8], [0.0, 0.6, 0.4]])
    pi = stationary(P)
    np.testing.assert_allclose(pi, stationary_exact(P), rtol=1e-13, atol=0)
    assert pi[0] == 0.0


def test_two_recurrent_classes_needs_init():
    P = np.array([[1.0, 0.0, 0.0], [0.3, 0.3, 0.4], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="more than one recurrent class"):
        stationary(P)
    for init in ([0, 1, 0], [0.2, 0.5, 0.3], [1, 0, 0]):
        got = stationary(P, init=init)
        np.testing.assert_allclose(got, stationary_exact(P, init), rtol=1e-12, atol=1e-15)
    # batch: reported through the valid mask and NaN, not raised
    PP = np.stack([P, random_chains(np.random.default_rng(1), 1, 3)[0]])
    pi, valid = stationary(PP, return_valid=True)
    assert valid.tolist() == [False, True]
    assert np.isnan(pi[0]).all() and np.isfinite(pi[1]).all()


def test_reducible_with_transient_block_and_init(rng):
    # classes {0,1} and {4}; transient {2,3} feeding both
    P = np.array(
        [
            [0.1, 0.9, 0, 0, 0],
            [0.7, 0.3, 0, 0, 0],
            [0.2, 0, 0.3, 0.4, 0.1],
            [0, 0.1, 0.5, 0.1, 0.3],
            [0, 0, 0, 0, 1.0],
        ]
    )
    for _ in range(5):
        init = rng.dirichlet(np.ones(5))
        np.testing.assert_allclose(
            stationary(P, init=init), stationary_exact(P, init), rtol=1e-11, atol=1e-15
        )


def test_periodic_chain_unique_answer():
    P = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(stationary(P), [0.5, 0.5])
    np.testing.assert_allclose(stationary(P, init=[1.0, 0.0]), [0.5, 0.5])
    # Cesaro average of the powers agrees
    mu, acc = np.array([1.0, 0.0]), np.zeros(2)
    for _ in range(1000):
        acc += mu
        mu = mu @ P
    np.testing.assert_allclose(acc / 1000, [0.5, 0.5])


def test_parallel_equals_serial(rng):
    P = random_chains(rng, 3000, 5, sparse=0.4)
    P[::7] = np.eye(5)  # slow path too (several classes): NaN in both
    a = _stationary_batch(P, None, parallel=True)
    b = _stationary_batch(P, None, parallel=False)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_batch_shapes_and_broadcast_init(rng):
    P = random_chains(rng, 6, 3).reshape(2, 3, 3, 3)
    pi = stationary(P, init=[1.0, 0.0, 0.0])
    assert pi.shape == (2, 3, 3)
    np.testing.assert_allclose(pi, stationary(P), **tol(np.float64))


@pytest.mark.parametrize(
    "P, match",
    [
        (np.array([[0.5, 0.6], [0.5, 0.5]]), r"P must be row-stochastic.*row \(0,\)|row 0"),
        (np.array([[1.5, -0.5], [0.5, 0.5]]), r"P must lie in \[0, 1\]"),
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), "P must be finite"),
        (np.ones((2, 3)) / 3, "shape"),
        (np.ones(3), "shape"),
    ],
)
def test_bad_matrices_raise(P, match):
    with pytest.raises(ValueError, match=match):
        stationary(P)


def test_bad_init_raises():
    P = np.eye(2)
    with pytest.raises(ValueError, match="init must sum to 1"):
        stationary(P, init=[0.5, 0.4])
    with pytest.raises(ValueError, match="init must have last axis"):
        stationary(P, init=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="init must lie in"):
        stationary(P, init=[1.5, -0.5])


def test_underflow_is_reported_not_answered():
    t = 1e-300
    P = np.array([[1 - t, t, 0.0], [0.0, 1 - t, t], [t * t * 0 + 5e-324, 0.0, 1 - 5e-324]])
    pi, valid = stationary(P[None], return_valid=True)
    if valid[0]:  # if it is answered, it must be right
        np.testing.assert_allclose(pi[0], stationary_exact(P), rtol=1e-10)
    else:
        assert np.isnan(pi[0]).all()
        with pytest.raises(ValueError, match="underflow"):
            stationary(P)


def test_memory_checked_upfront_on_both_paths(monkeypatch):
    """The estimate (stationary_bytes, the docstring's formula) is checked before the
    kernel, with the same ValueError on the parallel and the one-thread path."""
    import mcsl_core._validation as V
    from mcsl_core.payment import _markov

    rng = np.random.default_rng(0)
    P = random_chains(rng, 100, 16)
    for parallel in (True, False):
        need = _markov.stationary_bytes(100, 16, parallel=parallel)
        monkeypatch.setattr(V, "available_memory", lambda need=need: need)
        _stationary_batch(P, None, parallel=parallel)
        monkeypatch.setattr(V, "available_memory", lambda need=need: need - 1)
        with pytest.raises(ValueError, match="P is too large"):
            _stationary_batch(P, None, parallel=parallel)


def test_large_single_chain_peak_memory():
    """Issue 10 item 14: one 1000 x 1000 matrix (8 MB) peaked at 413 MB (a 32-lane work
    block allocated for one chain). Now one lane: 8 n^2 bytes of work space (plus
    25 n^2 reserved in the estimate for the reducible path). The peak resident memory
    of the call, measured in a fresh process (VmHWM reset just before the call), is
    within the documented estimate and below 24 MB, and the answer is right."""
    code = """
import numpy as np
from mcsl_core.payment import stationary
from mcsl_core.payment._markov import stationary_bytes
def kb(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))
stationary(np.full((3, 3), 1 / 3))  # compile / load the cached kernel first
rng = np.random.default_rng(1)
P = rng.random((1000, 1000)); P /= P.sum(1, keepdims=True)
open('/proc/self/clear_refs', 'w').write('5')
base = kb('VmRSS:')
pi = stationary(P)
peak = (kb('VmHWM:') - base) * 1024
assert np.allclose(pi @ P, pi, rtol=0, atol=1e-15) and abs(pi.sum() - 1) < 1e-12
print(peak, stationary_bytes(1, 1000))
"""
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("peak-RSS reset (/proc/self/clear_refs) is Linux-only")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    peak, doc = (int(x) for x in out.split())
    assert peak <= doc and peak < 24e6, (peak, doc)
