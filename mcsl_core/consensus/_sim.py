"""Numba discrete-event kernel: every message of PBFT / the paper's exchange / HotStuff.

Entities: consortium nodes ``0..n-1``, the client that collects replies (``n``) and
the edge servers ``n+1..n+U`` that submit the signed updates. Every message goes
through two events; the three shared resources of a node are first-come first-served
queues:

1. the sender signs (its CPU), then the message is serialised on the sender's uplink;
   it ``ARRIVE``s one link latency after its last byte left; at that moment it joins
   the receiver's downlink queue and, behind it, the receiver's CPU queue
   (processing time + signature checks + hashing), both in arrival order;
2. ``HANDLE``: the protocol logic runs when the CPU has finished with it; signatures
   the handler makes join the CPU queue at that time.

Ties in time are broken by insertion order (a global sequence number), the link
latency of the k-th message sent is a pure function of ``(seed, k)`` (splitmix64), so
the pure-Python reference in ``tests/reference/consensus_ref.py`` reproduces every
time stamp exactly. The wrapper (``_api.simulate_pbft``) validates and allocates;
``run_block`` only loops (STYLE.md 4).

Pending events: arrivals and timers sit in a 4-ary heap on (time, sequence); handle
events sit in per-node FIFO lists (a node's CPU queue is first-come first-served, so
its handle times never decrease) whose heads sit in a small heap of their own. The
event loop and the helpers are compiled with ``_nrt=False``: they create no arrays,
so numba emits no reference counting (atomic increments) on the arrays they take.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# event kinds
EV_ARRIVE, EV_HANDLE, EV_TIMER = 0, 1, 2
# message kinds = phase index of the per-phase counters
M_SUBMIT, M_PREPREPARE, M_PREPARE, M_COMMIT, M_REPLY = 0, 1, 2, 3, 4
M_VIEWCHANGE, M_NEWVIEW, M_VOTE, M_QC = 5, 6, 7, 8
N_PHASES = 9
PHASES = (
    "submit",
    "pre_prepare",
    "prepare",
    "commit",
    "reply",
    "view_change",
    "new_view",
    "vote",
    "qc",
)
PROTO_PBFT, PROTO_PAPER, PROTO_HOTSTUFF = 0, 1, 2
LAT_CONSTANT, LAT_EXPONENTIAL, LAT_PARETO = 0, 1, 2
HONEST, SILENT, EQUIVOCATE = 0, 1, 2

# float parameters P[...]
P_PROC, P_SIGN, P_VERIFY, P_HASH_PB, P_LAT_MEAN, P_LAT_SHAPE, P_TBASE, P_HEADER, P_UPD = range(9)
N_PARAMS = 9
# int parameters IP[...]
I_N, I_U, I_V, I_PROTO, I_DIGESTS, I_LAT, I_SEED, I_F, I_Q = range(9)
N_IPARAMS = 9

# node state columns
(
    S_VIEW,
    S_ACTIVE,
    S_NUPD,
    S_PPACC,
    S_ACCD,
    S_PREPARED,
    S_PREPD,
    S_PCNT,
    S_CCNT,
    S_COMINV,
    S_PROPOSED,
    S_NVSENT,
    S_COMD,
    S_PCV,
    S_PCD,
    S_DONE,
    S_TVER,
    S_CONFLICT,
    S_FAULT,
    S_PHASE,
    S_QCNT,
    S_QCNT2,
    S_ALTD,
    S_MAXINST,
    S_NVD,
) = range(25)
N_STATE = 25

# queue counters
# heap rows, next sequence number, messages sent, free-stack depth, handle-heap rows, slots ever used
C_HN, C_SEQ, C_MSGID, C_NFREE, C_GN, C_HWM = 0, 1, 2, 3, 4, 5
N_CTR = 6

_TWO53 = 1.0 / 9007199254740992.0


@njit(cache=True, _nrt=False)
def uniform01(seed, k):
    """Uniform in (0, 1) for message number ``k``: splitmix64 of ``(seed, k)``."""
    z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(k + 1) * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (np.float64(z >> np.uint64(11)) + 0.5) * _TWO53


@njit(cache=True, _nrt=False)
def link_latency(latkind, mean, shape, u):
    """Latency from a uniform draw: constant, exponential, or Pareto with this mean."""
    if latkind == LAT_CONSTANT:
        return mean
    if latkind == LAT_EXPONENTIAL:
        return -mean * math.log(u)
    xm = mean * (shape - 1.0) / shape
    return xm * math.pow(u, -1.0 / shape)


@njit(cache=True, _nrt=False)
def _fmax(a, b):
    return a if a > b else b


# ----------------------------------------------------------------------------- heap
@njit(cache=True, _nrt=False)
def _heap_push(ht, hs, hsl, ctr, t, slot):
    """4-ary min-heap on (time, sequence); a hole moves up instead of swapping."""
    i = ctr[C_HN]
    s = ctr[C_SEQ]
    ctr[C_SEQ] = s + 1
    ctr[C_HN] = i + 1
    _sift_push(ht, hs, hsl, i, t, s, slot)


@njit(cache=True, _nrt=False)
def _sift_push(ht, hs, hsl, i, t, s, slot):
    """Insert (t, s, slot) into a 4-ary heap holding ``i`` entries."""
    while i > 0:
        p = (i - 1) >> 2
        tp = ht[p]
        if t < tp or (t == tp and s < hs[p]):
            ht[i] = tp
            hs[i] = hs[p]
            hsl[i] = hsl[p]
            i = p
        else:
            break
    ht[i] = t
    hs[i] = s
    hsl[i] = slot


@njit(cache=True, _nrt=False)
def _heap_pop(ht, hs, hsl, ctr):
    """Remove the earliest heap event; return its (time, slot). Children of i: 4i+1 .. 4i+4.

    ``_sift_pop`` is bottom-up: the hole at the root follows the smaller child down to a leaf (no test
    against the last entry on the way), then the last entry moves up from there; it
    usually belongs near the bottom, so this saves a comparison per level.
    """
    n = ctr[C_HN] - 1
    ctr[C_HN] = n
    return _sift_pop(ht, hs, hsl, n)


@njit(cache=True, _nrt=False)
def _sift_pop(ht, hs, hsl, n):
    """Remove the root of a 4-ary heap that now holds ``n`` entries; return its (time, payload)."""
    t0 = ht[0]
    slot0 = hsl[0]
    t = ht[n]
    s = hs[n]
    sl = hsl[n]
    i = 0
    while True:
        a = 4 * i + 1
        if a >= n:
            break
        last = a + 4
        if last > n:
            last = n
        ta = ht[a]
        sa = hs[a]
        for b in range(a + 1, last):
            tb = ht[b]
            if tb < ta or (tb == ta and hs[b] < sa):
                a = b
                ta = tb
                sa = hs[b]
        ht[i] = ta
        hs[i] = sa
        hsl[i] = hsl[a]
        i = a
    _sift_push(ht, hs, hsl, i, t, s, sl)  # then up from the leaf hole
    return t0, slot0


@njit(cache=True, _nrt=False)
def _new_event(ht, hs, hsl, evi, evf, free, ctr, t, ekind, mkind, src, dst, view, dig, aux, size, cost):
    # a released slot (stack free[:nfree]) if any, else one never used (pages untouched till then)
    k = ctr[C_NFREE]
    if k > 0:
        slot = free[k - 1]
        ctr[C_NFREE] = k - 1
    else:
        slot = ctr[C_HWM]
        ctr[C_HWM] = slot + 1
    evi[slot, 0] = ekind
    evi[slot, 1] = mkind
    evi[slot, 2] = src
    evi[slot, 3] = dst
    evi[slot, 4] = view
    evi[slot, 5] = dig
    evi[slot, 6] = aux
    evf[slot, 0] = size
    evf[slot, 1] = cost
    _heap_push(ht, hs, hsl, ctr, t, slot)


# ----------------------------------------------------------------------------- sending
@njit(cache=True, _nrt=False)
def _send(Q, res, spb, cnt, byt, IP, P, src, dst, mkind, view, dig, aux, size, cost, t0):
    ht, hs, hsl, evi, evf, free, ctr, _nxt, _stime, _sseq, _fhead, _ftail, _gt, _gs, _gn = Q
    start = _fmax(t0, res[src, 0])
    done = start + size * spb[src, 0]
    res[src, 0] = done
    u = uniform01(IP[I_SEED], ctr[C_MSGID])
    ctr[C_MSGID] += 1
    arrive = done + link_latency(IP[I_LAT], P[P_LAT_MEAN], P[P_LAT_SHAPE], u)
    cnt[mkind] += 1
    byt[mkind] += size
    _new_event(
        ht, hs, hsl, evi, evf, free, ctr, arrive, EV_ARRIVE, mkind, src, dst, view, dig, aux, size, cost
    )


@njit(cache=True, _nrt=False)
def _sign(res, P, i, now, pre):
    s = _fmax(now, res[i, 2]) + pre + P[P_SIGN]
    res[i, 2] = s
    return s


@njit(cache=True, _nrt=False)
def _bcast(Q, res, spb, cnt, byt, IP, P, i, mkind, view, dig, forged, equiv, aux, size, cost, now, pre):
    """Sign once, then send to every other node in the order i+1, i+2, ... (mod n)."""
    n = IP[I_N]
    s = _sign(res, P, i, now, pre)
    for k in range(1, n):
        j = (i + k) % n
        d = dig
        if equiv and j % 2 == 1:
            d = forged
        _send(Q, res, spb, cnt, byt, IP, P, i, j, mkind, view, d, aux, size, cost, s)


@njit(cache=True, _nrt=False)
def _unicast(Q, res, spb, cnt, byt, IP, P, i, j, mkind, view, dig, aux, size, cost, now):
    s = _sign(res, P, i, now, 0.0)
    _send(Q, res, spb, cnt, byt, IP, P, i, j, mkind, view, dig, aux, size, cost, s)


@njit(cache=True, _nrt=False)
def _arm_timer(Q, st, P, i, v, now):
    ht, hs, hsl, evi, evf, free, ctr, _nxt, _stime, _sseq, _fhead, _ftail, _gt, _gs, _gn = Q
    st[i, S_TVER] += 1
    t = now + P[P_TBASE] * float(1 << v)
    _new_event(ht, hs, hsl, evi, evf, free, ctr, t, EV_TIMER, -1, i, i, v, -1, st[i, S_TVER], 0.0, 0.0)


# ----------------------------------------------------------------------------- sizes and costs
@njit(cache=True, _nrt=False)
def _payload(IP, P):
    if IP[I_DIGESTS]:
        return IP[I_U] * 32.0
    return IP[I_U] * P[P_UPD]


@njit(cache=True, _nrt=False)
def _pp_cost(IP, P):
    nver = 1.0 if IP[I_DIGESTS] else 1.0 + IP[I_U]
    return P[P_PROC] + P[P_VERIFY] * nver + P[P_HASH_PB] * _payload(IP, P)


@njit(cache=True, _nrt=False)
def _vote_cost(P):
    return P[P_PROC] + P[P_VERIFY]


@njit(cache=True, _nrt=False)
def _cert_msgs(IP):
    return IP[I_Q]


# ----------------------------------------------------------------------------- protocol steps
@njit(cache=True, _nrt=False)
def _primary(IP, v):
    return v % IP[I_N]


@njit(cache=True, _nrt=False)
def _record_commit(st, node_t, i, d, now):
    if st[i, S_COMD] < 0:
        st[i, S_COMD] = d
        node_t[i] = now
    elif st[i, S_COMD] != d:
        st[i, S_CONFLICT] = 1


@njit(cache=True, _nrt=False)
def _reset_view(st, i, w):
    st[i, S_VIEW] = w
    st[i, S_ACTIVE] = 0
    st[i, S_PPACC] = 0
    st[i, S_ACCD] = -1
    st[i, S_PREPARED] = 0
    st[i, S_PREPD] = -1
    st[i, S_PCNT] = 0
    st[i, S_CCNT] = 0
    st[i, S_COMINV] = 0
    st[i, S_PROPOSED] = 0
    st[i, S_NVSENT] = 0
    st[i, S_NVD] = -1


@njit(cache=True, _nrt=False)
def _touch_view(pv, cv, vcf, vinit, v):
    """Initialise the vote tables of view ``v`` on first use (untouched views cost no memory)."""
    if vinit[v]:
        return
    vinit[v] = 1
    pv[v] = -1
    cv[v] = -1
    vcf[v] = 0


@njit(cache=True, _nrt=False)
def _count(votes, i, v, d, skip):
    c = 0
    for s in range(votes.shape[2]):
        if s != skip and votes[v, i, s] == d:
            c += 1
    return c


@njit(cache=True, _nrt=False)
def _client_reply(IP, repd, client, s, d, now):
    if repd[s] >= 0:
        return
    repd[s] = d
    if client[0] >= 0:
        return
    c = 0
    for k in range(repd.shape[0]):
        if repd[k] == d:
            c += 1
    if c >= IP[I_F] + 1:
        client[0] = d
        client[1] = now


@njit(cache=True, _nrt=False)
def _check_committed(Q, res, spb, cnt, byt, IP, P, st, node_t, i, now):
    IP[I_F]
    if st[i, S_COMINV] or not st[i, S_PREPARED] or st[i, S_CCNT] < IP[I_Q]:
        return
    st[i, S_COMINV] = 1
    _record_commit(st, node_t, i, st[i, S_PREPD], now)
    _unicast(
        Q,
        res,
        spb,
        cnt,
        byt,
        IP,
        P,
        i,
        IP[I_N],
        M_REPLY,
        st[i, S_VIEW],
        st[i, S_PREPD],
        0,
        P[P_HEADER],
        _vote_cost(P),
        now,
    )
    st[i, S_DONE] = 1
    st[i, S_TVER] += 1  # cancels the pending view-change timer


@njit(cache=True, _nrt=False)
def _check_prepared(Q, res, spb, cnt, byt, IP, P, st, cv, node_t, i, now):
    IP[I_F]
    if st[i, S_PREPARED] or not st[i, S_PPACC] or st[i, S_PCNT] < IP[I_Q] - 1:
        return
    v = st[i, S_VIEW]
    d = st[i, S_ACCD]
    st[i, S_PREPARED] = 1
    st[i, S_PREPD] = d
    st[i, S_PCV] = v
    st[i, S_PCD] = d
    _bcast(Q, res, spb, cnt, byt, IP, P, i, M_COMMIT, v, d, d, False, 0, P[P_HEADER], _vote_cost(P), now, 0.0)
    cv[v, i, i] = d
    st[i, S_CCNT] = _count(cv, i, v, d, -1)
    _check_committed(Q, res, spb, cnt, byt, IP, P, st, node_t, i, now)


@njit(cache=True, _nrt=False)
def _try_propose(Q, res, spb, cnt, byt, IP, P, st, pv, cv, bestpv, bestpd, node_t, repd, client, i, now):
    n = IP[I_N]
    v = st[i, S_VIEW]
    if _primary(IP, v) != i or not st[i, S_ACTIVE] or st[i, S_PROPOSED] or st[i, S_NUPD] < IP[I_U]:
        return
    st[i, S_PROPOSED] = 1
    d = 0 if v == 0 else st[i, S_NVD]
    forged = v + 1
    equiv = st[i, S_FAULT] == EQUIVOCATE
    payload = _payload(IP, P)
    _bcast(
        Q,
        res,
        spb,
        cnt,
        byt,
        IP,
        P,
        i,
        M_PREPREPARE,
        v,
        d,
        forged,
        equiv,
        0,
        P[P_HEADER] + payload,
        _pp_cost(IP, P),
        now,
        P[P_HASH_PB] * payload,
    )
    st[i, S_PPACC] = 1
    st[i, S_ACCD] = d
    proto = IP[I_PROTO]
    if proto == PROTO_PBFT:
        if equiv:
            _bcast(
                Q,
                res,
                spb,
                cnt,
                byt,
                IP,
                P,
                i,
                M_COMMIT,
                v,
                d,
                forged,
                True,
                0,
                P[P_HEADER],
                _vote_cost(P),
                now,
                0.0,
            )
            _unicast(
                Q, res, spb, cnt, byt, IP, P, i, n, M_REPLY, v, forged, 0, P[P_HEADER], _vote_cost(P), now
            )
            return
        st[i, S_PCNT] = _count(pv, i, v, d, i)
        _check_prepared(Q, res, spb, cnt, byt, IP, P, st, cv, node_t, i, now)
    elif proto == PROTO_HOTSTUFF:
        st[i, S_PHASE] = 1
        st[i, S_QCNT] = 1
        if equiv:
            st[i, S_ALTD] = forged
            st[i, S_QCNT2] = 1
        else:
            st[i, S_ALTD] = -1
            st[i, S_QCNT2] = 0


@njit(cache=True, _nrt=False)
def _try_accept(Q, res, spb, cnt, byt, IP, P, st, pv, cv, ppdig, node_t, i, now):
    v = st[i, S_VIEW]
    if not st[i, S_ACTIVE] or st[i, S_PPACC] or ppdig[i, v] < 0 or _primary(IP, v) == i:
        return
    if IP[I_DIGESTS] and st[i, S_NUPD] < IP[I_U]:
        return
    if v > 0 and ppdig[i, v] != st[i, S_NVD]:
        return  # a pre-prepare that contradicts the new-view certificate is refused
    n = IP[I_N]
    d = ppdig[i, v]
    st[i, S_PPACC] = 1
    st[i, S_ACCD] = d
    equiv = st[i, S_FAULT] == EQUIVOCATE
    forged = v + 1
    proto = IP[I_PROTO]
    H = P[P_HEADER]
    vc = _vote_cost(P)
    if proto == PROTO_PBFT:
        if equiv:
            _bcast(Q, res, spb, cnt, byt, IP, P, i, M_PREPARE, v, d, forged, True, 0, H, vc, now, 0.0)
            _bcast(Q, res, spb, cnt, byt, IP, P, i, M_COMMIT, v, d, forged, True, 0, H, vc, now, 0.0)
            _unicast(Q, res, spb, cnt, byt, IP, P, i, n, M_REPLY, v, forged, 0, H, vc, now)
            return
        _bcast(Q, res, spb, cnt, byt, IP, P, i, M_PREPARE, v, d, d, False, 0, H, vc, now, 0.0)
        pv[v, i, i] = d
        st[i, S_PCNT] = _count(pv, i, v, d, _primary(IP, v))
        _check_prepared(Q, res, spb, cnt, byt, IP, P, st, cv, node_t, i, now)
    elif proto == PROTO_PAPER:
        if equiv:
            d = forged
        else:
            _record_commit(st, node_t, i, d, now)
        _unicast(Q, res, spb, cnt, byt, IP, P, i, _primary(IP, v), M_REPLY, v, d, 0, H, vc, now)
    else:  # hotstuff: vote for the proposal (phase 1)
        if equiv:
            d = forged
        _unicast(Q, res, spb, cnt, byt, IP, P, i, _primary(IP, v), M_VOTE, v, d, 1, H, vc, now)


@njit(cache=True, _nrt=False)
def _check_new_view(
    Q, res, spb, cnt, byt, IP, P, st, pv, cv, vccnt, bestpv, bestpd, node_t, repd, client, i, w, now
):
    IP[I_F]
    if st[i, S_NVSENT] or st[i, S_VIEW] != w or vccnt[i, w] < IP[I_Q] - 1:
        return
    st[i, S_NVSENT] = 1
    st[i, S_ACTIVE] = 1
    if w > st[i, S_MAXINST]:
        st[i, S_MAXINST] = w
    # the new view re-proposes the digest of the highest prepared certificate among the
    # view changes (own included); the new-view message carries the signed view changes,
    # so every backup can recompute it and a primary cannot lie about it
    d = 0
    if bestpv[i, w] >= 0:
        d = bestpd[i, w]
    if st[i, S_PCV] > bestpv[i, w]:
        d = st[i, S_PCD]
    st[i, S_NVD] = d
    m = IP[I_Q] + 1
    _bcast(
        Q,
        res,
        spb,
        cnt,
        byt,
        IP,
        P,
        i,
        M_NEWVIEW,
        w,
        d,
        d,
        False,
        0,
        P[P_HEADER] * m,
        P[P_PROC] + P[P_VERIFY] * m,
        now,
        0.0,
    )
    _try_propose(Q, res, spb, cnt, byt, IP, P, st, pv, cv, bestpv, bestpd, node_t, repd, client, i, now)


@njit(cache=True, _nrt=False)
def _send_vc(
    Q, res, spb, cnt, byt, IP, P, st, pv, cv, sentvc, vccnt, bestpv, bestpd, node_t, repd, client, i, w, now
):
    if w >= IP[I_V] or w <= st[i, S_VIEW] or sentvc[i, w]:
        return
    sentvc[i, w] = 1
    _reset_view(st, i, w)
    cert = _cert_msgs(IP) if st[i, S_PCV] >= 0 else 0
    _bcast(
        Q,
        res,
        spb,
        cnt,
        byt,
        IP,
        P,
        i,
        M_VIEWCHANGE,
        w,
        st[i, S_PCD],
        st[i, S_PCD],
        False,
        st[i, S_PCV],
        P[P_HEADER] * (1 + cert),
        P[P_PROC] + P[P_VERIFY] * (1 + cert),
        now,
        0.0,
    )
    if not st[i, S_DONE]:
        _arm_timer(Q, st, P, i, w, now)
    if _primary(IP, w) == i:
        _check_new_view(
            Q, res, spb, cnt, byt, IP, P, st, pv, cv, vccnt, bestpv, bestpd, node_t, repd, client, i, w, now
        )


# ----------------------------------------------------------------------------- the kernel
@njit(cache=True)
def _grow(Q):
    ht, hs, hsl, evi, evf, free, ctr, nxt, stime, sseq, fhead, ftail, gt, gs, gn = Q
    cap = ht.shape[0]
    new = 2 * cap
    ht2 = np.empty(new, np.float64)
    hs2 = np.empty(new, np.int64)
    hsl2 = np.empty(new, np.int64)
    evi2 = np.empty((new, 8), np.int32)
    evf2 = np.empty((new, 2), np.float64)
    free2 = np.empty(new, np.int64)
    nxt2 = np.empty(new, np.int64)
    stime2 = np.empty(new, np.float64)
    sseq2 = np.empty(new, np.int64)
    hn = ctr[C_HN]
    ht2[:hn] = ht[:hn]
    hs2[:hn] = hs[:hn]
    hsl2[:hn] = hsl[:hn]
    evi2[:cap] = evi
    evf2[:cap] = evf
    nxt2[:cap] = nxt
    stime2[:cap] = stime
    sseq2[:cap] = sseq
    free2[: ctr[C_NFREE]] = free[: ctr[C_NFREE]]
    return (ht2, hs2, hsl2, evi2, evf2, free2, ctr, nxt2, stime2, sseq2, fhead, ftail, gt, gs, gn)


@njit(cache=True, _nrt=False)
def _pending(Q):
    return Q[6][C_HN] + Q[6][C_GN]


@njit(cache=True, _nrt=False)
def _used(Q):
    return Q[6][C_HWM] - Q[6][C_NFREE]


@njit(cache=True, _nrt=False)
def _capacity(Q):
    return Q[0].shape[0]


@njit(cache=True, _nrt=False)
def _msgs(Q):
    return Q[6][C_MSGID]


@njit(cache=True, _nrt=False)
def _next(Q):
    """Pop the earliest event, free its slot (``_requeue`` takes it back), return its fields.

    The queue is only touched inside helpers compiled without reference counting, so the
    event loop does no atomic increments on the queue arrays.
    """
    ht, hs, hsl, evi, evf, free, ctr, nxt, stime, sseq, fhead, ftail, gt, gs, gn = Q
    # the earliest of the heap (arrivals, timers) and of the per-node handle queues
    fifo = False
    if ctr[C_GN] > 0:
        if ctr[C_HN] == 0:
            fifo = True
        else:
            tg = gt[0]
            tm = ht[0]
            fifo = tg < tm or (tg == tm and gs[0] < hs[0])
    if fifo:
        k = gn[0]
        t = gt[0]
        slot = fhead[k]
        g = ctr[C_GN] - 1
        ctr[C_GN] = g
        _sift_pop(gt, gs, gn, g)
        nx = nxt[slot]
        fhead[k] = nx
        if nx < 0:
            ftail[k] = -1
        else:
            _sift_push(gt, gs, gn, g, stime[nx], sseq[nx], k)
            ctr[C_GN] = g + 1
    else:
        t, slot = _heap_pop(ht, hs, hsl, ctr)
    k = ctr[C_NFREE]
    free[k] = slot
    ctr[C_NFREE] = k + 1
    return (
        t,
        slot,
        np.int64(evi[slot, 0]),
        np.int64(evi[slot, 3]),
        np.int64(evi[slot, 1]),
        np.int64(evi[slot, 2]),
        np.int64(evi[slot, 4]),
        np.int64(evi[slot, 5]),
        np.int64(evi[slot, 6]),
        evf[slot, 0],
        evf[slot, 1],
    )


@njit(cache=True, _nrt=False)
def _requeue(Q, slot, t, dst):
    """The arrived message ``slot`` is handled by ``dst`` at ``t`` (its slot is taken back).

    A node's handle times never decrease (its CPU is a FIFO queue) and sequence numbers
    grow, so each node's handle events form a queue already in (time, sequence) order:
    they wait in a per-node linked list and only each list's head sits in a small heap
    (``gt, gs, gn``), which keeps half the events out of the large heap.
    """
    _ht, _hs, _hsl, evi, _evf, _free, ctr, nxt, stime, sseq, fhead, ftail, gt, gs, gn = Q
    ctr[C_NFREE] -= 1  # nothing was allocated since _next released it
    s = ctr[C_SEQ]
    ctr[C_SEQ] = s + 1
    evi[slot, 0] = EV_HANDLE
    stime[slot] = t
    sseq[slot] = s
    nxt[slot] = -1
    tail = ftail[dst]
    ftail[dst] = slot
    if tail < 0:
        fhead[dst] = slot
        g = ctr[C_GN]
        _sift_push(gt, gs, gn, g, t, s, dst)
        ctr[C_GN] = g + 1
    else:
        nxt[tail] = slot


@njit(cache=True, _nrt=False)
def _event_loop(
    Q,
    IP,
    P,
    spb,
    fault,
    cnt,
    byt,
    ptime,
    node_t,
    res,
    st,
    pv,
    cv,
    vcf,
    vinit,
    ppdig,
    vccnt,
    sentvc,
    bestpv,
    bestpd,
    repd,
    cl,
):
    """Handle events in time order until the queue is empty or nearly full.

    Compiled without reference counting (no array is created or rebound here), so the
    loop does no atomic increments; ``run_block`` grows the queue and calls it again.
    """
    n = IP[I_N]
    U = IP[I_U]
    V = IP[I_V]
    f = IP[I_F]
    H = P[P_HEADER]
    while _pending(Q) > 0:
        if _used(Q) + 4 * n + 16 > _capacity(Q):
            return  # the caller grows the queue and calls again
        t, slot, ek, dst, mk, src, w, d, aux, size, cost = _next(Q)
        if ek == EV_ARRIVE:
            if dst < n and fault[dst] == SILENT:
                continue  # dropped: a silent node ignores everything
            # downlink (FIFO in arrival order), then the CPU queue in the same order
            start = _fmax(t, res[dst, 1])
            done = start + size * spb[dst, 1]
            res[dst, 1] = done
            c = _fmax(done, res[dst, 2]) + cost
            res[dst, 2] = c
            _requeue(Q, slot, c, dst)
            continue
        i = dst
        if ek == EV_TIMER:
            if aux != st[i, S_TVER] or st[i, S_DONE]:
                continue
            if w + 1 < V:
                _touch_view(pv, cv, vcf, vinit, w + 1)
            _send_vc(
                Q,
                res,
                spb,
                cnt,
                byt,
                IP,
                P,
                st,
                pv,
                cv,
                sentvc,
                vccnt,
                bestpv,
                bestpd,
                node_t,
                repd,
                cl,
                i,
                w + 1,
                t,
            )
            continue
        # EV_HANDLE
        ptime[mk] = t
        if w < V:
            _touch_view(pv, cv, vcf, vinit, w)
        if mk == M_SUBMIT:
            st[i, S_NUPD] += 1
            if st[i, S_NUPD] == U:
                _try_propose(Q, res, spb, cnt, byt, IP, P, st, pv, cv, bestpv, bestpd, node_t, repd, cl, i, t)
                _try_accept(Q, res, spb, cnt, byt, IP, P, st, pv, cv, ppdig, node_t, i, t)
        elif mk == M_PREPREPARE:
            if src != _primary(IP, w) or w < st[i, S_VIEW]:
                continue
            if ppdig[i, w] < 0:
                ppdig[i, w] = d
            if w == st[i, S_VIEW]:
                _try_accept(Q, res, spb, cnt, byt, IP, P, st, pv, cv, ppdig, node_t, i, t)
        elif mk == M_PREPARE:
            if w < st[i, S_VIEW] or src == _primary(IP, w) or pv[w, i, src] >= 0:
                continue
            pv[w, i, src] = d
            if (
                w == st[i, S_VIEW]
                and st[i, S_PPACC]
                and not st[i, S_PREPARED]
                and d == st[i, S_ACCD]
                and st[i, S_FAULT] == HONEST
            ):
                st[i, S_PCNT] += 1
                _check_prepared(Q, res, spb, cnt, byt, IP, P, st, cv, node_t, i, t)
        elif mk == M_COMMIT:
            if w < st[i, S_VIEW] or cv[w, i, src] >= 0:
                continue
            cv[w, i, src] = d
            if w == st[i, S_VIEW] and st[i, S_PREPARED] and not st[i, S_COMINV] and d == st[i, S_PREPD]:
                st[i, S_CCNT] += 1
                _check_committed(Q, res, spb, cnt, byt, IP, P, st, node_t, i, t)
        elif mk == M_REPLY:
            if i == n:
                _client_reply(IP, repd, cl, src, d, t)
            else:  # the paper's exchange: a follower's reply to the leader
                if pv[0, i, src] >= 0:
                    continue
                pv[0, i, src] = d
                if d == st[i, S_ACCD] and not st[i, S_COMINV]:
                    st[i, S_QCNT] += 1
                    if st[i, S_QCNT] >= f + 1:
                        st[i, S_COMINV] = 1
                        if st[i, S_FAULT] == HONEST:
                            _record_commit(st, node_t, i, d, t)
                        cl[0] = d
                        cl[1] = t
        elif mk == M_VIEWCHANGE:
            if w >= V:
                continue
            if vcf[w, i, src] == 0:
                vcf[w, i, src] = 1
                vccnt[i, w] += 1
                if aux > bestpv[i, w]:
                    bestpv[i, w] = aux
                    bestpd[i, w] = d
            if vccnt[i, w] >= f + 1 and w > st[i, S_VIEW]:
                _send_vc(
                    Q,
                    res,
                    spb,
                    cnt,
                    byt,
                    IP,
                    P,
                    st,
                    pv,
                    cv,
                    sentvc,
                    vccnt,
                    bestpv,
                    bestpd,
                    node_t,
                    repd,
                    cl,
                    i,
                    w,
                    t,
                )
            if _primary(IP, w) == i and st[i, S_VIEW] == w and not st[i, S_ACTIVE]:
                _check_new_view(
                    Q, res, spb, cnt, byt, IP, P, st, pv, cv, vccnt, bestpv, bestpd, node_t, repd, cl, i, w, t
                )
        elif mk == M_NEWVIEW:
            if src != _primary(IP, w) or w < st[i, S_VIEW] or (w == st[i, S_VIEW] and st[i, S_ACTIVE]):
                continue
            if w > st[i, S_VIEW]:
                _reset_view(st, i, w)
            st[i, S_ACTIVE] = 1
            st[i, S_NVD] = d
            if w > st[i, S_MAXINST]:
                st[i, S_MAXINST] = w
            if not st[i, S_DONE]:
                _arm_timer(Q, st, P, i, w, t)
            _try_accept(Q, res, spb, cnt, byt, IP, P, st, pv, cv, ppdig, node_t, i, t)
        elif mk == M_VOTE:
            if i != _primary(IP, 0) or aux <= pv[0, i, src]:
                continue
            pv[0, i, src] = aux
            ph = st[i, S_PHASE]
            if aux != ph:
                continue
            if d == st[i, S_ACCD]:
                st[i, S_QCNT] += 1
            elif d == st[i, S_ALTD]:
                st[i, S_QCNT2] += 1
            qd = -1
            if st[i, S_QCNT] >= IP[I_Q]:
                qd = st[i, S_ACCD]
            elif st[i, S_QCNT2] >= IP[I_Q]:
                qd = st[i, S_ALTD]
            if qd < 0:
                continue
            m = IP[I_Q]
            _bcast(
                Q,
                res,
                spb,
                cnt,
                byt,
                IP,
                P,
                i,
                M_QC,
                0,
                qd,
                qd,
                False,
                ph,
                H + 64.0 * m,
                P[P_PROC] + P[P_VERIFY] * (1 + m),
                t,
                0.0,
            )
            st[i, S_PHASE] = ph + 1
            st[i, S_ACCD] = qd
            st[i, S_ALTD] = -1
            st[i, S_QCNT] = 1
            st[i, S_QCNT2] = 0
            if ph == 3:
                rd = qd
                if st[i, S_FAULT] == HONEST:
                    _record_commit(st, node_t, i, qd, t)
                else:
                    rd = 1
                _unicast(Q, res, spb, cnt, byt, IP, P, i, n, M_REPLY, 0, rd, 0, H, _vote_cost(P), t)
        elif mk == M_QC:
            if src != _primary(IP, 0):
                continue
            equiv = st[i, S_FAULT] == EQUIVOCATE
            if aux < 3:
                vd = 1 if equiv else d
                _unicast(Q, res, spb, cnt, byt, IP, P, i, src, M_VOTE, 0, vd, aux + 1, H, _vote_cost(P), t)
            else:
                rd = d
                if equiv:
                    rd = 1
                else:
                    _record_commit(st, node_t, i, d, t)
                _unicast(Q, res, spb, cnt, byt, IP, P, i, n, M_REPLY, 0, rd, 0, H, _vote_cost(P), t)


@njit(cache=True)
def run_block(IP, P, SPB, fault, cnt, byt, ptime, node_d, node_t, node_i, client):
    """Run one block's agreement; fill the output arrays; return the number of messages sent.

    Parameters
    ----------
    IP : int64[N_IPARAMS]; P : float64[N_PARAMS].
    SPB : float64[n + 1 + U, 2], seconds per byte on each entity's uplink and downlink.
    fault : int64[n] (HONEST / SILENT / EQUIVOCATE).
    cnt : int64[N_PHASES]; byt, ptime : float64[N_PHASES] (messages, bytes, last handle time).
    node_d : int64[n] committed digest (-1 none); node_t : float64[n] commit time (NaN none);
    node_i : int64[n, 2] (conflicting later commit flag, highest view installed);
    client : float64[2] (accepted digest or -1, acceptance time or NaN).
    """
    n = IP[I_N]
    U = IP[I_U]
    V = IP[I_V]
    IP[I_F]
    proto = IP[I_PROTO]
    E = n + 1 + U
    res = np.zeros((E, 3), np.float64)  # uplink free, downlink free, CPU free
    spb = SPB
    st = np.zeros((n, N_STATE), np.int64)
    for i in range(n):
        st[i, S_ACCD] = -1
        st[i, S_PREPD] = -1
        st[i, S_COMD] = -1
        st[i, S_PCV] = -1
        st[i, S_PCD] = -1
        st[i, S_ALTD] = -1
        st[i, S_ACTIVE] = 1
        st[i, S_FAULT] = fault[i]
    # vote tables [view, receiver, sender]; a view's slice is filled when first used
    pv = np.empty((V, n, n), np.int32)
    cv = np.empty((V, n, n), np.int32)
    vcf = np.empty((V, n, n), np.int8)
    vinit = np.zeros(V, np.int8)
    _touch_view(pv, cv, vcf, vinit, 0)
    ppdig = np.full((n, V), -1, np.int64)
    vccnt = np.zeros((n, V), np.int64)
    sentvc = np.zeros((n, V), np.int8)
    bestpv = np.full((n, V), -1, np.int64)
    bestpd = np.full((n, V), -1, np.int64)
    repd = np.full(n, -1, np.int64)
    for k in range(N_PHASES):
        cnt[k] = 0
        byt[k] = 0.0
        ptime[k] = np.nan
    for i in range(n):
        node_d[i] = -1
        node_t[i] = np.nan
        node_i[i, 0] = 0
        node_i[i, 1] = 0
    client[0] = -1.0
    client[1] = np.nan
    cl = np.array([-1.0, np.nan])

    cap = n * U + 2 * n * n + 64  # every message of two broadcast rounds in flight: no growth
    ctr = np.zeros(N_CTR, np.int64)
    free = np.empty(cap, np.int64)
    Q = (
        np.empty(cap, np.float64),
        np.empty(cap, np.int64),
        np.empty(cap, np.int64),
        np.empty((cap, 8), np.int32),
        np.empty((cap, 2), np.float64),
        free,
        ctr,
        np.empty(cap, np.int64),
        np.empty(cap, np.float64),
        np.empty(cap, np.int64),
        np.full(E, -1, np.int64),
        np.full(E, -1, np.int64),
        np.empty(E, np.float64),
        np.empty(E, np.int64),
        np.empty(E, np.int64),
    )

    H = P[P_HEADER]
    # edge servers sign their update and send it to every node, primary first
    sub_size = H + P[P_UPD]
    sub_cost = P[P_PROC] + P[P_VERIFY] + P[P_HASH_PB] * P[P_UPD]
    for e in range(U):
        src = n + 1 + e
        s = _sign(res, P, src, 0.0, 0.0)
        for j in range(n):
            _send(Q, res, spb, cnt, byt, IP, P, src, j, M_SUBMIT, 0, 0, 0, sub_size, sub_cost, s)
    if proto == PROTO_PBFT:
        for i in range(n):
            if fault[i] != SILENT:
                _arm_timer(Q, st, P, i, 0, 0.0)
    if U == 0 and fault[0] != SILENT:
        _try_propose(Q, res, spb, cnt, byt, IP, P, st, pv, cv, bestpv, bestpd, node_t, repd, cl, 0, 0.0)

    while True:
        _event_loop(
            Q,
            IP,
            P,
            spb,
            fault,
            cnt,
            byt,
            ptime,
            node_t,
            res,
            st,
            pv,
            cv,
            vcf,
            vinit,
            ppdig,
            vccnt,
            sentvc,
            bestpv,
            bestpd,
            repd,
            cl,
        )
        if _pending(Q) == 0:
            break
        Q = _grow(Q)

    for i in range(n):
        node_d[i] = st[i, S_COMD]
        node_i[i, 0] = st[i, S_CONFLICT]
        node_i[i, 1] = st[i, S_MAXINST]
    client[0] = cl[0]
    client[1] = cl[1]
    return _msgs(Q)


@njit(cache=True, parallel=True)
def sweep_parallel(IPs, Ps, SPB, faults, out_t, out_msgs, out_bytes, out_committed, out_views):
    """``run_block`` for every row of ``IPs`` / ``Ps`` / ``faults`` (padded to max n), in parallel."""
    for c in prange(IPs.shape[0]):
        _sweep_one(IPs, Ps, SPB, faults, out_t, out_msgs, out_bytes, out_committed, out_views, c)


@njit(cache=True)
def sweep_serial(IPs, Ps, SPB, faults, out_t, out_msgs, out_bytes, out_committed, out_views):
    """The same loop as ``sweep_parallel`` without threads (the parallel == serial check)."""
    for c in range(IPs.shape[0]):
        _sweep_one(IPs, Ps, SPB, faults, out_t, out_msgs, out_bytes, out_committed, out_views, c)


@njit(cache=True)
def _sweep_one(IPs, Ps, SPB, faults, out_t, out_msgs, out_bytes, out_committed, out_views, c):
    IP = IPs[c]
    n = IP[I_N]
    U = IP[I_U]
    E = n + 1 + U
    spb = np.empty((E, 2), np.float64)
    # SPB[c] holds (consortium up, consortium down, edge up, client down)
    for k in range(n):
        spb[k, 0] = SPB[c, 0]
        spb[k, 1] = SPB[c, 1]
    spb[n, 0] = SPB[c, 0]
    spb[n, 1] = SPB[c, 3]
    for k in range(n + 1, E):
        spb[k, 0] = SPB[c, 2]
        spb[k, 1] = SPB[c, 1]
    cnt = np.zeros(N_PHASES, np.int64)
    byt = np.zeros(N_PHASES, np.float64)
    ptime = np.zeros(N_PHASES, np.float64)
    node_d = np.zeros(n, np.int64)
    node_t = np.zeros(n, np.float64)
    node_i = np.zeros((n, 2), np.int64)
    client = np.zeros(2, np.float64)
    run_block(IP, Ps[c], spb, faults[c, :n], cnt, byt, ptime, node_d, node_t, node_i, client)
    out_t[c] = client[1]
    out_msgs[c] = cnt.sum()
    out_bytes[c] = byt.sum()
    out_committed[c] = client[0] >= 0
    mx = 0
    for k in range(n):
        if faults[c, k] == HONEST and node_i[k, 1] > mx:
            mx = node_i[k, 1]
    out_views[c] = mx
