"""Numba discrete-event kernel: every message of PBFT / the paper's exchange / HotStuff.

Entities: consortium nodes ``0..n-1``, the client that collects replies (``n``) and
the edge servers ``n+1..n+U`` that submit the signed updates. Every message goes
through two events; the three shared resources of an entity are first-come
first-served queues (their "free at" times start at 0):

1. the sender signs: ``ready = max(now, cpu_free) + pre + sign_s`` (``pre``: hashing the
   block, pre-prepare only), then each copy is serialised on the sender's uplink,
   ``done = max(ready, up_free) + size * up_spb`` (``spb`` = 8 / bits per second), and
   ``ARRIVE``s at ``done + latency(u_k)``, where ``k`` counts the messages sent so far
   in this run and ``u_k = uniform01(seed, k)``; at that moment it is dropped if the
   receiver is a silent node, else it takes the receiver's downlink,
   ``done' = max(t, down_free) + size * down_spb``, and then its CPU,
   ``handled = max(done', cpu_free) + cost``;
2. ``HANDLE`` at ``handled``: the protocol logic runs; the messages it sends start at
   that time. A broadcast signs once and sends copies to ``i+1, i+2, ... (mod n)``.

``seconds per byte`` of the entities: nodes (consortium up, consortium down), the
client (consortium up, client down), edge servers (edge up, consortium down).
Message sizes and the receiver's CPU cost (``H`` header bytes, ``proc`` processing,
``ver`` one signature check, ``hpb`` hashing per byte, ``q`` the quorum, payload =
``U * update_bytes`` or ``U * 32`` when the block carries digests):

=============  ====================  =============================================
kind           size (bytes)          receiver's cost (s)
=============  ====================  =============================================
submit         H + update_bytes      proc + ver + hpb * update_bytes
pre-prepare    H + payload           proc + ver * (1 + U, or 1 for digests) + hpb * payload
prepare,       H                     proc + ver
commit, reply,
vote
view-change    H * (1 + c)           proc + ver * (1 + c); c = q with a prepared certificate, else 0
new-view       H * (q + 1)           proc + ver * (q + 1)
QC             H + 64 q              proc + ver * (1 + q)
=============  ====================  =============================================

Timers: a PBFT node (not silent) arms one at time 0 for view 0 and one on each view it
enters, firing ``tbase * 2**v`` later (a commit voids it); when it fires the node asks
for view ``v + 1``.

Event order (the exact tie-break): events are handled in increasing ``(time, sequence)``
where ``sequence`` numbers every event scheduling in the order it happens (the sends'
arrivals, the arrivals' handle events, the timers), one counter for all. Two events at
the same float time are handled in the order they were scheduled; any priority queue
that pops the lexicographic minimum of ``(time, sequence)`` gives the same run, so the
pure-Python ``heapq`` reference in ``tests/reference/consensus_ref.py`` reproduces every
time stamp exactly.

Pending events (arrivals, handle events, timers alike) sit in one radix heap on the
float64 time bits (a non-negative double's IEEE bits order like the double as uint64):
with ``last`` the time of the last popped event, an event whose time bits first differ
from ``last``'s at bit ``b - 1`` sits in the linked list of bucket ``b`` (1..63, a bit
mask marks the non-empty ones, each keeps its least time); events at time ``last``
sit in a small 4-ary heap ordered by ``sequence``, which gives the exact tie-break.
When that heap is empty, the first non-empty bucket's least time becomes ``last`` and
its events move to lower buckets or to the heap. This is valid because no event is
scheduled before the current time. It replaced a 4-ary heap of arrivals plus
per-receiver FIFO lists of handle events: 1.3x faster per message at n = 100 and 1.04x
at n = 1,000, but 1.26x slower at n = 3,000, where the bucket moves miss the cache
(``docs/consensus.md``, "which queue wins").

Memory (``_api.kernel_bytes``): votes are counted, not stored. In this fault model
every sender sends each kind at most once per view to each receiver (honest and
equivocating nodes alike: a broadcast happens at most once per node, kind and view),
so a receiver needs, per view, only how many prepares and commits it got for each
digest; and in view ``v`` the only digests are the primary's proposal and the forged
``v + 1`` (a backup accepts only the pre-prepare the new-view certificate names, the
proposal of view ``v`` is 0 or a digest prepared in an earlier view, so ``<= v``), two
counters per kind. Per node and view: 2 x 2 int32 counters, the pre-prepare digest, the
view-change count, the best certificate (view, digest) and a sent flag: 33 bytes. The
queue holds at most ``n U + 2 n (n - 1) + 4 n + 64`` events before it grows (every
message of two broadcast rounds in flight), 64 bytes each. Total
``33 n V + 64 (n U + 2 n (n - 1) + 4 n + 64) + 232 n + 40 (n + 1 + U)`` bytes (V views:
f + 2 for PBFT by default, 1 otherwise); the queue's pages are touched only as used.

The wrapper (``_api.simulate_pbft``) validates, checks the memory and allocates the
outputs; the event loop and its helpers are compiled with ``_nrt=False``: they create
no arrays, so numba emits no reference counting on the arrays they take.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# message kinds = phase index of the per-phase counters; a timer has kind M_TIMER
M_SUBMIT, M_PREPREPARE, M_PREPARE, M_COMMIT, M_REPLY = 0, 1, 2, 3, 4
M_VIEWCHANGE, M_NEWVIEW, M_VOTE, M_QC = 5, 6, 7, 8
N_PHASES = 9
M_TIMER = 9
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
) = range(23)
N_STATE = 23

# event record columns (int32): message kind, source, destination, view, digest, aux
E_KIND, E_SRC, E_DST, E_VIEW, E_DIG, E_AUX = range(6)
N_EV = 6
# queue counters: events pending, next sequence, messages sent, free-stack depth, rows of the
# heap at time ``last``, slots ever used, non-empty bucket mask, that heap's base row, ``last``
C_HN, C_SEQ, C_MSGID, C_NFREE, C_GN, C_HWM, C_MASK, C_GB, C_LAST = range(9)
N_CTR = 9
# bytes per queue slot: record 24, time bits 8, sequence 8, bucket link 4, free stack 4, heap row 16
SLOT_BYTES = 64
SLOT_BITS = 32
MAX_SEQ = (1 << 31) - 4096  # scheduled events per run (about 10**9 messages)

_TWO53 = 1.0 / 9007199254740992.0


@njit(cache=True, _nrt=False)
def uniform01(seed, k):
    """Uniform in (0, 1) for message number ``k`` (0, 1, ... in send order) of a run.

    splitmix64's finaliser applied to ``z = seed * 0x9E3779B97F4A7C15 + (k + 1) *
    0xBF58476D1CE4E5B9 (mod 2**64)``: ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
    z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31`` (products mod 2**64), then
    ``(float(z >> 11) + 0.5) * 2**-53``.
    """
    z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(k + 1) * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (np.float64(z >> np.uint64(11)) + 0.5) * _TWO53


@njit(cache=True, _nrt=False)
def link_latency(latkind, mean, shape, u):
    """Latency from a uniform draw: ``mean``; ``-mean ln u``; Pareto ``x_m u^(-1/shape)``.

    Pareto scale ``x_m = mean (shape - 1) / shape``, so the mean is ``mean``.
    """
    if latkind == LAT_CONSTANT:
        return mean
    if latkind == LAT_EXPONENTIAL:
        return -mean * math.log(u)
    xm = mean * (shape - 1.0) / shape
    return xm * math.pow(u, -1.0 / shape)


@njit(cache=True, _nrt=False, inline="always")
def _fmax(a, b):
    return a if a > b else b


# ----------------------------------------------------------------------------- radix heap
# Every pending event (arrival, handle, timer) is one slot: its key is (time bits, KS) with
# KS = sequence << 1 | handle flag. Slots whose time bits differ from ``last`` (the time of
# the last popped event) first at bit b - 1 sit in the linked list of bucket b (1..63);
# slots at time ``last`` sit in a small heap ordered by KS. Inserted times are never
# below ``last`` (no event is scheduled in the past), which is what a radix heap needs.
@intrinsic
def _clz(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.int64(types.int64), codegen


@intrinsic
def _ctz(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.int64(types.int64), codegen


@njit(cache=True, _nrt=False, inline="always")
def _bits(Q, t):
    Q[9][0] = t
    return Q[10][0]


@njit(cache=True, _nrt=False, inline="always")
def _float(Q, b):
    Q[10][0] = b
    return Q[9][0]


@njit(cache=True, _nrt=False)
def _sift_up(H, base, i, tb, key):
    """Insert (tb, key) into a heap holding ``i`` entries (a hole moves up)."""
    while i > 0:
        p = (i - 1) >> 2
        pt = H[base + p, 0]
        if tb < pt or (tb == pt and key < H[base + p, 1]):
            H[base + i, 0] = pt
            H[base + i, 1] = H[base + p, 1]
            i = p
        else:
            break
    H[base + i, 0] = tb
    H[base + i, 1] = key


@njit(cache=True, _nrt=False)
def _sift_pop(H, base, n):
    """Remove the root of a heap that now holds ``n`` entries; return the root's key."""
    key0 = H[base, 1]
    tb = H[base + n, 0]
    key = H[base + n, 1]
    i = 0
    while True:
        a = 4 * i + 1
        if a >= n:
            break
        last = a + 4
        if last > n:
            last = n
        ta = H[base + a, 0]
        ka = H[base + a, 1]
        for b in range(a + 1, last):
            tt = H[base + b, 0]
            if tt < ta or (tt == ta and H[base + b, 1] < ka):
                a = b
                ta = tt
                ka = H[base + b, 1]
        H[base + i, 0] = ta
        H[base + i, 1] = ka
        i = a
    _sift_up(H, base, i, tb, key)
    return key0


