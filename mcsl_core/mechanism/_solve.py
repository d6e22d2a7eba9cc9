"""Public functions of the data-submission game (SPEC.md section 2, paper IV-B, Algorithm 1)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from mcsl_core._validation import check_finite, check_memory, check_real
from mcsl_core.mechanism import _numpy
from mcsl_core.mechanism._params import MechanismParams, MechanismSolution, check_field, is_tracer

__all__ = [
    "device_rule",
    "device_utility",
    "incentive_gap",
    "server_best_response",
    "server_utility",
    "solve",
    "success_probability",
]

Backend = Literal["numba", "jax", "numpy"]
_BACKENDS = ("numba", "jax", "numpy")


#: Bytes per point of the whole-array backends (peak of their temporaries, measured
#: with tracemalloc for NumPy at 1e5 points and rounded up by about 30 %; the JAX
#: figure counts its stacked candidate arrays: 8 candidates x (s, v, f, mask)).
_ARRAY_BYTES_PER_POINT = {
    ("numpy", False): 160,
    ("numpy", True): 256,
    ("jax", False): 192,
    ("jax", True): 384,
}


def _check_size(backend: str, shape: tuple[int, ...], constrained: bool) -> None:
    """Refuse upfront a NumPy/JAX problem that cannot fit (numba checks in its kernel)."""
    if backend == "numba":
        return
    n = int(np.prod(shape, dtype=object))
    need = _ARRAY_BYTES_PER_POINT[backend, constrained] * n
    check_memory("params", need, f"backend {backend!r} on {n} points of shape {tuple(shape)}")


def _check_params(params: Any) -> MechanismParams:
    if not isinstance(params, MechanismParams):
        raise ValueError(f"params must be a MechanismParams, got {type(params).__name__}")
    return params


def _check_backend(backend: Any) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    return backend


def success_probability(v, s, params: MechanismParams) -> np.ndarray:
    """Success probability ``g(v, s) = eps v / v_bar + (1 - eps) s / s_bar``, eq. (2).

    ``v``, ``s`` broadcast with ``params``; any finite values are accepted (the
    paper's unconstrained model leaves [0, 1] for some of them).
    """
    p = _check_params(params)
    check_real("v", v)
    check_real("s", s)
    v = check_finite("v", v).reshape(np.shape(v))
    s = check_finite("s", s).reshape(np.shape(s))
    return p.eps * v / p.v_bar + (1.0 - p.eps) * s / p.s_bar


def server_utility(v, s, params: MechanismParams) -> np.ndarray:
    """Server utility ``U_s = T (R + alpha_s theta + beta_s - v - s) g(v, s)``, eq. (1)."""
    p = _check_params(params)
    g = success_probability(v, s, p)
    v = np.asarray(v, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    return p.T * (p.R + p.alpha_s * p.theta + p.beta_s - v - s) * g


def device_utility(v, s, params: MechanismParams) -> np.ndarray:
    """Device utility ``U_d = T (v + s - c_d - eta xi v) g(v, s)``, eq. (3)."""
    p = _check_params(params)
    g = success_probability(v, s, p)
    v = np.asarray(v, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    return p.T * (v + s - p.c_d - p.eta * p.xi * v) * g


def device_rule(s, params: MechanismParams, *, constrained: bool = False) -> np.ndarray:
    """The device's announced rule ``v*(s)``, eq. (4).

    ``constrained=False``: the paper's unclipped stationary point of ``U_d`` in ``v``
    (any finite ``s``), NaN where ``eta xi <= 1`` or ``eps = 0`` (no maximiser).
    ``constrained=True``: the device's best ``v`` in ``[0, v_bar]``; ``U_d`` is a
    concave quadratic in ``v`` when ``eta xi > 1``, so this is eq. (4) projected
    onto the box (``v = 0`` when ``eps = 0``); ``s`` must lie in ``[0, s_bar]``.
    """
    p = _check_params(params)
    check_real("s", s)
    s = check_finite("s", s).reshape(np.shape(s))
    ok, use, _a, _b, _M, pp, q = _numpy.coeffs(
        p.R, p.alpha_s, p.beta_s, p.v_bar, p.s_bar, p.c_d, p.eta, p.xi, p.eps, p.theta
    )
    if constrained:
        from mcsl_core._validation import first_bad_index

        bad = np.broadcast_to((s < 0.0) | (s > p.s_bar), np.broadcast_shapes(s.shape, np.shape(p.s_bar)))
        idx = first_bad_index(bad)
        if idx is not None:
            raise ValueError(f"s must lie in [0, s_bar]; first bad index {idx}")
        v = np.minimum(np.maximum(pp * s + q, 0.0), p.v_bar)
    else:
        v = pp * s + q
        ok = ok & use
    shape = np.broadcast_shapes(np.shape(v), np.shape(ok))
    return np.where(np.broadcast_to(ok, shape), np.broadcast_to(v, shape), np.nan)


def server_best_response(
    params: MechanismParams, *, constrained: bool = False, backend: Backend = "numba"
) -> np.ndarray:
    """The server's best response ``s*`` to the device's rule.

    ``constrained=False``: the paper's closed form (SPEC.md section 2), NaN where it
    is not a maximiser (``eta xi <= 1``, ``eps = 0``, or ``U_s`` convex along the
    rule). ``constrained=True``: the exact best ``s`` in ``[0, s_bar]`` against the
    box-constrained rule. Same as ``solve(params, ...).s``.
    """
    return solve(params, constrained=constrained, backend=backend).s


def solve(
    params: MechanismParams, *, constrained: bool = False, backend: Backend = "numba"
) -> MechanismSolution:
    """Solve the device / edge-server game at every broadcast parameter point.

    Parameters
    ----------
    params : MechanismParams
        Fields broadcast together to ``params.shape``.
    constrained : bool
        ``False``: the paper's model, the closed forms of eq. (4) and ``s*`` unclipped;
        valid where ``eps > 0``, ``eta xi > 1`` and ``d2 U_s / ds2 < 0`` along the rule.
        ``True``: the feasible bilevel optimum: the device's best ``v`` in
        ``[0, v_bar]`` for each ``s``, and the server's best ``s`` in ``[0, s_bar]``
        against that rule, found exactly (``U_s`` along the clipped rule is
        piecewise quadratic in ``s``; every piece's stationary point, the breakpoints
        and the ends are scored). ``g`` then lies in [0, 1]. Valid where ``eta xi > 1``.
    backend : {"numba", "jax", "numpy"}
        ``"numba"`` (default): fused kernel, parallel over points. ``"jax"``: the JAX
        twin, run in float64 (``jax.enable_x64(True)`` is entered here); it returns
        JAX arrays and works under ``jax.jit``/``jax.vmap``/``jax.grad`` when the
        caller holds ``with jax.enable_x64(True):`` around tracing and calling.
        ``"numpy"``: plain NumPy broadcasting.
        ``valid`` is also False where float64 overflows (e.g. eps below about 1e-300
        in the paper's model); the constrained model treats an eps that small as
        the eps -> 0 limit of the device's rule (v = 0).

    Memory, for ``n = prod(params.shape)`` points (broadcast fields are read in
    place, never materialised, by the numba kernel): numba ``42 n`` bytes of
    outputs plus ``96 * 1024`` per thread; NumPy about ``160 n`` (paper's model)
    or ``256 n`` (constrained) of temporaries; JAX about ``192 n`` / ``384 n``.
    A need above the available memory raises ``ValueError`` naming ``params``
    before anything is allocated, on every backend and on the serial path too.

    Returns
    -------
    MechanismSolution
        ``s, v, g, U_s, U_d`` (float64; NaN where not valid), ``valid`` and
        ``accepted`` (Algorithm 1 step 6: ``U_s >= 0``), all of shape ``params.shape``.
    """
    p = _check_params(params)
    backend = _check_backend(backend)
    constrained = bool(constrained)
    if not any(is_tracer(f) for f in p.fields()):
        _check_size(backend, p.shape, constrained)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        from mcsl_core.mechanism import _jax

        with jax.enable_x64(True):
            fields = [jnp.asarray(f, dtype=jnp.float64) for f in p.fields()]
            return MechanismSolution(*_jax.solve_fields(*fields, constrained=constrained))
    if backend == "numpy":
        return MechanismSolution(*_numpy.solve_arrays(p.fields(), constrained))
    from mcsl_core.mechanism import _numba

    shape = p.shape
    out = _numba.solve_flat(p.fields(), shape, constrained)
    return MechanismSolution(*(x.reshape(shape) for x in out))


def incentive_gap(
    params: MechanismParams, theta_hat, *, constrained: bool = False, backend: Backend = "numba"
):
    """Server's loss from answering with a fake leakage degree (Theorem IV.1).

    ``U_s(s*(theta)) - U_s(s*(theta_hat))``, both evaluated under the true ``theta``
    along the device's rule; ``theta_hat`` in [0, 1] broadcasts with ``params``.
    Never negative where valid: unconstrained it is computed as
    ``T c2 (s*(theta_hat) - s*(theta))^2`` with ``c2 = -(d2 U_s/ds2)/(2T) > 0``;
    constrained, ``s*(theta_hat)`` joins the candidates of the true problem. NaN
    where the model is not valid (as in :func:`solve`). ``theta_hat`` is checked
    by the same rule as the fields (real, finite, in [0, 1], not subnormal) on
    every backend. Memory: as :func:`solve` (numba: 8 bytes per point).
    """
    p = _check_params(params)
    backend = _check_backend(backend)
    constrained = bool(constrained)
    # the same checks for every backend; a JAX tracer (under jit/grad) cannot be inspected
    if is_tracer(theta_hat) and backend != "jax":
        raise ValueError(f"theta_hat is a JAX tracer: use backend='jax', not {backend!r}")
    if not is_tracer(theta_hat):
        theta_hat = check_field("theta_hat", theta_hat, 0.0, 1.0)
        try:
            shape = np.broadcast_shapes(p.shape, theta_hat.shape)
        except ValueError as exc:
            raise ValueError(
                f"theta_hat of shape {theta_hat.shape} does not broadcast with params of shape {p.shape}"
            ) from exc
        if not any(is_tracer(f) for f in p.fields()):
            _check_size(backend, shape, constrained)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        from mcsl_core.mechanism import _jax

        with jax.enable_x64(True):
            fields = [jnp.asarray(f, dtype=jnp.float64) for f in (*p.fields(), theta_hat)]
            return _jax.gap_fields(*fields, constrained=constrained)
    if backend == "numpy":
        return _numpy.gap_arrays(p.fields(), theta_hat, constrained)
    from mcsl_core.mechanism import _numba

    return _numba.gap_flat((*p.fields(), theta_hat), shape, constrained).reshape(shape)
