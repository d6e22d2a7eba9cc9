"""Procedure 4, payment settlement (paper IV-D; SPEC.md section 4): the payment game moves the money.

Once the result is bound, the payment contract computes the bill W from the
chain's records and each payee's due share (:func:`mcsl_core.ledger.settle_task`,
recorded as a :class:`~mcsl_core.ledger.PaymentRecord`). The bill is due in
``payment.installments`` installments (an exact integer split,
:func:`mcsl_core.ledger.installment_dues`); each installment is one round of
the repeated game between the leader that finalised the model and the
requestor, played on the chain, one block per round:

- the leader moves first by its memory-one strategy ``p`` (``payment.leader_strategy``:
  cooperation-enforcing ZD, tit-for-tat or win-stay-lose-shift) on the last
  round's outcome, opening with c: c releases the next share of the final
  model (a slice of its stored bytes, put in the model store; the
  :class:`~mcsl_core.ledger.ResultRelease` carries its content address), d
  withholds it;
- the requestor, having seen the leader's move, pays the installment in full
  (c) with probability ``q1`` after a release and ``q2`` after a withholding,
  or pays nothing (d), in a signed :class:`~mcsl_core.ledger.Installment`.

The requestor's ``q`` is the strategy its learning rule (``payment.requestor_rule``
from ``requestor_q0``, ``game_steps`` steps of ``game_lr``) has reached against
this leader's ``p``: the model of a requestor that has met this leader before.
Twenty installments are far too few to learn in (a Bush-Mosteller requestor at
``lr = 0.05`` moves ``q`` by at most about 0.05 a round, and the gradient rule
needs the long-run payoff, which one task never observes), so learning while it
pays would leave ``q`` at ``q0`` and measure the initial guess, not the
strategies. Moves are drawn from a seeded stream (:func:`draw_moves`).

What the requestor paid is allocated by the collection contract
(:func:`mcsl_core.ledger.collect_task`) over the payment record's payees with
the largest-remainder rule of :func:`mcsl_core.payment.settle`, in exact
integer minor units; the unpaid rest is recorded as owed in the same
:class:`~mcsl_core.ledger.PaymentCollection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mcsl_core.system._config import TaskConfig
from mcsl_core.system._state import TaskState
from mcsl_core.system.learn import subseed

__all__ = ["Settled", "draw_moves", "leader_strategy", "predicted_fraction", "requestor_strategy", "settle"]


@dataclass(frozen=True)
class Settled:
    """The outcome of procedure 4 (integers are minor units)."""

    p: np.ndarray  # shape=[4]: the leader's strategy
    q: np.ndarray  # shape=[2]: the requestor's strategy
    bill: Any  # ledger.PaymentRecord: W and each payee's due share (None: requirement not met)
    collection: Any  # ledger.PaymentCollection: what was paid, allocated, and what is owed
    leader_c: np.ndarray  # shape=[installments], dtype=bool: the leader released a share
    requestor_c: np.ndarray  # shape=[installments], dtype=bool: the requestor paid the installment


def leader_strategy(cfg: TaskConfig) -> np.ndarray:
    """The leader's memory-one ``p`` over cc, cd, dc, dd (paper payoffs ``payment.PAPER_X/Y``)."""
    from mcsl_core import payment

    x, y = payment.PAPER_X, payment.PAPER_Y
    if cfg.leader_strategy == "tft":
        return payment.tit_for_tat()
    if cfg.leader_strategy == "wsls":
        return payment.win_stay_lose_shift(x)
    lo, hi = payment.zd_phi_bounds(x, y, cfg.zd_chi)
    return payment.zd_strategy(x, y, cfg.zd_chi, (hi if hi > 0 else lo) * cfg.zd_phi_fraction)


def requestor_strategy(cfg: TaskConfig, p: np.ndarray) -> np.ndarray:
    """The ``(q1, q2)`` the requestor's learning rule reaches against ``p`` (shape [2])."""
    from mcsl_core import payment

    traj = payment.evolve_requestor(
        p,
        np.array([cfg.requestor_q0, cfg.requestor_q0]),
        rule=cfg.requestor_rule,
        steps=cfg.game_steps,
        lr=cfg.game_lr,
        seed=cfg.seed,
        record_every=cfg.game_steps,
    )
    return np.asarray(traj.q[-1], dtype=np.float64)


