"""Procedure 2, data sensing and submission (paper IV-B, Algorithm 1; SPEC.md section 2).

Each recruited device plays the mechanism game with its nearest edge server,
with the device's own drawn parameters (:class:`~mcsl_core.system._world.World`),
all pairs in one batched :func:`mcsl_core.mechanism.solve` call (the
constrained, feasible optimum unless ``mechanism.constrained = false``). An
accepted submission is paid ``v + s`` by the server, which signs a
:class:`~mcsl_core.ledger.DataSubmissionPayment`; a rejected device's data
never reaches a server. With ``constrained = false`` a pair whose closed-form
price is negative (``v* < 0`` or ``s* < 0``) does not trade either.
"""

from __future__ import annotations

import numpy as np

from mcsl_core.system._state import TaskState
from mcsl_core.system._world import MECHANISM_DRAWS

__all__ = ["nearest_servers", "play_mechanism", "submit"]


def nearest_servers(device_xy: np.ndarray, server_xy: np.ndarray) -> np.ndarray:
    """Index of the nearest edge server of each device (ties: the lower index).

    device_xy: shape [k, 2]; server_xy: shape [servers, 2]; returns shape [k], int64.
    """
    d = np.linalg.norm(device_xy[:, None, :] - server_xy[None, :, :], axis=-1)
    return np.argmin(d, axis=1).astype(np.int64)


def play_mechanism(state: TaskState):
    """Solve every recruited device's game with its server: a ``mechanism.Solution`` of shape [k]."""
    from mcsl_core import mechanism

    cfg, rec = state.cfg, state.recruited
    draws = {name: state.world.mechanism[name][rec] for name in MECHANISM_DRAWS}
    params = mechanism.MechanismParams(
        R=cfg.R,
        alpha_s=cfg.alpha_s,
        beta_s=cfg.beta_s,
        v_bar=cfg.v_bar,
        s_bar=cfg.s_bar,
        c_d=cfg.c_d,
        **draws,
    )
    return mechanism.solve(params, constrained=cfg.constrained)


def submit(state: TaskState) -> TaskState:
    """Play the games, record the accepted submissions' payments on the chain.

    Sets ``state.nearest`` and ``state.accepted`` (per recruited device).
    Raises ``ValueError`` when no submission is accepted.
    """
    from mcsl_core import ledger as L

    world, rec = state.world, state.recruited
    with state.stages("mechanism"):
        state.nearest = nearest_servers(world.device_xy[rec], world.server_xy)
        sol = play_mechanism(state)
        # The paper's unconstrained closed form can price data below zero (v* < 0 or s* < 0,
        # SPEC.md section 2); no payment can carry a negative amount, so such a pair does not trade.
        priced = (np.asarray(sol.v) >= 0) & (np.asarray(sol.s) >= 0)
        state.accepted = np.asarray(sol.valid & sol.accepted & priced, dtype=bool)
    state.say(f"mechanism: {int(state.accepted.sum())} of {rec.size} submissions accepted")
    if not state.accepted.any():
        raise ValueError(
            "no data submission was accepted by any edge server; widen mechanism parameter ranges"
        )
    servers = state.parties.servers
    txs = []
    for i in np.flatnonzero(state.accepted):
        srv = servers[int(state.nearest[i])]
        pay = L.DataSubmissionPayment(
            state.cfg.task_id, world.device_ids[int(rec[i])], srv.name, float(sol.v[i]), float(sol.s[i])
        )
        txs.append(pay.sign(srv))
    with state.stages("ledger"):
        state.chain.append(state.parties.nodes.propose(state.chain, txs))
    return state
