"""Two JAX processes on loopback (issue 11 item 4b): ``jax.distributed.initialize``
over 127.0.0.1, one CPU device per process, JAX's CPU collectives (gloo); a
sharded round and a small sweep spread over both processes' devices must equal
the single-process run (what this verifies and what it does not: ``docs/fl-sweeps.md``,
"Several hosts").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from mcsl_core import fl

WORKER = textwrap.dedent(
    """
    import json, sys
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import numpy as np
    from mcsl_core import fl
    from mcsl_core.fl import _compiled
    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
    rec = {"devices": jax.device_count(), "mesh": _compiled._mesh().size}
    tr, te = fl.synthetic_fedprox(0.5, 0.5, num_clients=10, dim=12, num_classes=4, seed=3)
    m = fl.logistic(12, 4)
    flat = lambda t: np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(t)]).tolist()
    cfg = fl.FLConfig(rounds=3, clients_per_round=4, batch_size=10, client_lr=0.05, progress=False)
    try:
        p = fl.init_params(m, 12, 0)
        ru = fl.federated_round(m, p, tr, [1, 3, 4, 8], cfg, strategy="shard")
        rec["round"] = fl.flatten_updates(ru.updates).tolist()
    except Exception as exc:  # recorded, the test asserts what happened
        rec["round_error"] = f"{type(exc).__name__}: {exc}"[:300]
    res = fl.run_sweep(m, tr, cfg, {"seed": [0, 1, 2], "client_lr": [0.05, 0.1, 0.02]}, test=te)
    rec["sweep"] = [flat(jax.tree_util.tree_map(lambda a: a[k], res.params)) for k in range(3)]
    rec["eval_loss"] = res.history.eval_loss.tolist()
    with open(out, "w") as fh:
        json.dump(rec, fh)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat(t) -> np.ndarray:
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(t)])


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_process(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), port, str(tmp_path / f"out{i}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    recs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert all(r["devices"] == 2 and r["mesh"] == 2 for r in recs)  # one mesh over both processes

    tr, te = fl.synthetic_fedprox(0.5, 0.5, num_clients=10, dim=12, num_classes=4, seed=3)
    m = fl.logistic(12, 4)
    cfg = fl.FLConfig(rounds=3, clients_per_round=4, batch_size=10, client_lr=0.05, progress=False)
    # float32 tolerance: the same operations on one device per experiment; XLA may
    # fuse the partitioned program differently (1-2 ulp per round at |p| <= 1, 3 rounds)
    for k, (seed, lr) in enumerate([(0, 0.05), (1, 0.1), (2, 0.02)]):
        ref = fl.run_fedavg(m, tr, fl.FLConfig(**{**cfg.__dict__, "seed": seed, "client_lr": lr}), test=te)
        for r in recs:
            np.testing.assert_allclose(r["sweep"][k], _flat(ref.params), rtol=0, atol=1e-6)
            np.testing.assert_allclose(r["eval_loss"][k], ref.history.eval_loss, rtol=1e-6)
    p = fl.init_params(m, 12, 0)
    ref_round = fl.federated_round(m, p, tr, [1, 3, 4, 8], cfg, strategy="vmap")
    for r in recs:  # the per-round shard strategy over both processes' devices
        assert "round" in r, r.get("round_error")
        np.testing.assert_allclose(r["round"], np.asarray(fl.flatten_updates(ref_round.updates)), atol=1e-6)
