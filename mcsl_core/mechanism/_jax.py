"""JAX twin of the data-submission game (SPEC.md section 2); imports no numba.

Pure elementwise ``jax.numpy`` code over broadcastable arrays, so it works
under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. Divisions are guarded by
``where`` on both sides so that gradients stay finite at valid points.

Float64: the functions compute in the dtype they are given. The public wrappers
enter ``jax.enable_x64(True)`` themselves; a caller who wraps them in
``jax.jit``/``jax.grad`` must hold ``with jax.enable_x64(True):`` around both the
tracing and the call, or the inputs are float32.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

__all__ = ["gap_fields", "solve_fields"]


def _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta):
    k = eta * xi
    ok = k > 1.0
    km1 = jnp.where(ok, k - 1.0, 1.0)
    a = eps / v_bar
    b = (1.0 - eps) / s_bar
    M = R + alpha_s * theta + beta_s
    epos = eps > 0.0
    a_safe = jnp.where(epos, a, 1.0)
    p = -b / (2.0 * a_safe) + 1.0 / (2.0 * km1)
    q = -c_d / (2.0 * km1)
    # eps so small that p overflows is the eps -> 0 limit of the clipped rule (v = 0)
    use = epos & jnp.isfinite(p) & jnp.isfinite(q)
    return ok, use, a, b, M, jnp.where(use, p, 0.0), jnp.where(use, q, 0.0), km1


def _stationary(a, b, M, c_d, m):
    """(s*, v*, d2, usable): the numba kernel's cancellation-free closed forms."""
    d1 = a + b * m
    d2 = a * (1.0 + 2.0 * m) - b * m
    den = d1 * d2
    nz = den != 0.0
    den_safe = jnp.where(nz, den, 1.0)
    s = a * (M * m * d1 + a * c_d * (1.0 + m)) / den_safe
    v = (M * (a - b * m) * d1 - c_d * (a * (a + b) + b * m * (3.0 * a - b))) / (2.0 * den_safe)
    return s, v, d2, nz


def _f_con(s, a, b, M, p, q, v_bar):
    v = jnp.clip(p * s + q, 0.0, v_bar)
    return (M - v - s) * (a * v + b * s), v


def _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar, extra=None):
    """Exact maximiser over s in [0, s_bar] of the piecewise quadratic U_s(v_c(s), s):
    candidates (s, known v or NaN) in the numba kernel's order, first maximum wins."""
    e = a - b * m
    brk = use & (e != 0.0)
    e_safe = jnp.where(brk, e, 1.0)
    b_pos = b > 0.0
    b_safe = jnp.where(b_pos, b, 1.0)
    s_lin, v_lin, d2, lin_ok = _stationary(a, b, M, c_d, m)
    zero = jnp.zeros_like(M * a * b * p * q * v_bar * s_bar * m * c_d)
    nan = jnp.nan
    cands = [
        (zero, nan, True),
        (s_bar + zero, nan, True),
        (a * c_d / e_safe, 0.0, brk),
        (a * (c_d + 2.0 * m * v_bar) / e_safe, v_bar, brk),
        (0.5 * M, nan, b_pos),
        ((b * (M - v_bar) - a * v_bar) / (2.0 * b_safe), nan, b_pos),
        (s_lin, v_lin, use & lin_ok & (d2 != 0.0)),
    ]
    if extra is not None:
        cands.append((extra[0], extra[1], jnp.isfinite(extra[0])))
    shape = zero.shape
    # an unusable or NaN candidate becomes s = 0, a duplicate of the first (as in numba)
    C = jnp.stack([jnp.broadcast_to(jnp.where(ok & (c == c), c, 0.0), shape) for c, _, ok in cands], axis=-1)
    VC = jnp.stack([jnp.broadcast_to(vc + zero, shape) for _, vc, _ in cands], axis=-1)
    use_c = jnp.stack([jnp.broadcast_to(ok, shape) for _, _, ok in cands], axis=-1)
    fine = jnp.stack([jnp.broadcast_to(ok & (c == c), shape) for c, _, ok in cands], axis=-1)
    inside = fine & (C >= 0.0) & (C <= _x(s_bar)) & (VC >= 0.0) & (VC <= _x(v_bar))
    S = jnp.clip(C, 0.0, _x(s_bar))
    F, V = _f_con(S, _x(a), _x(b), _x(M), _x(p), _x(q), _x(v_bar))
    V = jnp.where(inside, VC, V)
    F = jnp.where(inside, (_x(M) - V - S) * (_x(a) * V + _x(b) * S), F)
    F = jnp.where(use_c, F, -jnp.inf)
    j = jnp.argmax(F, axis=-1)[..., None]
    pick = lambda X: jnp.take_along_axis(X, j, axis=-1)[..., 0]  # noqa: E731
    return pick(S), pick(V), pick(F)


def _x(x):
    return x[..., None] if jnp.ndim(x) else x


@partial(jax.jit, static_argnames=("constrained",))
def solve_fields(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, *, constrained):
    """(s, v, g, U_s, U_d, valid, accepted) at every broadcast point; eqs. (1)-(4)."""
    ok, use, a, b, M, p, q, m = _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    shape = jnp.broadcast_shapes(
        *(jnp.shape(x) for x in (R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T))
    )
    if constrained:
        s, v, _ = _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar)
        valid = ok
    else:
        s, v, d2, _ = _stationary(a, b, M, c_d, m)
        valid = ok & use & (d2 > 0.0)
    g = a * v + b * s
    us = T * (M - v - s) * g
    ud = T * (v + s - c_d - eta * xi * v) * g
    for x in (s, v, g, us, ud):
        valid = valid & jnp.isfinite(x)
    valid = jnp.broadcast_to(valid, shape)
    outs = [jnp.where(valid, jnp.broadcast_to(x, shape), jnp.nan) for x in (s, v, g, us, ud)]
    accepted = valid & (outs[3] >= 0.0)
    return (*outs, valid, accepted)


@partial(jax.jit, static_argnames=("constrained",))
def gap_fields(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, theta_hat, *, constrained):
    """U_s(s*(theta)) - U_s(s*(theta_hat)) under the true theta (Theorem IV.1)."""
    ok, use, a, b, M, p, q, m = _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    shape = jnp.broadcast_shapes(
        *(jnp.shape(x) for x in (R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, theta_hat))
    )
    if constrained:
        M_hat = R + alpha_s * theta_hat + beta_s
        s_hat, v_hat, _ = _best_con(a, b, M_hat, p, q, use, m, c_d, v_bar, s_bar)
        _, _, f_best = _best_con(a, b, M, p, q, use, m, c_d, v_bar, s_bar, extra=(s_hat, v_hat))
        f_hat = (M - v_hat - s_hat) * (a * v_hat + b * s_hat)
        gap = T * (f_best - f_hat)
        valid = ok
    else:
        d1 = a + b * m
        d2 = a * (1.0 + 2.0 * m) - b * m
        dM = alpha_s * (theta_hat - theta)
        d2_safe = jnp.where(d2 != 0.0, d2, 1.0)
        gap = T * a * d1 * dM * dM / (4.0 * d2_safe)
        valid = ok & use & (d2 > 0.0)
    valid = valid & jnp.isfinite(gap)
    return jnp.where(jnp.broadcast_to(valid, shape), jnp.broadcast_to(gap, shape), jnp.nan)