@njit(cache=True, _nrt=False, inline="always")
def _new_slot(Q):
    ctr = Q[6]
    k = ctr[C_NFREE]
    if k > 0:
        ctr[C_NFREE] = k - 1
        return np.int64(Q[5][k - 1])
    slot = ctr[C_HWM]  # pages never used are never touched
    ctr[C_HWM] = slot + 1
    return slot


@njit(cache=True, _nrt=False, inline="always")
def _free_slot(Q, slot):
    ctr = Q[6]
    k = ctr[C_NFREE]
    Q[5][k] = slot
    ctr[C_NFREE] = k + 1


@njit(cache=True, _nrt=False, inline="always")
def _rh_put(Q, tb, ks, slot):
    """File ``slot`` (key (tb, ks)) into its bucket relative to ``last``."""
    KT, KS, NX, ctr, bh, bmin, B0 = Q[0], Q[2], Q[3], Q[6], Q[7], Q[8], Q[4]
    x = tb ^ ctr[C_LAST]
    if x == 0:
        g = ctr[C_GN]
        _sift_up(B0, ctr[C_GB], g, ks, slot)
        ctr[C_GN] = g + 1
        return
    b = 64 - _clz(x)
    KT[slot] = tb
    KS[slot] = ks
    NX[slot] = bh[b]
    bh[b] = slot
    if tb < bmin[b]:
        bmin[b] = tb
    ctr[C_MASK] |= np.int64(1) << (b - 1)


