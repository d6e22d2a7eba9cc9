"""Procedure 3, blockchain side: PBFT (and comparison protocols) agreeing on one block.

A discrete-event simulation of every message in a numba kernel (``_sim``), the
closed-form per-phase counts (``_closed_form``), the network and cost model
(``_network``) and a parallel sweep over configurations (``_api.sweep``).
Paper IV-C (consensus), V-B and Fig. 6; SPEC.md section 3.
"""

from ._api import FAULTS, ConsensusResult, SweepResult, fault_mask, simulate_pbft, sweep
from ._closed_form import (
    BLOCK_CARRIES,
    PROTOCOLS,
    MessageCounts,
    PhaseCounts,
    fault_tolerance,
    pbft_message_counts,
)
from ._network import LATENCY_KINDS, NetworkModel

__all__ = [
    "BLOCK_CARRIES",
    "FAULTS",
    "LATENCY_KINDS",
    "PROTOCOLS",
    "ConsensusResult",
    "MessageCounts",
    "NetworkModel",
    "PhaseCounts",
    "SweepResult",
    "fault_mask",
    "fault_tolerance",
    "pbft_message_counts",
    "simulate_pbft",
    "sweep",
]
