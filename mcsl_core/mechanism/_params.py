"""Parameters and solutions of the data-submission game (SPEC.md section 2, paper IV-B)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from mcsl_core._validation import check_not_subnormal, check_range, check_real

__all__ = ["FIELDS", "MechanismParams", "MechanismSolution", "check_field"]

#: Field order shared by every backend kernel.
FIELDS: tuple[str, ...] = (
    "R",
    "alpha_s",
    "beta_s",
    "v_bar",
    "s_bar",
    "c_d",
    "eta",
    "xi",
    "eps",
    "theta",
    "T",
)

# field -> (lo, hi, lo_open); hi is always closed.
_DOMAIN: dict[str, tuple[float | None, float | None, bool]] = {
    "R": (0.0, None, False),
    "alpha_s": (0.0, None, False),
    "beta_s": (0.0, None, False),
    "v_bar": (0.0, None, True),
    "s_bar": (0.0, None, True),
    "c_d": (0.0, None, False),
    "eta": (0.0, None, True),
    "xi": (0.0, None, True),
    "eps": (0.0, 1.0, False),
    "theta": (0.0, 1.0, False),
    "T": (0.0, None, True),
}

_PAPER_DEFAULTS: dict[str, float] = dict(
    R=10.0,
    alpha_s=3.0,
    beta_s=2.0,
    v_bar=50.0,
    s_bar=500.0,
    c_d=2.0,
    eta=5.0,
    xi=5.0,
    eps=0.9,
    theta=0.5,
    T=1.0,
)


def check_field(
    name: str, value: Any, lo: float | None, hi: float | None, lo_open: bool = False
) -> np.ndarray:
    """The one input rule of every mechanism argument, whatever the backend: real,
    finite, in its interval, and not subnormal (XLA flushes subnormals to zero, so
    the JAX backend would answer differently). Returns float64 of ``value``'s shape."""
    check_real(name, value)
    arr = check_range(name, value, lo, hi, lo_open=lo_open)
    check_not_subnormal(name, arr)
    # np.ascontiguousarray (inside check_range) makes scalars 1-d; keep 0-d
    return arr.reshape(np.shape(value))


def is_tracer(x: Any) -> bool:
    """True for a JAX tracer (checked by class name, so this module imports no JAX)."""
    return any(c.__name__ == "Tracer" for c in type(x).__mro__)


@dataclasses.dataclass(frozen=True, eq=False)
class MechanismParams:
    """Parameters of the device / edge-server game, each a scalar or an array.

    All fields broadcast together (NumPy rules); ``shape`` is the broadcast
    shape, the batch shape of every output of :func:`solve`.

    Parameters
    ----------
    R : array_like, >= 0
        Server's revenue from the data (eq. (1)).
    alpha_s, beta_s : array_like, >= 0
        Leak reward ``r(theta) = alpha_s * theta + beta_s``.
    v_bar, s_bar : array_like, > 0
        Normalisers of the device's value and of the server's extra profit in the
        success probability ``g`` (eq. (2)).
    c_d : array_like, >= 0
        Device's fixed sensing cost.
    eta, xi : array_like, > 0
        Device's cost ``C = c_d + eta * xi * v`` (``c_s = xi * v``).
    eps : array_like, in [0, 1]
        Weight of ``v`` in the success probability (eq. (2)).
    theta : array_like, in [0, 1]
        Server's private leakage degree.
    T : array_like, > 0
        Length of the sensing period; the integrands of eqs. (1) and (3) are
        constant over ``[0, T]``, so utilities scale with ``T``.

    Raises
    ------
    ValueError
        A field that is complex, not finite, subnormal (nonzero and below
        2.2e-308 in magnitude: the JAX backend would flush it to zero) or outside
        its domain (naming the field and the first bad index), or fields that do
        not broadcast together.

    Notes
    -----
    Fields are stored as float64 NumPy arrays (0-d for scalars). A JAX tracer
    (inside ``jax.jit``/``jax.grad``/``jax.vmap``) is stored as is: its values cannot
    be inspected while tracing, so it is not checked.
    """

    R: Any  # shape=broadcastable, dtype=float64
    alpha_s: Any  # shape=broadcastable, dtype=float64
    beta_s: Any  # shape=broadcastable, dtype=float64
    v_bar: Any  # shape=broadcastable, dtype=float64
    s_bar: Any  # shape=broadcastable, dtype=float64
    c_d: Any  # shape=broadcastable, dtype=float64
    eta: Any  # shape=broadcastable, dtype=float64
    xi: Any  # shape=broadcastable, dtype=float64
    eps: Any  # shape=broadcastable, dtype=float64
    theta: Any  # shape=broadcastable, dtype=float64
    T: Any = 1.0  # shape=broadcastable, dtype=float64

    def __post_init__(self) -> None:
        for name in FIELDS:
            value = getattr(self, name)
            if is_tracer(value):
                continue
            lo, hi, lo_open = _DOMAIN[name]
            object.__setattr__(self, name, check_field(name, value, lo, hi, lo_open))
        try:
            np.broadcast_shapes(*(np.shape(getattr(self, n)) for n in FIELDS))
        except ValueError as exc:
            shapes = ", ".join(f"{n}{tuple(np.shape(getattr(self, n)))}" for n in FIELDS)
            raise ValueError(f"MechanismParams fields do not broadcast together: {shapes}") from exc

    @classmethod
    def paper_defaults(cls, **overrides: Any) -> MechanismParams:
        """The paper's Section V-A values (R=10, alpha_s=3, beta_s=2, v_bar=50, s_bar=500,
        c_d=2, theta=0.5, eps=0.9, eta=xi=5, T=1), with ``overrides`` replacing fields."""
        unknown = sorted(set(overrides) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown MechanismParams field(s) {unknown}; fields are {list(FIELDS)}")
        return cls(**{**_PAPER_DEFAULTS, **overrides})

    @property
    def shape(self) -> tuple[int, ...]:
        """Broadcast shape of all fields."""
        return tuple(np.broadcast_shapes(*(np.shape(getattr(self, n)) for n in FIELDS)))

    def fields(self) -> tuple[Any, ...]:
        """The field values in :data:`FIELDS` order."""
        return tuple(getattr(self, n) for n in FIELDS)

    def replace(self, **changes: Any) -> MechanismParams:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)


class MechanismSolution(NamedTuple):
    """Solution of the game at every parameter point (all fields of the broadcast shape).

    Invalid points (``valid`` False) hold NaN in the float fields and False in
    ``accepted``.
    """

    s: Any  # shape=params.shape, dtype=float64: server's extra profit s*
    v: Any  # shape=params.shape, dtype=float64: device's value v*(s*)
    g: Any  # shape=params.shape, dtype=float64: success probability g(v*, s*), eq. (2)
    U_s: Any  # shape=params.shape, dtype=float64: server utility, eq. (1)
    U_d: Any  # shape=params.shape, dtype=float64: device utility, eq. (3)
    valid: Any  # shape=params.shape, dtype=bool: the model has a maximiser here
    accepted: Any  # shape=params.shape, dtype=bool: Algorithm 1 step 6, U_s(s*) >= 0
