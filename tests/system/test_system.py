"""One MCS learning task end to end (issue: the system), on tiny configurations."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mcsl_core import ledger as L
from mcsl_core.cli import main
from mcsl_core.system import TaskConfig, config_from_mapping, load_config, run_task

EXAMPLE = Path(__file__).resolve().parents[2] / "mcsl_core" / "configs" / "example.toml"

#: A task small enough for the fast tier: 24 devices, 3 edge servers, a few rounds.
TINY = TaskConfig(
    num_devices=24,
    num_locations=36,
    num_edge_servers=3,
    max_rounds=3,
    target_accuracy=0.0,
    recruitment_budget=1000.0,
    game_steps=300,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return run_task(TINY, out, progress=False), out


def test_tiny_task_runs_every_procedure(tiny_run):
    report, out = tiny_run
    assert report.requirement_met and report.rounds == 1  # target 0: met after the first round
    assert report.devices_recruited == report.devices_accepted + report.devices_rejected
    assert 0 < report.devices_accepted <= report.devices_recruited <= report.devices_bidding == 24
    assert report.consensus_messages > 0 and report.consensus_time_s > 0
    assert report.ledger_verified
    for name in ("report.json", "rounds.csv", "summary.txt", "accuracy.png", "config.toml", "ledger.sqlite"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["ledger_height"] == report.ledger_height
    assert set(report.stage_seconds) == {
        "mechanism",
        "training",
        "signing_verification",
        "consensus_simulation",
        "settlement",
        "ledger",
    }


def test_ledger_records_the_task_and_verifies_from_the_cli(tiny_run, capsys):
    report, out = tiny_run
    assert main(["ledger", "verify", str(out / "ledger.sqlite")]) == 0
    chain = L.Ledger.open(out / "ledger.sqlite")
    try:
        assert len(chain) == report.ledger_height
        kinds = [
            rec.kind if hasattr(rec, "kind") else type(rec.tx).__name__
            for rec in chain.task_records(TINY.task_id)
        ]
        assert kinds  # publication, recruitment, payments, updates, aggregate, binding, payment
    finally:
        chain.close()


def test_payments_sum_to_the_bill_exactly(tiny_run):
    report, out = tiny_run
    chain = L.Ledger.open(out / "ledger.sqlite")
    try:
        records = [chain.block(h) for h in range(len(chain))]
    finally:
        chain.close()
    pays = [
        L.decode_tx(stx.payload)
        for b in records
        for stx in b.txs
        if isinstance(L.decode_tx(stx.payload), L.PaymentRecord)
    ]
    assert len(pays) == 1
    pay = pays[0]
    assert sum(a.amount for a in pay.allocations) == pay.total
    assert pay.total == round(report.total_bill / TINY.minor_unit)
    # the bill: every accepted device's v + s, plus flat rates for trainings, aggregations and blocks
    subs = [
        L.decode_tx(stx.payload)
        for b in records
        for stx in b.txs
        if isinstance(L.decode_tx(stx.payload), L.DataSubmissionPayment)
    ]
    assert len(subs) == report.devices_accepted
    devices = sum(a.amount for a in pay.allocations if a.role == "device")
    assert devices == pytest.approx(sum(t.v + t.s for t in subs) / TINY.minor_unit, abs=len(subs))
    assert report.paid["devices"] + report.paid["edge_servers"] + report.paid["nodes"] == pytest.approx(
        report.total_bill, abs=1e-9
    )


def test_same_seed_same_task(tiny_run, tmp_path):
    report, out = tiny_run
    again = run_task(TINY, tmp_path, progress=False)
    assert again.accuracy == report.accuracy
    assert again.total_bill == report.total_bill
    assert (tmp_path / "rounds.csv").read_text() == (out / "rounds.csv").read_text()


def test_faulty_leader_forces_a_recorded_view_change(tmp_path):
    cfg = TINY.replace(faulty_leader_rounds=(1,), max_rounds=2, target_accuracy=1.0)
    report = run_task(cfg, tmp_path, progress=False)
    assert report.view_changes >= 1 and report.ledger_verified
    rows = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert int(rows[0]["view_changes"]) >= 1 and int(rows[1]["view_changes"]) == 0
    chain = L.Ledger.open(tmp_path / "ledger.sqlite")
    try:
        views = [chain.block(h).header.view for h in range(len(chain))]
    finally:
        chain.close()
    assert max(views) >= 1  # the round-1 block was proposed by the new view's leader


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


def test_example_config_is_the_demo_default():
    assert load_config(EXAMPLE) == TaskConfig()


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"learning": {"rouds": 3}}, r"unknown key learning.rouds"),
        ({"network": {}}, r"unknown section \[network\]"),
        ({"task": {"max_rounds": 0}}, r"task.max_rounds: must be >= 1"),
        ({"task": {"max_rounds": 2.5}}, r"task.max_rounds: must be an int"),
        ({"learning": {"aggregator": "mean"}}, r"learning.aggregator: must be one of"),
        ({"mechanism": {"eps": [0.2, 1.5]}}, r"mechanism.eps: must be a range"),
        ({"chain": {"num_nodes": 4, "faulty_nodes": 2}}, r"chain.faulty_nodes: 4 nodes tolerate f = 1"),
        ({"data": {"dataset": "femnist"}}, r"data.data_dir: is required"),
    ],
)
def test_bad_config_is_rejected_with_the_key(mapping, message):
    with pytest.raises(ValueError, match=message):
        config_from_mapping(mapping)


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