@njit(cache=True, _nrt=False, inline="always")
def _push(Q, t, slot, handle):
    ctr = Q[6]
    s = ctr[C_SEQ]
    ctr[C_SEQ] = s + 1
    ctr[C_HN] += 1
    _rh_put(Q, _bits(Q, t), (s << 1) | handle, slot)


@njit(cache=True, _nrt=False, inline="always")
def _schedule(Q, t, mkind, src, dst, view, dig, aux):
    """A new arrival or timer at time ``t``: one record, one queue entry."""
    EI = Q[1]
    slot = _new_slot(Q)
    EI[slot, E_KIND] = mkind
    EI[slot, E_SRC] = src
    EI[slot, E_DST] = dst
    EI[slot, E_VIEW] = view
    EI[slot, E_DIG] = dig
    EI[slot, E_AUX] = aux
    _push(Q, t, slot, 0)


@njit(cache=True, _nrt=False, inline="always")
def _to_fifo(Q, slot, t, dst):
    """The arrived message ``slot`` is handled by ``dst`` at ``t``: queue its handle event."""
    _push(Q, t, slot, 1)


@njit(cache=True, _nrt=False)
def _next(Q):
    """Pop the earliest pending event: (time, slot, is a handle event)."""
    KT, KS, NX, ctr, bh, bmin = Q[0], Q[2], Q[3], Q[6], Q[7], Q[8]
    if ctr[C_GN] == 0:  # move the first non-empty bucket down, its minimum becomes ``last``
        b = _ctz(ctr[C_MASK]) + 1
        ctr[C_MASK] &= ~(np.int64(1) << (b - 1))
        ctr[C_LAST] = bmin[b]
        bmin[b] = np.int64(0x7FFFFFFFFFFFFFFF)
        s = np.int64(bh[b])
        bh[b] = -1
        while s >= 0:
            nx = np.int64(NX[s])
            _rh_put(Q, KT[s], KS[s], s)
            s = nx
    g = ctr[C_GN] - 1
    ctr[C_GN] = g
    B0, gb = Q[4], ctr[C_GB]
    ks = B0[gb, 0]
    slot = _sift_pop(B0, gb, g)
    ctr[C_HN] -= 1
    return _float(Q, ctr[C_LAST]), slot, (ks & 1) == 1


# ----------------------------------------------------------------------------- sizes and costs
@njit(cache=True, _nrt=False)
def _payload(IP, P):
    if IP[I_DIGESTS]:
        return IP[I_U] * 32.0
    return IP[I_U] * P[P_UPD]


