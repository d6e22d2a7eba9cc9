"""One MCS learning task through all four procedures (SPEC.md; paper Fig. 1, Algorithms 1-2).

:func:`run_task` drives every party of the system on one task and records every
step on a consortium ledger:

1. **Task publication** (paper IV-A). The requestor signs a
   :class:`~mcsl_core.ledger.TaskPublication`; the recruitment contract
   (:func:`~mcsl_core.ledger.recruit_workers`, greedy budgeted maximum coverage)
   selects devices from their bids.
2. **Data submission** (paper IV-B, Algorithm 1). Each recruited device plays the
   mechanism game with its nearest edge server, every pair with its own drawn
   parameters, solved in one batched call of :func:`mcsl_core.mechanism.solve`
   (the constrained, physically meaningful optimum by default). Accepted
   submissions are paid ``v + s`` and recorded; rejected devices' data never
   reaches a server.
3. **Learning** (paper IV-C, Algorithm 2). Edge servers train on the union of
   their devices' data (:mod:`mcsl_core.fl`); each stores its update in the
   content-addressed model store and signs a :class:`~mcsl_core.ledger.ModelUpdate`;
   the nodes verify every update (invalid ones are dropped); the elected leader
   aggregates, and the block is agreed by PBFT, simulated message by message by
   :func:`mcsl_core.consensus.simulate_pbft` (a faulty leader forces a view
   change, and the block is then proposed in the new view). Byzantine edge
   servers may send sign-flipped or scaled updates.
4. **Settlement** (paper IV-D). Once the requirement is met the final model is
   bound to the requestor; the leader's ZD strategy plays the repeated payment
   game against the adapting requestor (:mod:`mcsl_core.payment`), and the
   payment contract allocates the bill W to every device, edge server and
   node in exact integer minor units.

The output folder receives ``report.json`` (the :class:`TaskReport`),
``rounds.csv``, ``summary.txt``, ``accuracy.png``, the SQLite ledger
``ledger.sqlite`` and the model store ``store/``. Each file is written
atomically; each ledger block is one SQLite transaction, so an interrupted run
leaves a ledger that verifies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
import time
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcsl_core._bft import max_faulty
from mcsl_core._io import atomic_write_text, write_csv

__all__ = [
    "StageTimes",
    "TaskConfig",
    "TaskReport",
    "demo_command",
    "load_config",
    "run_command",
    "run_task",
]

_STAGES = ("mechanism", "training", "signing_verification", "consensus_simulation", "settlement", "ledger")


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskConfig:
    """Every parameter of one MCS learning task (frozen). TOML files mirror it
    section by section (see ``mcsl_core/configs/example.toml``).

    The defaults are the embedded demo: synthetic FedProx devices, a logistic
    model, 6 edge servers and a 4-node consortium; it runs in well under two
    minutes on two CPU cores.
    """

    # -- [task] ------------------------------------------------------------
    task_id: str = "mcs-task-1"
    description: str = "air quality sensing: classify the pollution regime at each location"
    target_accuracy: float = 0.75  # requirement: pooled test accuracy in [0, 1]
    max_rounds: int = 40  # round budget of the requirement
    recruitment_budget: float = 400.0  # currency units for the recruitment contract
    seed: int = 0

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
    aggregator: str = "fedavg"  # "fedavg", "median", "trimmed_mean", "krum"
    local_epochs: int = 2
    batch_size: int = 10
    client_lr: float = 0.1
    strategy: str = "auto"
    byzantine_servers: int = 0  # edge servers that send poisoned updates
    byzantine_attack: str = "sign_flip"  # "sign_flip" (-scale * update) or "scale" (scale * update)
    byzantine_scale: float = 10.0

    # -- [chain] -----------------------------------------------------------
    num_nodes: int = 4  # consortium nodes, n = 3f + 1 tolerates f faults
    faulty_nodes: int = 0  # silent nodes (besides a faulty leader)
    faulty_leader_rounds: tuple[int, ...] = ()  # rounds whose first leader is silent -> view change
    protocol: str = "pbft"
    update_bytes: int = 0  # bytes per update in the consensus model; 0: the stored update's size

    # -- [payment] ---------------------------------------------------------
    w_l: float = 1.0  # per local training
    w_a: float = 2.0  # per aggregation
    w_b: float = 0.5  # per block
    minor_unit: float = 0.01
    zd_chi: float = 2.0
    zd_phi_fraction: float = 0.5  # phi as a fraction of the largest feasible phi
    requestor_q0: float = 0.3  # requestor's initial cooperation probability (q1 = q2 = q0)
    requestor_rule: str = "gradient"  # "gradient" or "bush_mosteller"
    game_steps: int = 2000
    game_lr: float = 0.05

    def __post_init__(self) -> None:
        _check_config(self)

    def replace(self, **changes: Any) -> TaskConfig:
        return dataclasses.replace(self, **changes)


#: TOML section -> the TaskConfig fields it holds.
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


def _check_config(c: TaskConfig) -> None:
    hints = typing.get_type_hints(TaskConfig)
    for f in dataclasses.fields(c):
        _check_type(f.name, getattr(c, f.name), hints[f.name])
    for name in (
        "max_rounds",
        "num_devices",
        "num_locations",
        "num_edge_servers",
        "local_epochs",
        "batch_size",
        "num_nodes",
        "game_steps",
    ):
        if getattr(c, name) < 1:
            raise _bad(name, f"must be >= 1, got {getattr(c, name)}")
    for name in ("faulty_nodes", "byzantine_servers", "update_bytes", "seed"):
        if getattr(c, name) < 0:
            raise _bad(name, f"must be >= 0, got {getattr(c, name)}")
    for name in (
        "recruitment_budget",
        "R",
        "alpha_s",
        "beta_s",
        "c_d",
        "w_l",
        "w_a",
        "w_b",
        "synthetic_alpha",
        "synthetic_beta",
    ):
        if not getattr(c, name) >= 0:
            raise _bad(name, f"must be >= 0, got {getattr(c, name)}")
    for name in ("v_bar", "s_bar", "client_lr", "minor_unit", "byzantine_scale", "game_lr"):
        if not getattr(c, name) > 0:
            raise _bad(name, f"must be > 0, got {getattr(c, name)}")
    for name in ("target_accuracy", "requestor_q0"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise _bad(name, f"must lie in [0, 1], got {getattr(c, name)}")
    if not 0.0 < c.zd_phi_fraction <= 1.0:
        raise _bad("zd_phi_fraction", f"must lie in (0, 1], got {c.zd_phi_fraction}")
    if c.zd_chi < 1.0:
        raise _bad("zd_chi", f"must be >= 1 (cooperation enforcing), got {c.zd_chi}")
    for name, lo, hi in (
        ("eta", 0, None),
        ("xi", 0, None),
        ("eps", 0, 1),
        ("theta", 0, 1),
        ("bid_cost", 0, None),
    ):
        a, b = getattr(c, name)
        if not (a <= b and a >= lo and (hi is None or b <= hi)) or (name == "bid_cost" and a <= 0):
            raise _bad(
                name,
                f"must be a range [low, high] with {lo} {'<' if name == 'bid_cost' else '<='} low <= high"
                + (f" <= {hi}" if hi is not None else "")
                + f", got {[a, b]}",
            )
    choices = {
        "dataset": ("synthetic", "femnist"),
        "model": ("logistic", "mlp", "cnn"),
        "aggregator": ("fedavg", "median", "trimmed_mean", "krum"),
        "strategy": ("auto", "loop", "vmap", "shard"),
        "byzantine_attack": ("sign_flip", "scale"),
        "protocol": ("pbft", "paper", "hotstuff"),
        "requestor_rule": ("gradient", "bush_mosteller"),
    }
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            raise _bad(name, f"must be one of {list(allowed)}, got {getattr(c, name)!r}")
    if c.dataset == "femnist" and not c.data_dir:
        raise _bad("data_dir", "is required when dataset = 'femnist'")
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
    if c.byzantine_servers >= c.num_edge_servers:
        raise _bad("byzantine_servers", f"must be fewer than num_edge_servers = {c.num_edge_servers}")


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Check a config value against its annotation (int, float, str, bool, tuples, optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        opts = typing.get_args(hint)
        if value is None and type(None) in opts:
            return
        hint = next(a for a in opts if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            raise _bad(name, f"must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            for v in value:
                _check_type(name, v, args[0])
        else:
            if len(value) != len(args):
                raise _bad(name, f"must be a list of {len(args)} numbers, got {list(value)!r}")
            for v, a in zip(value, args):
                _check_type(name, v, a)
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
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    try:
        cfg = config_from_mapping(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_absolute():
        cfg = cfg.replace(data_dir=str((path.parent / cfg.data_dir).resolve()))
    return cfg


def config_to_toml(cfg: TaskConfig) -> str:
    """The TOML text that :func:`load_config` reads back to ``cfg``."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, tuple):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, names in SECTIONS.items():
        lines.append(f"[{section}]")
        for n in names:
            v = getattr(cfg, n)
            if v is not None:
                lines.append(f"{n} = {fmt(v)}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
@dataclass
class StageTimes:
    """Wall seconds spent in each procedure (the end-to-end benchmark's breakdown)."""

    mechanism: float = 0.0
    training: float = 0.0
    signing_verification: float = 0.0
    consensus_simulation: float = 0.0
    settlement: float = 0.0
    ledger: float = 0.0  # building, certifying, appending and re-verifying blocks

    def add(self, stage: str, seconds: float) -> None:
        setattr(self, stage, getattr(self, stage) + seconds)


@dataclass(frozen=True)
class TaskReport:
    """What one task did, in numbers (``report.json`` holds the same fields)."""

    task_id: str
    requirement_met: bool
    rounds: int
    accuracy: tuple[float, ...]  # pooled test accuracy after each round
    final_accuracy: float
    devices_bidding: int
    devices_recruited: int
    devices_accepted: int
    devices_rejected: int
    edge_servers_active: int  # edge servers with at least one accepted device
    consensus_time_s: float  # simulated, summed over all learning blocks
    consensus_messages: int
    view_changes: int
    updates_dropped: int  # updates the nodes rejected at verification
    total_bill: float  # W in currency units
    paid: dict[str, float]  # currency units per class: devices, edge_servers, nodes
    requestor_cooperation: float  # requestor's stable probability of paying in full
    leader_payoff: float  # long-run payoffs of the payment game at the requestor's final strategy
    requestor_payoff: float
    ledger_height: int
    ledger_verified: bool
    stage_seconds: dict[str, float]
    wall_seconds: float
    out_dir: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def summary(self) -> str:
        """A readable table of the task."""
        rows = [
            ("task", self.task_id),
            (
                "requirement met",
                f"{'yes' if self.requirement_met else 'no'} "
                f"(accuracy {self.final_accuracy:.3f} after {self.rounds} rounds)",
            ),
            (
                "devices",
                f"{self.devices_bidding} bid, {self.devices_recruited} recruited, "
                f"{self.devices_accepted} accepted, {self.devices_rejected} rejected",
            ),
            ("edge servers active", str(self.edge_servers_active)),
            ("updates dropped", str(self.updates_dropped)),
            (
                "consensus (simulated)",
                f"{self.consensus_time_s:.3f} s, {self.consensus_messages:,} messages, "
                f"{self.view_changes} view change(s)",
            ),
            ("bill W", f"{self.total_bill:,.2f}"),
            ("paid to devices", f"{self.paid['devices']:,.2f}"),
            ("paid to edge servers", f"{self.paid['edge_servers']:,.2f}"),
            ("paid to nodes", f"{self.paid['nodes']:,.2f}"),
            (
                "requestor cooperation",
                f"{self.requestor_cooperation:.3f} (payoffs: leader "
                f"{self.leader_payoff:.2f}, requestor {self.requestor_payoff:.2f})",
            ),
            (
                "ledger",
                f"height {self.ledger_height}, "
                f"{'verified' if self.ledger_verified else 'VERIFICATION FAILED'}",
            ),
            ("time by stage", ", ".join(f"{k} {v:.2f} s" for k, v in self.stage_seconds.items())),
            ("wall time", f"{self.wall_seconds:.1f} s"),
        ]
        w = max(len(k) for k, _ in rows)
        line = "+" + "-" * (w + 2) + "+" + "-" * 72 + "+"
        out = [line]
        for k, v in rows:
            for i, part in enumerate(textwrap.wrap(v, 70) or [""]):
                out.append(f"| {k if i == 0 else '':<{w}} | {part:<70} |")
        out.append(line)
        return "\n".join(out)


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------
def _load_devices(cfg: TaskConfig):
    """Per-device train and test data (a LEAF writer or a synthetic device is one device)."""
    from mcsl_core import fl

    if cfg.dataset == "synthetic":
        return fl.synthetic_fedprox(
            cfg.synthetic_alpha, cfg.synthetic_beta, num_clients=cfg.num_devices, seed=cfg.seed
        )
    root = Path(cfg.data_dir)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise ValueError(f"data.data_dir: {root} must hold LEAF train/ and test/ folders")
    train = fl.load_leaf(root / "train")
    test = fl.load_leaf(root / "test", num_classes=train.num_classes)
    return train, test


def _make_model(cfg: TaskConfig, dim: int, num_classes: int):
    from mcsl_core import fl

    if cfg.model == "logistic":
        return fl.logistic(dim, num_classes)
    if cfg.model == "mlp":
        return fl.mlp(dim, num_classes)
    if dim != 784:
        raise ValueError(f"learning.model: 'cnn' needs 28x28 images (dim 784), the data has dim {dim}")
    return fl.femnist_cnn(num_classes)


def _grid_locations(n: int) -> tuple[list[str], np.ndarray]:
    side = math.ceil(math.sqrt(n))
    names, pts = [], []
    for k in range(n):
        i, j = divmod(k, side)
        names.append(f"loc{k:03d}")
        pts.append(((j + 0.5) / side, (i + 0.5) / side))
    return names, np.asarray(pts)


def _poison(updates, rows: np.ndarray, attack: str, scale: float):
    """Byzantine edge servers replace their update: -scale * u (sign flip) or scale * u."""
    import jax
    import jax.numpy as jnp

    factor = -scale if attack == "sign_flip" else scale
    w = jnp.asarray(np.where(rows, factor, 1.0), jnp.float32)
    return jax.tree_util.tree_map(lambda u: u * w.reshape((-1,) + (1,) * (u.ndim - 1)), updates)


def run_task(
    cfg: TaskConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TaskReport:
    """Run one MCS learning task end to end; write its outputs under ``out_dir``.

    Parameters
    ----------
    cfg : TaskConfig
    out_dir : folder for ``report.json``, ``rounds.csv``, ``summary.txt``,
        ``accuracy.png``, ``ledger.sqlite`` and ``store/``. An existing ledger
        there is replaced (the run starts a new chain).
    progress : show a progress bar over rounds.
    log : where to print one-line stage messages (default: nowhere).

    Returns
    -------
    TaskReport
    """
    import jax
    import optax
    from tqdm.auto import tqdm

    from mcsl_core import consensus, fl, mechanism, payment
    from mcsl_core import ledger as L

    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    times = StageTimes()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)

    # ---- parties and the chain ------------------------------------------
    t0 = time.perf_counter()
    nodes = L.Consortium.generate(cfg.num_nodes, seed=f"{cfg.seed}/nodes")
    requestor = L.Identity.generate("requestor", "requestor", seed=f"{cfg.seed}/requestor")
    servers = [
        L.Identity.generate("edge_server", f"edge{k}", seed=f"{cfg.seed}/edge{k}")
        for k in range(cfg.num_edge_servers)
    ]
    ledger_path = out / "ledger.sqlite"
    for stale in (
        ledger_path,
        ledger_path.with_name(ledger_path.name + "-journal"),
        ledger_path.with_name(ledger_path.name + "-wal"),
    ):
        stale.unlink(missing_ok=True)
    chain = L.Ledger.create(ledger_path, nodes.genesis())
    store = L.ModelStore(out / "store")
    admit = nodes.names[0]
    regs = [
        L.MembershipRegistration("requestor", requestor.name, requestor.public_key, admit).sign(
            nodes.node(admit)
        )
    ]
    regs += [
        L.MembershipRegistration("edge_server", s.name, s.public_key, admit).sign(nodes.node(admit))
        for s in servers
    ]
    chain.append(nodes.propose(chain, regs))
    times.add("ledger", time.perf_counter() - t0)

    # ---- 1. task publication and recruitment ----------------------------
    train_all, test_all = _load_devices(cfg)
    n_dev = train_all.num_clients
    device_ids = [f"dev{i:04d}" for i in range(n_dev)]
    loc_names, loc_pts = _grid_locations(cfg.num_locations)
    dev_pts = rng.uniform(0.0, 1.0, size=(n_dev, 2))
    srv_pts = rng.uniform(0.0, 1.0, size=(cfg.num_edge_servers, 2))
    # a device senses the locations within sensing range of where it is
    reach = 1.0 / math.ceil(math.sqrt(cfg.num_locations))
    near = np.linalg.norm(dev_pts[:, None, :] - loc_pts[None, :, :], axis=-1) <= reach
    costs = rng.uniform(*cfg.bid_cost, size=n_dev)
    bids = [
        L.Bid(
            device_ids[i],
            round(float(costs[i]), 2),
            tuple(loc_names[j] for j in np.flatnonzero(near[i]))
            or (loc_names[int(np.argmin(np.linalg.norm(loc_pts - dev_pts[i], axis=-1)))],),
        )
        for i in range(n_dev)
    ]

    t0 = time.perf_counter()
    publication = L.TaskPublication(
        requestor.name,
        cfg.task_id,
        cfg.description,
        cfg.target_accuracy,
        cfg.recruitment_budget,
        tuple(loc_names),
    )
    chain.append(nodes.propose(chain, [publication.sign(requestor)]))
    recruitment = L.recruit_for_task(chain, cfg.task_id, bids)
    chain.append(nodes.propose(chain, [recruitment]))
    times.add("ledger", time.perf_counter() - t0)
    recruited = np.array(sorted(device_ids.index(d) for d in recruitment.selected), dtype=np.int64)
    say(
        f"recruitment: {recruited.size} of {n_dev} devices within budget {cfg.recruitment_budget:g}, "
        f"covering {len(recruitment.covered)} of {len(loc_names)} locations"
    )
    if recruited.size == 0:
        raise ValueError("task.recruitment_budget: no device could be recruited within the budget")

    # ---- 2. data submission: one mechanism game per device-server pair ---
    t0 = time.perf_counter()
    nearest = np.argmin(np.linalg.norm(dev_pts[recruited, None, :] - srv_pts[None, :, :], axis=-1), axis=1)
    k = recruited.size
    draw = {name: rng.uniform(*getattr(cfg, name), size=k) for name in ("eta", "xi", "eps", "theta")}
    params = mechanism.MechanismParams(
        R=cfg.R, alpha_s=cfg.alpha_s, beta_s=cfg.beta_s, v_bar=cfg.v_bar, s_bar=cfg.s_bar, c_d=cfg.c_d, **draw
    )
    sol = mechanism.solve(params, constrained=cfg.constrained)
    accepted = np.asarray(sol.valid & sol.accepted)
    times.add("mechanism", time.perf_counter() - t0)
    say(f"mechanism: {int(accepted.sum())} of {k} submissions accepted")
    if not accepted.any():
        raise ValueError(
            "no data submission was accepted by any edge server; widen mechanism parameter ranges"
        )

    t0 = time.perf_counter()
    pay_txs = []
    for i in np.flatnonzero(accepted):
        srv = servers[int(nearest[i])]
        pay_txs.append(
            L.DataSubmissionPayment(
                cfg.task_id, device_ids[int(recruited[i])], srv.name, float(sol.v[i]), float(sol.s[i])
            ).sign(srv)
        )
    chain.append(nodes.propose(chain, pay_txs))
    times.add("ledger", time.perf_counter() - t0)

    # ---- 3. learning rounds ---------------------------------------------
    groups, active = [], []
    for sidx in range(cfg.num_edge_servers):
        members = recruited[accepted & (nearest == sidx)]
        if members.size:
            groups.append(members)
            active.append(sidx)
    server_data = fl.merge_clients(train_all, groups, [servers[s].name for s in active])
    # the requirement is judged on the held-out split of the devices whose data was used
    test_index = {cid: i for i, cid in enumerate(test_all.client_ids)}
    used = [train_all.client_ids[int(d)] for g in groups for d in g]
    test_data = test_all.select([test_index[c] for c in used if c in test_index])
    model = _make_model(cfg, train_all.dim, train_all.num_classes)
    n_active = len(active)
    byz = np.zeros(n_active, dtype=bool)
    byz[: min(cfg.byzantine_servers, n_active)] = True
    max_faulty(cfg.num_nodes)
    flcfg = fl.FLConfig(
        rounds=cfg.max_rounds,
        clients_per_round=n_active,
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        client_lr=cfg.client_lr,
        seed=cfg.seed,
        aggregator=cfg.aggregator,
        num_byzantine=int(byz.sum()),
        strategy=cfg.strategy,
        multi_krum=max(1, n_active - int(byz.sum())) if cfg.aggregator == "krum" else 1,
        trim_fraction=min(0.45, max(0.1, float(byz.sum()) / n_active))
        if cfg.aggregator == "trimmed_mean"
        else 0.1,
    )
    opt = optax.sgd(1.0)
    gparams = fl.init_params(model, train_all.dim, jax.random.key(cfg.seed))
    opt_state = opt.init(gparams)
    store.put(jax.tree_util.tree_map(np.asarray, gparams))
    key = jax.random.key(cfg.seed)
    clients = np.arange(n_active, dtype=np.int64)
    faulty_names = set(nodes.names[len(nodes.names) - cfg.faulty_nodes :]) if cfg.faulty_nodes else set()

    accuracy: list[float] = []
    rows = []
    total_time = 0.0
    total_msgs = 0
    total_views = 0
    dropped = 0
    met = False
    bar = tqdm(total=cfg.max_rounds, desc="learning rounds", unit="round", disable=not progress, leave=False)
    r = 0
    for r in range(1, cfg.max_rounds + 1):
        t0 = time.perf_counter()
        ru = fl.federated_round(model, gparams, server_data, clients, flcfg, key=key, round_index=r)
        updates = ru.updates
        if byz.any():
            updates = _poison(updates, byz, cfg.byzantine_attack, cfg.byzantine_scale)
        host = jax.tree_util.tree_map(np.asarray, updates)
        times.add("training", time.perf_counter() - t0)

        # each edge server stores and signs its update (chain rounds count from 0);
        # the nodes verify the round
        t0 = time.perf_counter()
        signed, blobs = [], []
        for j, sidx in enumerate(active):
            one = jax.tree_util.tree_map(lambda u: u[j], host)  # noqa: B023 (used at once)
            blob = L.encode_tree(one)
            address = store.put_bytes(blob)
            tx = L.ModelUpdate(cfg.task_id, r - 1, servers[sidx].name, address, int(ru.num_samples[j]))
            signed.append(tx.sign(servers[sidx]))
            blobs.append(blob)
        check = L.verify_update_round(chain, list(zip(signed, blobs)), task_id=cfg.task_id, round=r - 1)
        keep = np.flatnonzero(check.valid)
        dropped += len(signed) - int(keep.size)
        times.add("signing_verification", time.perf_counter() - t0)

        # the elected leader aggregates the valid updates
        t0 = time.perf_counter()
        kept = jax.tree_util.tree_map(lambda u: u[keep], updates)  # noqa: B023 (used at once)
        agg = fl.aggregate(kept, ru.num_samples[keep], flcfg, key=jax.random.fold_in(key, r))
        gparams, opt_state = fl.server_update(opt, gparams, opt_state, agg)
        ev = fl.evaluate(model, gparams, test_data)
        times.add("training", time.perf_counter() - t0)
        accuracy.append(float(ev.accuracy))

        # PBFT on the block, simulated message by message
        t0 = time.perf_counter()
        leader_faulty = r in cfg.faulty_leader_rounds
        upd_bytes = cfg.update_bytes or max(len(b) for b in blobs)
        cres = consensus.simulate_pbft(
            cfg.num_nodes,
            int(keep.size),
            update_bytes=float(upd_bytes),
            faulty=cfg.faulty_nodes + int(leader_faulty),
            leader_faulty=leader_faulty,
            protocol=cfg.protocol,
            seed=cfg.seed * 100_003 + r,
        )
        times.add("consensus_simulation", time.perf_counter() - t0)
        if not cres.committed:
            raise RuntimeError(f"round {r}: the simulated consensus did not commit the block")
        total_time += float(cres.time_s)
        total_msgs += int(cres.messages)
        total_views += int(cres.view_changes)

        t0 = time.perf_counter()
        view = int(cres.view_changes)
        silent = set(faulty_names)
        if leader_faulty:
            silent.add(nodes.leader(chain, 0).name)
        signers = [n for n in nodes.names if n not in silent]
        gaddr = store.put(jax.tree_util.tree_map(np.asarray, gparams))
        leader = nodes.leader(chain, view).name
        aggtx = L.AggregatedModel(
            cfg.task_id,
            r - 1,
            leader,
            gaddr,
            tuple(servers[active[j]].name for j in keep),
            {"accuracy": float(ev.accuracy), "loss": float(ev.loss)},
        )
        block_txs = [signed[j] for j in keep] + [aggtx]
        met = ev.accuracy >= cfg.target_accuracy
        if met:
            block_txs.append(L.ResultBinding(cfg.task_id, r - 1, requestor.name, gaddr))
        chain.append(nodes.propose(chain, block_txs, view=view, signers=signers))
        times.add("ledger", time.perf_counter() - t0)
        rows.append(
            (
                r,
                float(ev.accuracy),
                float(ev.loss),
                float(np.mean(ru.loss)),
                int(keep.size),
                float(cres.time_s),
                int(cres.messages),
                int(cres.view_changes),
                leader,
            )
        )
        bar.update(1)
        bar.set_postfix(acc=f"{ev.accuracy:.3f}")
        if met:
            break
    bar.close()
    say(
        f"learning: accuracy {accuracy[-1]:.3f} after {r} rounds "
        f"({'requirement met' if met else 'round budget exhausted'})"
    )

    # ---- 4. settlement: ZD payment game, then the payment contract ------
    t0 = time.perf_counter()
    x, y = payment.PAPER_X, payment.PAPER_Y
    lo, hi = payment.zd_phi_bounds(x, y, cfg.zd_chi)
    phi = hi * cfg.zd_phi_fraction if hi > 0 else lo * cfg.zd_phi_fraction
    p = payment.zd_strategy(x, y, cfg.zd_chi, phi)
    traj = payment.evolve_requestor(
        p,
        np.array([cfg.requestor_q0, cfg.requestor_q0]),
        rule=cfg.requestor_rule,
        steps=cfg.game_steps,
        lr=cfg.game_lr,
        seed=cfg.seed,
        record_every=max(1, cfg.game_steps // 100),
    )
    q_final = np.asarray(traj.q[-1])
    stable = payment.long_run(p, q_final, x, y)
    coop = float(
        np.asarray(stable.v)[0] + np.asarray(stable.v)[2]
    )  # P(requestor pays in full) at the stable state
    settlement = None
    if met:
        settlement = L.settle_task(
            chain, cfg.task_id, w_l=cfg.w_l, w_a=cfg.w_a, w_b=cfg.w_b, minor_unit=cfg.minor_unit
        )
    times.add("settlement", time.perf_counter() - t0)
    paid = {"devices": 0.0, "edge_servers": 0.0, "nodes": 0.0}
    total_bill = 0.0
    if settlement is not None:
        t0 = time.perf_counter()
        chain.append(nodes.propose(chain, [settlement]))
        times.add("ledger", time.perf_counter() - t0)
        cls = {"device": "devices", "edge_server": "edge_servers", "node": "nodes"}
        units = {v: 0 for v in cls.values()}
        for a in settlement.allocations:
            units[cls[a.role]] += a.amount
        paid = {k: v * cfg.minor_unit for k, v in units.items()}
        total_bill = settlement.total * cfg.minor_unit

    # ---- verify the chain as an outsider would --------------------------
    t0 = time.perf_counter()
    height = len(chain)
    chain.close()
    verified = bool(L.verify_file(ledger_path).ok)
    times.add("ledger", time.perf_counter() - t0)

    report = TaskReport(
        task_id=cfg.task_id,
        requirement_met=bool(met),
        rounds=r,
        accuracy=tuple(accuracy),
        final_accuracy=accuracy[-1],
        devices_bidding=n_dev,
        devices_recruited=int(recruited.size),
        devices_accepted=int(accepted.sum()),
        devices_rejected=int(k - accepted.sum()),
        edge_servers_active=n_active,
        consensus_time_s=total_time,
        consensus_messages=total_msgs,
        view_changes=total_views,
        updates_dropped=dropped,
        total_bill=total_bill,
        paid=paid,
        requestor_cooperation=coop,
        leader_payoff=float(stable.E_b),
        requestor_payoff=float(stable.E_r),
        ledger_height=height,
        ledger_verified=verified,
        stage_seconds={s: round(getattr(times, s), 4) for s in _STAGES},
        wall_seconds=time.perf_counter() - t_start,
        out_dir=str(out),
    )
    _write_outputs(out, cfg, report, rows)
    return report


def _write_outputs(out: Path, cfg: TaskConfig, report: TaskReport, rows: list[tuple]) -> None:
    from mcsl_core.experiments._common import pyplot, save_figure

    write_csv(
        out / "rounds.csv",
        [
            "round",
            "accuracy",
            "loss",
            "train_loss",
            "updates_kept",
            "consensus_s",
            "messages",
            "view_changes",
            "leader",
        ],
        rows,
    )
    atomic_write_text(out / "config.toml", config_to_toml(cfg))
    atomic_write_text(out / "summary.txt", report.summary() + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    rr = [row[0] for row in rows]
    ax[0].plot(rr, [row[1] for row in rows], marker="o", ms=3)
    ax[0].axhline(cfg.target_accuracy, color="grey", ls="--", lw=1, label="requirement")
    ax[0].set(xlabel="round", ylabel="test accuracy", title=f"{cfg.task_id}: learning")
    ax[0].legend(loc="lower right")
    ax[1].bar(list(report.stage_seconds), list(report.stage_seconds.values()), color="tab:blue")
    ax[1].set(ylabel="wall seconds", title="time by procedure")
    ax[1].tick_params(axis="x", rotation=30)
    save_figure(fig, out / "accuracy.png")
    atomic_write_text(out / "report.json", report.to_json() + "\n")  # last: its presence marks a finished run


# ---------------------------------------------------------------------------
# command-line entry points (called by mcsl_core.cli)
# ---------------------------------------------------------------------------
def _run_and_print(cfg: TaskConfig, out: Path, quiet: bool) -> int:
    report = run_task(cfg, out, progress=not quiet, log=None if quiet else (lambda m: print(f"  {m}")))
    print(report.summary())
    print(f"outputs in {out}/ (report.json, rounds.csv, accuracy.png, ledger.sqlite)")
    return 0 if report.ledger_verified else 1


def demo_command(*, out: Path, data_dir: str | None = None, quiet: bool = False) -> int:
    """``mcsl demo``: the embedded default task (synthetic devices), or LEAF FEMNIST with ``data_dir``."""
    cfg = TaskConfig()
    if data_dir is not None:
        cfg = cfg.replace(
            dataset="femnist",
            data_dir=str(Path(data_dir).resolve()),
            model="cnn",
            num_edge_servers=5,
            target_accuracy=0.6,
            max_rounds=30,
            recruitment_budget=600.0,
            client_lr=0.05,
            local_epochs=1,
            batch_size=20,
        )
    return _run_and_print(cfg, out, quiet)


def run_command(config: Path, *, out: Path | None = None, quiet: bool = False) -> int:
    """``mcsl run CONFIG.toml``."""
    cfg = load_config(config)
    return _run_and_print(cfg, out or Path("mcsl_out") / cfg.task_id, quiet)
