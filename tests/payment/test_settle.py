"""Settlement conserves money exactly and follows the documented rounding rule."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcsl_core.payment import Settlement, settle
from tests.conftest import examples
from tests.reference.payment_ref import settle_ref

# amounts and rates up to 1e30 currency units (totals far beyond int64 minor units),
# counts up to 10**12: the exact path must conserve money for all of them
money = st.one_of(st.floats(0.0, 1e6), st.floats(0.0, 1e30))
rate = st.one_of(st.floats(0.0, 1e3), st.floats(0.0, 1e30))
count = st.one_of(st.integers(0, 10_000), st.integers(0, 10**12))


@settings(max_examples=examples(150), deadline=None)
@example(amounts=[9e18, 9e18], trainings=[], nodes=[], w=(0.0, 0.0, 0.0), mu="1")  # issue 10 item 8
@example(amounts=[1e30] * 3, trainings=[10**12], nodes=[(10**12, 10**12)], w=(1e30, 1e30, 1e30), mu="0.001")
@example(amounts=[0.125, 0.125], trainings=[], nodes=[], w=(0.0, 0.0, 0.0), mu="0.01")  # ties
@example(amounts=[], trainings=[], nodes=[], w=(0.0, 0.0, 0.0), mu="0.01")
@given(
    amounts=st.lists(money, max_size=30),
    trainings=st.lists(count, max_size=20),
    nodes=st.lists(st.tuples(count, count), max_size=10),
    w=st.tuples(rate, rate, rate),
    mu=st.sampled_from(["0.01", "1", "0.001"]),
)
def test_conserves_money_and_matches_reference(amounts, trainings, nodes, w, mu):
    aggs = [a for a, _ in nodes]
    blocks = [b for _, b in nodes]
    s = settle(amounts, trainings, aggs, blocks, w_l=w[0], w_a=w[1], w_b=w[2], minor_unit=float(mu))
    assert isinstance(s, Settlement)
    # exact Python ints, never a fixed-width integer that could wrap
    for arr in (s.devices, s.servers, s.producers):
        assert arr.dtype == object and all(type(v) is int for v in arr.tolist())
    assert type(s.total) is int
    assert s.devices.shape == (len(amounts),) and s.servers.shape == (len(trainings),)
    assert s.producers.shape == (len(nodes),)
    paid = np.concatenate([s.devices, s.servers, s.producers])
    assert sum(paid.tolist()) == s.total  # exact conservation (Python ints)
    total, shares = settle_ref(amounts, trainings, aggs, blocks, *w, minor_unit=mu)
    assert s.total == total
    # each payee gets its floor or one unit more; more only where the exact share has a fraction
    for got, exact in zip(paid.tolist(), shares):
        fl = int(exact.to_integral_value(rounding="ROUND_FLOOR"))
        assert got in (fl, fl + 1)
        if exact == fl:
            assert got == fl
    # the extra units went to the largest fractional parts
    fracs = [e - int(e.to_integral_value(rounding="ROUND_FLOOR")) for e in shares]
    up = [
        f
        for g, e, f in zip(paid.tolist(), shares, fracs)
        if g > int(e.to_integral_value(rounding="ROUND_FLOOR"))
    ]
    down = [
        f
        for g, e, f in zip(paid.tolist(), shares, fracs)
        if g == int(e.to_integral_value(rounding="ROUND_FLOOR"))
    ]
    if up and down:
        assert min(up) >= max(down)


def test_worked_example():
    # W = 1.005 + 2.5 + 0.1 + 0.333 * 7 + 0.1 * 3 + 0.25 = 6.486 (exact float values)
    s = settle([1.005, 2.5, 0.1], [3, 4], [1, 2], [1, 0], w_l=0.333, w_a=0.1, w_b=0.25)
    assert s.total == 649
    # shares in cents: 100.4999.., 250, 10.000..1, 99.9.., 133.2.., 35.000..1, 20.000..1;
    # floors sum to 647, so the two spare cents go to the largest fractions: server 0
    # (0.9) and device 0 (0.4999..)
    assert s.devices.tolist() == [101, 250, 10]
    assert s.servers.tolist() == [100, 133]
    assert s.producers.tolist() == [35, 20]


def test_half_even_total_and_tie_order():
    # two devices at 0.125 each: exact shares 12.5 cents; W = 25 cents exactly
    s = settle([0.125, 0.125], [], [], [], w_l=0, w_a=0, w_b=0)
    assert s.total == 25 and s.devices.tolist() == [13, 12]  # tie: lower index first
    # W = 12.5 cents rounds half to even: 12
    s = settle([0.125], [], [], [], w_l=0, w_a=0, w_b=0)
    assert s.total == 12 and s.devices.tolist() == [12]
    # ties across classes: devices before servers before producers
    s = settle([0.005], [1], [1], [0], w_l=0.005, w_a=0.005, w_b=0.0)
    # 0.005 as a float is a little above 1/200: three shares of 0.5000..01 cents, W rounds to 2
    assert s.total == 2 and s.devices.tolist() == [1] and s.servers.tolist() == [1]
    assert s.producers.tolist() == [0]


def test_totals_beyond_int64_do_not_wrap():
    """Issue 10 item 8: 2 x 9e18 minor units summed in int64 wrapped to a negative number."""
    s = settle([9e18, 9e18], [], [], [], w_l=0, w_a=0, w_b=0, minor_unit=1.0)
    assert s.devices.tolist() == [9 * 10**18, 9 * 10**18]
    assert s.total == 18 * 10**18 == sum(s.devices.tolist()) == s.devices.sum()
    # one payout alone beyond int64 (was refused before): exact, 10**30 / 0.01 minor units
    s = settle([1e30], [3], [], [], w_l=1e30, w_a=0, w_b=0)
    assert s.devices.tolist() == [int(Decimal(1e30) * 100)]
    assert s.servers.tolist() == [int(Decimal(1e30) * 3 * 100)]


def test_empty_and_zero():
    s = settle([], [], [], [], w_l=1.0, w_a=1.0, w_b=1.0)
    assert s.total == 0 and s.devices.size == s.servers.size == s.producers.size == 0
    s = settle([0.0, 0.0], [0], [0], [0], w_l=0.0, w_a=0.0, w_b=0.0)
    assert s.total == 0 and (np.concatenate([s.devices, s.servers, s.producers]) == 0).all()


def test_large_counts_exact():
    s = settle([1e9], [10**9], [10**6], [10**6], w_l=0.01, w_a=0.5, w_b=1.25)
    exact = Decimal(1e9) + Decimal(0.01) * 10**9 + Decimal(0.5) * 10**6 + Decimal(1.25) * 10**6
    assert s.total == int((exact / Decimal("0.01")).to_integral_value(rounding="ROUND_HALF_EVEN"))
    assert sum(s.devices.tolist() + s.servers.tolist() + s.producers.tolist()) == s.total


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(device_amounts=[1.0, -0.5]), r"device_amounts must lie in \[0, inf\].*index 1"),
        (dict(device_amounts=[np.nan]), "device_amounts must be finite"),
        (dict(device_amounts=[[1.0]]), "device_amounts must be one-dimensional"),
        (dict(server_trainings=[1, -2]), "server_trainings must be >= 0"),
        (dict(server_trainings=[1.5]), "server_trainings must be integer-valued"),
        (dict(producer_aggregations=[1, 2]), "same length"),
        (dict(producer_blocks=[-1]), "producer_blocks must be >= 0"),
        (dict(w_l=-1.0), r"w_l must lie in \[0, inf\]"),
        (dict(w_b=np.inf), "w_b must be finite"),
        (dict(w_a=[1.0, 2.0]), "w_a must be a scalar"),
        (dict(minor_unit=0.0), r"minor_unit must lie in \(0, inf\]"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = dict(
        device_amounts=[1.0],
        server_trainings=[1],
        producer_aggregations=[1],
        producer_blocks=[1],
        w_l=0.1,
        w_a=0.2,
        w_b=0.3,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        settle(
            args.pop("device_amounts"),
            args.pop("server_trainings"),
            args.pop("producer_aggregations"),
            args.pop("producer_blocks"),
            **args,
        )