@njit(cache=True)
def _size_cost_table(IP, P):
    """``T[k] = (size bytes, receiver's cost s)`` per kind; row 9: a view change with a certificate."""
    T = np.empty((10, 2), np.float64)
    H = P[P_HEADER]
    vote = P[P_PROC] + P[P_VERIFY]
    for k in range(10):
        T[k, 0] = H
        T[k, 1] = vote
    T[M_SUBMIT, 0] = H + P[P_UPD]
    T[M_SUBMIT, 1] = P[P_PROC] + P[P_VERIFY] + P[P_HASH_PB] * P[P_UPD]
    payload = _payload(IP, P)
    nver = 1.0 if IP[I_DIGESTS] else 1.0 + IP[I_U]
    T[M_PREPREPARE, 0] = H + payload
    T[M_PREPREPARE, 1] = P[P_PROC] + P[P_VERIFY] * nver + P[P_HASH_PB] * payload
    q = IP[I_Q]
    T[M_VIEWCHANGE, 0] = H * (1 + 0)
    T[M_VIEWCHANGE, 1] = P[P_PROC] + P[P_VERIFY] * (1 + 0)
    T[9, 0] = H * (1 + q)
    T[9, 1] = P[P_PROC] + P[P_VERIFY] * (1 + q)
    T[M_NEWVIEW, 0] = H * (q + 1)
    T[M_NEWVIEW, 1] = P[P_PROC] + P[P_VERIFY] * (q + 1)
    T[M_QC, 0] = H + 64.0 * q
    T[M_QC, 1] = P[P_PROC] + P[P_VERIFY] * (1 + q)
    return T


@njit(cache=True, _nrt=False, inline="always")
def _row(mkind, aux):
    return 9 if (mkind == M_VIEWCHANGE and aux >= 0) else mkind


# ----------------------------------------------------------------------------- sending
# K = (IP, P, T, spb, fault); O = (cnt, byt, ptime, node_t, repd, cl);
# S = (res, st, prep, com, ppdig, vccnt, sentvc, bestpv, bestpd)
@njit(cache=True, _nrt=False, inline="always")
def _send(Q, K, O, S, src, dst, mkind, view, dig, aux, t0):
    IP, P, T, spb = K[0], K[1], K[2], K[3]
    cnt, byt, res, ctr = O[0], O[1], S[0], Q[6]
    size = T[_row(mkind, aux), 0]
    done = _fmax(t0, res[src, 0]) + size * spb[src, 0]
    res[src, 0] = done
    u = uniform01(IP[I_SEED], ctr[C_MSGID])
    ctr[C_MSGID] += 1
    cnt[mkind] += 1
    byt[mkind] += size
    _schedule(
        Q, done + link_latency(IP[I_LAT], P[P_LAT_MEAN], P[P_LAT_SHAPE], u), mkind, src, dst, view, dig, aux
    )


@njit(cache=True, _nrt=False, inline="always")
def _sign(S, P, i, now, pre):
    res = S[0]
    s = _fmax(now, res[i, 2]) + pre + P[P_SIGN]
    res[i, 2] = s
    return s


@njit(cache=True, _nrt=False)
def _bcast(Q, K, O, S, i, mkind, view, dig, forged, equiv, aux, now, pre):
    """Sign once, then send to every other node in the order i+1, i+2, ... (mod n)."""
    n = K[0][I_N]
    s = _sign(S, K[1], i, now, pre)
    for k in range(1, n):
        j = i + k
        if j >= n:
            j -= n
        d = dig
        if equiv and j % 2 == 1:
            d = forged
        _send(Q, K, O, S, i, j, mkind, view, d, aux, s)


@njit(cache=True, _nrt=False)
def _unicast(Q, K, O, S, i, j, mkind, view, dig, aux, now):
    _send(Q, K, O, S, i, j, mkind, view, dig, aux, _sign(S, K[1], i, now, 0.0))


@njit(cache=True, _nrt=False)
def _arm_timer(Q, K, S, i, v, now):
    st = S[1]
    st[i, S_TVER] += 1
    _schedule(Q, now + K[1][P_TBASE] * float(1 << v), M_TIMER, i, i, v, -1, st[i, S_TVER])


# ----------------------------------------------------------------------------- protocol steps
@njit(cache=True, _nrt=False)
def _primary(IP, v):
    return v % IP[I_N]


@njit(cache=True, _nrt=False, inline="always")
def _dslot(v, d):
    """Counter slot of digest ``d`` in view ``v``: 0 for the forged ``v + 1``, 1 otherwise."""
    return 0 if d == v + 1 else 1


@njit(cache=True, _nrt=False)
def _record_commit(O, S, i, d, now):
    st = S[1]
    if st[i, S_COMD] < 0:
        st[i, S_COMD] = d
        O[3][i] = now
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
    st[i, S_COMINV] = 0
    st[i, S_PROPOSED] = 0
    st[i, S_NVSENT] = 0
    st[i, S_NVD] = -1


@njit(cache=True, _nrt=False)
def _client_reply(IP, O, s, d, now):
    repd, cl = O[4], O[5]
    if repd[s] >= 0:
        return  # a node that committed again in a later view counts once
    repd[s] = d
    if cl[0] >= 0:
        return
    c = 0
    for k in range(repd.shape[0]):
        if repd[k] == d:
            c += 1
    if c >= IP[I_F] + 1:
        cl[0] = d
        cl[1] = now


