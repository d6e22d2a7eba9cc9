"""The task config: the TOML schema, upfront validation naming section.key, and the code layout."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mcsl_core.cli import main
from mcsl_core.system import SECTIONS, TaskConfig, config_from_mapping, config_to_toml, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "mcsl_core" / "configs" / "example.toml"


def test_example_config_is_the_demo_default():
    assert load_config(EXAMPLE) == TaskConfig()


def test_every_field_is_in_exactly_one_section_and_toml_round_trips(tmp_path):
    names = [n for ns in SECTIONS.values() for n in ns]
    assert sorted(names) == sorted(TaskConfig.__dataclass_fields__)
    cfg = TaskConfig(task_id="t ü", leader_strategy="wsls", installments=7, faulty_leader_rounds=(2, 3))
    (tmp_path / "c.toml").write_text(config_to_toml(cfg))
    assert load_config(tmp_path / "c.toml") == cfg
    # characters outside the BMP and quotes: JSON's surrogate-pair escapes are not TOML
    odd = TaskConfig(task_id='emoji \U0001f600 "quoted"')
    (tmp_path / "odd.toml").write_text(config_to_toml(odd), encoding="utf-8")
    assert load_config(tmp_path / "odd.toml") == odd


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"chain": {"num_nodes": 10**26}}, r"chain.num_nodes: must be <= 10,000"),
        ({"data": {"num_devices": 10**7}}, r"data.num_devices: must be <= 1,000,000"),
        (
            {"learning": {"aggregator": "krum", "num_edge_servers": 3, "byzantine_servers": 1}},
            r"learning.byzantine_servers: krum needs num_edge_servers >= byzantine_servers \+ 3",
        ),
        ({"learning": {"rouds": 3}}, r"unknown key learning.rouds"),
        ({"network": {}}, r"unknown section \[network\]"),
        ({"task": {"max_rounds": 0}}, r"task.max_rounds: must be >= 1"),
        ({"task": {"max_rounds": 2.5}}, r"task.max_rounds: must be an int"),
        ({"learning": {"aggregator": "mean"}}, r"learning.aggregator: must be one of"),
        ({"mechanism": {"eps": [0.2, 1.5]}}, r"mechanism.eps: must be a range"),
        ({"chain": {"num_nodes": 4, "faulty_nodes": 2}}, r"chain.faulty_nodes: 4 nodes tolerate f = 1"),
        ({"data": {"dataset": "femnist"}}, r"data.data_dir: is required"),
        # issue 10 item 11: each of these was accepted before and failed late, or not at all
        ({"task": {"task_id": ""}}, r"task.task_id: must not be empty"),
        ({"task": {"task_id": "a\x07b"}}, r"task.task_id: must not contain control characters"),
        ({"task": {"task_id": "a\x7fb"}}, r"task.task_id: must not contain control characters"),
        ({"task": {"task_id": "../../x"}}, r"task.task_id: must not contain '/'"),
        ({"task": {"task_id": "a/b"}}, r"task.task_id: must not contain '/'"),
        ({"task": {"task_id": ".."}}, r"task.task_id: must not contain '/'"),
        ({"task": {"task_id": "a\\b"}}, r"task.task_id: must not contain '/'"),
        ({"task": {"seed": 2**63}}, r"task.seed: must lie in \[0, 2\*\*63\), got 9223372036854775808"),
        ({"task": {"seed": 2**64 + 5}}, r"task.seed: must lie in \[0, 2\*\*63\), got 18446744073709551621"),
        ({"task": {"seed": -1}}, r"task.seed: must lie in \[0, 2\*\*63\), got -1"),
        ({"payment": {"minor_unit": 1e-300}}, r"payment.minor_unit: must lie in \[1e-06, 1\]"),
        ({"payment": {"minor_unit": 5.0}}, r"payment.minor_unit: must lie in"),
        (
            {"payment": {"requestor_rule": "bush_mosteller", "game_lr": 1.5}},
            r"payment.game_lr: must lie in \(0, 1\] for requestor_rule = 'bush_mosteller'",
        ),
        (
            {"payment": {"leader_strategy": "grim"}},
            r"payment.leader_strategy: must be one of \['zd', 'tft', 'wsls'\]",
        ),
        ({"payment": {"installments": 0}}, r"payment.installments: must be >= 1"),
        # issue 10 item 5: only PBFT has a view change, so a silent leader never commits otherwise
        (
            {"chain": {"protocol": "hotstuff", "faulty_leader_rounds": [1]}},
            r"chain.faulty_leader_rounds: a silent leader needs a view change",
        ),
        (
            {"chain": {"protocol": "paper", "faulty_leader_rounds": [1]}},
            r"chain.faulty_leader_rounds: a silent leader needs a view change",
        ),
    ],
)
def test_bad_config_is_rejected_with_the_key(mapping, message):
    with pytest.raises(ValueError, match=message):
        config_from_mapping(mapping)


def test_choice_lists_are_the_owners():
    from mcsl_core import _names, consensus, fl, payment

    # one registry: each owner exports the very tuple the config validates against
    assert fl.AGGREGATORS is _names.AGGREGATORS and fl.STRATEGIES is _names.STRATEGIES
    assert consensus.PROTOCOLS is _names.PROTOCOLS and payment.RULES is _names.REQUESTOR_RULES

    cfg = TaskConfig()
    for key, owner in (
        ("aggregator", fl.AGGREGATORS),
        ("protocol", consensus.PROTOCOLS),
        ("requestor_rule", payment.RULES),
    ):
        for name in owner:
            assert getattr(cfg.replace(**{key: name}), key) == name


def test_mcsl_run_refuses_a_task_id_that_leaves_the_output_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('[task]\ntask_id = "../../escaped"\n')
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mcsl: error:") and "task.task_id" in err[0]
    assert list(tmp_path.iterdir()) == [bad]  # nothing was written anywhere under the folder
    assert not (tmp_path.parent.parent / "escaped").exists()


def _function_lengths(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
            ):
                body = body[1:]  # the docstring is not code
            if body:
                yield node.name, node.lineno, body[-1].end_lineno - body[0].lineno + 1


def test_no_function_in_the_system_package_is_over_60_lines():
    files = sorted((ROOT / "mcsl_core" / "system").glob("*.py"))
    assert len(files) >= 9  # __init__, _config, _world, _state, _report and the four procedures
    long = [
        f"{p.name}:{line} {name} ({n} lines)"
        for p in files
        for name, line, n in _function_lengths(p)
        if n > 60
    ]
    assert not long, long
