"""The sweep spec: axes, seeds, base configs, point names, and every bad spec rejected up front."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcsl_core._io import toml_text
from mcsl_core.cli import main
from mcsl_core.sweep import load_spec, point_hash, spec_from_mapping
from mcsl_core.system import TaskConfig, config_from_mapping, load_config
from tests.conftest import examples

ROOT = Path(__file__).resolve().parents[2]


def test_grid_is_the_cartesian_product_in_order_then_seeds():
    spec = spec_from_mapping(
        {
            "sweep": {
                "seeds": 2,
                "grid": {
                    "learning.aggregator": ["fedavg", "median"],
                    "learning.byzantine_servers": [0, 1, 2],
                },
            },
            "task": {"max_rounds": 3},
        }
    )
    want = list(itertools.product(["fedavg", "median"], [0, 1, 2], [0, 1]))  # first axis slowest
    got = [
        (p.values["learning.aggregator"], p.values["learning.byzantine_servers"], p.seed) for p in spec.points
    ]
    assert got == want
    assert spec.axes == ("learning.aggregator", "learning.byzantine_servers")
    for p, (agg, byz, seed) in zip(spec.points, want):
        assert p.config == TaskConfig(max_rounds=3, aggregator=agg, byzantine_servers=byz, seed=seed)
        assert p.point == point_hash(p.config)
    assert len({p.point for p in spec.points}) == 12


def test_zip_axes_vary_together_and_multiply_the_grid():
    spec = spec_from_mapping(
        {
            "sweep": {
                "seeds": [5],
                "grid": {"payment": {"requestor_rule": ["gradient", "bush_mosteller"]}},  # unquoted keys
                "zip": {"learning.num_edge_servers": [3, 6], "chain.num_nodes": [4, 7]},
            }
        }
    )
    got = [
        (p.values["payment.requestor_rule"], p.config.num_edge_servers, p.config.num_nodes, p.seed)
        for p in spec.points
    ]
    assert got == [(r, e, n, 5) for r in ("gradient", "bush_mosteller") for e, n in ((3, 4), (6, 7))]
    assert spec.axes == ("payment.requestor_rule", "learning.num_edge_servers", "chain.num_nodes")


def test_seeds_default_to_the_base_seed_and_accept_lists():
    assert [p.seed for p in spec_from_mapping({"task": {"seed": 7}}).points] == [7]
    assert [p.seed for p in spec_from_mapping({"sweep": {"seeds": [3, 1]}}).points] == [3, 1]


def test_base_file_is_relative_to_the_spec_and_inline_sections_override_it(tmp_path):
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "base.toml").write_text(
        '[task]\nmax_rounds = 7\ntarget_accuracy = 0.5\n[data]\ndata_dir = "leaf"\n'
    )
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        'base = "cfgs/base.toml"\n[sweep.grid]\n"learning.aggregator" = ["krum"]\n[task]\nmax_rounds = 2\n'
    )
    (cfg,) = [p.config for p in load_spec(spec_path).points]
    assert (cfg.max_rounds, cfg.target_accuracy, cfg.aggregator) == (2, 0.5, "krum")
    assert cfg.data_dir == str((tmp_path / "cfgs" / "leaf").resolve())  # relative to the base file
    # the same through [sweep] base
    spec_path.write_text('[sweep]\nbase = "cfgs/base.toml"\n[task]\nmax_rounds = 2\n')
    assert load_spec(spec_path).base.target_accuracy == 0.5


def test_point_names_are_stable_across_processes():
    cfg = TaskConfig(max_rounds=3, aggregator="median", bid_cost=(2.0, 5.0))
    code = (
        "from mcsl_core.sweep import point_hash; from mcsl_core.system import TaskConfig;"
        "print(point_hash(TaskConfig(max_rounds=3, aggregator='median', bid_cost=(2.0, 5.0))))"
    )
    for hashseed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": hashseed},
        )
        assert out.stdout.strip() == point_hash(cfg)
    assert len(point_hash(cfg)) == 16 and int(point_hash(cfg), 16) >= 0


#: One changed value per field of TaskConfig (each valid on the defaults).
_CHANGES = {
    "task_id": "other",
    "description": "x",
    "target_accuracy": 0.5,
    "max_rounds": 3,
    "recruitment_budget": 10.0,
    "seed": 1,
    "dataset": "femnist",
    "data_dir": "/leaf",
    "num_devices": 5,
    "synthetic_alpha": 1.0,
    "synthetic_beta": 1.0,
    "num_locations": 9,
    "bid_cost": (1.0, 2.0),
    "constrained": False,
    "R": 11.0,
    "alpha_s": 2.0,
    "beta_s": 3.0,
    "v_bar": 40.0,
    "s_bar": 400.0,
    "c_d": 1.0,
    "eta": (0.5, 2.0),
    "xi": (0.5, 2.0),
    "eps": (0.5, 0.9),
    "theta": (0.1, 1.0),
    "model": "mlp",
    "num_edge_servers": 5,
    "aggregator": "krum",
    "local_epochs": 1,
    "batch_size": 5,
    "client_lr": 0.2,
    "strategy": "loop",
    "byzantine_servers": 1,
    "byzantine_attack": "scale",
    "byzantine_scale": 5.0,
    "num_nodes": 7,
    "faulty_nodes": 1,
    "faulty_leader_rounds": (2,),
    "protocol": "hotstuff",
    "update_bytes": 10,
    "w_l": 2.0,
    "w_a": 1.0,
    "w_b": 1.0,
    "minor_unit": 0.1,
    "zd_chi": 3.0,
    "zd_phi_fraction": 0.25,
    "requestor_q0": 0.5,
    "requestor_rule": "bush_mosteller",
    "game_steps": 10,
    "game_lr": 0.1,
    "leader_strategy": "tft",
    "installments": 7,
}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TaskConfig)])
def test_every_field_takes_part_in_the_point_name(name):
    base = TaskConfig()
    changes = {name: _CHANGES[name]}
    if name == "dataset":
        changes["data_dir"] = "/leaf"
    if name == "faulty_nodes":
        changes["num_nodes"] = 7
    assert point_hash(base.replace(**changes)) != point_hash(base)


def test_integral_float_and_int_are_one_value():
    assert point_hash(TaskConfig(R=10)) == point_hash(TaskConfig(R=10.0))
    with pytest.raises(ValueError, match=r'sweep.grid."mechanism.R": values \[0\] and \[1\] are the same'):
        spec_from_mapping({"sweep": {"grid": {"mechanism.R": [10, 10.0]}}})


def test_a_changed_base_gives_new_names_for_every_point():
    grid = {"grid": {"learning.aggregator": ["fedavg", "median"]}, "seeds": 2}
    a = spec_from_mapping({"sweep": grid, "task": {"max_rounds": 2}})
    b = spec_from_mapping({"sweep": grid, "task": {"max_rounds": 3}})
    assert not {p.point for p in a.points} & {p.point for p in b.points}


_AXIS_VALUES = {
    "learning.aggregator": st.sampled_from(["fedavg", "median", "trimmed_mean", "krum"]),
    "learning.byzantine_servers": st.integers(0, 5),
    "task.max_rounds": st.integers(1, 100),
    "mechanism.R": st.floats(0, 100, allow_nan=False),
    "mechanism.eps": st.tuples(st.floats(0, 0.5), st.floats(0.5, 1)).map(list),
    "task.task_id": st.text(max_size=12),
    "mechanism.constrained": st.booleans(),
}


@settings(max_examples=examples(40), deadline=None)
@given(
    st.dictionaries(st.sampled_from(sorted(_AXIS_VALUES)), st.just(None), min_size=1, max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries(
            {k: st.lists(_AXIS_VALUES[k], min_size=1, max_size=3, unique_by=repr) for k in keys}
        )
    )
)
@example({"task.task_id": ['a "quoted" \\ name', "b\n"]})
@example({"task.task_id": ["\U00010000", "\x7f\x00\t"]})  # astral, DEL, NUL: TOML escapes differ from JSON
def test_point_config_toml_reads_back_to_the_point(grid):
    """config.toml of a point (written from its mapping) is the same task under ``mcsl run``."""
    try:
        spec = spec_from_mapping({"sweep": {"grid": grid}})
    except ValueError:
        return  # equal values after canonicalisation (1 and 1.0): rejected, tested above
    for p in spec.points:
        text = toml_text(p.mapping)
        assert config_from_mapping(tomllib.loads(text)) == p.config


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"sweep": {"grid": {"learning.aggregator": ["fedavg", "mean"]}}},
            r'^sweep.grid."learning.aggregator"\[1\]: learning.aggregator: must be one of',
        ),
        (
            {"sweep": {"grid": {"learning.rouds": [1]}}},
            r'^sweep.grid."learning.rouds"\[0\]: unknown key learning.rouds',
        ),
        ({"sweep": {"grid": {"rounds": [1]}}}, r'^sweep.grid."rounds": axis names are "section.key"'),
        (
            {"sweep": {"zip": {"task.max_rounds": 3}}},
            r'^sweep.zip."task.max_rounds": must be a non-empty list',
        ),
        ({"sweep": {"grid": {"task.max_rounds": []}}}, r"must be a non-empty list"),
        (
            {"sweep": {"zip": {"task.max_rounds": [1, 2], "learning.local_epochs": [1]}}},
            r"^sweep.zip: axes varied together need equal lengths",
        ),
        (
            {"sweep": {"grid": {"task.max_rounds": [1]}, "zip": {"task.max_rounds": [2]}}},
            r'^sweep.zip."task.max_rounds": already an axis',
        ),
        (
            {"sweep": {"grid": {"task.seed": [1, 2]}}},
            r'^sweep.grid."task.seed": seeds are set by sweep.seeds',
        ),
        ({"sweep": {"seeds": 0}}, r"^sweep.seeds: a count must be >= 1"),
        ({"sweep": {"seeds": [1, 1]}}, r"^sweep.seeds: repeated seed"),
        ({"sweep": {"seeds": [1, -2]}}, r"^sweep.seeds\[1\]: seeds are ints >= 0"),
        ({"sweep": {"seeds": "3"}}, r"^sweep.seeds: must be a count"),
        ({"sweep": {"plot": ["accuracy_final"]}}, r"^sweep.plot\[0\]: unknown metric 'accuracy_final'"),
        ({"sweep": {"scheduler": 8786}}, r"^sweep.scheduler: must be an address"),
        ({"sweep": {"grids": {}}}, r"^unknown key sweep.grids; keys of \[sweep\] are"),
        ({"task": {"max_rounds": 0}}, r"^base config: task.max_rounds: must be >= 1"),
        ({"network": {"x": 1}}, r"^base config: unknown section \[network\]"),
        ({"base": "missing.toml"}, r"^base: no config file at"),
        # every value is valid alone, one combination is not
        (
            {"sweep": {"grid": {"learning.byzantine_servers": [0, 3], "learning.num_edge_servers": [3, 6]}}},
            r"^sweep point learning.byzantine_servers=3, learning.num_edge_servers=3 \(seed 0\): "
            r"learning.byzantine_servers: must be fewer than num_edge_servers",
        ),
    ],
)
def test_bad_spec_is_rejected_naming_the_key(data, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        spec_from_mapping(data, root=tmp_path)


def test_cli_rejects_a_bad_spec_in_one_line_before_running_anything(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('[sweep.grid]\n"learning.aggregator" = ["fedavg", "mean"]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'mcsl: error: {spec}: sweep.grid."learning.aggregator"[1]')
    assert not out.exists()  # nothing ran, nothing was written
    spec.write_text("[sweep\n")
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "nope.toml"), "--out", str(out)]) == 2
    assert "no sweep spec at" in capsys.readouterr().err
    spec.write_text('[sweep.grid]\n"learning.aggregator" = ["fedavg"]\n')
    (tmp_path / "file").write_text("")
    for argv, msg in (
        (["--out", str(tmp_path / "file")], "is not a folder"),
        (["--out", str(out), "--workers", "0"], "--workers: must be >= 1"),
        (["--out", str(out), "--workers", "2", "--scheduler", "tcp://x:1"], "exclude each other"),
    ):
        assert main(["sweep", str(spec), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


def test_shipped_byzantine_spec_is_valid():
    spec = load_spec(ROOT / "mcsl_core" / "configs" / "sweep-byzantine.toml")
    assert spec.axes == ("learning.byzantine_servers", "learning.aggregator")
    assert len(spec.points) == 27 and spec.seeds == (0, 1, 2)
    assert {p.config.aggregator for p in spec.points} == {"fedavg", "median", "krum"}
    assert {p.config.byzantine_servers for p in spec.points} == {0, 1, 2}
    # the embedded synthetic default apart from the axes and seeds
    defaults = TaskConfig()
    for p in spec.points:
        assert p.config.replace(aggregator="fedavg", byzantine_servers=0, seed=0) == defaults
    assert load_config(ROOT / "mcsl_core" / "configs" / "example.toml") == defaults


@pytest.mark.parametrize(
    ("content", "msg"),
    [
        (b'[sweep]\nseeds = 1\n[task]\ntask_id = "caf\xe9"\n', "not UTF-8 text (bad byte at offset 39)"),
        ("[sweep]\nseeds = 1\n".encode("utf-16"), "not UTF-8 text"),
        (b"\x00" * 32, "not valid TOML"),
        (b"x = " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested too deeply to read"),
    ],
    ids=["latin1", "utf16", "nul_bytes", "deeply_nested"],
)
def test_a_malformed_spec_or_base_file_is_named_in_one_line(tmp_path, capsys, content, msg):
    """The shared TOML reader names the file for every way a file can fail to parse, for a
    spec and for the ``base = ...`` file it points at alike."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    spec = tmp_path / "spec.toml"
    spec.write_text('[sweep]\nbase = "bad.toml"\n')
    for path, where in ((bad, f"{bad}: "), (spec, f"{spec}: base: {bad}: ")):
        assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"mcsl: error: {where}{msg}"), err
