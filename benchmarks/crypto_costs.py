"""Measure the cryptographic costs that ``mcsl_core.consensus.NetworkModel`` uses.

    python benchmarks/crypto_costs.py [--repeat N]

Times, with the ``cryptography`` package and ``hashlib`` on this machine:

- Ed25519 signing of a 32-byte digest (what a PBFT replica signs per message),
- Ed25519 verification of that signature,
- SHA-256 of a 300 KB model update (the paper's update size).

Each figure is the median over ``repeat`` batches of timed calls (one warm-up batch
first). The printed numbers are the defaults written into ``NetworkModel`` (with
the date and CPU beside them in ``mcsl_core/consensus/_network.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.conftest import cpu_model

UPDATE_BYTES = 300_000


def _per_call(fn, calls: int, repeat: int) -> float:
    fn_calls = range(calls)
    for _ in fn_calls:  # warm-up batch
        fn()
    batches = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in fn_calls:
            fn()
        batches.append((time.perf_counter() - t0) / calls)
    return statistics.median(batches)


def measure(repeat: int = 7) -> dict[str, float]:
    """Seconds per Ed25519 sign / verify (32-byte message) and per byte of SHA-256."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    digest = hashlib.sha256(b"block header").digest()
    sig = key.sign(digest)
    update = os.urandom(UPDATE_BYTES)
    sign_s = _per_call(lambda: key.sign(digest), 2000, repeat)
    verify_s = _per_call(lambda: pub.verify(sig, digest), 1000, repeat)
    hash_update_s = _per_call(lambda: hashlib.sha256(update).digest(), 200, repeat)
    return {
        "sign_s": sign_s,
        "verify_s": verify_s,
        "hash_300kB_s": hash_update_s,
        "hash_s_per_byte": hash_update_s / UPDATE_BYTES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    res = measure(args.repeat)
    print(f"CPU: {cpu_model()}  ({time.strftime('%Y-%m-%d', time.gmtime())})")
    print(f"Ed25519 sign (32-byte digest):   {res['sign_s'] * 1e6:8.2f} us")
    print(f"Ed25519 verify (32-byte digest): {res['verify_s'] * 1e6:8.2f} us")
    print(
        f"SHA-256 of {UPDATE_BYTES} bytes:       {res['hash_300kB_s'] * 1e6:8.2f} us"
        f"  ({res['hash_s_per_byte'] * 1e9:.3f} ns/byte)"
    )


if __name__ == "__main__":
    main()