@njit(cache=True, _nrt=False)
def _check_committed(Q, K, O, S, i, now):
    IP, st, com = K[0], S[1], S[3]
    if st[i, S_COMINV] or not st[i, S_PREPARED]:
        return
    v = st[i, S_VIEW]
    d = st[i, S_PREPD]
    if com[i, v, _dslot(v, d)] + 1 < IP[I_Q]:  # + 1: its own commit
        return
    st[i, S_COMINV] = 1
    _record_commit(O, S, i, d, now)
    _unicast(Q, K, O, S, i, IP[I_N], M_REPLY, v, d, 0, now)
    st[i, S_DONE] = 1
    st[i, S_TVER] += 1  # cancels the pending view-change timer


@njit(cache=True, _nrt=False)
def _check_prepared(Q, K, O, S, i, now):
    IP, st, prep = K[0], S[1], S[2]
    if st[i, S_PREPARED] or not st[i, S_PPACC]:
        return
    v = st[i, S_VIEW]
    d = st[i, S_ACCD]
    own = 0 if _primary(IP, v) == i else 1  # a backup's own prepare counts, the primary sends none
    if prep[i, v, _dslot(v, d)] + own < IP[I_Q] - 1:
        return
    st[i, S_PREPARED] = 1
    st[i, S_PREPD] = d
    st[i, S_PCV] = v
    st[i, S_PCD] = d
    _bcast(Q, K, O, S, i, M_COMMIT, v, d, d, False, 0, now, 0.0)
    _check_committed(Q, K, O, S, i, now)


@njit(cache=True, _nrt=False)
def _try_propose(Q, K, O, S, i, now):
    IP, P, st = K[0], K[1], S[1]
    n = IP[I_N]
    v = st[i, S_VIEW]
    if _primary(IP, v) != i or not st[i, S_ACTIVE] or st[i, S_PROPOSED] or st[i, S_NUPD] < IP[I_U]:
        return
    st[i, S_PROPOSED] = 1
    d = 0 if v == 0 else st[i, S_NVD]
    forged = v + 1
    equiv = st[i, S_FAULT] == EQUIVOCATE
    pre = P[P_HASH_PB] * _payload(IP, P)
    _bcast(Q, K, O, S, i, M_PREPREPARE, v, d, forged, equiv, 0, now, pre)
    st[i, S_PPACC] = 1
    st[i, S_ACCD] = d
    proto = IP[I_PROTO]
    if proto == PROTO_PBFT:
        if equiv:
            _bcast(Q, K, O, S, i, M_COMMIT, v, d, forged, True, 0, now, 0.0)
            _unicast(Q, K, O, S, i, n, M_REPLY, v, forged, 0, now)
            return
        _check_prepared(Q, K, O, S, i, now)
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
def _try_accept(Q, K, O, S, i, now):
    IP, st, ppdig = K[0], S[1], S[4]
    v = st[i, S_VIEW]
    if not st[i, S_ACTIVE] or st[i, S_PPACC] or ppdig[i, v] < 0 or _primary(IP, v) == i:
        return
    if IP[I_DIGESTS] and st[i, S_NUPD] < IP[I_U]:
        return
    if v > 0 and ppdig[i, v] != st[i, S_NVD]:
        return  # a pre-prepare that contradicts the new-view certificate is refused
    n = IP[I_N]
    d = np.int64(ppdig[i, v])
    st[i, S_PPACC] = 1
    st[i, S_ACCD] = d
    equiv = st[i, S_FAULT] == EQUIVOCATE
    forged = v + 1
    proto = IP[I_PROTO]
    if proto == PROTO_PBFT:
        if equiv:
            _bcast(Q, K, O, S, i, M_PREPARE, v, d, forged, True, 0, now, 0.0)
            _bcast(Q, K, O, S, i, M_COMMIT, v, d, forged, True, 0, now, 0.0)
            _unicast(Q, K, O, S, i, n, M_REPLY, v, forged, 0, now)
            return
        _bcast(Q, K, O, S, i, M_PREPARE, v, d, d, False, 0, now, 0.0)
        _check_prepared(Q, K, O, S, i, now)
    elif proto == PROTO_PAPER:
        if equiv:
            d = forged
        else:
            _record_commit(O, S, i, d, now)
        _unicast(Q, K, O, S, i, _primary(IP, v), M_REPLY, v, d, 0, now)
    else:  # hotstuff: vote for the proposal (phase 1)
        if equiv:
            d = forged
        _unicast(Q, K, O, S, i, _primary(IP, v), M_VOTE, v, d, 1, now)


