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
float64 time bits (a non-negative double's IEEE bits order like the double as uint64),
with digits of ``RB = 6`` bits: with ``last`` the time of the last popped event, an
event whose time bits first differ from ``last``'s in digit ``l`` (bits ``6 l .. 6 l +
5``) sits in bucket ``(l, d)``, ``d`` its own digit there (larger than ``last``'s), and
buckets order as ``l << 6 | d`` (a mask of 11 words marks the non-empty ones, each keeps
its least time); events at time ``last`` sit in a small 4-ary heap of keys ``sequence
<< 1 | handle``, which gives the exact tie-break. When that heap is empty, the first
non-empty bucket is taken: a lone entry is the next event as it stands, otherwise the
bucket's least time becomes ``last`` and its entries move to lower buckets or to the
heap. This is valid because no event is scheduled before the current time. A bucket is
a list of chunks of 32 contiguous 16-byte entries (time bits, key << 31 | slot), its
first chunk its own. With one-bit digits an event was filed 6.3 times at n = 100 and
8.7 at n = 1,000; with 6-bit digits 2.6 and 3.6, and 80 % of the buckets taken hold a
lone entry (``docs/consensus.md``, "which queue wins").

No-op handle events are not queued. Node state within a view only moves forward
(prepared and committed stay set until a node enters a higher view, views only grow,
older-view messages are ignored, the client's acceptance and a HotStuff leader's phase
never go back), so a message that is a no-op when it arrives is one when it would be
handled: a prepare (commit) of a view the node has left or in which it has already
prepared (committed), a reply after the client accepted, a HotStuff vote of a phase
that is over. Such a message still takes the receiver's downlink and CPU, its handle
time still counts in the phase's last handle time (a max, recorded at arrival), and it
still consumes the sequence number its handle event would have had, so every other
event keeps its ``(time, sequence)`` key and the run is the same event for event.

Memory (``_api.kernel_bytes``): votes are counted, not stored. In this fault model
every sender sends each kind at most once per view to each receiver (honest and
equivocating nodes alike: a broadcast happens at most once per node, kind and view),
so a receiver needs, per view, only how many prepares and commits it got for each
digest; and in view ``v`` the only digests are the primary's proposal and the forged
``v + 1`` (a backup accepts only the pre-prepare the new-view certificate names, the
proposal of view ``v`` is 0 or a digest prepared in an earlier view, so ``<= v``), two
counters per kind. Per view and node: 2 x 2 int32 counters, the pre-prepare digest, the
view-change count, the best certificate (view, digest) and a sent flag, 36 bytes in
``W[v, i]`` (one view's rows are contiguous, set when the view is first used). The queue holds at most ``n U + 2 n (n -
1) + 4 n + 64`` events before it grows (every message of two broadcast rounds in
flight), about 56 bytes each (``queue_bytes``: a 32-byte record, a 16-byte bucket entry,
an 8-byte tie-heap key, plus 733 KB of bucket chunks). Total ``(36 n + 8) V + queue_bytes(slots)
+ 232 n + 80 (n + 1 + U) + 8 Z_NODE + 2048`` bytes, plus ``8 nlat`` for a latency table
(``8 Z_NODE``: 17.5 KB of counters and bucket heads; V views: f + 2 for PBFT by default, 1
otherwise); the queue's pages are touched only as used. The state is four flat arrays (``Z``, ``W``, ``F``, ``E`` below,
offsets named by the constants), so a helper call passes four array structs (numba
passes each by value, about 8 words) where tuples of 31 arrays were passed before.

Latency draws on a second thread: a message's latency depends on the run's seed and the
message number alone, so another thread (``_api``'s latency thread, calling
``draw_latencies`` without the GIL) can draw the first ``nlat`` of them (``uniform01`` and
``pow``, about a sixth of the serial kernel's time at n = 100) into a table at the end of
F while ``run_started`` runs the events on the calling thread. It publishes after each
block of 1,024 how many it has drawn (a release store; the event loop reads it with an
acquire load when a message number reaches the count it last saw). ``_send`` takes a
drawn value or draws the latency itself, so the event loop never waits, and the other
thread stops once the events are done. Both give the same bits: the run does not depend
on the thread's timing, the table's length or whether the thread runs at all. ``sweep``
runs configurations in parallel instead and uses ``run_block``.

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

# float parameters P[...] (also the first words of the float state F)
P_PROC, P_SIGN, P_VERIFY, P_HASH_PB, P_LAT_MEAN, P_LAT_SHAPE, P_TBASE, P_HEADER, P_UPD = range(9)
N_PARAMS = 9
# int parameters IP[...] (also the first words of the int state Z)
I_N, I_U, I_V, I_PROTO, I_DIGESTS, I_LAT, I_SEED, I_F, I_Q = range(9)
N_IPARAMS = 9

# node state words (NS per node in Z)
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
    S_REPD,
) = range(24)
NS = 24

