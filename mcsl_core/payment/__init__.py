"""Payment settlement: the ZD-enforced payment game and the bill's allocation.

SPEC.md section 4, paper IV-D, Theorem IV.2 and Figs. 7-8. The leader that
finalises the model plays a repeated game with the requestor over states
cc, cd, dc, dd (leader's action first):

- :func:`stationary` - stationary / long-run distribution of Markov chains
  (GTH elimination in numba, batched, reducible chains handled);
- :func:`transition_matrix`, :func:`long_run` - the leader-follower game of the
  paper (closed form) and the classic simultaneous game;
- :func:`zd_strategy`, :func:`zd_phi_bounds`, :func:`tit_for_tat`,
  :func:`win_stay_lose_shift` - leader strategies;
- :func:`simulate_play`, :func:`evolve_requestor` - Monte Carlo play and the
  requestor's learning dynamics;
- :func:`settle` - the bill W and its exact allocation in minor units.
"""

from mcsl_core.payment._dynamics import RULES, Trajectory, evolve_requestor, simulate_play
from mcsl_core.payment._game import (
    GAMES,
    PAPER_X,
    PAPER_Y,
    LongRun,
    long_run,
    tit_for_tat,
    transition_matrix,
    win_stay_lose_shift,
    zd_phi_bounds,
    zd_strategy,
)
from mcsl_core.payment._markov import stationary
from mcsl_core.payment._settle import Settlement, settle

__all__ = [
    "GAMES",
    "PAPER_X",
    "PAPER_Y",
    "RULES",
    "LongRun",
    "Settlement",
    "Trajectory",
    "evolve_requestor",
    "long_run",
    "settle",
    "simulate_play",
    "stationary",
    "tit_for_tat",
    "transition_matrix",
    "win_stay_lose_shift",
    "zd_phi_bounds",
    "zd_strategy",
]
