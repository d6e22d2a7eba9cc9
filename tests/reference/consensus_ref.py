"""Independent pure-Python discrete-event simulator of one block's agreement (test reference).

Written from the protocols (Castro-Liskov PBFT with view changes; the paper's one-round
exchange; basic, non-pipelined HotStuff) and from the network, fault and cost model as
documented in ``mcsl_core.consensus`` (the ``_sim`` module docstring, ``simulate_pbft``,
``fault_mask``, ``NetworkModel`` and ``uniform01``). It imports nothing from
``mcsl_core``: the fault placement, the quorum, the auto timeout, the splitmix64 draws
and the latency laws are re-derived here from that text. It is written the way
BlockSim-style simulators are: a ``heapq`` of ``(time, sequence, event)`` tuples, one
object per message, per-node state in dicts and sets, votes deduplicated per sender
(as a real replica must), and a count of duplicates it had to drop (``duplicates``), so
that a test can check the kernel's documented claim that in this fault model no sender
ever sends a node the same kind twice in a view (the kernel counts instead of storing).

``simulate_ref`` takes the arguments of ``simulate_pbft`` (a ``network`` is read by
attribute only) and returns a ``RefResult`` with every field of ``ConsensusResult``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

MASK64 = (1 << 64) - 1
PHASES = ("submit", "pre_prepare", "prepare", "commit", "reply", "view_change", "new_view", "vote", "qc")
SIG_BYTES = 64.0
DIGEST_BYTES = 32.0


def max_f(n: int) -> int:
    """The largest f with n >= 3f + 1 (counted up, not divided)."""
    f = 0
    while 3 * (f + 1) + 1 <= n:
        f += 1
    return f


def quorum_size(n: int, f: int) -> int:
    """The smallest q with 2q - n >= f + 1 (two quorums share an honest node)."""
    q = 1
    while 2 * q - n < f + 1:
        q += 1
    return q


def uniform01(seed: int, k: int) -> float:
    """splitmix64 finaliser of ``seed * G + (k + 1) * M1 (mod 2**64)``, top 53 bits, + 1/2 ulp."""
    z = (seed * 0x9E3779B97F4A7C15 + (k + 1) * 0xBF58476D1CE4E5B9) & MASK64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return ((z >> 11) + 0.5) / 2.0**53


def latency(kind: str, mean: float, shape: float, u: float) -> float:
    """Inverse CDF: constant; exponential ``-mean ln u``; Pareto ``x_m u^(-1/shape)``."""
    if kind == "constant":
        return mean
    if kind == "exponential":
        return -mean * math.log(u)
    xm = mean * (shape - 1.0) / shape
    return xm * math.pow(u, -1.0 / shape)


def faulty_nodes(n: int, faulty, leader_faulty: bool) -> list[bool]:
    """A count k: the last k nodes, or node 0 and the last k - 1 (leader faulty); or indices."""
    if isinstance(faulty, (int, np.integer)):
        k = int(faulty)
        chosen = [0, *range(n - k + 1, n)] if leader_faulty else list(range(n - k, n))
    else:
        chosen = [int(i) for i in faulty]
    return [i in chosen for i in range(n)]


def auto_timeout(n: int, U: int, upd: float, payload: float, net) -> float:
    """``2 * estimate + 1`` s, the estimate summed term by term in the documented order."""
    up, down, edge = 8.0 / net.upload_bps, 8.0 / net.download_bps, 8.0 / net.edge_upload_bps
    H = net.header_bytes
    lat_hi = net.latency_mean_s * (1.0 if net.latency == "constant" else 10.0)
    vote = net.processing_s + net.verify_s
    sub = net.processing_s + net.verify_s + net.hash_s_per_byte * upd
    terms = [
        6 * lat_hi,
        n * (H + upd) * edge,
        U * ((H + upd) * down + sub),
        (n - 1) * (H + payload) * up,
        (H + payload) * down,
        net.processing_s,
        net.verify_s * (1 + U),
        2 * net.hash_s_per_byte * payload,
        3 * n * (H * (up + down) + vote),
        8 * net.sign_s,
    ]
    est = terms[0]
    for x in terms[1:]:
        est = est + x
    return 2.0 * est + 1.0


@dataclass
class Msg:
    kind: str
    src: int
    dst: int
    view: int
    digest: int
    aux: int
    size: float
    cost: float
    arrived: bool = False


@dataclass
class Timer:
    node: int
    view: int
    version: int


@dataclass
class Replica:
    idx: int
    fault: str  # "honest" | "silent" | "equivocate"
    view: int = 0
    active: bool = True  # in a view it has installed (view 0, or after new-view)
    updates: int = 0
    accepted: int | None = None  # digest accepted in this view (pre-prepare / proposal)
    prepared: int | None = None
    committed_here: bool = False  # committed (or, as leader, concluded) in this view
    proposed: bool = False
    nv_sent: bool = False
    nv_digest: int = -1
    done: bool = False
    timer: int = 0
    decided: int | None = None
    decided_at: float = float("nan")
    conflict: bool = False
    cert: tuple[int, int] | None = None  # (view, digest) of the last prepared certificate
    installed: int = 0
    pre_prepares: dict = field(default_factory=dict)  # view -> first digest from that view's primary
    prepares: dict = field(default_factory=dict)  # (view, digest) -> set of senders
    commits: dict = field(default_factory=dict)  # (view, digest) -> set of senders
    seen: set = field(default_factory=set)  # (kind, view, sender) already counted
    view_changes: dict = field(default_factory=dict)  # view -> [(sender, cert)] in arrival order
    sent_vc: set = field(default_factory=set)
    phase: int = 0  # HotStuff leader: the phase whose votes it collects
    votes: dict = field(default_factory=dict)  # HotStuff leader: digest -> voters this phase
    followers: dict = field(default_factory=dict)  # paper leader: follower -> digest


class Reference:
    def __init__(self, n, U, upd, net, faults, protocol, carries, seed, views, timeout):
        self.n, self.U, self.upd, self.net = n, U, upd, net
        self.f = max_f(n)
        self.q = quorum_size(n, self.f)
        self.protocol, self.digests, self.seed = protocol, carries == "digests", seed
        self.views, self.timeout = views, timeout
        self.nodes = [Replica(i, faults[i]) for i in range(n)]
        up, down = 8.0 / net.upload_bps, 8.0 / net.download_bps
        edge, client = 8.0 / net.edge_upload_bps, 8.0 / net.client_download_bps
        # entities: nodes 0..n-1, the client n, edge servers n+1..n+U
        self.up = [up] * n + [up] + [edge] * U
        self.down = [down] * n + [client] + [down] * U
        E = n + 1 + U
        self.up_free, self.down_free, self.cpu_free = [0.0] * E, [0.0] * E, [0.0] * E
        self.events: list = []
        self.seq = 0
        self.sent = 0
        self.count = dict.fromkeys(PHASES, 0)
        self.bytes = dict.fromkeys(PHASES, 0.0)
        self.last = dict.fromkeys(PHASES, float("nan"))
        self.replies: dict[int, int] = {}
        self.accepted, self.accepted_at = -1, float("nan")
        self.duplicates = 0

    # --- network and CPU
    def push(self, t, ev):
        heapq.heappush(self.events, (t, self.seq, ev))
        self.seq += 1

    def sign(self, i, now, pre=0.0):
        s = max(now, self.cpu_free[i]) + pre + self.net.sign_s
        self.cpu_free[i] = s
        return s

    def send(self, src, dst, kind, view, digest, aux, size, cost, ready):
        done = max(ready, self.up_free[src]) + size * self.up[src]
        self.up_free[src] = done
        u = uniform01(self.seed, self.sent)
        self.sent += 1
        self.count[kind] += 1
        self.bytes[kind] += size
        lat = latency(self.net.latency, self.net.latency_mean_s, self.net.latency_shape, u)
        self.push(done + lat, Msg(kind, src, dst, view, digest, aux, size, cost))

    def to_all(self, i, kind, view, digest, aux, size, cost, now, pre=0.0, forged=None):
        """One signature, then a copy to i+1, i+2, ... (mod n); odd nodes get ``forged``."""
        ready = self.sign(i, now, pre)
        for k in range(1, self.n):
            j = (i + k) % self.n
            d = forged if (forged is not None and j % 2 == 1) else digest
            self.send(i, j, kind, view, d, aux, size, cost, ready)

    def to_one(self, i, j, kind, view, digest, aux=0):
        net = self.net
        self.send(
            i, j, kind, view, digest, aux, net.header_bytes, self.vote_cost(), self.sign(i, now=self.now)
        )

    def vote_cost(self):
        return self.net.processing_s + self.net.verify_s

    def payload(self):
        return self.U * (DIGEST_BYTES if self.digests else self.upd)

    def start_timer(self, r, view, now):
        r.timer += 1
        self.push(now + self.timeout * float(2**view), Timer(r.idx, view, r.timer))

    # --- decisions
    def decide(self, r, d):
        if r.decided is None:
            r.decided, r.decided_at = d, self.now
        elif r.decided != d:
            r.conflict = True

    def enter_view(self, r, w):
        r.view, r.active = w, False
        r.accepted = r.prepared = None
        r.committed_here = r.proposed = r.nv_sent = False
        r.nv_digest = -1

    def first_vote(self, r, kind, view, src):
        key = (kind, view, src)
        if key in r.seen:
            self.duplicates += 1
            return False
        r.seen.add(key)
        return True

    # --- PBFT normal case
    def propose(self, r):
        v = r.view
        if v % self.n != r.idx or not r.active or r.proposed or r.updates < self.U:
            return
        r.proposed = True
        d = 0 if v == 0 else r.nv_digest
        lie = r.fault == "equivocate"
        net, payload = self.net, self.payload()
        checks = 1.0 if self.digests else 1.0 + self.U
        cost = net.processing_s + net.verify_s * checks + net.hash_s_per_byte * payload
        pre = net.hash_s_per_byte * payload
        forged = v + 1 if lie else None
        self.to_all(r.idx, "pre_prepare", v, d, 0, net.header_bytes + payload, cost, self.now, pre, forged)
        r.accepted = d
        if self.protocol == "pbft":
            if lie:  # votes at once, both ways, and tells the client the forged block
                H, vc = net.header_bytes, self.vote_cost()
                self.to_all(r.idx, "commit", v, d, 0, H, vc, self.now, forged=v + 1)
                self.to_one(r.idx, self.n, "reply", v, v + 1)
                return
            self.maybe_prepared(r)
        elif self.protocol == "hotstuff":
            r.phase = 1
            r.votes = {d: {r.idx}}
            if lie:
                r.votes[v + 1] = {r.idx}

    def accept(self, r):
        v = r.view
        if not r.active or r.accepted is not None or v not in r.pre_prepares or v % self.n == r.idx:
            return
        if self.digests and r.updates < self.U:
            return  # a block of digests is checked against the updates it names
        d = r.pre_prepares[v]
        if v > 0 and d != r.nv_digest:
            return
        r.accepted = d
        lie = r.fault == "equivocate"
        H, vc = self.net.header_bytes, self.vote_cost()
        primary = v % self.n
        if self.protocol == "pbft":
            if lie:
                self.to_all(r.idx, "prepare", v, d, 0, H, vc, self.now, forged=v + 1)
                self.to_all(r.idx, "commit", v, d, 0, H, vc, self.now, forged=v + 1)
                self.to_one(r.idx, self.n, "reply", v, v + 1)
                return
            self.to_all(r.idx, "prepare", v, d, 0, H, vc, self.now)
            r.prepares.setdefault((v, d), set()).add(r.idx)
            self.maybe_prepared(r)
        elif self.protocol == "paper":
            if not lie:
                self.decide(r, d)
            self.to_one(r.idx, primary, "reply", v, v + 1 if lie else d)
        else:
            self.to_one(r.idx, primary, "vote", v, v + 1 if lie else d, aux=1)

    def maybe_prepared(self, r):
        v, d = r.view, r.accepted
        if r.prepared is not None or d is None:
            return
        backups = {s for s in r.prepares.get((v, d), ()) if s != v % self.n}
        if len(backups) < self.q - 1:  # 2f prepares plus the pre-prepare
            return
        r.prepared = d
        r.cert = (v, d)
        self.to_all(r.idx, "commit", v, d, 0, self.net.header_bytes, self.vote_cost(), self.now)
        r.commits.setdefault((v, d), set()).add(r.idx)
        self.maybe_committed(r)

    def maybe_committed(self, r):
        v, d = r.view, r.prepared
        if r.committed_here or d is None or len(r.commits.get((v, d), ())) < self.q:
            return
        r.committed_here = True
        self.decide(r, d)
        self.to_one(r.idx, self.n, "reply", v, d)
        r.done = True
        r.timer += 1  # the pending timer is void

    # --- PBFT view change
    def view_change(self, r, w):
        if w >= self.views or w <= r.view or w in r.sent_vc:
            return
        r.sent_vc.add(w)
        self.enter_view(r, w)
        net = self.net
        pv, pd = r.cert if r.cert is not None else (-1, -1)
        proof = self.q if r.cert is not None else 0  # the prepared certificate's messages
        size = net.header_bytes * (1 + proof)
        cost = net.processing_s + net.verify_s * (1 + proof)
        self.to_all(r.idx, "view_change", w, pd, pv, size, cost, self.now)
        if not r.done:
            self.start_timer(r, w, self.now)
        if w % self.n == r.idx:
            self.maybe_new_view(r, w)

    def maybe_new_view(self, r, w):
        got = r.view_changes.get(w, [])
        if r.nv_sent or r.view != w or len(got) < self.q - 1:
            return
        r.nv_sent = r.active = True
        r.installed = max(r.installed, w)
        best = None  # the highest prepared certificate; the first of equal views wins
        for _, cert in got:
            if cert is not None and (best is None or cert[0] > best[0]):
                best = cert
        if r.cert is not None and (best is None or r.cert[0] > best[0]):
            best = r.cert
        r.nv_digest = d = 0 if best is None else best[1]
        m = self.q + 1  # the new-view message carries q view changes
        net = self.net
        cost = net.processing_s + net.verify_s * m
        self.to_all(r.idx, "new_view", w, d, 0, net.header_bytes * m, cost, self.now)
        self.propose(r)

    # --- message handlers
    def on_pbft(self, r, m):
        if m.kind == "pre_prepare":
            if m.src != m.view % self.n or m.view < r.view:
                return
            r.pre_prepares.setdefault(m.view, m.digest)
            if m.view == r.view:
                self.accept(r)
        elif m.kind == "prepare":
            if m.view < r.view or m.src == m.view % self.n or not self.first_vote(r, "p", m.view, m.src):
                return
            r.prepares.setdefault((m.view, m.digest), set()).add(m.src)
            if m.view == r.view and r.fault == "honest":
                self.maybe_prepared(r)
        elif m.kind == "commit":
            if m.view < r.view or not self.first_vote(r, "c", m.view, m.src):
                return
            r.commits.setdefault((m.view, m.digest), set()).add(m.src)
            if m.view == r.view:
                self.maybe_committed(r)
        elif m.kind == "view_change":
            w = m.view
            if w >= self.views:
                return
            if self.first_vote(r, "v", w, m.src):
                r.view_changes.setdefault(w, []).append((m.src, (m.aux, m.digest) if m.aux >= 0 else None))
            if len(r.view_changes.get(w, [])) >= self.f + 1 and w > r.view:
                self.view_change(r, w)  # f + 1 nodes want view w: at least one honest one
            if w % self.n == r.idx and r.view == w and not r.active:
                self.maybe_new_view(r, w)
        elif m.kind == "new_view":
            w = m.view
            if m.src != w % self.n or w < r.view or (w == r.view and r.active):
                return
            if w > r.view:
                self.enter_view(r, w)
            r.active = True
            r.nv_digest = m.digest
            r.installed = max(r.installed, w)
            if not r.done:
                self.start_timer(r, w, self.now)
            self.accept(r)

    def on_leader_reply(self, r, m):
        """The paper's exchange: the leader concludes at f + 1 follower replies equal to its block."""
        if not self.first_vote(r, "r", 0, m.src):
            return
        r.followers[m.src] = m.digest
        if m.digest != r.accepted or r.committed_here:
            return
        if sum(1 for d in r.followers.values() if d == r.accepted) >= self.f + 1:
            r.committed_here = True
            if r.fault == "honest":
                self.decide(r, m.digest)
            self.accepted, self.accepted_at = m.digest, self.now

    def on_vote(self, r, m):
        """HotStuff leader: 2f + 1 votes of a phase on one digest form its certificate."""
        if r.idx != 0 or not self.first_vote(r, "h", m.aux, m.src) or m.aux != r.phase:
            return
        if m.digest not in r.votes:
            return
        r.votes[m.digest].add(m.src)
        qd = next((d for d, who in r.votes.items() if len(who) >= self.q), None)
        if qd is None:
            return
        ph, q, net = r.phase, self.q, self.net
        cost = net.processing_s + net.verify_s * (1 + q)
        self.to_all(r.idx, "qc", 0, qd, ph, net.header_bytes + SIG_BYTES * q, cost, self.now)
        r.phase, r.accepted, r.votes = ph + 1, qd, {qd: {r.idx}}
        if ph == 3:
            if r.fault == "honest":
                self.decide(r, qd)
            self.to_one(r.idx, self.n, "reply", 0, qd if r.fault == "honest" else 1)

    def on_qc(self, r, m):
        if m.src != 0:
            return
        lie = r.fault == "equivocate"
        if m.aux < 3:
            self.to_one(r.idx, m.src, "vote", 0, 1 if lie else m.digest, aux=m.aux + 1)
            return
        if not lie:
            self.decide(r, m.digest)
        self.to_one(r.idx, self.n, "reply", 0, 1 if lie else m.digest)

    def on_client(self, m):
        if m.src in self.replies:
            return  # a node that committed again in a later view: the client counts it once
        self.replies[m.src] = m.digest
        if self.accepted < 0 and sum(1 for d in self.replies.values() if d == m.digest) >= self.f + 1:
            self.accepted, self.accepted_at = m.digest, self.now

    def handle(self, m):
        self.last[m.kind] = self.now
        if m.dst == self.n:
            self.on_client(m)
            return
        r = self.nodes[m.dst]
        if m.kind == "submit":
            r.updates += 1
            if r.updates == self.U:
                self.propose(r)
                self.accept(r)
        elif m.kind == "reply":
            self.on_leader_reply(r, m)
        elif m.kind == "vote":
            self.on_vote(r, m)
        elif m.kind == "qc":
            self.on_qc(r, m)
        else:
            self.on_pbft(r, m)

    def run(self):
        net, n = self.net, self.n
        self.now = 0.0
        size = net.header_bytes + self.upd
        cost = net.processing_s + net.verify_s + net.hash_s_per_byte * self.upd
        for e in range(self.U):
            src = n + 1 + e
            ready = self.sign(src, 0.0)
            for j in range(n):
                self.send(src, j, "submit", 0, 0, 0, size, cost, ready)
        if self.protocol == "pbft":
            for r in self.nodes:
                if r.fault != "silent":
                    self.start_timer(r, 0, 0.0)
        if self.U == 0 and self.nodes[0].fault != "silent":
            self.propose(self.nodes[0])
        while self.events:
            t, _, ev = heapq.heappop(self.events)
            self.now = t
            if isinstance(ev, Timer):
                r = self.nodes[ev.node]
                if ev.version == r.timer and not r.done:
                    self.view_change(r, ev.view + 1)
            elif not ev.arrived:
                if ev.dst < n and self.nodes[ev.dst].fault == "silent":
                    continue
                # the receiver's downlink, then its CPU, both first come first served
                done = max(t, self.down_free[ev.dst]) + ev.size * self.down[ev.dst]
                self.down_free[ev.dst] = done
                handled = max(done, self.cpu_free[ev.dst]) + ev.cost
                self.cpu_free[ev.dst] = handled
                ev.arrived = True
                self.push(handled, ev)
            else:
                self.handle(ev)


