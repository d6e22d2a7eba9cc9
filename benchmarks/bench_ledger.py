"""Ledger benchmarks.

1. Verifying one round of signed model updates (35 and 175 edge servers,
   300 KB updates: each hashed once, the signature checked over the 32-byte
   digest): ``verify_update_round`` on every core vs a plain one-thread loop.
   Limit: cores / (SHA-256 of 300 KB + one Ed25519 verification), both
   measured in the same run.
2. A chain of 10,000 blocks, each an FL round (one signed update, the leader's
   aggregate, a 3-of-4 commit certificate: 5 signatures): appending (every rule
   checked, one durable SQLite transaction per block) and opening (full
   re-verification). Limit: cores / (5 Ed25519 verifications + the block's
   SHA-256 work), measured in the same run. A crypto-only loop is the anchor.

Smoke mode (``--benchmark-disable``) uses 8 updates and 60 blocks.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcsl_core.ledger import (
    AggregatedModel,
    Consortium,
    Identity,
    Ledger,
    MembershipRegistration,
    ModelUpdate,
    TaskPublication,
    elect_leader,
    verify_update_round,
)
from mcsl_core.ledger._state import default_workers

UPDATE_BYTES = 300_000
CORES = default_workers()


def _per_call(fn, calls: int) -> float:
    for _ in range(max(1, calls // 10)):
        fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def crypto_costs(smoke: bool) -> dict[str, float]:
    """Seconds per Ed25519 verification of a 32-byte digest and per byte of SHA-256 (best of 3)."""
    key = Ed25519PrivateKey.generate()
    pub, digest = key.public_key(), hashlib.sha256(b"x").digest()
    sig = key.sign(digest)
    blob = os.urandom(UPDATE_BYTES)
    verify_s = _per_call(lambda: pub.verify(sig, digest), 50 if smoke else 1000)
    hash_s = _per_call(lambda: hashlib.sha256(blob).digest(), 5 if smoke else 100)
    small = os.urandom(512)
    small_s = _per_call(lambda: hashlib.sha256(small).digest(), 100 if smoke else 20000)
    return {"verify_s": verify_s, "sha_byte_s": hash_s / UPDATE_BYTES, "sha_small_s": small_s}


# ------------------------------------------------------------------ round of updates
def _round(n: int):
    c = Consortium.generate(4, seed=1)
    servers = [Identity.generate("edge_server", f"es{i}", seed=1) for i in range(n)]
    members = {m.name: m for m in (*(c.node(x).member for x in c.names), *(s.member for s in servers))}
    items = []
    for i, s in enumerate(servers):
        content = hashlib.sha256(str(i).encode()).digest() * (UPDATE_BYTES // 32)
        tx = ModelUpdate("t0", 0, s.name, hashlib.sha256(content).hexdigest(), 100)
        items.append((tx.sign(s), content))
    return members, items


def _plain_loop(items, keys):
    ok = []
    for stx, content in items:
        good = hashlib.sha256(content).hexdigest() == stx.tx.address
        try:
            keys[stx.signer].verify(stx.signature, stx.digest)
        except Exception:
            good = False
        ok.append(good)
    return ok


@pytest.fixture(scope="module")
def costs(request):
    smoke = request.config.getoption("benchmark_disable", False)
    return crypto_costs(bool(smoke))


def _round_group(n: int) -> str:
    return f"ledger: verify a round of {n} signed 300 KB updates"


ROUND_SIZES = [
    pytest.param(n, marks=pytest.mark.benchmark(group=_round_group(n)), id=str(n)) for n in (35, 175)
]


@pytest.mark.parametrize("n", ROUND_SIZES)
def test_verify_round_parallel(benchmark, bench_info, costs, n):
    size = 8 if benchmark.disabled else n
    members, items = _round(size)
    limit = CORES / (costs["sha_byte_s"] * UPDATE_BYTES + costs["verify_s"])
    bench_info(
        "kernel",
        size,
        "update",
        limit_items_per_s=limit,
        cores=CORES,
        **costs,
        note=f"verify_update_round; limit = {CORES} cores / (SHA-256 of 300 KB + Ed25519 verify), same run",
    )
    chk = benchmark(verify_update_round, members, items)
    assert chk.valid.all()


@pytest.mark.parametrize("n", ROUND_SIZES)
def test_verify_round_one_thread_loop(benchmark, bench_info, n):
    size = 8 if benchmark.disabled else n
    members, items = _round(size)
    keys = {m.public_key: Ed25519PublicKey.from_public_bytes(m.public_key) for m in members.values()}
    bench_info("anchor", size, "update", note="hashlib + cryptography in a one-thread loop")
    assert all(benchmark(_plain_loop, items, keys))


# ------------------------------------------------------------------ 10,000-block chain
def build_chain(n_blocks: int):
    """Genesis, a membership block, a task, then FL-round blocks (update + aggregate)."""
    c = Consortium.generate(4, seed=2)
    names = c.names
    es = Identity.generate("edge_server", "es0", seed=2)
    req = Identity.generate("requestor", "req0", seed=2)
    n0 = c.node(names[0])
    blocks = [c.genesis()]

    def seal(txs_fn):
        prev = blocks[-1]
        h = len(blocks)
        leader = c.node(elect_leader(prev.hash, h, 0, names))
        txs = tuple(txs_fn(leader))
        blocks.append(c._seal(h, prev.hash, 0, prev.header.timestamp + 1, txs, None))

    seal(
        lambda _: [
            MembershipRegistration(m.role, m.name, m.public_key, n0.name).sign(n0)
            for m in (es.member, req.member)
        ]
    )
    seal(lambda _: [TaskPublication("req0", "t0", "bench", 0.9, 1e6).sign(req)])
    for r in range(n_blocks - len(blocks)):
        a = hashlib.sha256(r.to_bytes(8, "big")).hexdigest()
        seal(
            lambda leader, r=r, a=a: [
                ModelUpdate("t0", r, "es0", a, 100).sign(es),
                AggregatedModel("t0", r, leader.name, a, ("es0",), {"accuracy": 0.5}).sign(leader),
            ]
        )
    return blocks


_BUILT: dict[str, Path] = {}


def _append_all(path: Path, blocks) -> int:
    with Ledger.create(path, blocks[0]) as L:
        for b in blocks[1:]:
            L.append(b)
        return len(L)


@pytest.fixture(scope="module")
def chain(request, tmp_path_factory):
    """The blocks and a directory; the stored ledger is written by the append benchmark
    (or here, when that benchmark is deselected)."""
    smoke = request.config.getoption("benchmark_disable", False)
    blocks = build_chain(60 if smoke else 10_000)
    return blocks, tmp_path_factory.mktemp("chain")


def _stored(chain) -> Path:
    blocks, d = chain
    if "path" not in _BUILT:
        _append_all(d / "chain.db", blocks)
        _BUILT["path"] = d / "chain.db"
    return _BUILT["path"]


CHAIN_GROUP = "ledger: 10,000-block chain"


def _per_block_limit(costs, blocks) -> float:
    b = blocks[-1]
    sigs = len(b.certificate) + len(b.txs)
    hashed = len(b.header.encode()) + sum(len(t.encode()) + len(t.payload) for t in b.txs)
    per_block = (
        sigs * costs["verify_s"] + hashed * costs["sha_byte_s"] + (2 * len(b.txs) + 2) * costs["sha_small_s"]
    )
    return CORES / per_block


@pytest.mark.benchmark(group=CHAIN_GROUP)
def test_chain_append(benchmark, bench_info, costs, chain):
    blocks, d = chain
    path = d / "appended.db"
    bench_info(
        "kernel",
        len(blocks),
        "block",
        limit_items_per_s=_per_block_limit(costs, blocks),
        **costs,
        signatures=sum(len(b.certificate) + len(b.txs) for b in blocks),
        cores=CORES,
        note="append: every rule + one durable (WAL, synchronous=FULL) SQLite transaction per block; "
        "limit = cores / (5 Ed25519 verifies + SHA-256 work) per block",
    )
    n = benchmark.pedantic(_append_all, args=(path, blocks), rounds=1, iterations=1)
    assert n == len(blocks)
    _BUILT.setdefault("path", path)


@pytest.mark.benchmark(group=CHAIN_GROUP)
def test_chain_open_verify(benchmark, bench_info, costs, chain):
    blocks, _ = chain
    path = _stored(chain)
    sigs = sum(len(b.certificate) + len(b.txs) for b in blocks)
    bench_info(
        "kernel",
        len(blocks),
        "block",
        limit_items_per_s=_per_block_limit(costs, blocks),
        **costs,
        signatures=sigs,
        cores=CORES,
        note=f"Ledger.open: full re-verification, {sigs} signatures; "
        "limit = cores / (5 Ed25519 verifies + SHA-256 work) per block",
    )

    def open_verify():
        with Ledger.open(path) as L:
            return len(L)

    assert benchmark.pedantic(open_verify, rounds=3, iterations=1, warmup_rounds=0) == len(blocks)


@pytest.mark.benchmark(group=CHAIN_GROUP)
def test_chain_crypto_only(benchmark, bench_info, chain):
    """Anchor: only the signature checks and hashes of the chain, in a one-thread loop."""
    blocks, _ = chain
    from mcsl_core.ledger import commit_digest, merkle_root

    keys: dict[str, Ed25519PublicKey] = {}
    for t in blocks[0].txs:
        keys[t.tx.name] = Ed25519PublicKey.from_public_bytes(t.signer)
    tx_keys: dict[bytes, Ed25519PublicKey] = {}

    def crypto_loop():
        for b in blocks:
            h = b.header.hash
            merkle_root([t.encode() for t in b.txs])
            m = commit_digest(h)
            for c in b.certificate:
                keys[c.node].verify(c.signature, m)
            for t in b.txs:
                k = tx_keys.get(t.signer)
                if k is None:
                    k = tx_keys[t.signer] = Ed25519PublicKey.from_public_bytes(t.signer)
                k.verify(t.signature, hashlib.sha256(b"mcsl-tx\x00" + t.payload).digest())
        return len(blocks)

    bench_info(
        "anchor",
        len(blocks),
        "block",
        note="hashes + signature checks only, one thread, no decoding or rules",
    )
    assert benchmark.pedantic(crypto_loop, rounds=3, iterations=1) == len(blocks)
