"""Federated learning for MCS (procedure 3, learning side; SPEC.md 3, paper IV-C, V-B).

Data (:func:`load_leaf`, :func:`synthetic_fedprox`, :func:`assign_to_servers`),
Flax models (:func:`femnist_cnn`, :func:`logistic`, :func:`mlp`), one round of
local training with stacked client updates (:func:`federated_round`),
aggregators working on stacked update pytrees (:func:`fedavg`, :func:`median`,
:func:`trimmed_mean`, :func:`krum`, :func:`dp_fedavg`), and the full loop
(:func:`run_fedavg`; :func:`run_compiled` runs every round in one
compiled program), and sweeps of many experiments in one vectorised program
(:func:`run_sweep`). Everything runs in float32; JAX x64 is never enabled.
"""

from mcsl_core.fl._aggregate import (
    AGGREGATORS,
    clip_updates,
    dp_fedavg,
    fedavg,
    flatten_updates,
    krum,
    krum_select,
    median,
    trimmed_mean,
)
from mcsl_core.fl._compiled import run_compiled
from mcsl_core.fl._data import (
    FederatedData,
    PackedClients,
    assign_to_servers,
    bucket_steps,
    load_leaf,
    merge_clients,
    sample_devices,
    synthetic_fedprox,
)
from mcsl_core.fl._models import MLP, FemnistCNN, Logistic, femnist_cnn, logistic, mlp, num_params
from mcsl_core.fl._sweep import FLSweepResult, run_sweep
from mcsl_core.fl._train import (
    FEDAVG_SERVER,
    STRATEGIES,
    THREADS_ENV,
    EvalResult,
    FLConfig,
    FLHistory,
    FLResult,
    RoundUpdates,
    aggregate,
    choose_strategy,
    evaluate,
    federated_round,
    init_params,
    run_fedavg,
    select_clients,
    server_update,
)

__all__ = [
    "AGGREGATORS",
    "FEDAVG_SERVER",
    "MLP",
    "STRATEGIES",
    "THREADS_ENV",
    "EvalResult",
    "FLConfig",
    "FLHistory",
    "FLResult",
    "FLSweepResult",
    "FederatedData",
    "FemnistCNN",
    "Logistic",
    "PackedClients",
    "RoundUpdates",
    "aggregate",
    "assign_to_servers",
    "bucket_steps",
    "choose_strategy",
    "clip_updates",
    "dp_fedavg",
    "evaluate",
    "fedavg",
    "federated_round",
    "femnist_cnn",
    "flatten_updates",
    "init_params",
    "krum",
    "krum_select",
    "load_leaf",
    "logistic",
    "median",
    "merge_clients",
    "mlp",
    "num_params",
    "run_compiled",
    "run_fedavg",
    "run_sweep",
    "sample_devices",
    "select_clients",
    "server_update",
    "synthetic_fedprox",
    "trimmed_mean",
]
