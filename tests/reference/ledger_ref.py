"""Slow, obvious references for the ledger: Merkle tree (RFC 6962 recursion),
budgeted maximum coverage (exhaustive optimum and a literal greedy)."""

from __future__ import annotations

import hashlib
from itertools import combinations


def merkle_root_rfc6962(leaves: list[bytes]) -> bytes:
    """MTH of RFC 6962 section 2.1: split at the largest power of two below n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(
        b"\x01" + merkle_root_rfc6962(leaves[:k]) + merkle_root_rfc6962(leaves[k:])
    ).digest()


def universe(bids, locations):
    return set(locations) if locations else {l for _, _, locs in bids for l in locs}


def coverage(bids, chosen, uni) -> int:
    cov = set()
    for d, _, locs in bids:
        if d in chosen:
            cov |= set(locs) & uni
    return len(cov)


def optimum_coverage(bids, budget, locations=None) -> int:
    """Best coverage over every subset of bids within budget (exhaustive)."""
    uni = universe(bids, locations)
    best = 0
    for r in range(len(bids) + 1):
        for sub in combinations(bids, r):
            if sum(b[1] for b in sub) <= budget:
                best = max(best, coverage(bids, {b[0] for b in sub}, uni))
    return best


def greedy_literal(bids, budget, locations=None):
    """Khuller-Moss-Naor modified greedy, written out the plain way (division, full rescans)."""
    uni = universe(bids, locations)
    cands = list(bids)
    chosen, covered, spent = [], set(), 0.0
    while True:
        scored = []
        for d, c, locs in cands:
            gain = len((set(locs) & uni) - covered)
            if gain > 0:
                scored.append((-(gain / c), c, d, locs))
        if not scored:
            break
        scored.sort()
        _, c, d, locs = scored[0]
        cands = [b for b in cands if b[0] != d]
        if spent + c <= budget:
            chosen.append(d)
            covered |= set(locs) & uni
            spent += c
    singles = sorted((-len(set(locs) & uni), c, d) for d, c, locs in bids if c <= budget)
    if singles and -singles[0][0] > len(covered):
        return (singles[0][2],)
    return tuple(chosen)