# The kernel's whole state is four flat arrays, so a helper call passes four array
# structs (numba passes each array by value, about 8 words) instead of 31:
# Z (int64): IP, per-phase message counts, queue counters, the non-empty bucket mask, per
#   bucket its least time, tail chunk and tail fill, then NS words per node (S_REPD: the
#   node's reply the client holds);
RB = 6  # radix bits: a bucket is a (level, digit) pair of RB-bit digits of the time bits
NB = ((63 + RB - 1) // RB) << RB  # bucket ids level << RB | digit (digit 0 never used)
NMW = (NB + 63) // 64  # words of the non-empty bucket mask
Z_CNT, Z_CTR, Z_MW = 16, 32, 64
Z_BMIN = Z_MW + NMW
Z_BT = Z_BMIN + NB
Z_BC = Z_BT + NB
Z_NODE = Z_BC + NB
# F (float64): P, the (size, cost) table, per-phase last handle time and bytes, the
#   client (accepted digest, time), the Pareto scale and exponent, then FS words per entity
#   (nodes, client, edge servers);
F_T, F_PT, F_BY, F_CL, F_XM, F_STOP, F_DRAWN, F_ENT = 16, 40, 56, 72, 74, 76, 77, 80
FS = 8
R_UP, R_DOWN, R_CPU, R_SUP, R_SDOWN, R_NT = range(6)  # link / CPU free at, seconds per byte, commit time
# W (int32, (V, n, NW)): per view and node, prepares and commits per digest slot, the
#   pre-prepare digest, view changes received, best certificate (view, digest), sent flag;
W_PREP, W_COM, W_PPD, W_VCC, W_BPV, W_BPD, W_SVC = 0, 2, 4, 5, 6, 7, 8
NW = 9
# E (int64): the queue. Slots of QW words (32 bytes): kind | aux << 8, source | destination
#   << 32, view | digest << 32, free-list link; then the buckets' entries in chunks of CH
#   (time bits, KS << 31 | slot; 16 bytes each), the chunks' links, and the tie heap (keys).
Q_KA, Q_SD, Q_VD, Q_NX = range(4)
QW = 4
CH = 32
CW = 2 * CH
SLOT_MASK = (1 << 31) - 1
# queue counters Z[Z_CTR + ...]: events pending, next sequence, messages sent, free-slot
# head, entries of the heap at time ``last``, slots ever used, that heap's first word in
# E, ``last`` (time bits), slots, handle events skipped as no-ops, free-chunk head, chunks
# ever used, first word of the chunk links, first word of the chunks (the non-empty bucket
# mask has its own words, Z_MW)
C_HN, C_SEQ, C_MSGID, C_FREE, C_GN, C_HWM, C_GB, C_LAST, C_CAP, C_SKIP = range(10)
C_FCH, C_CHWM, C_CN, C_PB, C_LAT, C_NLAT, C_SEEN = range(10, 17)
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


@njit(cache=True, _nrt=False, inline="always")
def _nb(i):
    """First word of node ``i``'s state in Z."""
    return Z_NODE + i * NS


@njit(cache=True, _nrt=False, inline="always")
def _eb(e):
    """First word of entity ``e``'s clocks in F."""
    return F_ENT + e * FS


# ----------------------------------------------------------------------------- radix heap
# Every pending event (arrival, handle, timer) is one slot: its key is (time bits, KS) with
# KS = sequence << 1 | handle flag. Slots whose time bits differ from ``last`` (the time of
# the last popped event) first in RB-bit digit l sit in bucket (l, their digit there);
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


@intrinsic
def _bits(typingctx, x):
    """The IEEE bits of a float64 as int64 (a bit cast)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _float(typingctx, x):
    """The float64 whose IEEE bits are the int64 ``x``."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _load_acquire(typingctx, arr, i):
    """``arr[i]`` (float64, no wraparound) as an atomic load with acquire order: a word the
    latency thread writes (a plain ``mov`` on x86-64)."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(a.data, [args[1]]), "acquire", 8)

    return types.float64(arr, types.int64), codegen


@intrinsic
def _store_release(typingctx, arr, i, v):
    """``arr[i] = v`` (float64, no wraparound) as an atomic store with release order: what
    was written before it is seen by a thread whose acquire load sees ``v``."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        builder.store_atomic(args[2], builder.gep(a.data, [args[1]]), "release", 8)
        return context.get_dummy_value()

    return types.none(arr, types.int64, types.float64), codegen


@njit(cache=True, _nrt=False)
def _sift_up(E, hb, i, key):
    """Insert ``key`` into the tie heap at word ``hb`` holding ``i`` entries (a hole moves up).

    Keys are unique (a sequence number each, in the high bits), so they alone give the order.
    """
    while i > 0:
        p = (i - 1) >> 2
        pk = E[hb + p]
        if key < pk:
            E[hb + i] = pk
            i = p
        else:
            break
    E[hb + i] = key


@njit(cache=True, _nrt=False)
def _sift_pop(E, hb, n):
    """Remove the root of a tie heap that now holds ``n`` entries; return the root's key."""
    key0 = E[hb]
    if n == 0:
        return key0
    key = E[hb + n]
    i = 0
    while True:
        a = 4 * i + 1
        if a >= n:
            break
        last = a + 4
        if last > n:
            last = n
        ka = E[hb + a]
        for b in range(a + 1, last):
            kb = E[hb + b]
            if kb < ka:
                a = b
                ka = kb
        E[hb + i] = ka
        i = a
    _sift_up(E, hb, i, key)
    return key0


@njit(cache=True, _nrt=False, inline="always")
def _new_slot(Z, E):
    s = Z[Z_CTR + C_FREE]
    if s >= 0:
        Z[Z_CTR + C_FREE] = E[s * QW + Q_NX]
        return s
    s = Z[Z_CTR + C_HWM]  # pages never used are never touched
    Z[Z_CTR + C_HWM] = s + 1
    return s


@njit(cache=True, _nrt=False, inline="always")
def _free_slot(Z, E, s):
    E[s * QW + Q_NX] = Z[Z_CTR + C_FREE]
    Z[Z_CTR + C_FREE] = s


@njit(cache=True, _nrt=False, inline="always")
def _new_chunk(Z, E):
    c = Z[Z_CTR + C_FCH]
    if c >= 0:
        Z[Z_CTR + C_FCH] = E[Z[Z_CTR + C_CN] + c]
    else:
        c = Z[Z_CTR + C_CHWM]
        Z[Z_CTR + C_CHWM] = c + 1
    E[Z[Z_CTR + C_CN] + c] = -1
    return c


@njit(cache=True, _nrt=False, inline="always")
def _bucket_add(Z, E, pb, b, tb, key):
    """Append (tb, key) to bucket ``b`` (chunks from word ``pb`` of E) and lower its least time.

    Indices are cast to uint64 here and in the spill loop: they are never negative, and
    numba emits no negative-index wraparound for unsigned indices.
    """
    c = Z[np.uint64(Z_BT + b)]
    k = Z[np.uint64(Z_BC + b)]
    if k == CH:  # the tail chunk is full: link a new one
        nc = _new_chunk(Z, E)
        E[np.uint64(Z[Z_CTR + C_CN] + c)] = nc
        Z[np.uint64(Z_BT + b)] = nc
        c = nc
        k = 0
    o = np.uint64(pb + c * CW + 2 * k)
    E[o] = tb
    E[o + np.uint64(1)] = key
    Z[np.uint64(Z_BC + b)] = k + 1
    if tb < Z[np.uint64(Z_BMIN + b)]:
        Z[np.uint64(Z_BMIN + b)] = tb


@njit(cache=True, _nrt=False, inline="always")
def _heap_add(Z, E, key):
    g = Z[Z_CTR + C_GN]
    _sift_up(E, Z[Z_CTR + C_GB], g, key)
    Z[Z_CTR + C_GN] = g + 1


@njit(cache=True, _nrt=False, inline="always")
def _bucket(tb, x):
    """Bucket of time bits ``tb`` with ``x = tb ^ last`` (non-zero): the level of the first
    differing RB-bit digit and ``tb``'s digit there (larger than ``last``'s)."""
    lv = (63 - _clz(x)) // RB
    return (lv << RB) | ((tb >> (lv * RB)) & ((1 << RB) - 1))


@njit(cache=True, _nrt=False, inline="always")
def _file(Z, E, pb, last, tb, key):
    """File an entry (time bits ``tb``, ``key`` = KS << 31 | slot) relative to ``last``
    (chunks from word ``pb`` of E): into the tie heap at ``last``, else into its bucket."""
    x = tb ^ last
    if x == 0:
        _heap_add(Z, E, key)
        return
    b = _bucket(tb, x)
    _bucket_add(Z, E, pb, b, tb, key)
    Z[Z_MW + (b >> 6)] |= np.int64(1) << (b & 63)


@njit(cache=True, _nrt=False, inline="always")
def _rh_put(Z, E, tb, key):
    """:func:`_file` relative to the current ``last``."""
    _file(Z, E, Z[Z_CTR + C_PB], Z[Z_CTR + C_LAST], tb, key)


@njit(cache=True, _nrt=False, inline="always")
def _push(Z, E, t, slot, handle):
    s = Z[Z_CTR + C_SEQ]
    Z[Z_CTR + C_SEQ] = s + 1
    Z[Z_CTR + C_HN] += 1
    _rh_put(Z, E, _bits(t), (((s << 1) | handle) << 31) | slot)


@njit(cache=True, _nrt=False, inline="always")
def _schedule(Z, E, t, mkind, src, dst, view, dig, aux):
    """A new arrival or timer at time ``t``: one slot, one queue entry."""
    slot = _new_slot(Z, E)
    o = slot * QW
    E[o + Q_KA] = mkind | (np.int64(aux) << 8)
    E[o + Q_SD] = src | (np.int64(dst) << 32)
    E[o + Q_VD] = view | (np.int64(dig) << 32)
    _push(Z, E, t, slot, 0)


@njit(cache=True, _nrt=False)
def _spill(Z, E, b):
    """Empty bucket ``b``: its least time becomes ``last``, its entries move to lower buckets
    or to the tie heap (chunk by chunk, in order; each chunk is freed once read)."""
    Z[Z_MW + (b >> 6)] &= ~(np.int64(1) << (b & 63))
    Z[Z_CTR + C_LAST] = Z[Z_BMIN + b]
    Z[Z_BMIN + b] = np.int64(0x7FFFFFFFFFFFFFFF)
    c = b  # a bucket's first chunk is its own (chunk b), never freed
    tail = Z[Z_BT + b]
    m = Z[Z_BC + b]
    Z[Z_BT + b] = b
    Z[Z_BC + b] = 0
    cn, pb, last = Z[Z_CTR + C_CN], Z[Z_CTR + C_PB], Z[Z_CTR + C_LAST]
    while c >= 0:  # entries go to lower buckets only: chunk b can be refilled after it is read
        o = pb + c * CW
        k = CH if c != tail else m
        for j in range(k):
            _file(Z, E, pb, last, E[np.uint64(o + 2 * j)], E[np.uint64(o + 2 * j + 1)])
        nx = E[cn + c]
        E[cn + c] = -1
        if c >= NB:
            E[cn + c] = Z[Z_CTR + C_FCH]
            Z[Z_CTR + C_FCH] = c
        c = nx


@njit(cache=True, _nrt=False, inline="always")
def _next(Z, E):
    """Pop the earliest pending event: (time, slot, is a handle event)."""
    if Z[Z_CTR + C_GN] == 0:
        w = Z_MW
        while Z[w] == 0:
            w += 1
        b = ((w - Z_MW) << 6) + _ctz(Z[w])
        if Z[Z_BT + b] == b and Z[Z_BC + b] == 1:  # one entry: it is the next event
            Z[w] &= ~(np.int64(1) << (b & 63))
            tb = Z[Z_BMIN + b]
            Z[Z_CTR + C_LAST] = tb
            Z[Z_BMIN + b] = np.int64(0x7FFFFFFFFFFFFFFF)
            Z[Z_BC + b] = 0
            key = E[Z[Z_CTR + C_PB] + b * CW + 1]
            Z[Z_CTR + C_HN] -= 1
            return _float(tb), key & SLOT_MASK, ((key >> 31) & 1) == 1
        _spill(Z, E, b)
    g = Z[Z_CTR + C_GN] - 1
    Z[Z_CTR + C_GN] = g
    key = _sift_pop(E, Z[Z_CTR + C_GB], g)
    Z[Z_CTR + C_HN] -= 1
    return _float(Z[Z_CTR + C_LAST]), key & SLOT_MASK, ((key >> 31) & 1) == 1


# ----------------------------------------------------------------------------- sizes and costs
@njit(cache=True, _nrt=False)
def _payload(IP, P):
    if IP[I_DIGESTS]:
        return IP[I_U] * 32.0
    return IP[I_U] * P[P_UPD]


@njit(cache=True, _nrt=False)
def _size_cost_table(IP, P, F):
    """``F[F_T + 2 k] = size`` (bytes), ``F[F_T + 2 k + 1] = receiver's cost`` (s) per kind k;
    row 9: a view change with a certificate."""
    H = P[P_HEADER]
    vote = P[P_PROC] + P[P_VERIFY]
    for k in range(10):
        F[F_T + 2 * k] = H
        F[F_T + 2 * k + 1] = vote
    F[F_T + 2 * M_SUBMIT] = H + P[P_UPD]
    F[F_T + 2 * M_SUBMIT + 1] = P[P_PROC] + P[P_VERIFY] + P[P_HASH_PB] * P[P_UPD]
    payload = _payload(IP, P)
    nver = 1.0 if IP[I_DIGESTS] else 1.0 + IP[I_U]
    F[F_T + 2 * M_PREPREPARE] = H + payload
    F[F_T + 2 * M_PREPREPARE + 1] = P[P_PROC] + P[P_VERIFY] * nver + P[P_HASH_PB] * payload
    q = IP[I_Q]
    F[F_T + 2 * M_VIEWCHANGE] = H * (1 + 0)
    F[F_T + 2 * M_VIEWCHANGE + 1] = P[P_PROC] + P[P_VERIFY] * (1 + 0)
    F[F_T + 18] = H * (1 + q)
    F[F_T + 19] = P[P_PROC] + P[P_VERIFY] * (1 + q)
    F[F_T + 2 * M_NEWVIEW] = H * (q + 1)
    F[F_T + 2 * M_NEWVIEW + 1] = P[P_PROC] + P[P_VERIFY] * (q + 1)
    F[F_T + 2 * M_QC] = H + 64.0 * q
    F[F_T + 2 * M_QC + 1] = P[P_PROC] + P[P_VERIFY] * (1 + q)


@njit(cache=True, _nrt=False, inline="always")
def _row(mkind, aux):
    return 9 if (mkind == M_VIEWCHANGE and aux >= 0) else mkind


# ----------------------------------------------------------------------------- sending
@njit(cache=True, _nrt=False, inline="always")
def _latency(Z, F, k):
    """Latency of message ``k`` (``link_latency`` of ``uniform01(seed, k)``; the Pareto
    scale and exponent computed once per run, by the same operations: the same bits)."""
    u = uniform01(Z[I_SEED], k)
    if Z[I_LAT] == LAT_PARETO:
        return F[F_XM] * math.pow(u, F[F_XM + 1])
    return link_latency(Z[I_LAT], F[P_LAT_MEAN], F[P_LAT_SHAPE], u)


@njit(cache=True, _nrt=False)
def _draw_latencies(Z, F):
    """Fill the latency table (``C_NLAT`` words of F from ``C_LAT``) in message order, in
    blocks of 1,024, each published by ``F[F_DRAWN]`` (the count drawn), until it is full
    or the event loop is done (``F[F_STOP]`` set)."""
    o, m = Z[Z_CTR + C_LAT], Z[Z_CTR + C_NLAT]
    for k0 in range(0, m, 1024):
        if _load_acquire(F, F_STOP) != 0.0:
            return
        k1 = min(k0 + 1024, m)
        for k in range(k0, k1):
            F[o + k] = _latency(Z, F, k)
        _store_release(F, F_DRAWN, float(k1))


@njit(cache=True, _nrt=False, inline="always")
def _message_latency(Z, F, k):
    """Message ``k``'s latency: from the table if the other thread has drawn it (the count
    it published is read again only when ``k`` reaches the count last seen), else drawn."""
    if k >= Z[Z_CTR + C_SEEN] and k < Z[Z_CTR + C_NLAT]:
        Z[Z_CTR + C_SEEN] = np.int64(_load_acquire(F, F_DRAWN))
    if k < Z[Z_CTR + C_SEEN]:
        return F[Z[Z_CTR + C_LAT] + k]
    return _latency(Z, F, k)


@njit(cache=True, _nrt=False, inline="always")
def _send(Z, F, E, src, dst, mkind, view, dig, aux, t0):
    size = F[F_T + 2 * _row(mkind, aux)]
    e = _eb(src)
    done = _fmax(t0, F[e + R_UP]) + size * F[e + R_SUP]
    F[e + R_UP] = done
    k = Z[Z_CTR + C_MSGID]
    Z[Z_CTR + C_MSGID] = k + 1
    Z[Z_CNT + mkind] += 1
    F[F_BY + mkind] += size
    _schedule(Z, E, done + _message_latency(Z, F, k), mkind, src, dst, view, dig, aux)


@njit(cache=True, _nrt=False, inline="always")
def _sign(F, i, now, pre):
    e = _eb(i) + R_CPU
    s = _fmax(now, F[e]) + pre + F[P_SIGN]
    F[e] = s
    return s


@njit(cache=True, _nrt=False)
def _bcast(Z, F, E, i, mkind, view, dig, forged, equiv, aux, now, pre):
    """Sign once, then send to every other node in the order i+1, i+2, ... (mod n)."""
    n = Z[I_N]
    s = _sign(F, i, now, pre)
    for k in range(1, n):
        j = i + k
        if j >= n:
            j -= n
        d = dig
        if equiv and j % 2 == 1:
            d = forged
        _send(Z, F, E, i, j, mkind, view, d, aux, s)


@njit(cache=True, _nrt=False)
def _unicast(Z, F, E, i, j, mkind, view, dig, aux, now):
    _send(Z, F, E, i, j, mkind, view, dig, aux, _sign(F, i, now, 0.0))


@njit(cache=True, _nrt=False)
def _arm_timer(Z, F, E, i, v, now):
    b = _nb(i)
    Z[b + S_TVER] += 1
    _schedule(Z, E, now + F[P_TBASE] * float(1 << v), M_TIMER, i, i, v, -1, Z[b + S_TVER])


# ----------------------------------------------------------------------------- protocol steps
@njit(cache=True, _nrt=False, inline="always")
def _primary(Z, v):
    return v % Z[I_N]


@njit(cache=True, _nrt=False, inline="always")
def _dslot(v, d):
    """Counter slot of digest ``d`` in view ``v``: 0 for the forged ``v + 1``, 1 otherwise."""
    return 0 if d == v + 1 else 1


@njit(cache=True, _nrt=False, inline="always")
def _open_view(Z, W, w):
    """Set view ``w``'s rows of W (counters 0, digests and certificates -1) on its first use,
    so a run touches only the views it reaches (f + 2 are reserved). View 0 is opened at
    the start; a later view by the first node that asks for it (``_send_vc``), before any
    message of that view exists: every other message of view w is sent by a node that
    asked for w or received one of its messages."""
    o = _nb(Z[I_N]) + w
    if Z[o]:
        return
    Z[o] = 1
    for i in range(Z[I_N]):
        for k in range(NW):
            W[w, i, k] = 0
        W[w, i, W_PPD] = -1
        W[w, i, W_BPV] = -1
        W[w, i, W_BPD] = -1


@njit(cache=True, _nrt=False)
def _record_commit(Z, F, i, d, now):
    b = _nb(i)
    if Z[b + S_COMD] < 0:
        Z[b + S_COMD] = d
        F[_eb(i) + R_NT] = now
    elif Z[b + S_COMD] != d:
        Z[b + S_CONFLICT] = 1


@njit(cache=True, _nrt=False)
def _reset_view(Z, i, w):
    b = _nb(i)
    Z[b + S_VIEW] = w
    Z[b + S_ACTIVE] = 0
    Z[b + S_PPACC] = 0
    Z[b + S_ACCD] = -1
    Z[b + S_PREPARED] = 0
    Z[b + S_PREPD] = -1
    Z[b + S_COMINV] = 0
    Z[b + S_PROPOSED] = 0
    Z[b + S_NVSENT] = 0
    Z[b + S_NVD] = -1


@njit(cache=True, _nrt=False)
def _client_reply(Z, F, s, d, now):
    if Z[_nb(s) + S_REPD] >= 0:
        return  # a node that committed again in a later view counts once
    Z[_nb(s) + S_REPD] = d
    if F[F_CL] >= 0:
        return
    c = 0
    for k in range(Z[I_N]):
        if Z[_nb(k) + S_REPD] == d:
            c += 1
    if c >= Z[I_F] + 1:
        F[F_CL] = d
        F[F_CL + 1] = now


@njit(cache=True, _nrt=False)
def _check_committed(Z, W, F, E, i, now):
    b = _nb(i)
    if Z[b + S_COMINV] or not Z[b + S_PREPARED]:
        return
    v = Z[b + S_VIEW]
    d = Z[b + S_PREPD]
    if W[v, i, W_COM + _dslot(v, d)] + 1 < Z[I_Q]:  # + 1: its own commit
        return
    Z[b + S_COMINV] = 1
    _record_commit(Z, F, i, d, now)
    _unicast(Z, F, E, i, Z[I_N], M_REPLY, v, d, 0, now)
    Z[b + S_DONE] = 1
    Z[b + S_TVER] += 1  # cancels the pending view-change timer


@njit(cache=True, _nrt=False)
def _check_prepared(Z, W, F, E, i, now):
    b = _nb(i)
    if Z[b + S_PREPARED] or not Z[b + S_PPACC]:
        return
    v = Z[b + S_VIEW]
    d = Z[b + S_ACCD]
    own = 0 if _primary(Z, v) == i else 1  # a backup's own prepare counts, the primary sends none
    if W[v, i, W_PREP + _dslot(v, d)] + own < Z[I_Q] - 1:
        return
    Z[b + S_PREPARED] = 1
    Z[b + S_PREPD] = d
    Z[b + S_PCV] = v
    Z[b + S_PCD] = d
    _bcast(Z, F, E, i, M_COMMIT, v, d, d, False, 0, now, 0.0)
    _check_committed(Z, W, F, E, i, now)


@njit(cache=True, _nrt=False)
def _try_propose(Z, W, F, E, i, now):
    b = _nb(i)
    n = Z[I_N]
    v = Z[b + S_VIEW]
    if _primary(Z, v) != i or not Z[b + S_ACTIVE] or Z[b + S_PROPOSED] or Z[b + S_NUPD] < Z[I_U]:
        return
    Z[b + S_PROPOSED] = 1
    d = 0 if v == 0 else Z[b + S_NVD]
    forged = v + 1
    equiv = Z[b + S_FAULT] == EQUIVOCATE
    pre = F[P_HASH_PB] * _payload(Z, F)
    _bcast(Z, F, E, i, M_PREPREPARE, v, d, forged, equiv, 0, now, pre)
    Z[b + S_PPACC] = 1
    Z[b + S_ACCD] = d
    proto = Z[I_PROTO]
    if proto == PROTO_PBFT:
        if equiv:
            _bcast(Z, F, E, i, M_COMMIT, v, d, forged, True, 0, now, 0.0)
            _unicast(Z, F, E, i, n, M_REPLY, v, forged, 0, now)
            return
        _check_prepared(Z, W, F, E, i, now)
    elif proto == PROTO_HOTSTUFF:
        Z[b + S_PHASE] = 1
        Z[b + S_QCNT] = 1
        if equiv:
            Z[b + S_ALTD] = forged
            Z[b + S_QCNT2] = 1
        else:
            Z[b + S_ALTD] = -1
            Z[b + S_QCNT2] = 0


@njit(cache=True, _nrt=False)
def _try_accept(Z, W, F, E, i, now):
    b = _nb(i)
    v = Z[b + S_VIEW]
    if not Z[b + S_ACTIVE] or Z[b + S_PPACC] or W[v, i, W_PPD] < 0 or _primary(Z, v) == i:
        return
    if Z[I_DIGESTS] and Z[b + S_NUPD] < Z[I_U]:
        return
    if v > 0 and W[v, i, W_PPD] != Z[b + S_NVD]:
        return  # a pre-prepare that contradicts the new-view certificate is refused
    n = Z[I_N]
    d = np.int64(W[v, i, W_PPD])
    Z[b + S_PPACC] = 1
    Z[b + S_ACCD] = d
    equiv = Z[b + S_FAULT] == EQUIVOCATE
    forged = v + 1
    proto = Z[I_PROTO]
    if proto == PROTO_PBFT:
        if equiv:
            _bcast(Z, F, E, i, M_PREPARE, v, d, forged, True, 0, now, 0.0)
            _bcast(Z, F, E, i, M_COMMIT, v, d, forged, True, 0, now, 0.0)
            _unicast(Z, F, E, i, n, M_REPLY, v, forged, 0, now)
            return
        _bcast(Z, F, E, i, M_PREPARE, v, d, d, False, 0, now, 0.0)
        _check_prepared(Z, W, F, E, i, now)
    elif proto == PROTO_PAPER:
        if equiv:
            d = forged
        else:
            _record_commit(Z, F, i, d, now)
        _unicast(Z, F, E, i, _primary(Z, v), M_REPLY, v, d, 0, now)
    else:  # hotstuff: vote for the proposal (phase 1)
        if equiv:
            d = forged
        _unicast(Z, F, E, i, _primary(Z, v), M_VOTE, v, d, 1, now)


@njit(cache=True, _nrt=False)
def _check_new_view(Z, W, F, E, i, w, now):
    b = _nb(i)
    if Z[b + S_NVSENT] or Z[b + S_VIEW] != w or W[w, i, W_VCC] < Z[I_Q] - 1:
        return
    Z[b + S_NVSENT] = 1
    Z[b + S_ACTIVE] = 1
    if w > Z[b + S_MAXINST]:
        Z[b + S_MAXINST] = w
    # the new view re-proposes the digest of the highest prepared certificate among the
    # view changes (own included); the new-view message carries the signed view changes,
    # so every backup can recompute it and a primary cannot lie about it
    d = np.int64(0)
    if W[w, i, W_BPV] >= 0:
        d = np.int64(W[w, i, W_BPD])
    if Z[b + S_PCV] > W[w, i, W_BPV]:
        d = Z[b + S_PCD]
    Z[b + S_NVD] = d
    _bcast(Z, F, E, i, M_NEWVIEW, w, d, d, False, 0, now, 0.0)
    _try_propose(Z, W, F, E, i, now)


@njit(cache=True, _nrt=False)
def _send_vc(Z, W, F, E, i, w, now):
    b = _nb(i)
    if w >= Z[I_V] or w <= Z[b + S_VIEW]:
        return
    _open_view(Z, W, w)
    if W[w, i, W_SVC]:
        return
    W[w, i, W_SVC] = 1
    _reset_view(Z, i, w)
    pcd = Z[b + S_PCD]
    _bcast(Z, F, E, i, M_VIEWCHANGE, w, pcd, pcd, False, Z[b + S_PCV], now, 0.0)
    if not Z[b + S_DONE]:
        _arm_timer(Z, F, E, i, w, now)
    if _primary(Z, w) == i:
        _check_new_view(Z, W, F, E, i, w, now)


# ----------------------------------------------------------------------------- handlers
@njit(cache=True, _nrt=False, inline="always")
def _on_pbft(Z, W, F, E, i, mk, src, w, d, aux, t):
    b = _nb(i)
    if mk == M_PREPREPARE:
        if src != _primary(Z, w) or w < Z[b + S_VIEW]:
            return
        if W[w, i, W_PPD] < 0:
            W[w, i, W_PPD] = d
        if w == Z[b + S_VIEW]:
            _try_accept(Z, W, F, E, i, t)
    elif mk == M_PREPARE:
        if w < Z[b + S_VIEW] or src == _primary(Z, w):
            return
        W[w, i, W_PREP + _dslot(w, d)] += 1
        if w == Z[b + S_VIEW] and Z[b + S_FAULT] == HONEST:
            _check_prepared(Z, W, F, E, i, t)
    elif mk == M_COMMIT:
        if w < Z[b + S_VIEW]:
            return
        W[w, i, W_COM + _dslot(w, d)] += 1
        if w == Z[b + S_VIEW]:
            _check_committed(Z, W, F, E, i, t)
    elif mk == M_VIEWCHANGE:
        if w >= Z[I_V]:
            return
        W[w, i, W_VCC] += 1
        if aux > W[w, i, W_BPV]:  # the first of the highest certificates wins
            W[w, i, W_BPV] = aux
            W[w, i, W_BPD] = d
        if W[w, i, W_VCC] >= Z[I_F] + 1 and w > Z[b + S_VIEW]:
            _send_vc(Z, W, F, E, i, w, t)
        if _primary(Z, w) == i and Z[b + S_VIEW] == w and not Z[b + S_ACTIVE]:
            _check_new_view(Z, W, F, E, i, w, t)
    elif mk == M_NEWVIEW:
        if src != _primary(Z, w) or w < Z[b + S_VIEW] or (w == Z[b + S_VIEW] and Z[b + S_ACTIVE]):
            return
        if w > Z[b + S_VIEW]:
            _reset_view(Z, i, w)
        Z[b + S_ACTIVE] = 1
        Z[b + S_NVD] = d
        if w > Z[b + S_MAXINST]:
            Z[b + S_MAXINST] = w
        if not Z[b + S_DONE]:
            _arm_timer(Z, F, E, i, w, t)
        _try_accept(Z, W, F, E, i, t)


@njit(cache=True, _nrt=False)
def _on_vote(Z, F, E, i, d, aux, t):
    """HotStuff leader: a quorum of one phase's votes on one digest forms its certificate."""
    b = _nb(i)
    ph = Z[b + S_PHASE]
    if i != _primary(Z, 0) or aux != ph:
        return  # a vote of an earlier phase (its quorum was reached without it)
    if d == Z[b + S_ACCD]:
        Z[b + S_QCNT] += 1
    elif d == Z[b + S_ALTD]:
        Z[b + S_QCNT2] += 1
    qd = np.int64(-1)
    if Z[b + S_QCNT] >= Z[I_Q]:
        qd = Z[b + S_ACCD]
    elif Z[b + S_QCNT2] >= Z[I_Q]:
        qd = Z[b + S_ALTD]
    if qd < 0:
        return
    _bcast(Z, F, E, i, M_QC, 0, qd, qd, False, ph, t, 0.0)
    Z[b + S_PHASE] = ph + 1
    Z[b + S_ACCD] = qd
    Z[b + S_ALTD] = -1
    Z[b + S_QCNT] = 1
    Z[b + S_QCNT2] = 0
    if ph == 3:
        rd = qd
        if Z[b + S_FAULT] == HONEST:
            _record_commit(Z, F, i, qd, t)
        else:
            rd = 1
        _unicast(Z, F, E, i, Z[I_N], M_REPLY, 0, rd, 0, t)


@njit(cache=True, _nrt=False)
def _on_other(Z, F, E, i, mk, src, d, aux, t):
    """Replies (to the client, or to the paper's leader), HotStuff votes and certificates."""
    n = Z[I_N]
    if mk == M_REPLY:
        b = _nb(i)
        if i == n:
            _client_reply(Z, F, src, d, t)
        elif d == Z[b + S_ACCD] and not Z[b + S_COMINV]:  # the paper's leader
            Z[b + S_QCNT] += 1
            if Z[b + S_QCNT] >= Z[I_F] + 1:
                Z[b + S_COMINV] = 1
                if Z[b + S_FAULT] == HONEST:
                    _record_commit(Z, F, i, d, t)
                F[F_CL] = d
                F[F_CL + 1] = t
    elif mk == M_VOTE:
        _on_vote(Z, F, E, i, d, aux, t)
    elif mk == M_QC:
        if src != _primary(Z, 0):
            return
        equiv = Z[_nb(i) + S_FAULT] == EQUIVOCATE
        if aux < 3:
            vd = 1 if equiv else d
            _unicast(Z, F, E, i, src, M_VOTE, 0, vd, aux + 1, t)
        else:
            rd = d
            if equiv:
                rd = 1
            else:
                _record_commit(Z, F, i, d, t)
            _unicast(Z, F, E, i, n, M_REPLY, 0, rd, 0, t)


# ----------------------------------------------------------------------------- the event loop
@njit(cache=True, _nrt=False, inline="always")
def _later_max(F, k, t):
    """``F[k] = max(F[k], t)`` with NaN (nothing yet) below every time."""
    if not F[k] >= t:
        F[k] = t


@njit(cache=True, _nrt=False)
def _is_noop(Z, F, mk, dst, w, aux):
    """Whether handling this message, arrived now, provably changes nothing that is ever read.

    Node state within a view only moves forward (``prepared`` and ``committed`` stay set
    until the node enters a higher view; views only grow; a message of an older view is
    ignored; the client's acceptance and a HotStuff leader's phase never go back), so a
    message that is a no-op at its arrival is one at its later handle time too:
    a prepare (commit) for a view the node has left or in which it has already prepared
    (committed), a reply after the client accepted, a HotStuff vote of a phase that is over.
    """
    n = Z[I_N]
    if dst >= n:
        return mk == M_REPLY and F[F_CL] >= 0
    b = _nb(dst)
    if mk == M_PREPARE:
        v = Z[b + S_VIEW]
        return w < v or (w == v and Z[b + S_PREPARED] != 0)
    if mk == M_COMMIT:
        v = Z[b + S_VIEW]
        return w < v or (w == v and Z[b + S_COMINV] != 0)
    if mk == M_VOTE:
        return aux < Z[b + S_PHASE]
    return False


@njit(cache=True, _nrt=False, inline="always")
def _arrive(Z, F, E, t, slot, mk, dst, aux):
    """An arrival: take the receiver's downlink and CPU, then queue its handle event
    (or, for a provable no-op, only record its handle time and keep its sequence number)."""
    n = Z[I_N]
    if dst < n and Z[_nb(dst) + S_FAULT] == SILENT:
        _free_slot(Z, E, slot)
        return  # dropped: a silent node ignores everything
    r = F_T + 2 * _row(mk, aux)
    e = _eb(dst)
    done = _fmax(t, F[e + R_DOWN]) + F[r] * F[e + R_SDOWN]
    F[e + R_DOWN] = done
    c = _fmax(done, F[e + R_CPU]) + F[r + 1]
    F[e + R_CPU] = c
    if _is_noop(Z, F, mk, dst, E[slot * QW + Q_VD] & 0xFFFFFFFF, aux):
        # the handle event would have taken this sequence number: keeping it leaves every
        # other event's (time, sequence) key, hence the order, exactly as without the skip
        Z[Z_CTR + C_SEQ] += 1
        Z[Z_CTR + C_SKIP] += 1
        _later_max(F, F_PT + mk, c)
        _free_slot(Z, E, slot)
        return
    _push(Z, E, c, slot, 1)


@njit(cache=True, _nrt=False)
def _event_loop(Z, W, F, E):
    """Handle events in time order until the queue is empty or nearly full (then return)."""
    n = Z[I_N]
    while Z[Z_CTR + C_HN] > 0:
        if Z[Z_CTR + C_HN] + 4 * n + 16 > Z[Z_CTR + C_CAP]:
            return  # the caller grows the queue and calls again
        if Z[Z_CTR + C_SEQ] >= MAX_SEQ:
            return  # the run is too long (the wrapper raises)
        t, slot, handle = _next(Z, E)
        o = slot * QW
        ka = E[o + Q_KA]
        mk = ka & 255
        aux = ka >> 8
        sd = E[o + Q_SD]
        i = sd >> 32
        if not handle and mk != M_TIMER:
            _arrive(Z, F, E, t, slot, mk, i, aux)
            continue
        src = sd & 0xFFFFFFFF
        vd = E[o + Q_VD]
        w = vd & 0xFFFFFFFF
        d = vd >> 32
        _free_slot(Z, E, slot)
        if mk == M_TIMER:
            b = _nb(i)
            if aux == Z[b + S_TVER] and not Z[b + S_DONE]:
                _send_vc(Z, W, F, E, i, w + 1, t)
            continue
        _later_max(F, F_PT + mk, t)  # skipped no-ops may have recorded a later time already
        if mk == M_SUBMIT:
            Z[_nb(i) + S_NUPD] += 1
            if Z[_nb(i) + S_NUPD] == Z[I_U]:
                _try_propose(Z, W, F, E, i, t)
                _try_accept(Z, W, F, E, i, t)
        elif mk <= M_COMMIT or mk == M_VIEWCHANGE or mk == M_NEWVIEW:
            _on_pbft(Z, W, F, E, i, mk, src, w, d, aux, t)
        else:
            _on_other(Z, F, E, i, mk, src, d, aux, t)


# ----------------------------------------------------------------------------- the kernel
@njit(cache=True)
def _layout(cap):
    """Word offsets in E for ``cap`` slots: (chunks, their pool's first word, links, tie heap, length)."""
    nch = cap // CH + 2 * NB + 2  # full chunks, the buckets' own and partial tails, one spilled
    pb = (QW * cap + 7) // 8 * 8  # chunks on 64-byte lines
    cn = pb + CW * nch
    gb = (cn + nch + 7) // 4 * 4 + 3  # = 3 (mod 4): a heap node's 4 children share a line
    return nch, pb, cn, gb, gb + cap + 8


def queue_bytes(cap: int) -> int:
    """Bytes of the queue array for ``cap`` slots (56 per slot plus 520 per chunk of 32), in
    Python integers (the compiled layout's int64 would wrap for a size that cannot fit)."""
    return 8 * (_layout.py_func(int(cap))[4] + 8)


@njit(cache=True)
def _make_queue(Z, cap):
    """A 64-byte aligned int64 array for ``cap`` slots; its offsets go to the counters."""
    _, pb, cn, gb, size = _layout(cap)
    buf = np.empty(size + 8, np.int64)
    o = ((64 - buf.ctypes.data % 64) % 64) // 8
    Z[Z_CTR + C_CAP] = cap
    Z[Z_CTR + C_PB] = pb
    Z[Z_CTR + C_CN] = cn
    Z[Z_CTR + C_GB] = gb
    E = buf[o:]
    E[cn : cn + NB] = -1  # the buckets' own chunks link nothing yet
    return E


@njit(cache=True)
def _grow(Z, E):
    """Twice the slots; live slots, chunks, links and the tie heap copied over (lists stay valid)."""
    cap = Z[Z_CTR + C_CAP]
    nch, pb, cn, gb, _ = _layout(cap)
    R = _make_queue(Z, 2 * cap)
    pb2, cn2, gb2, gn = Z[Z_CTR + C_PB], Z[Z_CTR + C_CN], Z[Z_CTR + C_GB], Z[Z_CTR + C_GN]
    R[: QW * cap] = E[: QW * cap]
    R[pb2 : pb2 + CW * nch] = E[pb : pb + CW * nch]
    R[cn2 : cn2 + nch] = E[cn : cn + nch]
    R[gb2 : gb2 + gn] = E[gb : gb + gn]
    return R


@njit(cache=True)
def queue_slots(n: int, U: int) -> int:
    """Initial queue slots: every message of two broadcast rounds in flight, plus timers."""
    return n * U + 2 * n * (n - 1) + 4 * n + 64


@njit(cache=True)
def _init_state(IP, P, SPB, fault, nlat):
    """The flat state (Z, W, F): parameters, counters, node state, per-view counters, clocks."""
    n, V, U = IP[I_N], IP[I_V], IP[I_U]
    Z = np.zeros(Z_NODE + n * NS + V, np.int64)  # then one "view opened" flag per view
    Z[:N_IPARAMS] = IP
    Z[Z_CTR + C_FREE] = -1
    Z[Z_BMIN : Z_BMIN + NB] = 0x7FFFFFFFFFFFFFFF
    Z[Z_BT : Z_BT + NB] = np.arange(NB)  # bucket b's first chunk is chunk b
    Z[Z_CTR + C_FCH] = -1
    Z[Z_CTR + C_CHWM] = NB
    for i in range(n):
        b = _nb(i)
        for k in (S_ACCD, S_PREPD, S_COMD, S_PCV, S_PCD, S_ALTD, S_NVD, S_REPD):
            Z[b + k] = -1
        Z[b + S_ACTIVE] = 1
        Z[b + S_FAULT] = fault[i]
    W = np.empty((V, n, NW), np.int32)  # a view's rows are set when it is first used
    _open_view(Z, W, 0)
    E = n + 1 + U
    Z[Z_CTR + C_LAT] = F_ENT + FS * E
    Z[Z_CTR + C_NLAT] = nlat
    F = np.empty(F_ENT + FS * E + nlat, np.float64)  # the table is read only where drawn
    F[: F_ENT + FS * E] = 0.0
    F[:N_PARAMS] = P
    _size_cost_table(IP, P, F)
    F[F_PT : F_PT + N_PHASES] = np.nan
    F[F_CL] = -1.0
    F[F_CL + 1] = np.nan
    F[F_XM] = P[P_LAT_MEAN] * (P[P_LAT_SHAPE] - 1.0) / P[P_LAT_SHAPE]  # the same operations as
    F[F_XM + 1] = -1.0 / P[P_LAT_SHAPE]  # in link_latency: the same bits
    for e in range(E):
        F[_eb(e) + R_SUP] = SPB[e, 0]
        F[_eb(e) + R_SDOWN] = SPB[e, 1]
        F[_eb(e) + R_NT] = np.nan
    return Z, W, F


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
    cap = queue_slots(IP[I_N], IP[I_U])
    return run_block_cap(IP, P, SPB, fault, cnt, byt, ptime, node_d, node_t, node_i, client, cap)


@njit(cache=True)
def run_block_cap(IP, P, SPB, fault, cnt, byt, ptime, node_d, node_t, node_i, client, cap):
    """``run_block`` with a queue of ``cap`` slots to start with (at least ``n (U + 2) + 64``:
    the submissions, timers and a first proposal are scheduled before the loop checks room);
    the results do not depend on ``cap`` (tests grow the queue from a small one)."""
    Z, W, F = _init_state(IP, P, SPB, fault, 0)
    return _simulate(Z, W, F, _make_queue(Z, cap), cnt, byt, ptime, node_d, node_t, node_i, client)


@njit(cache=True)
def entity_links(s, n, U):
    """Seconds per byte ``[n + 1 + U, 2]`` (uplink, downlink) of the nodes, the client and the
    edge servers from ``s`` = (consortium up, consortium down, edge up, client down)."""
    spb = np.empty((n + 1 + U, 2), np.float64)
    for k in range(n):
        spb[k, 0] = s[0]
        spb[k, 1] = s[1]
    spb[n, 0] = s[0]
    spb[n, 1] = s[3]
    for k in range(n + 1, n + 1 + U):
        spb[k, 0] = s[2]
        spb[k, 1] = s[1]
    return spb


@njit(cache=True)
def start_block(IP, P, links, fault, nlat):
    """The state ``(Z, W, F, E)`` of one block (``links``: the four seconds per byte of
    ``entity_links``) with room for a latency table of ``nlat`` draws: hand ``(Z, F)`` to
    ``draw_latencies`` on another thread (if ``nlat``), then call ``run_started``."""
    n, U = IP[I_N], IP[I_U]
    Z, W, F = _init_state(IP, P, entity_links(links, n, U), fault, nlat)
    return Z, W, F, _make_queue(Z, queue_slots(n, U))


@njit(cache=True, nogil=True)
def draw_latencies(Z, F):
    """``_draw_latencies`` without the GIL (the latency thread's call)."""
    _draw_latencies(Z, F)


@njit(cache=True, nogil=True)
def run_started(Z, W, F, E, cnt, byt, ptime, node_d, node_t, node_i, client):
    """Run a block from ``start_block`` without the GIL (``run_block``'s outputs and return);
    then tell the latency thread to stop. A draw is a function of the message number
    alone: the event loop takes a drawn one or draws it itself, the same bits either way,
    so the run does not depend on when (or whether) the other thread draws."""
    sent = _simulate(Z, W, F, E, cnt, byt, ptime, node_d, node_t, node_i, client)
    _store_release(F, F_STOP, 1.0)
    return sent


@njit(cache=True, _nrt=False)
def _setup(Z, W, F, E):
    """Time 0: the edge servers sign their update and send it to every node, primary first;
    PBFT nodes arm their view-0 timer; with no updates the primary proposes at once."""
    n, U = Z[I_N], Z[I_U]
    for e in range(U):
        src = n + 1 + e
        s = _sign(F, src, 0.0, 0.0)
        for j in range(n):
            _send(Z, F, E, src, j, M_SUBMIT, 0, 0, 0, s)
    if Z[I_PROTO] == PROTO_PBFT:
        for i in range(n):
            if Z[_nb(i) + S_FAULT] != SILENT:
                _arm_timer(Z, F, E, i, 0, 0.0)
    if U == 0 and Z[_nb(0) + S_FAULT] != SILENT:
        _try_propose(Z, W, F, E, 0, 0.0)


@njit(cache=True)
def _simulate(Z, W, F, E, cnt, byt, ptime, node_d, node_t, node_i, client):
    """Set up, run the events (growing the queue when it nears full), fill the outputs."""
    _setup(Z, W, F, E)
    while True:
        _event_loop(Z, W, F, E)
        if Z[Z_CTR + C_HN] == 0:
            break
        if Z[Z_CTR + C_SEQ] >= MAX_SEQ:
            return -1  # the wrapper raises: too many events for one run
        E = _grow(Z, E)
    n = Z[I_N]
    for k in range(N_PHASES):
        cnt[k] = Z[Z_CNT + k]
        byt[k] = F[F_BY + k]
        ptime[k] = F[F_PT + k]
    for i in range(n):
        b = _nb(i)
        node_d[i] = Z[b + S_COMD]
        node_t[i] = F[_eb(i) + R_NT]
        node_i[i, 0] = Z[b + S_CONFLICT]
        node_i[i, 1] = Z[b + S_MAXINST]
    client[0] = F[F_CL]
    client[1] = F[F_CL + 1]
    return Z[Z_CTR + C_MSGID]


@njit(cache=True)
def summarize(mask, node_d, node_t, node_i):
    """Over the honest nodes (``~mask``): (agreement: no two committed different digests and
    none later committed another, the last commit time if all committed else NaN, the
    highest view installed, 0 if none is honest); NaN times propagate as in ``np.max``."""
    lo, hi, conflict, all_in = np.int64(-1), np.int64(-1), False, True
    last, views, any_honest = -np.inf, np.int64(0), False
    for i in range(mask.size):
        if mask[i]:
            continue
        d = node_d[i]
        if d >= 0:
            lo = d if lo < 0 or d < lo else lo
            hi = d if d > hi else hi
        else:
            all_in = False
        conflict = conflict or node_i[i, 0] != 0
        t = node_t[i]
        if not t <= last:  # a later time, or NaN (kept)
            last = t if last == last else last
        views = node_i[i, 1] if not any_honest or node_i[i, 1] > views else views
        any_honest = True
    all_t = last if any_honest and all_in else np.nan
    return lo == hi and not conflict, all_t, views


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
    spb = entity_links(SPB[c], n, IP[I_U])
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
