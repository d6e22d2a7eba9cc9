"""One MCS learning task end to end (issue: the system), on tiny configurations."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from fractions import Fraction

import pytest

from mcsl_core import ledger as L
from mcsl_core.cli import main
from mcsl_core.system import TaskConfig, run_task
from tests.system.conftest import TINY


def raw_blocks(path):
    chain = L.Ledger.open(path)
    try:
        return [chain.block(h) for h in range(len(chain))]
    finally:
        chain.close()


def chain_blocks(path):
    """(height, proposer, decoded transactions) of every block, read straight from the file."""
    return [
        (b.header.height, b.header.proposer, [L.decode_tx(t.payload) for t in b.txs])
        for b in raw_blocks(path)
    ]


def exact_bill(blocks, cfg: TaskConfig):
    """SPEC.md section 4 from the chain's records, in exact rationals: {(role, payee): share in minor units}.

    W = sum of v + s over devices + w_l * trainings + w_a * aggregations + w_b * blocks, each
    block counted for its proposer when it carries a record of the task, up to the payment record.
    """
    mu = Fraction(repr(cfg.minor_unit))
    share: dict[tuple[str, str], Fraction] = {}

    def add(key, amount):
        share[key] = share.get(key, Fraction(0)) + amount / mu

    for _, proposer, txs in blocks:
        if any(isinstance(t, L.PaymentRecord) for t in txs):
            break
        for t in txs:
            if isinstance(t, L.DataSubmissionPayment):
                add(("device", t.device), Fraction(t.v) + Fraction(t.s))
            elif isinstance(t, L.ModelUpdate):
                add(("edge_server", t.edge_server), Fraction(cfg.w_l))
            elif isinstance(t, L.AggregatedModel):
                add(("node", t.leader), Fraction(cfg.w_a))
        if any(getattr(t, "task_id", None) == cfg.task_id for t in txs):
            add(("node", proposer), Fraction(cfg.w_b))
    return share


def test_tiny_task_runs_every_procedure(tiny_run):
    report, out = tiny_run
    assert report.requirement_met and report.rounds == 1  # target 0: met after the first round
    assert report.devices_recruited == report.devices_accepted + report.devices_rejected
    assert 0 < report.devices_accepted <= report.devices_recruited <= report.devices_bidding == 24
    assert report.consensus_messages > 0 and report.consensus_time_s > 0
    assert report.ledger_verified
    for name in ("report.json", "rounds.csv", "summary.txt", "accuracy.png", "config.toml", "ledger.sqlite"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["ledger_height"] == report.ledger_height
    assert saved["amount_collected"] == report.amount_collected
    assert saved["collected_fraction"] == report.collected_fraction
    assert set(report.stage_seconds) == {
        "mechanism",
        "training",
        "signing_verification",
        "consensus_simulation",
        "settlement",
        "ledger",
    }


def test_ledger_verifies_from_the_cli(tiny_run, capsys):
    report, out = tiny_run
    assert main(["ledger", "verify", str(out / "ledger.sqlite")]) == 0
    assert f"{report.ledger_height} blocks" in capsys.readouterr().out


def test_the_bill_is_the_chain_records_priced_by_the_spec(tiny_run):
    """The bill recomputed from the chain's transactions (not from the settlement) in exact arithmetic."""
    report, out = tiny_run
    blocks = chain_blocks(out / "ledger.sqlite")
    share = exact_bill(blocks, TINY)
    pay = next(t for _, _, txs in blocks for t in txs if isinstance(t, L.PaymentRecord))
    # exact: Fraction(v) + Fraction(s) differs from the contract's float v + s by at most half an
    # ulp (~3e-14 currency), which changes a rounding only within that distance of a half unit
    assert pay.total == round(sum(share.values()))  # round half to even, as SPEC.md section 4
    assert report.minor_units["bill"] == pay.total
    got = {(a.role, a.payee): a.amount for a in pay.allocations}
    nodes = {("node", t.name) for t in blocks[0][2]}  # genesis: every node is listed, idle ones with 0
    assert set(got) == set(share) | nodes
    share = {k: share.get(k, Fraction(0)) for k in got}
    extra = {k for k in got if got[k] == int(share[k]) + 1}
    assert all(got[k] - int(share[k]) in (0, 1) for k in got) and sum(got.values()) == pay.total
    if extra and len(extra) < len(got):  # the units above the floors go to the largest fractional parts
        assert min(share[k] % 1 for k in extra) >= max(share[k] % 1 for k in got if k not in extra)