@njit(cache=True, _nrt=False)
def _check_new_view(Q, K, O, S, i, w, now):
    IP, st, vccnt, bestpv, bestpd = K[0], S[1], S[5], S[7], S[8]
    if st[i, S_NVSENT] or st[i, S_VIEW] != w or vccnt[i, w] < IP[I_Q] - 1:
        return
    st[i, S_NVSENT] = 1
    st[i, S_ACTIVE] = 1
    if w > st[i, S_MAXINST]:
        st[i, S_MAXINST] = w
    # the new view re-proposes the digest of the highest prepared certificate among the
    # view changes (own included); the new-view message carries the signed view changes,
    # so every backup can recompute it and a primary cannot lie about it
    d = np.int64(0)
    if bestpv[i, w] >= 0:
        d = np.int64(bestpd[i, w])
    if st[i, S_PCV] > bestpv[i, w]:
        d = st[i, S_PCD]
    st[i, S_NVD] = d
    _bcast(Q, K, O, S, i, M_NEWVIEW, w, d, d, False, 0, now, 0.0)
    _try_propose(Q, K, O, S, i, now)


@njit(cache=True, _nrt=False)
def _send_vc(Q, K, O, S, i, w, now):
    IP, st, sentvc = K[0], S[1], S[6]
    if w >= IP[I_V] or w <= st[i, S_VIEW] or sentvc[i, w]:
        return
    sentvc[i, w] = 1
    _reset_view(st, i, w)
    _bcast(Q, K, O, S, i, M_VIEWCHANGE, w, st[i, S_PCD], st[i, S_PCD], False, st[i, S_PCV], now, 0.0)
    if not st[i, S_DONE]:
        _arm_timer(Q, K, S, i, w, now)
    if _primary(IP, w) == i:
        _check_new_view(Q, K, O, S, i, w, now)


# ----------------------------------------------------------------------------- handlers
@njit(cache=True, _nrt=False)
def _on_pbft(Q, K, O, S, i, mk, src, w, d, aux, t):
    IP, st, prep, com, ppdig, vccnt, bestpv, bestpd = K[0], S[1], S[2], S[3], S[4], S[5], S[7], S[8]
    if mk == M_PREPREPARE:
        if src != _primary(IP, w) or w < st[i, S_VIEW]:
            return
        if ppdig[i, w] < 0:
            ppdig[i, w] = d
        if w == st[i, S_VIEW]:
            _try_accept(Q, K, O, S, i, t)
    elif mk == M_PREPARE:
        if w < st[i, S_VIEW] or src == _primary(IP, w):
            return
        prep[i, w, _dslot(w, d)] += 1
        if w == st[i, S_VIEW] and st[i, S_FAULT] == HONEST:
            _check_prepared(Q, K, O, S, i, t)
    elif mk == M_COMMIT:
        if w < st[i, S_VIEW]:
            return
        com[i, w, _dslot(w, d)] += 1
        if w == st[i, S_VIEW]:
            _check_committed(Q, K, O, S, i, t)
    elif mk == M_VIEWCHANGE:
        if w >= IP[I_V]:
            return
        vccnt[i, w] += 1
        if aux > bestpv[i, w]:  # the first of the highest certificates wins
            bestpv[i, w] = aux
            bestpd[i, w] = d
        if vccnt[i, w] >= IP[I_F] + 1 and w > st[i, S_VIEW]:
            _send_vc(Q, K, O, S, i, w, t)
        if _primary(IP, w) == i and st[i, S_VIEW] == w and not st[i, S_ACTIVE]:
            _check_new_view(Q, K, O, S, i, w, t)
    elif mk == M_NEWVIEW:
        if src != _primary(IP, w) or w < st[i, S_VIEW] or (w == st[i, S_VIEW] and st[i, S_ACTIVE]):
            return
        if w > st[i, S_VIEW]:
            _reset_view(st, i, w)
        st[i, S_ACTIVE] = 1
        st[i, S_NVD] = d
        if w > st[i, S_MAXINST]:
            st[i, S_MAXINST] = w
        if not st[i, S_DONE]:
            _arm_timer(Q, K, S, i, w, t)
        _try_accept(Q, K, O, S, i, t)


@njit(cache=True, _nrt=False)
def _on_vote(Q, K, O, S, i, d, aux, t):
    """HotStuff leader: a quorum of one phase's votes on one digest forms its certificate."""
    IP, st = K[0], S[1]
    ph = st[i, S_PHASE]
    if i != _primary(IP, 0) or aux != ph:
        return  # a vote of an earlier phase (its quorum was reached without it)
    if d == st[i, S_ACCD]:
        st[i, S_QCNT] += 1
    elif d == st[i, S_ALTD]:
        st[i, S_QCNT2] += 1
    qd = np.int64(-1)
    if st[i, S_QCNT] >= IP[I_Q]:
        qd = st[i, S_ACCD]
    elif st[i, S_QCNT2] >= IP[I_Q]:
        qd = st[i, S_ALTD]
    if qd < 0:
        return
    _bcast(Q, K, O, S, i, M_QC, 0, qd, qd, False, ph, t, 0.0)
    st[i, S_PHASE] = ph + 1
    st[i, S_ACCD] = qd
    st[i, S_ALTD] = -1
    st[i, S_QCNT] = 1
    st[i, S_QCNT2] = 0
    if ph == 3:
        rd = qd
        if st[i, S_FAULT] == HONEST:
            _record_commit(O, S, i, qd, t)
        else:
            rd = 1
        _unicast(Q, K, O, S, i, IP[I_N], M_REPLY, 0, rd, 0, t)


