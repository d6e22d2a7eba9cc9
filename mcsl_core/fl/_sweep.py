"""Sweeps: K federated experiments in one vectorised program (issue 11 item 3).

``run_sweep(model, train, config, axes)`` zips ``axes`` (FLConfig field name ->
K values) into K configs. Numeric fields are traced per experiment and
vectorised (``jax.vmap`` over the experiment axis, combined with the client
axis inside each round); structural fields split the sweep into groups, one
compiled program each (:func:`mcsl_core.fl._compiled.run_group`). Groups are
chunked to fit memory and, with several devices, their experiment axis is
split over every device with ``jax.sharding``. On a single CPU device a group
whose model has more than :data:`ONE_BY_ONE_MIN_PARAMS` parameters (the CNN)
runs its experiments one after another through :func:`run_fedavg` instead.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from mcsl_core._validation import available_cores as _cpu_cores  # a module name tests patch
from mcsl_core.fl._compiled import GroupResult, bytes_per_experiment, group_spec, memory_budget, run_group
from mcsl_core.fl._data import FederatedData
from mcsl_core.fl._models import num_params
from mcsl_core.fl._train import FLConfig, FLHistory, run_fedavg, single_cpu_device

__all__ = ["NUMERIC_FIELDS", "STRUCTURAL_FIELDS", "FLSweepResult", "run_sweep"]

PyTree = Any
#: Vectorised inside one program (traced per experiment).
NUMERIC_FIELDS = (
    "seed",
    "client_lr",
    "server_lr",
    "dp_noise_multiplier",
    "dp_clip_norm",
    "trim_fraction",
    "target_accuracy",
)
#: Split the sweep into groups, one compiled program each (``model`` is the Flax module).
STRUCTURAL_FIELDS = (
    "model",
    "aggregator",
    "clients_per_round",
    "local_epochs",
    "batch_size",
    "rounds",
    "eval_every",
    "num_byzantine",
    "multi_krum",
    "server_optimizer",
)
#: Settings of how a run executes, not of the experiment: they cannot vary.
_FIXED = ("strategy", "progress", "compiled")
_TABLE_METRICS = ("train_loss", "eval_loss", "eval_accuracy")


class FLSweepResult(NamedTuple):
    """The K experiments of a sweep, in axis order.

    ``params``: the final global parameters, leaves shape=[K, ...] (a list of K
    pytrees when the ``model`` axis gives experiments different parameter
    structures). ``history``: :class:`FLHistory` whose fields have shape
    ``[K, rounds]`` (``rounds`` the largest of the sweep; round 0 and NaN where
    an experiment did not run that round: early stop or fewer rounds).
    ``configs``: the K resolved configs (``models`` the K modules), so
    experiment ``k`` equals ``run_fedavg(models[k], train, configs[k], test=test)``.
    ``axes``: the swept fields and values as given.
    """

    params: PyTree
    history: FLHistory
    configs: tuple[FLConfig, ...]
    models: tuple[Any, ...]
    stopped_early: np.ndarray  # shape=[K] bool
    axes: dict[str, tuple]

    @property
    def table(self) -> dict[str, np.ndarray]:
        """Tidy columns, one row per experiment and evaluated round: ``experiment``,
        ``round``, each swept field, ``train_loss``, ``eval_loss``, ``eval_accuracy``."""
        h = self.history
        k_idx, r_idx = np.nonzero((h.round > 0) & ~np.isnan(h.eval_accuracy))
        cols: dict[str, np.ndarray] = {"experiment": k_idx.astype(np.int64), "round": h.round[k_idx, r_idx]}
        for name in self.axes:  # the resolved values (as run), one column per swept field
            vals = [
                _cell(m if name == "model" else getattr(c, name)) for c, m in zip(self.configs, self.models)
            ]
            cols[name] = np.asarray([vals[k] for k in k_idx], dtype=object)
        for m in _TABLE_METRICS:
            cols[m] = getattr(h, m)[k_idx, r_idx]
        return cols

    def to_csv(self, path: str | Path) -> Path:
        """Write :attr:`table` to ``path`` (a header row, then one row per record)."""
        t = self.table
        path = Path(path)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(list(t))
            for i in range(len(t["experiment"])):
                w.writerow([_cell(t[c][i]) for c in t])
        return path


def _cell(v) -> str | int | float:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, np.float32):
        return str(v)  # shortest repr that reads back as the same float32
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v if isinstance(v, str) else " ".join(repr(v).split())


def _resolve(model, config: FLConfig, axes: Mapping[str, Sequence]) -> tuple[list[FLConfig], list]:
    if not isinstance(axes, Mapping) or not axes:
        raise ValueError("axes must be a non-empty mapping of FLConfig field names to value sequences")
    fields = {f.name for f in dataclasses.fields(FLConfig)}
    lengths = {}
    for name, values in axes.items():
        if name in _FIXED:
            raise ValueError(
                f"axes[{name!r}]: {name} cannot vary within a sweep (it says how a run executes)"
            )
        if name not in fields and name != "model":
            raise ValueError(
                f"axes[{name!r}]: unknown field; FLConfig fields are {sorted(fields)} or 'model'"
            )
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"axes[{name!r}] must be a sequence of values, got {type(values).__name__}")
        if len(values) == 0:
            raise ValueError(f"axes[{name!r}] is empty")
        lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        raise ValueError(f"axes must have equal lengths (they are zipped), got {lengths}")
    k = next(iter(lengths.values()))
    if model is None and "model" not in axes:
        raise ValueError("model is None and axes has no 'model' entry")
    configs, models = [], []
    for i in range(k):
        over = {n: v[i] for n, v in axes.items() if n != "model"}
        try:
            configs.append(dataclasses.replace(config, **over))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"axes: experiment {i}: {exc}") from exc
        models.append(axes["model"][i] if "model" in axes else model)
    return configs, models


def _num_params(model, train: FederatedData) -> int:
    shapes = jax.eval_shape(
        lambda k: model.init(k, jax.numpy.zeros((1, train.dim), jax.numpy.float32)), jax.random.key(0)
    )
    return num_params(shapes["params"])


def _chunk_size(params: int, spec, dim: int, budget: int | None) -> int:
    """Experiments per chunk of a group (``spec``) whose model has ``params`` parameters."""
    per = bytes_per_experiment(params, spec, dim)
    ndev = jax.device_count()
    budget = memory_budget() if budget is None else int(budget)
    return max(ndev, (budget // max(per, 1)) // ndev * ndev)


#: Models up to this many parameters run a chunk as one part per core, each part's
#: program in its own thread. Their per-step operations are too small for XLA's CPU
#: backend to spread over cores (a K = 64 logistic sweep keeps one core busy), while
#: independent programs in threads run side by side: measured 1.5-1.65x on 2 cores for
#: the logistic step.
THREAD_PARTS_MAX_PARAMS = 1 << 20

#: On a single CPU device, models of more than this many parameters run a sweep's
#: experiments one after another, each through :func:`run_fedavg` (its per-round engine
#: trains the clients in threads, with the deferred dense update and the convolution's
#: own backward pass); vectorised over experiments such a model gains nothing on a CPU,
#: whose cores its operations already fill, and loses those two (the K = 8 CNN sweep ran
#: at 0.74x of the sequential calls). Accelerators and several devices stay vectorised.
ONE_BY_ONE_MIN_PARAMS = 1 << 20


#: Experiments per part of a chunk that runs in threads (see THREAD_PARTS_MAX_PARAMS). A
#: fixed size, so which experiments share a program does not depend on the machine's cores.
THREAD_PART = 16


def _thread_parts(part: list[int], params: int) -> list[list[int]]:
    """``part`` in one piece, or in pieces of :data:`THREAD_PART` experiments (a single CPU
    device, a model of at most :data:`THREAD_PARTS_MAX_PARAMS` parameters)."""
    small = params <= THREAD_PARTS_MAX_PARAMS and len(part) > THREAD_PART
    if not small or not single_cpu_device():
        return [part]
    n = -(-len(part) // THREAD_PART)
    size = -(-len(part) // n)  # equal pieces: one compiled shape
    return [part[s : s + size] for s in range(0, len(part), size)]


def _one_by_one(params: int) -> bool:
    return params > ONE_BY_ONE_MIN_PARAMS and single_cpu_device()


def _run_alone(model, train, config: FLConfig, test, bar) -> GroupResult:
    """One experiment through :func:`run_fedavg`, as a group of one."""
    r = run_fedavg(model, train, dataclasses.replace(config, progress=False), test=test)
    if bar is not None:
        bar.update(config.rounds)
    hist = FLHistory(*(np.asarray(f)[None] for f in r.history))
    return GroupResult(
        jax.tree_util.tree_map(lambda a: np.asarray(a)[None], r.params), hist, np.array([r.stopped_early])
    )


def _group_runs(spec, idx, train, configs, models, test, memory_bytes, bar):
    """Yield ``(experiment indices, GroupResult)`` for one group: experiment by experiment
    (:func:`_one_by_one`), or in equal chunks, each in parts (:func:`_thread_parts`)."""
    params = _num_params(spec.model, train)
    if _one_by_one(params):
        for i in idx:
            yield [i], _run_alone(models[i], train, configs[i], test, bar)
        return
    size = _chunk_size(params, spec, train.dim, memory_bytes)
    n_chunks = -(-len(idx) // size)
    size = -(-len(idx) // n_chunks)  # equal chunks: one compiled shape, not a remainder too
    for s in range(0, len(idx), size):
        parts = _thread_parts(idx[s : s + size], params)
        yield from zip(parts, _run_parts(spec, train, configs, parts, test, bar))


def _run_parts(spec, train, configs, parts, test, bar) -> list:
    """``run_group`` on each part, the parts in threads when there are several."""
    if len(parts) == 1:
        return [run_group(spec.model, train, [configs[i] for i in parts[0]], test=test, bar=bar)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(len(parts), _cpu_cores()), thread_name_prefix="mcsl-sweep") as ex:
        futures = [
            ex.submit(run_group, spec.model, train, [configs[i] for i in p], test=test, bar=bar)
            for p in parts
        ]
        return [f.result() for f in futures]


def run_sweep(
    model,
    train: FederatedData,
    config: FLConfig,
    axes: Mapping[str, Sequence],
    *,
    test: FederatedData | None = None,
    memory_bytes: int | None = None,
) -> FLSweepResult:
    """Run K federated experiments, vectorised (issue 11, item 3).

    Parameters
    ----------
    model : flax module (the default for every experiment; an ``axes["model"]``
        entry overrides it per experiment)
    train, test : FederatedData (evaluation on ``test``, else on ``train``)
    config : FLConfig shared by every experiment
    axes : mapping of FLConfig field names (or ``"model"``) to K values each;
        zipped: experiment ``k`` takes the ``k``-th value of every axis (a grid
        is ``itertools.product`` by the caller). Numeric fields
        (:data:`NUMERIC_FIELDS`) are vectorised within one program;
        structural ones (:data:`STRUCTURAL_FIELDS`) form groups, one program
        each. ``strategy``, ``progress`` and ``compiled`` cannot vary. On one
        CPU device, models above :data:`ONE_BY_ONE_MIN_PARAMS` parameters run
        experiment by experiment through :func:`run_fedavg` (faster there).
    memory_bytes : bytes one chunk of experiments may use (default a quarter of
        the device's memory, see :func:`mcsl_core.fl._compiled.memory_budget`);
        the chunk holds ``memory_bytes // bytes_per_experiment`` experiments.

    Returns
    -------
    FLSweepResult
        Experiment ``k`` equals ``run_fedavg(models[k], train, configs[k],
        test=test)`` up to float32 rounding.
    """
    configs, models = _resolve(model, config, axes)
    for i, c in enumerate(configs):
        if c.clients_per_round > train.num_clients:
            raise ValueError(
                f"axes: experiment {i}: clients_per_round={c.clients_per_round} exceeds "
                f"the {train.num_clients} clients"
            )
    groups: dict[Any, list[int]] = {}
    for i, (m, c) in enumerate(zip(models, configs)):
        groups.setdefault(group_spec(m, c), []).append(i)
    k = len(configs)
    rounds = max(c.rounds for c in configs)
    progress = config.progress if config.progress is not None else k * rounds >= 500
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(c.rounds for c in configs), desc=f"sweep ({k} experiments)", unit="exp-round")
    results: list = [None] * k
    try:
        for spec, idx in groups.items():
            for part, g in _group_runs(spec, idx, train, configs, models, test, memory_bytes, bar):
                for j, i in enumerate(part):
                    results[i] = (jax.tree_util.tree_map(lambda a, j=j: a[j], g.params), g, j)
    finally:
        if bar is not None:
            bar.close()
    return _assemble(results, configs, models, axes, rounds)


def _assemble(results, configs, models, axes, rounds: int) -> FLSweepResult:
    def field(name, fill, dtype):
        out = np.full((len(configs), rounds), fill, dtype)
        for i, (_, g, j) in enumerate(results):
            row = getattr(g.history, name)[j]
            out[i, : row.size] = row
        return out

    hist = FLHistory(
        field("round", 0, np.int64),
        field("train_loss", np.nan, np.float32),
        field("eval_loss", np.nan, np.float32),
        field("eval_accuracy", np.nan, np.float32),
        field("round_time", np.nan, np.float64),
    )
    trees = [r[0] for r in results]
    structs = {jax.tree_util.tree_structure(t) for t in trees}
    shapes = {tuple(a.shape for a in jax.tree_util.tree_leaves(t)) for t in trees}
    if len(structs) == 1 and len(shapes) == 1:
        params = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)
    else:
        params = trees
    stopped = np.array([bool(g.stopped_early[j]) for _, g, j in results])
    return FLSweepResult(
        params, hist, tuple(configs), tuple(models), stopped, {n: tuple(v) for n, v in axes.items()}
    )
