"""mcsl_core: fast kernels for MCS learning.

Subpackages, one per procedure of an MCS learning task (SPEC.md):

- :mod:`mcsl_core.mechanism`: the device / edge-server data-submission game (numba + JAX);
- :mod:`mcsl_core.fl`: federated learning at the edge (JAX, Flax, optax);
- :mod:`mcsl_core.consensus`: PBFT and comparison protocols, discrete-event simulation (numba);
- :mod:`mcsl_core.ledger`: the consortium chain: keys, signed transactions, blocks, contracts;
- :mod:`mcsl_core.payment`: ZD payment enforcement, requestor dynamics, settlement (numba);
- :mod:`mcsl_core.system`: one task through all four procedures.

Subpackages are imported on first use so that ``import mcsl_core`` stays cheap
(JAX is only loaded by the modules that need it).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("mechanism", "fl", "consensus", "ledger", "payment", "system", "sweep", "experiments")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