@njit(cache=True, _nrt=False)
def _on_other(Q, K, O, S, i, mk, src, d, aux, t):
    """Replies (to the client, or to the paper's leader), HotStuff votes and certificates."""
    IP, st = K[0], S[1]
    n = IP[I_N]
    if mk == M_REPLY:
        if i == n:
            _client_reply(IP, O, src, d, t)
        elif d == st[i, S_ACCD] and not st[i, S_COMINV]:  # the paper's leader
            st[i, S_QCNT] += 1
            if st[i, S_QCNT] >= IP[I_F] + 1:
                st[i, S_COMINV] = 1
                if st[i, S_FAULT] == HONEST:
                    _record_commit(O, S, i, d, t)
                O[5][0] = d
                O[5][1] = t
    elif mk == M_VOTE:
        _on_vote(Q, K, O, S, i, d, aux, t)
    elif mk == M_QC:
        if src != _primary(IP, 0):
            return
        equiv = st[i, S_FAULT] == EQUIVOCATE
        if aux < 3:
            vd = 1 if equiv else d
            _unicast(Q, K, O, S, i, src, M_VOTE, 0, vd, aux + 1, t)
        else:
            rd = d
            if equiv:
                rd = 1
            else:
                _record_commit(O, S, i, d, t)
            _unicast(Q, K, O, S, i, n, M_REPLY, 0, rd, 0, t)


@njit(cache=True, _nrt=False)
def _event_loop(Q, K, O, S):
    """Handle events in time order until the queue is empty or nearly full (then return)."""
    IP, T, spb, fault = K[0], K[2], K[3], K[4]
    EI, ctr = Q[1], Q[6]
    st, res = S[1], S[0]
    ptime = O[2]
    n = IP[I_N]
    cap = EI.shape[0]
    while ctr[C_HN] > 0:
        if ctr[C_HWM] - ctr[C_NFREE] + 4 * n + 16 > cap:
            return  # the caller grows the queue and calls again
        if ctr[C_SEQ] >= MAX_SEQ:
            return  # the sequence no longer fits beside the slot in a heap key
        t, slot, handle = _next(Q)
        mk = np.int64(EI[slot, E_KIND])
        dst = np.int64(EI[slot, E_DST])
        aux = np.int64(EI[slot, E_AUX])
        if not handle and mk != M_TIMER:  # an arrival
            if dst < n and fault[dst] == SILENT:
                _free_slot(Q, slot)
                continue  # dropped: a silent node ignores everything
            r = _row(mk, aux)
            done = _fmax(t, res[dst, 1]) + T[r, 0] * spb[dst, 1]
            res[dst, 1] = done
            c = _fmax(done, res[dst, 2]) + T[r, 1]
            res[dst, 2] = c
            _to_fifo(Q, slot, c, dst)
            continue
        src = np.int64(EI[slot, E_SRC])
        w = np.int64(EI[slot, E_VIEW])
        d = np.int64(EI[slot, E_DIG])
        _free_slot(Q, slot)
        i = dst
        if mk == M_TIMER:
            if aux == st[i, S_TVER] and not st[i, S_DONE]:
                _send_vc(Q, K, O, S, i, w + 1, t)
            continue
        ptime[mk] = t
        if mk == M_SUBMIT:
            st[i, S_NUPD] += 1
            if st[i, S_NUPD] == IP[I_U]:
                _try_propose(Q, K, O, S, i, t)
                _try_accept(Q, K, O, S, i, t)
        elif mk <= M_COMMIT or mk == M_VIEWCHANGE or mk == M_NEWVIEW:
            _on_pbft(Q, K, O, S, i, mk, src, w, d, aux, t)
        else:
            _on_other(Q, K, O, S, i, mk, src, d, aux, t)


# ----------------------------------------------------------------------------- the kernel
@njit(cache=True)
def _aligned_heap(rows):
    """An int64 (rows + 8, 2) array and the base row that puts children on 64-byte lines."""
    H = np.empty((rows + 8, 2), np.int64)
    o = ((64 - H.ctypes.data % 64) % 64) // 16
    return H, o + 3


@njit(cache=True)
def _make_queue(cap):
    B0, gb = _aligned_heap(cap)
    ctr = np.zeros(N_CTR, np.int64)
    ctr[C_GB] = gb
    fb = np.zeros(1, np.float64)
    return (
        np.empty(cap, np.int64),
        np.empty((cap, N_EV), np.int32),
        np.empty(cap, np.int64),
        np.empty(cap, np.int32),
        B0,
        np.empty(cap, np.int32),
        ctr,
        np.full(64, -1, np.int32),
        np.full(64, 0x7FFFFFFFFFFFFFFF, np.int64),
        fb,
        fb.view(np.int64),
    )


