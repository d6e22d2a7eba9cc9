"""Worker recruitment: greedy budgeted maximum coverage of sensing locations.

The paper (IV-A) leaves the rule to classic MCS worker selection; this is the
budgeted maximum coverage greedy of Khuller, Moss and Naor (Inf. Proc. Letters
70(1), 1999), the rule most MCS recruitment schemes build on. It is a pure,
deterministic function of the bids, so every node computes the same result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from mcsl_core.ledger._tx import Bid, make_bid

__all__ = ["RECRUITMENT_RULE", "Recruitment", "recruit_workers"]

#: Name (and version) of the rule, recorded in every WorkerRecruitment transaction.
RECRUITMENT_RULE = "greedy-budgeted-max-coverage/1"


class Recruitment(NamedTuple):
    selected: tuple[str, ...]  # device ids, in the order the rule picked them
    cost: float  # sum of the selected bids' costs (<= budget)
    covered: tuple[str, ...]  # sorted covered task locations
    rule: str


def recruit_workers(
    bids: Sequence[Bid | tuple], budget: float, locations: Sequence[str] | None = None
) -> Recruitment:
    """Pick devices covering as many task locations as possible within ``budget``.

    Each location of ``locations`` (all bid locations when None or empty) has
    weight 1. Two candidate selections are computed:

    1. greedy: repeatedly take the bid with the largest ratio
       (newly covered locations) / cost; add it if it still fits in the budget,
       otherwise discard it; stop when no bid adds coverage;
    2. the single affordable bid covering the most locations.

    The one covering more locations wins (ties: the greedy one). Khuller et
    al. show this covers at least (1 - 1/e)/2 of the optimum. Ties between bids
    are broken by lower cost, then device id, so the result is deterministic.

    Parameters
    ----------
    bids : sequence of Bid or (device, cost, locations)
        One bid per device; cost > 0.
    budget : float
        Non-negative total the requestor allows for recruitment.
    locations : sequence of str, optional
        The task's sensing locations.

    Returns
    -------
    Recruitment
        ``cost <= budget`` always holds.
    """
    bids = [make_bid(i, b) for i, b in enumerate(bids)]
    if len({b.device for b in bids}) != len(bids):
        raise ValueError("bids has two bids from one device")
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not math.isfinite(budget)
        or budget < 0
    ):
        raise ValueError(f"budget must be a finite number >= 0, got {budget!r}")
    budget = float(budget)
    if locations:
        universe = frozenset(locations)
    else:
        universe = frozenset(loc for b in bids for loc in b.locations)
    cover = {b.device: frozenset(b.locations) & universe for b in bids}

    # 1. greedy by marginal coverage per unit cost
    remaining = sorted(bids, key=lambda b: (b.cost, b.device))
    chosen: list[Bid] = []
    covered: set[str] = set()
    spent = 0.0
    while remaining:
        best, best_gain = None, 0
        for b in remaining:
            gain = len(cover[b.device] - covered)
            # ratio comparison without division: gain/cost > best_gain/best.cost
            if gain > 0 and (best is None or gain * best.cost > best_gain * b.cost):
                best, best_gain = b, gain
        if best is None:
            break
        remaining.remove(best)
        if spent + best.cost <= budget:
            chosen.append(best)
            covered |= cover[best.device]
            spent += best.cost
    # 2. best single affordable bid
    single = None
    for b in sorted(bids, key=lambda b: (b.cost, b.device)):
        if b.cost <= budget and (single is None or len(cover[b.device]) > len(cover[single.device])):
            single = b
    if single is not None and len(cover[single.device]) > len(covered):
        return Recruitment(
            (single.device,), single.cost, tuple(sorted(cover[single.device])), RECRUITMENT_RULE
        )
    return Recruitment(tuple(b.device for b in chosen), spent, tuple(sorted(covered)), RECRUITMENT_RULE)
