"""The data-submission game between a mobile device and an edge server.

SPEC.md section 2, paper IV-B and Algorithm 1: the device announces the rule
``v*(s)`` maximising its utility (eq. (4)); the server answers with the ``s*``
maximising its own utility along that rule, and accepts when that is profitable.
Two models: the paper's closed forms (``constrained=False``) and the feasible
bilevel optimum with ``v`` in ``[0, v_bar]``, ``s`` in ``[0, s_bar]``
(``constrained=True``). Backends: a fused numba kernel (default), a JAX twin
(jit/vmap/grad, float64) and plain NumPy.
"""

from mcsl_core.mechanism._params import MechanismParams, MechanismSolution
from mcsl_core.mechanism._solve import (
    device_rule,
    device_utility,
    incentive_gap,
    server_best_response,
    server_utility,
    solve,
    success_probability,
)

__all__ = [
    "MechanismParams",
    "MechanismSolution",
    "device_rule",
    "device_utility",
    "incentive_gap",
    "server_best_response",
    "server_utility",
    "solve",
    "success_probability",
]