@dataclass
class RefResult:
    time_s: float
    messages: int
    bytes: float
    committed: bool
    view_changes: int
    phase_messages: tuple
    phase_bytes: tuple
    phase_time_s: tuple
    node_commit_s: np.ndarray
    node_digest: np.ndarray
    node_conflict: np.ndarray
    faulty: np.ndarray
    agreement: bool
    all_honest_committed_s: float
    client_digest: int
    protocol: str
    n_nodes: int
    f: int
    duplicates: int  # votes the reference dropped as repeats (not a ConsensusResult field)


def simulate_ref(
    n_nodes,
    n_updates,
    *,
    update_bytes=300_000,
    network=None,
    faulty=0,
    fault="silent",
    leader_faulty=False,
    protocol="pbft",
    block_carries="updates",
    seed=0,
    max_views=None,
) -> RefResult:
    """The reference's answer to ``simulate_pbft(n_nodes, n_updates, ...)`` (valid inputs only)."""
    if network is None:
        raise ValueError("the reference needs an explicit network (any object with NetworkModel's fields)")
    n, U, upd = int(n_nodes), int(n_updates), float(update_bytes)
    f = max_f(n)
    bad = faulty_nodes(n, faulty, leader_faulty)
    faults = [fault if b else "honest" for b in bad]
    views = (f + 2 if max_views is None else int(max_views)) if protocol == "pbft" else 1
    payload = U * (DIGEST_BYTES if block_carries == "digests" else upd)
    timeout = network.view_timeout_s
    if timeout is None:
        timeout = auto_timeout(n, U, upd, payload, network)
    sim = Reference(n, U, upd, network, faults, protocol, block_carries, int(seed), views, timeout)
    sim.run()
    honest = [not b for b in bad]
    decided = [r.decided for r, h in zip(sim.nodes, honest) if h]
    committed_digests = {d for d in decided if d is not None}
    conflict = np.array([r.conflict for r in sim.nodes])
    all_done = bool(decided) and all(d is not None for d in decided)
    times = [r.decided_at for r, h in zip(sim.nodes, honest) if h]
    return RefResult(
        time_s=sim.accepted_at,
        messages=sum(sim.count.values()),
        bytes=math.fsum(sim.bytes[p] for p in PHASES),
        committed=sim.accepted >= 0,
        view_changes=max((r.installed for r, h in zip(sim.nodes, honest) if h), default=0),
        phase_messages=tuple(sim.count[p] for p in PHASES),
        phase_bytes=tuple(sim.bytes[p] for p in PHASES),
        phase_time_s=tuple(sim.last[p] for p in PHASES),
        node_commit_s=np.array([r.decided_at for r in sim.nodes]),
        node_digest=np.array([-1 if r.decided is None else r.decided for r in sim.nodes], np.int64),
        node_conflict=conflict,
        faulty=np.array(bad),
        agreement=len(committed_digests) <= 1 and not conflict[honest].any(),
        all_honest_committed_s=max(times) if all_done else float("nan"),
        client_digest=sim.accepted,
        protocol=protocol,
        n_nodes=n,
        f=f,
        duplicates=sim.duplicates,
    )
