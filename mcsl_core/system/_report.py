"""What a task did: :class:`TaskReport`, its table, and the output files.

The output folder receives ``rounds.csv``, ``config.toml``, ``summary.txt``,
``accuracy.png`` and, last (its presence marks a finished run),
``report.json``, each written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from mcsl_core._io import atomic_write_text, write_csv
from mcsl_core.system._config import TaskConfig, config_to_toml
from mcsl_core.system._state import RoundRecord, TaskState

__all__ = ["TaskReport", "build_report", "write_outputs"]

_CLASSES = {"device": "devices", "edge_server": "edge_servers", "node": "nodes"}


@dataclass(frozen=True)
class TaskReport:
    """What one task did, in numbers (``report.json`` holds the same fields).

    Money is in currency units, and exactly in integer minor units in
    ``minor_units`` (keys ``bill``, ``collected``, ``owed``, ``devices``,
    ``edge_servers``, ``nodes``): ``devices + edge_servers + nodes == collected``
    and ``collected + owed == bill``.
    """

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
    total_bill: float  # W in currency units (0 when the requirement was not met: nothing is due)
    paid: dict[str, float]  # what was paid, currency units per class: devices, edge_servers, nodes
    amount_collected: float  # what the requestor paid over the installments (currency units)
    collected_fraction: float  # amount_collected / W (0 when nothing is due)
    amount_owed: float  # W - amount_collected, recorded on the chain as owed
    installments_paid: int  # of the config's payment.installments
    shares_released: int  # shares of the final result the leader released
    minor_units: dict[str, int]  # the money above, exact
    requestor_cooperation: float  # long-run probability that the requestor pays (payment.long_run)
    leader_payoff: float  # long-run payoffs of the payment game at the requestor's strategy
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
            (
                "collected",
                f"{self.amount_collected:,.2f} ({self.collected_fraction:.1%} of W; "
                f"{self.installments_paid} installments paid, {self.shares_released} shares released), "
                f"owed {self.amount_owed:,.2f}",
            ),
            ("paid to devices", f"{self.paid['devices']:,.2f}"),
            ("paid to edge servers", f"{self.paid['edge_servers']:,.2f}"),
            ("paid to nodes", f"{self.paid['nodes']:,.2f}"),
            (
                "requestor cooperation",
                f"{self.requestor_cooperation:.3f} long run (payoffs: leader "
                f"{self.leader_payoff:.2f}, requestor {self.requestor_payoff:.2f})",
            ),
            (
                "ledger",
                f"height {self.ledger_height}, {'verified' if self.ledger_verified else 'VERIFICATION FAILED'}",
            ),
            ("time by stage", ", ".join(f"{k} {v:.2f} s" for k, v in self.stage_seconds.items())),
            ("wall time", f"{self.wall_seconds:.1f} s"),
        ]
        return _table(rows)


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    line = "+" + "-" * (w + 2) + "+" + "-" * 72 + "+"
    out = [line]
    for k, v in rows:
        for i, part in enumerate(textwrap.wrap(v, 70) or [""]):
            out.append(f"| {k if i == 0 else '':<{w}} | {part:<70} |")
    out.append(line)
    return "\n".join(out)


def _money(state: TaskState) -> dict[str, int]:
    """The task's money in minor units, read from its payment and collection records."""
    units = {"bill": 0, "collected": 0, "owed": 0, "devices": 0, "edge_servers": 0, "nodes": 0}
    s = state.settlement
    if s is None or s.collection is None:
        return units
    units.update(bill=s.bill.total, collected=s.collection.collected, owed=s.collection.owed)
    for a in s.collection.allocations:
        units[_CLASSES[a.role]] += a.amount
    return units


def _game(state: TaskState) -> tuple[float, float, float]:
    """Long-run P(requestor pays) and payoffs at the strategies of the game."""
    from mcsl_core import payment

    s = state.settlement
    stable = payment.long_run(
        s.p, s.q, payment.PAPER_X, payment.PAPER_Y, init=[s.q[0], 1.0 - s.q[0], 0.0, 0.0]
    )
    v = stable.v
    return float(v[0] + v[2]), float(stable.E_b), float(stable.E_r)


def build_report(state: TaskState, *, height: int, verified: bool, wall_seconds: float) -> TaskReport:
    """The report of a finished task."""
    cfg, s, rec = state.cfg, state.settlement, state.rounds
    units = _money(state)
    mu = cfg.minor_unit
    coop, e_b, e_r = _game(state)
    return TaskReport(
        task_id=cfg.task_id,
        requirement_met=state.met,
        rounds=len(rec),
        accuracy=tuple(r.accuracy for r in rec),
        final_accuracy=rec[-1].accuracy,
        devices_bidding=state.world.num_devices,
        devices_recruited=int(state.recruited.size),
        devices_accepted=int(state.accepted.sum()),
        devices_rejected=int(state.recruited.size - state.accepted.sum()),
        edge_servers_active=len({r for r in state.nearest[state.accepted]}),
        consensus_time_s=sum(r.consensus_s for r in rec),
        consensus_messages=sum(r.messages for r in rec),
        view_changes=sum(r.view_changes for r in rec),
        updates_dropped=state.updates_dropped,
        total_bill=units["bill"] * mu,
        paid={k: units[k] * mu for k in ("devices", "edge_servers", "nodes")},
        amount_collected=units["collected"] * mu,
        collected_fraction=units["collected"] / units["bill"] if units["bill"] else 0.0,
        amount_owed=units["owed"] * mu,
        installments_paid=int(s.requestor_c.sum()),
        shares_released=int(s.leader_c.sum()),
        minor_units=units,
        requestor_cooperation=coop,
        leader_payoff=e_b,
        requestor_payoff=e_r,
        ledger_height=height,
        ledger_verified=verified,
        stage_seconds=state.stages.as_dict(),
        wall_seconds=wall_seconds,
        out_dir=str(state.out),
    )


def _figure(cfg: TaskConfig, report: TaskReport, rounds: list[RoundRecord], path: Path) -> None:
    from mcsl_core._plot import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot([r.number for r in rounds], [r.accuracy for r in rounds], marker="o", ms=3)
    ax[0].axhline(cfg.target_accuracy, color="grey", ls="--", lw=1, label="requirement")
    ax[0].set(xlabel="round", ylabel="test accuracy", title=f"{cfg.task_id}: learning")
    ax[0].legend(loc="lower right")
    ax[1].bar(list(report.stage_seconds), list(report.stage_seconds.values()), color="tab:blue")
    ax[1].set(ylabel="wall seconds", title="time by procedure")
    ax[1].tick_params(axis="x", rotation=30)
    save_figure(fig, path)


def write_outputs(
    out: Path, cfg: TaskConfig, report: TaskReport, rounds: list[RoundRecord], *, figure: bool = True
) -> None:
    """Write every output file (``accuracy.png`` only with ``figure``); ``report.json`` last."""
    write_csv(out / "rounds.csv", RoundRecord.HEADER, [r.row() for r in rounds])
    atomic_write_text(out / "config.toml", config_to_toml(cfg))
    atomic_write_text(out / "summary.txt", report.summary() + "\n")
    if figure:
        _figure(cfg, report, rounds, out / "accuracy.png")
    atomic_write_text(out / "report.json", report.to_json() + "\n")  # last: its presence marks a finished run
