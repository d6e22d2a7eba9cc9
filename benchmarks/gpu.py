"""One command for a GPU machine (issue 11 item 5), under 5 minutes on one GPU:

    python benchmarks/gpu.py            # on a machine with the CUDA build of JAX
    python benchmarks/gpu.py --tiny     # the same logic at tiny sizes on any backend (a dry run)

1. FL strategies (``loop``, ``vmap``, ``shard``) on one round of the LEAF CNN at
   35 and 175 clients (FEMNIST-shaped synthetic data, ~139 rows per client,
   batch 10, one local epoch): samples/s.
2. Sweeps: K = 1024 FedAvg experiments of the logistic model on FedProx
   Synthetic(1, 1) (40 clients, 10 per round, 30 rounds), and K = 8 CNN
   experiments with 10 clients (one round), each against sequential
   ``run_fedavg`` calls (the anchor times the first few experiments and is
   reported per experiment).
3. ``mechanism.solve(..., backend="jax")`` on 10^8 parameter points (a
   broadcast grid, float64): points/s.

Writes ``bench_results/gpu-<card>.json`` (``--out`` to change the folder) and
adds one row to ``bench_results/gpu_summary.md``. Without a GPU (and without
``--tiny``) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {
    "full": dict(
        clients=(35, 175), rows=139, sweep_k=1024, sweep_anchor=8, cnn_k=8, cnn_anchor=2, points=100
    ),
    "tiny": dict(clients=(3, 5), rows=12, sweep_k=4, sweep_anchor=2, cnn_k=2, cnn_anchor=1, points=10),
}


def _timed(fn, reps: int = 1) -> float:
    """Median wall time of ``reps`` calls after one warm-up (compilation) call."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def bench_strategies(tiny: bool, sz: dict) -> list[dict]:
    import jax
    import numpy as np

    from benchmarks.bench_fl import _synthetic_femnist
    from mcsl_core import fl

    out = []
    for n in sz["clients"]:
        data = _synthetic_femnist(n, sz["rows"])
        model = fl.logistic(784, 62) if tiny else fl.femnist_cnn()
        params = fl.init_params(model, 784, 0)
        cfg = fl.FLConfig(clients_per_round=n, batch_size=10)
        for s in ("loop", "vmap", "shard"):

            def run():
                ru = fl.federated_round(model, params, data, np.arange(n), cfg, strategy=s)
                jax.block_until_ready(ru.updates)

            dt = _timed(run, reps=2)
            out.append(
                dict(clients=n, strategy=s, samples_per_s=float(data.num_samples.sum()) / dt, seconds=dt)
            )
    return out


def bench_sweeps(tiny: bool, sz: dict) -> list[dict]:
    from benchmarks.bench_fl import _synthetic_femnist
    from mcsl_core import fl

    out = []
    tr, te = fl.synthetic_fedprox(1.0, 1.0, num_clients=8 if tiny else 40, dim=60, num_classes=10, seed=0)
    cfg = fl.FLConfig(rounds=2 if tiny else 30, clients_per_round=4 if tiny else 10, progress=False)
    cases = [("logistic", fl.logistic(60, 10), tr, te, cfg, sz["sweep_k"], sz["sweep_anchor"])]
    cnn_data = _synthetic_femnist(3 if tiny else 10, sz["rows"])
    cnn_cfg = fl.FLConfig(rounds=1, clients_per_round=cnn_data.num_clients, progress=False)
    cnn = fl.logistic(784, 62) if tiny else fl.femnist_cnn()
    cases.append(("cnn", cnn, cnn_data, cnn_data, cnn_cfg, sz["cnn_k"], sz["cnn_anchor"]))
    for name, model, train, test, c, k, ka in cases:
        sweep = _timed(lambda: fl.run_sweep(model, train, c, {"seed": list(range(k))}, test=test))

        def seq():
            for s in range(ka):
                fl.run_fedavg(model, train, fl.FLConfig(**{**c.__dict__, "seed": s}), test=test)

        anchor = _timed(seq) / ka
        out.append(
            dict(
                model=name,
                experiments=k,
                rounds=c.rounds,
                sweep_s=sweep,
                sweep_experiments_per_s=k / sweep,
                sequential_s_per_experiment=anchor,
                speedup=anchor * k / sweep,
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            )
        )
    return out


def bench_mechanism(sz: dict) -> dict:
    import numpy as np

    from mcsl_core.mechanism import MechanismParams, solve

    m = sz["points"]
    p = MechanismParams.paper_defaults(
        eta=np.linspace(0.1, 15, m)[:, None, None, None],
        xi=np.linspace(0.1, 15, m)[None, :, None, None],
        eps=np.linspace(0.01, 1, m)[None, None, :, None],
        R=np.linspace(0, 50, m)[None, None, None, :],
    )

    def run():
        sol = solve(p, backend="jax")
        sol.U_s.block_until_ready()

    dt = _timed(run, reps=2)
    return dict(points=m**4, seconds=dt, points_per_s=m**4 / dt)


def card_name() -> str:
    import jax

    kind = jax.devices()[0].device_kind
    return re.sub(r"[^A-Za-z0-9]+", "-", kind).strip("-").lower() or "unknown"


def summary_row(res: dict) -> str:
    best = {
        n: max(r["samples_per_s"] for r in res["strategies"] if r["clients"] == n) for n in res["clients"]
    }
    sw = {r["model"]: r for r in res["sweeps"]}
    return (
        f"| {res['card']} | {res['date']} | "
        + " | ".join(f"{best[n]:.0f}" for n in res["clients"])
        + f" | {sw['logistic']['experiments']} exp, {sw['logistic']['speedup']:.1f}x"
        + f" | {sw['cnn']['experiments']} exp, {sw['cnn']['speedup']:.2f}x, {sw['cnn']['peak_rss_mib']:.0f} MiB"
        + f" | {res['mechanism']['points_per_s'] / 1e6:.0f}M/s |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on any backend (a dry run of the logic)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench_results", help="folder for the JSON and summary"
    )
    args = ap.parse_args(argv)
    import jax

    backend = jax.default_backend()
    if backend != "gpu" and not args.tiny:
        print(f"gpu.py: no GPU found (JAX backend {backend!r}); nothing run. Install the CUDA build of JAX.")
        return 0
    sz = SIZES["tiny" if args.tiny else "full"]
    t0 = time.perf_counter()
    res = dict(
        card=card_name() + ("-tiny" if args.tiny else ""),
        date=time.strftime("%Y-%m-%d"),
        backend=backend,
        devices=[str(d) for d in jax.devices()],
        jax=jax.__version__,
        python=platform.python_version(),
        clients=list(sz["clients"]),
        strategies=bench_strategies(args.tiny, sz),
        sweeps=bench_sweeps(args.tiny, sz),
        mechanism=bench_mechanism(sz),
    )
    res["total_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-{res['card']}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    summary = args.out / "gpu_summary.md"
    if not summary.exists():
        summary.write_text(
            "# GPU runs (benchmarks/gpu.py)\n\n| card | date | CNN round, 35 clients (samples/s, best strategy) "
            "| 175 clients | logistic sweep vs sequential | CNN sweep vs sequential, peak RSS | mechanism jax |\n"
            "|---|---|---|---|---|---|---|\n"
        )
    row = summary_row(res)
    with summary.open("a") as fh:
        fh.write(row + "\n")
    print(f"wrote {path} in {res['total_s']:.0f} s\n{row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
