"""Payment settlement and allocation in integer minor units (SPEC.md section 4).

The bill is ``W = sum_i (v_i + s_i) + w_l * trainings + w_a * aggregations +
w_b * blocks``. Rounding rule (deterministic, exact):

1. every float input is taken at its exact binary value, ``minor_unit`` at the
   decimal its ``repr`` shows (0.01 is exactly 1/100); ``W`` is computed
   exactly with ``fractions.Fraction``;
2. ``total = round_half_even(W / minor_unit)``;
3. each payee's exact share (device ``i``: its amount; server ``j``:
   ``w_l * trainings_j``; consortium node ``k``: ``w_a * aggregations_k +
   w_b * blocks_k``) divided by ``minor_unit`` is floored;
4. the ``total - sum(floors)`` remaining units (between 0 and the number of
   payees with a fractional part) go one each to the largest fractional
   parts, ties broken by class (devices, servers, producers) then index.

So the payouts always sum to ``total`` exactly and no payee gets more than
one unit above its floor.

Exact end to end: shares, floors, the total and the payouts are Python ints
(the payout arrays have dtype ``object``), so no amount is bounded by int64 and
nothing wraps; ``settle([9e18, 9e18], [], [], [], ..., minor_unit=1.0)`` pays
``9 * 10**18`` twice and totals ``18 * 10**18``. The only bound is on the counts
(``server_trainings`` etc.), which are read as int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from mcsl_core._validation import check_nonneg_int, check_range

__all__ = ["Settlement", "settle"]


@dataclass(frozen=True)
class Settlement:
    """Integer payouts of one task's bill (minor units of the currency)."""

    total: int  # W in minor units (round half to even), a Python int
    devices: np.ndarray  # shape=[n_devices], dtype=object: Python ints (exact, unbounded)
    servers: np.ndarray  # shape=[n_servers], dtype=object: Python ints
    producers: np.ndarray  # shape=[n_nodes], dtype=object: Python ints
    minor_unit: float  # currency units per minor unit


def _vector(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _rate(name: str, w) -> Fraction:
    if np.ndim(w) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(w)}")
    return Fraction(float(check_range(name, w, 0.0).reshape(-1)[0]))


def _int_array(values: list[int]) -> np.ndarray:
    """1-D object array of Python ints (exact; ``np.array`` would pick int64 and wrap)."""
    out = np.empty(len(values), dtype=object)
    out[:] = [int(v) for v in values]
    return out


def _round_half_even(f: Fraction) -> int:
    return round(f)  # Fraction.__round__ rounds half to even


def settle(
    device_amounts,
    server_trainings,
    producer_aggregations,
    producer_blocks,
    *,
    w_l: float,
    w_a: float,
    w_b: float,
    minor_unit: float = 0.01,
) -> Settlement:
    """Compute the bill W and allocate it to devices, edge servers and producers.

    Parameters
    ----------
    device_amounts : array_like, shape (n_devices,)
        ``v + s`` paid to each device (currency units, finite, >= 0).
    server_trainings : array_like of int, shape (n_servers,)
        Local trainings done by each edge server.
    producer_aggregations, producer_blocks : array_like of int, shape (n_nodes,)
        Aggregations done and blocks produced by each consortium node.
    w_l, w_a, w_b : float
        Flat rates per local training, aggregation and block (finite, >= 0).
    minor_unit : float
        Currency units per minor unit (> 0), read as the decimal it prints as.

    Returns
    -------
    Settlement
        ``devices.sum() + servers.sum() + producers.sum() == total`` exactly,
        with the rounding rule of the module docstring; every payout is a Python
        int (object arrays), so arbitrarily large bills neither wrap nor round.
    """
    amounts = _vector("device_amounts", check_range("device_amounts", device_amounts, 0.0))
    trainings = _vector("server_trainings", check_nonneg_int("server_trainings", server_trainings))
    aggs = _vector("producer_aggregations", check_nonneg_int("producer_aggregations", producer_aggregations))
    blocks = _vector("producer_blocks", check_nonneg_int("producer_blocks", producer_blocks))
    if aggs.shape != blocks.shape:
        raise ValueError(
            f"producer_aggregations and producer_blocks must have the same length (one per node), "
            f"got {aggs.shape[0]} and {blocks.shape[0]}"
        )
    fl, fa, fb = _rate("w_l", w_l), _rate("w_a", w_a), _rate("w_b", w_b)
    if np.ndim(minor_unit) != 0:
        raise ValueError(f"minor_unit must be a scalar, got shape {np.shape(minor_unit)}")
    mu_f = float(check_range("minor_unit", minor_unit, 0.0, lo_open=True).reshape(-1)[0])
    mu = Fraction(repr(mu_f))

    shares = (
        [Fraction(float(a)) / mu for a in amounts]
        + [fl * int(t) / mu for t in trainings]
        + [(fa * int(a) + fb * int(b)) / mu for a, b in zip(aggs, blocks)]
    )
    total = _round_half_even(sum(shares, Fraction(0)))
    floors = [s.numerator // s.denominator for s in shares]
    left = total - sum(floors)
    # largest fractional part first; ties by position (devices, servers, producers; index)
    order = sorted(range(len(shares)), key=lambda k: (-(shares[k] - floors[k]), k))
    for k in order[:left]:
        floors[k] += 1
    pay = _int_array(floors)
    nd, ns = amounts.shape[0], trainings.shape[0]
    return Settlement(
        total=int(total),
        devices=pay[:nd],
        servers=pay[nd : nd + ns],
        producers=pay[nd + ns :],
        minor_unit=mu_f,
    )