def draw_moves(p: np.ndarray, q: np.ndarray, rounds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rounds`` rounds of the leader-follower game: (leader_c, requestor_c), bool arrays [rounds].

    The leader opens with c and then plays c with ``p[s]`` after outcome ``s``
    (cc, cd, dc, dd = 0..3); the requestor plays c with ``q[0]`` after a leader c
    and ``q[1]`` after a leader d. Two uniforms per round from
    ``np.random.default_rng(seed)``, the leader's first.
    """
    u = np.random.default_rng(seed).random((rounds, 2))
    lead = np.empty(rounds, dtype=bool)
    req = np.empty(rounds, dtype=bool)
    s = -1
    for k in range(rounds):
        lead[k] = True if s < 0 else bool(u[k, 0] < p[s])
        req[k] = bool(u[k, 1] < q[0 if lead[k] else 1])
        s = 2 * (not lead[k]) + (not req[k])
    return lead, req


def predicted_fraction(p: np.ndarray, q: np.ndarray) -> float:
    """Long-run share of rounds in which the requestor pays, by ``payment.long_run``.

    The first outcome is cc with probability ``q1`` and cd otherwise (the leader
    opens with c), which decides the average where the chain is reducible.
    """
    from mcsl_core import payment

    init = np.array([q[0], 1.0 - q[0], 0.0, 0.0])
    v = np.asarray(payment.long_run(p, q, payment.PAPER_X, payment.PAPER_Y, init=init).v)
    return float(v[0] + v[2])


def _shares(blob: bytes, k: int) -> list[bytes]:
    """The final model's bytes in ``k`` consecutive slices (the shares the leader releases)."""
    cuts = [len(blob) * i // k for i in range(k + 1)]
    return [blob[cuts[i] : cuts[i + 1]] for i in range(k)]


def _play_on_chain(state: TaskState, bill, lead: np.ndarray, req: np.ndarray) -> None:
    from mcsl_core import ledger as L

    cfg, nodes, chain = state.cfg, state.parties.nodes, state.chain
    requestor, leader = state.parties.requestor, nodes.node(state.finaliser)
    dues = L.installment_dues(bill.total, cfg.installments)
    shares = iter(_shares(state.store.get_bytes(state.final_model), cfg.installments))
    for k, due in enumerate(dues):
        inst = L.Installment(cfg.task_id, k, cfg.installments, requestor.name, due, due if req[k] else 0)
        share = state.store.put_bytes(next(shares)) if lead[k] else None
        rel = L.ResultRelease(cfg.task_id, k, leader.name, share)
        chain.append(nodes.propose(chain, [inst.sign(requestor), rel.sign(leader)]))


def settle(state: TaskState) -> TaskState:
    """Bill, play the installments on the chain, collect (the game only when the requirement was met).

    Sets ``state.settlement`` (:class:`Settled`); the strategies are computed either way.
    """
    from mcsl_core import ledger as L

    cfg, chain, nodes = state.cfg, state.chain, state.parties.nodes
    with state.stages("settlement"):
        p = leader_strategy(cfg)
        q = requestor_strategy(cfg, p)
    if not state.met:
        state.settlement = Settled(p, q, None, None, np.zeros(0, bool), np.zeros(0, bool))
        return state
    with state.stages("settlement"):
        lead, req = draw_moves(p, q, cfg.installments, subseed(cfg.seed, 4))
        bill = L.settle_task(
            chain, cfg.task_id, w_l=cfg.w_l, w_a=cfg.w_a, w_b=cfg.w_b, minor_unit=cfg.minor_unit
        )
    with state.stages("ledger"):
        chain.append(nodes.propose(chain, [bill]))
        _play_on_chain(state, bill, lead, req)
        collection = L.collect_task(chain, cfg.task_id)
        chain.append(nodes.propose(chain, [collection]))
    state.settlement = Settled(p, q, bill, collection, lead, req)
    state.say(
        f"settlement: {int(req.sum())} of {cfg.installments} installments paid, "
        f"{collection.collected * cfg.minor_unit:,.2f} of {bill.total * cfg.minor_unit:,.2f} collected"
    )
    return state