def test_what_is_paid_is_what_the_installments_collected(tiny_run):
    report, out = tiny_run
    blocks = chain_blocks(out / "ledger.sqlite")
    txs = [t for _, _, b in blocks for t in b]
    pay = next(t for t in txs if isinstance(t, L.PaymentRecord))
    inst = [t for t in txs if isinstance(t, L.Installment)]
    rel = [t for t in txs if isinstance(t, L.ResultRelease)]
    (coll,) = [t for t in txs if isinstance(t, L.PaymentCollection)]
    k = TINY.installments
    assert [i.index for i in inst] == list(range(k)) == [r.index for r in rel]
    assert [i.due for i in inst] == [pay.total // k + (j < pay.total % k) for j in range(k)]
    collected = sum(i.paid for i in inst)
    assert coll.collected == collected and coll.owed == pay.total - collected
    assert sum(a.amount for a in coll.allocations) == collected
    units = report.minor_units
    assert units["devices"] + units["edge_servers"] + units["nodes"] == units["collected"] == collected
    assert report.installments_paid == sum(i.paid > 0 for i in inst)
    assert report.shares_released == sum(r.share is not None for r in rel)
    assert report.collected_fraction == collected / pay.total


def test_same_seed_same_ledger_byte_for_byte(tiny_run, tmp_path):
    """Also: ``figure=False`` (what a sweep's workers run) changes nothing but the missing PNG."""
    report, out = tiny_run
    again = run_task(TINY, tmp_path, progress=False, figure=False)
    assert again.accuracy == report.accuracy and again.minor_units == report.minor_units
    assert (tmp_path / "ledger.sqlite").read_bytes() == (out / "ledger.sqlite").read_bytes()
    assert (tmp_path / "rounds.csv").read_text() == (out / "rounds.csv").read_text()
    assert (tmp_path / "summary.txt").is_file() and not (tmp_path / "accuracy.png").exists()


def test_faulty_leader_forces_a_recorded_view_change(tmp_path):
    cfg = TINY.replace(faulty_leader_rounds=(1,), max_rounds=2, target_accuracy=1.0)
    report = run_task(cfg, tmp_path, progress=False)
    assert report.view_changes >= 1 and report.ledger_verified
    assert not report.requirement_met and report.minor_units["bill"] == 0 and report.amount_collected == 0
    rows = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert int(rows[0]["view_changes"]) >= 1 and int(rows[1]["view_changes"]) == 0
    views = [b.header.view for b in raw_blocks(tmp_path / "ledger.sqlite")]
    assert max(views) >= 1  # the round-1 block was proposed by the new view's leader


def test_hotstuff_with_a_silent_node_runs_and_settles(tmp_path):
    """A config the validator accepts runs: another protocol, a silent (non-leader) node."""
    cfg = TINY.replace(protocol="hotstuff", faulty_nodes=1, leader_strategy="tft")
    report = run_task(cfg, tmp_path, progress=False)
    assert report.requirement_met and report.ledger_verified and report.consensus_messages > 0


@pytest.mark.slow
@pytest.mark.parametrize("robust", ["median", "krum"])
def test_byzantine_server_wrecks_fedavg_but_not_robust_aggregation(robust, tmp_path):
    # one of 8 edge servers sends -10x its update every round
    base = TaskConfig(
        num_edge_servers=8, byzantine_servers=1, byzantine_scale=10.0, max_rounds=15, target_accuracy=1.0
    )
    avg = run_task(base, tmp_path / "avg", progress=False)
    avg_clean = run_task(base.replace(byzantine_servers=0), tmp_path / "avg_clean", progress=False)
    rob = run_task(base.replace(aggregator=robust), tmp_path / "rob", progress=False)
    rob_clean = run_task(
        base.replace(aggregator=robust, byzantine_servers=0), tmp_path / "rob_clean", progress=False
    )
    assert avg.final_accuracy < avg_clean.final_accuracy - 0.25  # FedAvg is dragged down
    assert rob.final_accuracy > avg.final_accuracy + 0.15
    assert rob.final_accuracy > rob_clean.final_accuracy - 0.1  # the robust rule holds


def test_mcsl_run_rejects_malformed_config_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[learning]\nrouds = 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mcsl_core", "run", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("mcsl: error:") and "unknown key learning.rouds" in proc.stderr
    bad.write_text("[learning\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mcsl_core", "run", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr and "Traceback" not in proc.stderr
