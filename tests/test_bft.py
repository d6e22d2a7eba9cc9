"""The one BFT quorum rule (mcsl_core._bft) against its defining property, by enumeration."""

from __future__ import annotations

import itertools

import pytest

from mcsl_core import _bft
from mcsl_core.consensus import fault_tolerance
from mcsl_core.ledger import max_faulty, quorum_size


@pytest.mark.parametrize("n", range(4, 65))
def test_quorums_intersect_in_f_plus_1_and_honest_nodes_form_one(n):
    f = _bft.max_faulty(n)
    assert 3 * f + 1 <= n < 3 * f + 4  # the largest f with n >= 3f + 1
    q = _bft.quorum(n)
    # two quorums of q among n nodes overlap in at least 2q - n nodes (pigeonhole), and that
    # bound is reached: the smallest q with overlap >= f + 1 is the rule
    assert 2 * q - n >= f + 1
    assert 2 * (q - 1) - n < f + 1
    assert q <= n - f  # liveness: the honest nodes alone are a quorum


@pytest.mark.parametrize("n", [4, 5, 6, 7])
def test_overlap_by_enumeration(n):
    """Every pair of q-subsets of n nodes shares at least f + 1 nodes (brute force)."""
    f, q = _bft.max_faulty(n), _bft.quorum(n)
    subsets = [set(s) for s in itertools.combinations(range(n), q)]
    assert min(len(a & b) for a in subsets for b in subsets) >= f + 1


def test_ledger_and_consensus_use_the_same_rule():
    for n in range(1, 200):
        assert max_faulty(n) == fault_tolerance(n) == (n - 1) // 3
        assert quorum_size(n) == -(-(n + max_faulty(n) + 1) // 2)
    assert quorum_size(5) == 4  # 2f + 1 = 3 would be unsafe here
    assert quorum_size(4) == 3 and quorum_size(7) == 5


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", None, True])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="n"):
        _bft.quorum(bad)
    with pytest.raises(ValueError, match="f must satisfy"):
        _bft.quorum(4, 2)
