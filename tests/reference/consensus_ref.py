"""Pure-Python discrete-event simulator of the same protocols (test reference + benchmark anchor).

Written the way BlockSim-style Python simulators are: a ``heapq`` event queue of
``(time, sequence, event)`` tuples, one Python object per message, one object per
node holding its state in dicts and sets. It implements the rules documented in
``mcsl_core.consensus._sim`` and ``simulate_pbft`` independently of the numba code;
the only shared pieces are the latency formula (written again here) and the
input preparation (``build_inputs``), so that both see the same numbers.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from mcsl_core.consensus import NetworkModel
from mcsl_core.consensus._api import _entity_spb, _fault_code, build_inputs, fault_mask, make_result
from mcsl_core.consensus._closed_form import PROTOCOLS

MASK64 = (1 << 64) - 1
PHASES = ("submit", "pre_prepare", "prepare", "commit", "reply", "view_change", "new_view", "vote", "qc")


def uniform01(seed: int, k: int) -> float:
    z = (seed * 0x9E3779B97F4A7C15 + (k + 1) * 0xBF58476D1CE4E5B9) & MASK64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return (float(z >> 11) + 0.5) * (1.0 / 9007199254740992.0)


def latency(kind: str, mean: float, shape: float, u: float) -> float:
    if kind == "constant":
        return mean
    if kind == "exponential":
        return -mean * math.log(u)
    xm = mean * (shape - 1.0) / shape
    return xm * math.pow(u, -1.0 / shape)


@dataclass
class Message:
    kind: str
    src: int
    dst: int
    view: int
    digest: int
    aux: int
    size: float
    cost: float
    stage: str = "arrive"  # arrive -> handle


@dataclass
class Timer:
    node: int
    view: int
    version: int


@dataclass
class Node:
    idx: int
    fault: str  # "honest" | "silent" | "equivocate"
    view: int = 0
    active: bool = True
    n_updates: int = 0
    accepted: int | None = None  # digest of the accepted pre-prepare in this view
    prepared: int | None = None
    committed_in_view: bool = False
    proposed: bool = False
    nv_sent: bool = False
    nv_digest: int = -1  # digest the new-view certificate dictates for this view
    done: bool = False
    timer_version: int = 0
    committed: int | None = None
    commit_time: float = float("nan")
    conflict: bool = False
    cert: tuple[int, int] | None = None  # (view, digest) of the last prepared certificate
    max_installed: int = 0
    preprepares: dict = field(default_factory=dict)  # view -> digest
    prepares: dict = field(default_factory=dict)  # (view, sender) -> digest
    commits: dict = field(default_factory=dict)  # (view, sender) -> digest
    prepare_senders: dict = field(default_factory=dict)  # (view, digest) -> senders (never the primary)
    commit_senders: dict = field(default_factory=dict)  # (view, digest) -> senders
    view_changes: dict = field(default_factory=dict)  # view -> {sender: cert}
    sent_vc: set = field(default_factory=set)
    # leader-side counters (paper replies, HotStuff votes)
    replies: dict = field(default_factory=dict)  # sender -> digest (paper) or last phase voted (HotStuff)
    phase: int = 0
    votes: dict = field(default_factory=dict)  # digest -> count in the current HotStuff phase


class RefSim:
    def __init__(
        self, n, U, *, update_bytes, network, fault_kind, protocol, block_carries, seed, V, f, tbase
    ):
        self.n, self.U, self.f, self.V = n, U, f, V
        self.q = (n + f + 2) // 2  # PBFT quorum ceil((n + f + 1) / 2); 2f + 1 when n = 3f + 1
        self.net = network
        self.protocol = protocol
        self.digests = block_carries == "digests"
        self.seed = seed
        self.upd = update_bytes
        self.tbase = tbase
        self.nodes = [Node(i, fault_kind[i]) for i in range(n)]
        spb = _entity_spb(n, U, network)
        E = n + 1 + U
        self.spb_up = [float(spb[e, 0]) for e in range(E)]
        self.spb_down = [float(spb[e, 1]) for e in range(E)]
        self.up_free = [0.0] * E
        self.down_free = [0.0] * E
        self.cpu_free = [0.0] * E
        self.queue: list = []
        self.seq = 0
        self.msg_id = 0
        self.count = {p: 0 for p in PHASES}
        self.bytes = {p: 0.0 for p in PHASES}
        self.last = {p: float("nan") for p in PHASES}
        self.client_replies: dict[int, int] = {}
        self.client_digest = -1
        self.client_time = float("nan")

    # --- plumbing
    def push(self, t, ev):
        heapq.heappush(self.queue, (t, self.seq, ev))
        self.seq += 1

    def primary(self, v):
        return v % self.n

    def vote_cost(self):
        return self.net.processing_s + self.net.verify_s

    def payload(self):
        return self.U * 32.0 if self.digests else self.U * self.upd

    def sign(self, i, now, pre=0.0):
        cpu = self.cpu_free[i]
        s = (now if now > cpu else cpu) + pre + self.net.sign_s
        self.cpu_free[i] = s
        return s

    def send(self, src, dst, kind, view, digest, aux, size, cost, t0):
        up = self.up_free[src]
        start = t0 if t0 > up else up
        done = start + size * self.spb_up[src]
        self.up_free[src] = done
        u = uniform01(self.seed, self.msg_id)
        self.msg_id += 1
        arrive = done + latency(self.net.latency, self.net.latency_mean_s, self.net.latency_shape, u)
        self.count[kind] += 1
        self.bytes[kind] += size
        self.push(arrive, Message(kind, src, dst, view, digest, aux, size, cost))

    def broadcast(self, i, kind, view, digest, forged, equiv, aux, size, cost, now, pre=0.0):
        s = self.sign(i, now, pre)
        for k in range(1, self.n):
            j = (i + k) % self.n
            d = forged if (equiv and j % 2 == 1) else digest
            self.send(i, j, kind, view, d, aux, size, cost, s)

    def unicast(self, i, j, kind, view, digest, aux, size, cost, now):
        self.send(i, j, kind, view, digest, aux, size, cost, self.sign(i, now))

    def arm_timer(self, node, view, now):
        node.timer_version += 1
        self.push(now + self.tbase * float(1 << view), Timer(node.idx, view, node.timer_version))

    # --- protocol
    def record_commit(self, node, d, now):
        if node.committed is None:
            node.committed = d
            node.commit_time = now
        elif node.committed != d:
            node.conflict = True

    def reset_view(self, node, w):
        node.view = w
        node.active = False
        node.accepted = None
        node.prepared = None
        node.committed_in_view = False
        node.proposed = False
        node.nv_sent = False
        node.nv_digest = -1

    def count_prepares(self, node, v, d):
        return len(node.prepare_senders.get((v, d), ()))

    def count_commits(self, node, v, d):
        return len(node.commit_senders.get((v, d), ()))

    def add_prepare(self, node, v, s, d):
        node.prepares[(v, s)] = d
        node.prepare_senders.setdefault((v, d), set()).add(s)

    def add_commit(self, node, v, s, d):
        node.commits[(v, s)] = d
        node.commit_senders.setdefault((v, d), set()).add(s)

    def check_prepared(self, node, now):
        if node.prepared is not None or node.accepted is None:
            return
        if self.count_prepares(node, node.view, node.accepted) < self.q - 1:
            return
        v, d = node.view, node.accepted
        node.prepared = d
        node.cert = (v, d)
        self.broadcast(node.idx, "commit", v, d, d, False, 0, self.net.header_bytes, self.vote_cost(), now)
        self.add_commit(node, v, node.idx, d)
        self.check_committed(node, now)

    def check_committed(self, node, now):
        if node.committed_in_view or node.prepared is None:
            return
        if self.count_commits(node, node.view, node.prepared) < self.q:
            return
        node.committed_in_view = True
        self.record_commit(node, node.prepared, now)
        self.unicast(
            node.idx,
            self.n,
            "reply",
            node.view,
            node.prepared,
            0,
            self.net.header_bytes,
            self.vote_cost(),
            now,
        )
        node.done = True
        node.timer_version += 1

    def try_propose(self, node, now):
        v = node.view
        if self.primary(v) != node.idx or not node.active or node.proposed or node.n_updates < self.U:
            return
        node.proposed = True
        d = 0 if v == 0 else node.nv_digest
        forged = v + 1
        equiv = node.fault == "equivocate"
        payload = self.payload()
        H = self.net.header_bytes
        nver = 1.0 if self.digests else 1.0 + self.U
        cost = self.net.processing_s + self.net.verify_s * nver + self.net.hash_s_per_byte * payload
        self.broadcast(
            node.idx,
            "pre_prepare",
            v,
            d,
            forged,
            equiv,
            0,
            H + payload,
            cost,
            now,
            self.net.hash_s_per_byte * payload,
        )
        node.accepted = d
        if self.protocol == "pbft":
            if equiv:
                self.broadcast(node.idx, "commit", v, d, forged, True, 0, H, self.vote_cost(), now)
                self.unicast(node.idx, self.n, "reply", v, forged, 0, H, self.vote_cost(), now)
                return
            self.check_prepared(node, now)
        elif self.protocol == "hotstuff":
            node.phase = 1
            node.votes = {d: 1}
            if equiv:
                node.votes[forged] = 1

    def try_accept(self, node, now):
        v = node.view
        if (
            not node.active
            or node.accepted is not None
            or v not in node.preprepares
            or self.primary(v) == node.idx
        ):
            return
        if self.digests and node.n_updates < self.U:
            return
        if v > 0 and node.preprepares[v] != node.nv_digest:
            return
        d = node.preprepares[v]
        node.accepted = d
        equiv = node.fault == "equivocate"
        forged = v + 1
        H = self.net.header_bytes
        vc = self.vote_cost()
        if self.protocol == "pbft":
            if equiv:
                self.broadcast(node.idx, "prepare", v, d, forged, True, 0, H, vc, now)
                self.broadcast(node.idx, "commit", v, d, forged, True, 0, H, vc, now)
                self.unicast(node.idx, self.n, "reply", v, forged, 0, H, vc, now)
                return
            self.broadcast(node.idx, "prepare", v, d, d, False, 0, H, vc, now)
            self.add_prepare(node, v, node.idx, d)
            self.check_prepared(node, now)
        elif self.protocol == "paper":
            if equiv:
                d = forged
            else:
                self.record_commit(node, d, now)
            self.unicast(node.idx, self.primary(v), "reply", v, d, 0, H, vc, now)
        else:
            self.unicast(node.idx, self.primary(v), "vote", v, forged if equiv else d, 1, H, vc, now)

    def send_vc(self, node, w, now):
        if w >= self.V or w <= node.view or w in node.sent_vc:
            return
        node.sent_vc.add(w)
        self.reset_view(node, w)
        cert = self.q if node.cert is not None else 0
        pcv, pcd = node.cert if node.cert is not None else (-1, -1)
        H = self.net.header_bytes
        self.broadcast(
            node.idx,
            "view_change",
            w,
            pcd,
            pcd,
            False,
            pcv,
            H * (1 + cert),
            self.net.processing_s + self.net.verify_s * (1 + cert),
            now,
        )
        if not node.done:
            self.arm_timer(node, w, now)
        if self.primary(w) == node.idx:
            self.check_new_view(node, w, now)

    def check_new_view(self, node, w, now):
        if node.nv_sent or node.view != w or len(node.view_changes.get(w, {})) < self.q - 1:
            return
        node.nv_sent = True
        node.active = True
        node.max_installed = max(node.max_installed, w)
        best = None
        for cert in node.view_changes.get(w, {}).values():  # in arrival order; first of the highest wins
            if cert is not None and (best is None or cert[0] > best[0]):
                best = cert
        d = 0 if best is None else best[1]
        if node.cert is not None and (best is None or node.cert[0] > best[0]):
            d = node.cert[1]
        node.nv_digest = d
        m = self.q + 1
        self.broadcast(
            node.idx,
            "new_view",
            w,
            d,
            d,
            False,
            0,
            self.net.header_bytes * m,
            self.net.processing_s + self.net.verify_s * m,
            now,
        )
        self.try_propose(node, now)

    def client_reply(self, s, d, now):
        if s in self.client_replies:
            return
        self.client_replies[s] = d
        if self.client_digest >= 0:
            return
        if sum(1 for x in self.client_replies.values() if x == d) >= self.f + 1:
            self.client_digest = d
            self.client_time = now

    def handle(self, m: Message, t: float):
        self.last[m.kind] = t
        if m.dst == self.n:
            if m.kind == "reply":
                self.client_reply(m.src, m.digest, t)
            return
        node = self.nodes[m.dst]
        H = self.net.header_bytes
        if m.kind == "submit":
            node.n_updates += 1
            if node.n_updates == self.U:
                self.try_propose(node, t)
                self.try_accept(node, t)
        elif m.kind == "pre_prepare":
            if m.src != self.primary(m.view) or m.view < node.view:
                return
            node.preprepares.setdefault(m.view, m.digest)
            if m.view == node.view:
                self.try_accept(node, t)
        elif m.kind == "prepare":
            if m.view < node.view or m.src == self.primary(m.view) or (m.view, m.src) in node.prepares:
                return
            self.add_prepare(node, m.view, m.src, m.digest)
            if m.view == node.view and node.fault == "honest":
                self.check_prepared(node, t)
        elif m.kind == "commit":
            if m.view < node.view or (m.view, m.src) in node.commits:
                return
            self.add_commit(node, m.view, m.src, m.digest)
            if m.view == node.view:
                self.check_committed(node, t)
        elif m.kind == "reply":  # the paper's exchange: follower -> leader
            if m.src in node.replies:
                return
            node.replies[m.src] = m.digest
            if m.digest == node.accepted and not node.committed_in_view:
                if sum(1 for x in node.replies.values() if x == node.accepted) >= self.f + 1:
                    node.committed_in_view = True
                    if node.fault == "honest":
                        self.record_commit(node, m.digest, t)
                    self.client_digest = m.digest
                    self.client_time = t
        elif m.kind == "view_change":
            w = m.view
            if w >= self.V:
                return
            got = node.view_changes.setdefault(w, {})
            if m.src not in got:
                got[m.src] = (m.aux, m.digest) if m.aux >= 0 else None
            if len(got) >= self.f + 1 and w > node.view:
                self.send_vc(node, w, t)
            if self.primary(w) == node.idx and node.view == w and not node.active:
                self.check_new_view(node, w, t)
        elif m.kind == "new_view":
            w = m.view
            if m.src != self.primary(w) or w < node.view or (w == node.view and node.active):
                return
            if w > node.view:
                self.reset_view(node, w)
            node.active = True
            node.nv_digest = m.digest
            node.max_installed = max(node.max_installed, w)
            if not node.done:
                self.arm_timer(node, w, t)
            self.try_accept(node, t)
        elif m.kind == "vote":
            if node.idx != self.primary(0) or m.aux <= node.replies.get(m.src, -1):
                return
            node.replies[m.src] = m.aux
            if m.aux != node.phase or m.digest not in node.votes:
                return
            node.votes[m.digest] += 1
            qd = None
            for d, c in node.votes.items():  # the proposal's own digest is checked first
                if c >= self.q:
                    qd = d
                    break
            if qd is None:
                return
            ph = node.phase
            q = self.q
            self.broadcast(
                node.idx,
                "qc",
                0,
                qd,
                qd,
                False,
                ph,
                H + 64.0 * q,
                self.net.processing_s + self.net.verify_s * (1 + q),
                t,
            )
            node.phase = ph + 1
            node.accepted = qd
            node.votes = {qd: 1}
            if ph == 3:
                rd = qd
                if node.fault == "honest":
                    self.record_commit(node, qd, t)
                else:
                    rd = 1
                self.unicast(node.idx, self.n, "reply", 0, rd, 0, H, self.vote_cost(), t)
        elif m.kind == "qc":
            if m.src != self.primary(0):
                return
            equiv = node.fault == "equivocate"
            if m.aux < 3:
                self.unicast(
                    node.idx, m.src, "vote", 0, 1 if equiv else m.digest, m.aux + 1, H, self.vote_cost(), t
                )
            else:
                rd = m.digest
                if equiv:
                    rd = 1
                else:
                    self.record_commit(node, m.digest, t)
                self.unicast(node.idx, self.n, "reply", 0, rd, 0, H, self.vote_cost(), t)

    def run(self):
        n, U = self.n, self.U
        net = self.net
        H = net.header_bytes
        sub_cost = net.processing_s + net.verify_s + net.hash_s_per_byte * self.upd
        for e in range(U):
            src = n + 1 + e
            s = self.sign(src, 0.0)
            for j in range(n):
                self.send(src, j, "submit", 0, 0, 0, H + self.upd, sub_cost, s)
        if self.protocol == "pbft":
            for node in self.nodes:
                if node.fault != "silent":
                    self.arm_timer(node, 0, 0.0)
        if U == 0 and self.nodes[0].fault != "silent":
            self.try_propose(self.nodes[0], 0.0)
        while self.queue:
            t, _, ev = heapq.heappop(self.queue)
            if isinstance(ev, Timer):
                node = self.nodes[ev.node]
                if ev.version != node.timer_version or node.done:
                    continue
                self.send_vc(node, ev.view + 1, t)
                continue
            m = ev
            if m.stage == "arrive":
                if m.dst < n and self.nodes[m.dst].fault == "silent":
                    continue
                down = self.down_free[m.dst]
                done = (t if t > down else down) + m.size * self.spb_down[m.dst]
                self.down_free[m.dst] = done
                cpu = self.cpu_free[m.dst]
                c = (done if done > cpu else cpu) + m.cost
                self.cpu_free[m.dst] = c
                m.stage = "handle"
                self.push(c, m)
            else:
                self.handle(m, t)


def simulate_ref(
    n_nodes,
    n_updates,
    *,
    update_bytes=300_000,
    network=NetworkModel(),
    faulty=0,
    fault="silent",
    leader_faulty=False,
    protocol="pbft",
    block_carries="updates",
    seed=0,
    max_views=None,
):
    """Same signature and result type as ``mcsl_core.consensus.simulate_pbft``."""
    code = _fault_code(fault)
    mask = fault_mask(n_nodes, faulty, leader_faulty)
    IP, P, fcode = build_inputs(
        n_nodes, n_updates, update_bytes, network, mask * code, protocol, block_carries, seed, max_views
    )
    from mcsl_core.consensus import _sim

    names = {_sim.HONEST: "honest", _sim.SILENT: "silent", _sim.EQUIVOCATE: "equivocate"}
    sim = RefSim(
        n_nodes,
        n_updates,
        update_bytes=float(P[_sim.P_UPD]),
        network=network,
        fault_kind=[names[int(c)] for c in fcode],
        protocol=protocol,
        block_carries=block_carries,
        seed=seed,
        V=int(IP[_sim.I_V]),
        f=int(IP[_sim.I_F]),
        tbase=float(P[_sim.P_TBASE]),
    )
    assert protocol in PROTOCOLS
    sim.run()
    n = n_nodes
    cnt = np.array([sim.count[p] for p in PHASES], np.int64)
    byt = np.array([sim.bytes[p] for p in PHASES])
    ptime = np.array([sim.last[p] for p in PHASES])
    node_d = np.array([-1 if nd.committed is None else nd.committed for nd in sim.nodes], np.int64)
    node_t = np.array([nd.commit_time for nd in sim.nodes])
    node_i = np.array([[int(nd.conflict), nd.max_installed] for nd in sim.nodes], np.int64).reshape(n, 2)
    client = np.array([float(sim.client_digest), sim.client_time])
    return make_result(protocol, n, mask, cnt, byt, ptime, node_d, node_t, node_i, client)
