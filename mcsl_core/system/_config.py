"""The task's configuration: :class:`TaskConfig`, its TOML sections, and validation.

The TOML sections are the schema (:data:`SECTIONS`): ``[task]``, ``[data]``,
``[mechanism]``, ``[learning]``, ``[chain]``, ``[payment]``, one per part of
the system, each key a :class:`TaskConfig` field. Every value is checked when a
config is built, before any work, and a bad one raises ``ValueError`` naming
``section.key``. Choice lists come from the subpackage that owns the choice
(``fl.AGGREGATORS``, ``fl.STRATEGIES``, ``consensus.PROTOCOLS``,
``payment.RULES``); the choices the system itself implements (datasets, models,
Byzantine attacks, leader strategies) are listed here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcsl_core._bft import max_faulty
from mcsl_core._io import read_toml, toml_text
from mcsl_core._names import AGGREGATORS, PROTOCOLS, REQUESTOR_RULES, STRATEGIES

__all__ = [
    "ATTACKS",
    "DATASETS",
    "LEADER_STRATEGIES",
    "MINOR_UNIT_RANGE",
    "MODELS",
    "SECTIONS",
    "SEED_LIMIT",
    "TaskConfig",
    "config_from_mapping",
    "config_to_toml",
    "load_config",
]

#: Data sources, models, Byzantine attacks and leader strategies the system implements.
DATASETS = ("synthetic", "femnist")
MODELS = ("logistic", "mlp", "cnn")
ATTACKS = ("sign_flip", "scale")
LEADER_STRATEGIES = ("zd", "tft", "wsls")
#: Seeds are non-negative and below 2**63 (they seed int64 streams in the kernels).
SEED_LIMIT = 2**63
#: The minor unit of money, in currency units: from a millionth (float64 amounts of up
#: to about 1e9 currency units still resolve it) to one whole unit.
MINOR_UNIT_RANGE = (1e-6, 1.0)


@dataclass(frozen=True)
class TaskConfig:
    """Every parameter of one MCS learning task (frozen). TOML files mirror it
    section by section (see ``mcsl_core/configs/example.toml``).

    The defaults are the embedded demo: synthetic FedProx devices, a logistic
    model, 6 edge servers and a 4-node consortium; it runs in well under two
    minutes on two CPU cores.
    """

    # -- [task] ------------------------------------------------------------
    task_id: str = "mcs-task-1"  # printable, no "/", "\\" or ".." (it names files)
    description: str = "air quality sensing: classify the pollution regime at each location"
    target_accuracy: float = 0.75  # requirement: pooled test accuracy in [0, 1]
    max_rounds: int = 40  # round budget of the requirement
    recruitment_budget: float = 400.0  # currency units for the recruitment contract
    seed: int = 0  # in [0, 2**63)

    # -- [data] ------------------------------------------------------------
    dataset: str = "synthetic"  # "synthetic" (FedProx Synthetic(alpha, beta)) or "femnist" (LEAF)
    data_dir: str | None = None  # LEAF folder with train/ and test/ (dataset = "femnist")
    num_devices: int = 60  # synthetic devices (femnist: every writer in data_dir is a device)
    synthetic_alpha: float = 0.5
    synthetic_beta: float = 0.5
    num_locations: int = 100  # sensing locations, a square grid over the unit square
    bid_cost: tuple[float, float] = (4.0, 12.0)  # devices' recruitment bids, uniform range

    # -- [mechanism] (each device-server pair draws its own parameters) ----
    constrained: bool = True  # feasible bilevel optimum (False: the paper's closed forms)
    R: float = 10.0
    alpha_s: float = 3.0
    beta_s: float = 2.0
    v_bar: float = 50.0
    s_bar: float = 500.0
    c_d: float = 2.0
    eta: tuple[float, float] = (0.5, 3.0)  # uniform ranges drawn per pair (eta * xi <= 1: no trade)
    xi: tuple[float, float] = (0.5, 3.0)
    eps: tuple[float, float] = (0.5, 0.95)
    theta: tuple[float, float] = (0.0, 1.0)

    # -- [learning] --------------------------------------------------------
    model: str = "logistic"  # "logistic", "mlp" or "cnn" (FEMNIST CNN)
    num_edge_servers: int = 6
    aggregator: str = "fedavg"  # fl.AGGREGATORS: "fedavg", "median", "trimmed_mean", "krum"
    local_epochs: int = 2
    batch_size: int = 10
    client_lr: float = 0.1
    strategy: str = "auto"  # fl.STRATEGIES
    byzantine_servers: int = 0  # edge servers that send poisoned updates
    byzantine_attack: str = "sign_flip"  # "sign_flip" (-scale * update) or "scale" (scale * update)
    byzantine_scale: float = 10.0

    # -- [chain] -----------------------------------------------------------
    num_nodes: int = 4  # consortium nodes, n = 3f + 1 tolerates f faults
    faulty_nodes: int = 0  # silent nodes (besides a faulty leader)
    faulty_leader_rounds: tuple[int, ...] = ()  # rounds (from 1) whose first leader is silent (pbft)
    protocol: str = "pbft"  # consensus.PROTOCOLS
    update_bytes: int = 0  # bytes per update in the consensus model; 0: the stored update's size

    # -- [payment] ---------------------------------------------------------
    w_l: float = 1.0  # per local training
    w_a: float = 2.0  # per aggregation
    w_b: float = 0.5  # per block
    minor_unit: float = 0.01  # in MINOR_UNIT_RANGE
    leader_strategy: str = "zd"  # "zd", "tft" or "wsls": the leader's memory-one strategy
    installments: int = 20  # the bill is due in this many rounds of the payment game
    zd_chi: float = 2.0
    zd_phi_fraction: float = 0.5  # phi as a fraction of the largest feasible phi
    requestor_q0: float = 0.3  # requestor's initial cooperation probability (q1 = q2 = q0)
    requestor_rule: str = "gradient"  # payment.RULES: "gradient" or "bush_mosteller"
    game_steps: int = 2000  # learning steps of the requestor before the installments
    game_lr: float = 0.05  # > 0; at most 1 for "bush_mosteller"

    def __post_init__(self) -> None:
        _check_config(self)

    def replace(self, **changes: Any) -> TaskConfig:
        return dataclasses.replace(self, **changes)


#: TOML section -> the TaskConfig fields it holds (the schema).
SECTIONS: dict[str, tuple[str, ...]] = {
    "task": ("task_id", "description", "target_accuracy", "max_rounds", "recruitment_budget", "seed"),
    "data": (
        "dataset",
        "data_dir",
        "num_devices",
        "synthetic_alpha",
        "synthetic_beta",
        "num_locations",
        "bid_cost",
    ),
    "mechanism": (
        "constrained",
        "R",
        "alpha_s",
        "beta_s",
        "v_bar",
        "s_bar",
        "c_d",
        "eta",
        "xi",
        "eps",
        "theta",
    ),
    "learning": (
        "model",
        "num_edge_servers",
        "aggregator",
        "local_epochs",
        "batch_size",
        "client_lr",
        "strategy",
        "byzantine_servers",
        "byzantine_attack",
        "byzantine_scale",
    ),
    "chain": ("num_nodes", "faulty_nodes", "faulty_leader_rounds", "protocol", "update_bytes"),
    "payment": (
        "w_l",
        "w_a",
        "w_b",
        "minor_unit",
        "leader_strategy",
        "installments",
        "zd_chi",
        "zd_phi_fraction",
        "requestor_q0",
        "requestor_rule",
        "game_steps",
        "game_lr",
    ),
}


def _section_of(name: str) -> str:
    return next(s for s, names in SECTIONS.items() if name in names)


def _bad(name: str, why: str) -> ValueError:
    return ValueError(f"{_section_of(name)}.{name}: {why}")


# ---------------------------------------------------------------- validation
def _check_config(c: TaskConfig) -> None:
    hints = typing.get_type_hints(TaskConfig)
    for f in dataclasses.fields(c):
        _check_type(f.name, getattr(c, f.name), hints[f.name])
    _check_task(c)
    _check_counts(c)
    _check_amounts(c)
    _check_ranges(c)
    _check_choices(c)
    _check_chain(c)
    _check_payment(c)
    if c.dataset == "femnist" and not c.data_dir:
        raise _bad("data_dir", "is required when dataset = 'femnist'")
    if c.byzantine_servers >= c.num_edge_servers:
        raise _bad("byzantine_servers", f"must be fewer than num_edge_servers = {c.num_edge_servers}")
    if c.aggregator == "krum" and c.byzantine_servers > c.num_edge_servers - 3:
        # Krum scores each update by its n - f - 2 nearest others: it needs n >= f + 3 clients
        raise _bad(
            "byzantine_servers",
            f"krum needs num_edge_servers >= byzantine_servers + 3, got {c.num_edge_servers} and "
            f"{c.byzantine_servers}",
        )


def _check_task(c: TaskConfig) -> None:
    """task_id names the output files and the task on the chain: printable, one path part."""
    tid = c.task_id
    if not tid:
        raise _bad("task_id", "must not be empty")
    if len(tid) > 200:
        raise _bad("task_id", f"must be at most 200 characters, got {len(tid)}")
    if not tid.isprintable():
        raise _bad("task_id", f"must not contain control characters, got {tid!r}")
    if "/" in tid or "\\" in tid or ".." in tid:
        raise _bad("task_id", f"must not contain '/', '\\' or '..' (it names a folder), got {tid!r}")
    if not 0 <= c.seed < SEED_LIMIT:
        raise _bad("seed", f"must lie in [0, 2**63), got {c.seed}")


#: Largest accepted value of each size: beyond these a task cannot run on one machine (the
#: consensus simulator's per-view tables, the world's per-device draws, the game's play), so
#: they are refused upfront instead of failing, or exhausting memory, after work has begun.
SIZE_LIMITS: dict[str, int] = {
    "num_devices": 10**6,
    "num_locations": 10**6,
    "num_edge_servers": 10**5,
    "num_nodes": 10**4,
    "max_rounds": 10**6,
    "local_epochs": 10**4,
    "batch_size": 10**6,
    "game_steps": 10**8,
    "installments": 10**6,
    "update_bytes": 2**40,
}


def _check_counts(c: TaskConfig) -> None:
    positive = (
        "max_rounds",
        "num_devices",
        "num_locations",
        "num_edge_servers",
        "local_epochs",
        "batch_size",
        "num_nodes",
        "game_steps",
        "installments",
    )
    for name in positive:
        if getattr(c, name) < 1:
            raise _bad(name, f"must be >= 1, got {getattr(c, name)}")
    for name in ("faulty_nodes", "byzantine_servers", "update_bytes"):
        if getattr(c, name) < 0:
            raise _bad(name, f"must be >= 0, got {getattr(c, name)}")
    for name, hi in SIZE_LIMITS.items():
        if getattr(c, name) > hi:
            raise _bad(
                name, f"must be <= {hi:,} (the largest size one machine can run), got {getattr(c, name)}"
            )


def _check_amounts(c: TaskConfig) -> None:
    nonneg = ("recruitment_budget", "R", "alpha_s", "beta_s", "c_d", "w_l", "w_a", "w_b")
    for name in (*nonneg, "synthetic_alpha", "synthetic_beta"):
        if not getattr(c, name) >= 0:
            raise _bad(name, f"must be >= 0, got {getattr(c, name)}")
    for name in ("v_bar", "s_bar", "client_lr", "byzantine_scale", "game_lr"):
        if not getattr(c, name) > 0:
            raise _bad(name, f"must be > 0, got {getattr(c, name)}")
    lo, hi = MINOR_UNIT_RANGE
    if not lo <= c.minor_unit <= hi:
        raise _bad("minor_unit", f"must lie in [{lo:g}, {hi:g}] currency units, got {c.minor_unit!r}")
    for name in ("target_accuracy", "requestor_q0"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise _bad(name, f"must lie in [0, 1], got {getattr(c, name)}")


def _check_ranges(c: TaskConfig) -> None:
    for name, hi in (("eta", None), ("xi", None), ("eps", 1), ("theta", 1), ("bid_cost", None)):
        a, b = getattr(c, name)
        strict = name == "bid_cost"  # a bid is a positive price
        if not (0 <= a <= b and (hi is None or b <= hi)) or (strict and a <= 0):
            top = f" <= {hi}" if hi is not None else ""
            raise _bad(
                name,
                f"must be a range [low, high] with 0 {'<' if strict else '<='} low <= high{top}, got {[a, b]}",
            )


def _choices() -> dict[str, tuple[str, ...]]:
    return {
        "dataset": DATASETS,
        "model": MODELS,
        "aggregator": AGGREGATORS,
        "strategy": STRATEGIES,
        "byzantine_attack": ATTACKS,
        "protocol": PROTOCOLS,
        "leader_strategy": LEADER_STRATEGIES,
        "requestor_rule": REQUESTOR_RULES,
    }


def _check_choices(c: TaskConfig) -> None:
    for name, allowed in _choices().items():
        if getattr(c, name) not in allowed:
            raise _bad(name, f"must be one of {list(allowed)}, got {getattr(c, name)!r}")


def _check_chain(c: TaskConfig) -> None:
    if c.num_nodes < 4:
        raise _bad("num_nodes", f"PBFT needs at least 4 nodes (n = 3f + 1), got {c.num_nodes}")
    f = max_faulty(c.num_nodes)
    if c.faulty_nodes + (1 if c.faulty_leader_rounds else 0) > f:
        raise _bad(
            "faulty_nodes",
            f"{c.num_nodes} nodes tolerate f = {f} faulty nodes; "
            f"{c.faulty_nodes} faulty plus a faulty leader is too many for the chain to make progress",
        )
    if any(r < 1 for r in c.faulty_leader_rounds):
        raise _bad("faulty_leader_rounds", "rounds are numbered from 1")
    if c.faulty_leader_rounds and c.protocol != "pbft":
        # consensus.simulate_pbft: only PBFT has a view change; a silent leader never commits otherwise
        raise _bad(
            "faulty_leader_rounds",
            f"a silent leader needs a view change, which only protocol = 'pbft' has (protocol is {c.protocol!r})",
        )


def _check_payment(c: TaskConfig) -> None:
    if not 0.0 < c.zd_phi_fraction <= 1.0:
        raise _bad("zd_phi_fraction", f"must lie in (0, 1], got {c.zd_phi_fraction}")
    if c.zd_chi < 1.0:
        raise _bad("zd_chi", f"must be >= 1 (cooperation enforcing), got {c.zd_chi}")
    if c.requestor_rule == "bush_mosteller" and c.game_lr > 1.0:
        raise _bad("game_lr", f"must lie in (0, 1] for requestor_rule = 'bush_mosteller', got {c.game_lr}")


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Check a config value against its annotation (int, float, str, bool, tuples, optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        _check_tuple(name, value, typing.get_args(hint))
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
    }[hint](value)
    if not ok:
        kind = {float: "a finite number", int: "an int"}.get(hint, f"a {hint.__name__}")
        raise _bad(name, f"must be {kind}, got {value!r}")


def _check_tuple(name: str, value: Any, args: tuple) -> None:
    if not isinstance(value, tuple):
        raise _bad(name, f"must be a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        for v in value:
            _check_type(name, v, args[0])
        return
    if len(value) != len(args):
        raise _bad(name, f"must be a list of {len(args)} numbers, got {list(value)!r}")
    for v, a in zip(value, args):
        _check_type(name, v, a)


# ---------------------------------------------------------------- TOML
def config_from_mapping(data: dict[str, Any], *, base: TaskConfig | None = None) -> TaskConfig:
    """A TaskConfig from a TOML-shaped mapping ``{section: {key: value}}``.

    Unknown sections or keys, and values of the wrong type or out of range, raise
    ``ValueError`` naming ``section.key``.
    """
    changes: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise ValueError(f"unknown section [{section}]; sections are {', '.join(SECTIONS)}")
        if not isinstance(body, dict):
            raise ValueError(f"[{section}] must be a table of key = value pairs")
        for key, value in body.items():
            if key not in SECTIONS[section]:
                raise ValueError(
                    f"unknown key {section}.{key}; keys of [{section}] are {', '.join(SECTIONS[section])}"
                )
            changes[key] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base or TaskConfig(), **changes)


def load_config(path: str | Path) -> TaskConfig:
    """Read a TOML task config (see ``mcsl_core/configs/example.toml``)."""
    path = Path(path)
    data = read_toml(path)
    try:
        cfg = config_from_mapping(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_absolute():
        cfg = cfg.replace(data_dir=str((path.parent / cfg.data_dir).resolve()))
    return cfg


def config_to_toml(cfg: TaskConfig) -> str:
    """The TOML text that :func:`load_config` reads back to ``cfg``."""
    return toml_text({section: {n: getattr(cfg, n) for n in names} for section, names in SECTIONS.items()})
