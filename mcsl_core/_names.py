"""The registries of named choices, one tuple each, importable without JAX or numba.

Each subpackage re-exports its own (``fl.AGGREGATORS``, ``fl.STRATEGIES``,
``consensus.PROTOCOLS``, ``payment.RULES``) and validates against it; the system's
config checks read them from here, so checking a config (or a bad ``--out``) never
pays for importing the training or simulation stacks.
"""

from __future__ import annotations

__all__ = ["AGGREGATORS", "PROTOCOLS", "REQUESTOR_RULES", "STRATEGIES"]

#: Aggregation rules of :func:`mcsl_core.fl.aggregate`.
AGGREGATORS: tuple[str, ...] = ("fedavg", "median", "trimmed_mean", "krum")
#: Client-update execution strategies of :class:`mcsl_core.fl.FLConfig`.
STRATEGIES: tuple[str, ...] = ("auto", "loop", "vmap", "shard")
#: Agreement protocols of :func:`mcsl_core.consensus.simulate_pbft` and friends.
PROTOCOLS: tuple[str, ...] = ("pbft", "paper", "hotstuff")
#: Requestor learning rules of :func:`mcsl_core.payment.evolve_requestor`.
REQUESTOR_RULES: tuple[str, ...] = ("gradient", "bush_mosteller")