@njit(cache=True)
def _grow(Q):
    """Twice the slots; live records, keys, links, heap entries and the free stack copied over."""
    cap = Q[1].shape[0]
    ctr = Q[6]
    R = _make_queue(2 * cap)
    gn, gb, gb2 = ctr[C_GN], ctr[C_GB], R[6][C_GB]
    R[4][gb2 : gb2 + gn] = Q[4][gb : gb + gn]
    R[0][:cap] = Q[0]
    R[1][:cap] = Q[1]
    R[2][:cap] = Q[2]
    R[3][:cap] = Q[3]
    R[5][: ctr[C_NFREE]] = Q[5][: ctr[C_NFREE]]
    ctr[C_GB] = gb2
    return (R[0], R[1], R[2], R[3], R[4], R[5], ctr, Q[7], Q[8], Q[9], Q[10])


def queue_slots(n: int, U: int) -> int:
    """Initial queue slots: every message of two broadcast rounds in flight, plus timers."""
    return n * U + 2 * n * (n - 1) + 4 * n + 64


@njit(cache=True)
def _init_state(IP, fault):
    n, V = IP[I_N], IP[I_V]
    st = np.zeros((n, N_STATE), np.int64)
    for i in range(n):
        st[i, S_ACCD] = -1
        st[i, S_PREPD] = -1
        st[i, S_COMD] = -1
        st[i, S_PCV] = -1
        st[i, S_PCD] = -1
        st[i, S_ALTD] = -1
        st[i, S_NVD] = -1
        st[i, S_ACTIVE] = 1
        st[i, S_FAULT] = fault[i]
    res = np.zeros((n + 1 + IP[I_U], 3), np.float64)  # uplink free, downlink free, CPU free
    prep = np.zeros((n, V, 2), np.int32)  # prepares received per view and digest slot
    com = np.zeros((n, V, 2), np.int32)  # commits received per view and digest slot
    ppdig = np.full((n, V), -1, np.int32)
    vccnt = np.zeros((n, V), np.int32)
    sentvc = np.zeros((n, V), np.int8)
    bestpv = np.full((n, V), -1, np.int32)
    bestpd = np.full((n, V), -1, np.int32)
    return (res, st, prep, com, ppdig, vccnt, sentvc, bestpv, bestpd)


@njit(cache=True)
def run_block(IP, P, SPB, fault, cnt, byt, ptime, node_d, node_t, node_i, client):
    """Run one block's agreement; fill the output arrays; return the messages sent (-1: too many events).

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
    n, U = IP[I_N], IP[I_U]
    S = _init_state(IP, fault)
    st = S[1]
    K = (IP, P, _size_cost_table(IP, P), SPB, fault)
    for k in range(N_PHASES):
        cnt[k] = 0
        byt[k] = 0.0
        ptime[k] = np.nan
    for i in range(n):
        node_t[i] = np.nan
    repd = np.full(n, -1, np.int64)
    cl = np.array([-1.0, np.nan])
    O = (cnt, byt, ptime, node_t, repd, cl)
    Q = _make_queue(n * U + 2 * n * (n - 1) + 4 * n + 64)  # = queue_slots(n, U)

    # edge servers sign their update and send it to every node, primary first
    for e in range(U):
        src = n + 1 + e
        s = _sign(S, P, src, 0.0, 0.0)
        for j in range(n):
            _send(Q, K, O, S, src, j, M_SUBMIT, 0, 0, 0, s)
    if IP[I_PROTO] == PROTO_PBFT:
        for i in range(n):
            if fault[i] != SILENT:
                _arm_timer(Q, K, S, i, 0, 0.0)
    if U == 0 and fault[0] != SILENT:
        _try_propose(Q, K, O, S, 0, 0.0)

    while True:
        _event_loop(Q, K, O, S)
        if Q[6][C_HN] == 0:
            break
        if Q[6][C_SEQ] >= MAX_SEQ:
            return -1  # the wrapper raises: too many events for one run
        Q = _grow(Q)

    for i in range(n):
        node_d[i] = st[i, S_COMD]
        node_i[i, 0] = st[i, S_CONFLICT]
        node_i[i, 1] = st[i, S_MAXINST]
    client[0] = cl[0]
    client[1] = cl[1]
    return Q[6][C_MSGID]


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
    sent = run_block(IP, Ps[c], spb, faults[c, :n], cnt, byt, ptime, node_d, node_t, node_i, client)
    out_t[c] = client[1]
    out_msgs[c] = cnt.sum() if sent >= 0 else -1
    total = 0.0
    for k in range(N_PHASES):
        total += byt[k]
    out_bytes[c] = total
    out_committed[c] = client[0] >= 0
    mx = 0
    for k in range(n):
        if faults[c, k] == HONEST and node_i[k, 1] > mx:
            mx = node_i[k, 1]
    out_views[c] = mx
