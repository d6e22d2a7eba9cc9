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
    return ok, use, a, b, M, jnp.where(use, p, 0.0), jnp.where(use, q, 0.0)


def _s_free(a, b, M, p, q):
    c2 = (1.0 + p) * (a * p + b)
    nz = c2 != 0.0
    c2_safe = jnp.where(nz, c2, 1.0)
    s = ((M - q) * (a * p + b) - (1.0 + p) * a * q) / (2.0 * c2_safe)
    return s, c2, nz


def _f_con(s, a, b, M, p, q, v_bar):
    v = jnp.clip(p * s + q, 0.0, v_bar)
    return (M - v - s) * (a * v + b * s), v


def _best_con(a, b, M, p, q, v_bar, s_bar, extra=None):
    """Exact maximiser over s in [0, s_bar] of the piecewise quadratic U_s(v_c(s), s):
    candidates in the numba kernel's order, first maximum wins."""
    p_nz = p != 0.0
    p_safe = jnp.where(p_nz, p, 1.0)
    b_pos = b > 0.0
    b_safe = jnp.where(b_pos, b, 1.0)
    s_lin, _, lin_ok = _s_free(a, b, M, p, q)
    zero = jnp.zeros_like(M * a * b * p * q * v_bar * s_bar)
    cands = [
        (zero, True),
        (s_bar + zero, True),
        (-q / p_safe, p_nz),
        ((v_bar - q) / p_safe, p_nz),
        (0.5 * M, b_pos),
        ((b * (M - v_bar) - a * v_bar) / (2.0 * b_safe), b_pos),
        (s_lin, lin_ok),
    ]
    if extra is not None:
        cands.append((extra, jnp.isfinite(extra)))
    shape = zero.shape
    S = jnp.stack(
        [jnp.broadcast_to(jnp.clip(jnp.where(ok, c, 0.0), 0.0, s_bar), shape) for c, ok in cands], axis=-1
    )
    use = jnp.stack([jnp.broadcast_to(ok, shape) for _, ok in cands], axis=-1)
    F, V = _f_con(S, _x(a), _x(b), _x(M), _x(p), _x(q), _x(v_bar))
    F = jnp.where(use, F, -jnp.inf)
    j = jnp.argmax(F, axis=-1)[..., None]
    pick = lambda X: jnp.take_along_axis(X, j, axis=-1)[..., 0]  # noqa: E731
    return pick(S), pick(V), pick(F)


def _x(x):
    return x[..., None] if jnp.ndim(x) else x


@partial(jax.jit, static_argnames=("constrained",))
def solve_fields(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, *, constrained):
    """(s, v, g, U_s, U_d, valid, accepted) at every broadcast point; eqs. (1)-(4)."""
    ok, use, a, b, M, p, q = _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    shape = jnp.broadcast_shapes(
        *(jnp.shape(x) for x in (R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T))
    )
    if constrained:
        s, v, _ = _best_con(a, b, M, p, q, v_bar, s_bar)
        valid = ok
    else:
        s, c2, _ = _s_free(a, b, M, p, q)
        v = p * s + q
        valid = ok & use & (c2 > 0.0)
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
    ok, use, a, b, M, p, q = _coeffs(R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta)
    M_hat = R + alpha_s * theta_hat + beta_s
    shape = jnp.broadcast_shapes(
        *(jnp.shape(x) for x in (R, alpha_s, beta_s, v_bar, s_bar, c_d, eta, xi, eps, theta, T, theta_hat))
    )
    if constrained:
        s_hat, _, _ = _best_con(a, b, M_hat, p, q, v_bar, s_bar)
        _, _, f_best = _best_con(a, b, M, p, q, v_bar, s_bar, extra=s_hat)
        f_hat, _ = _f_con(s_hat, a, b, M, p, q, v_bar)
        gap = T * (f_best - f_hat)
        valid = ok
    else:
        s_true, c2, _ = _s_free(a, b, M, p, q)
        s_hat, _, _ = _s_free(a, b, M_hat, p, q)
        gap = T * c2 * (s_hat - s_true) ** 2
        valid = ok & use & (c2 > 0.0)
    valid = valid & jnp.isfinite(gap)
    return jnp.where(jnp.broadcast_to(valid, shape), jnp.broadcast_to(gap, shape), jnp.nan)
