"""Tiny worlds for the system tests (24 devices, 3 edge servers: seconds per task once compiled)."""

from __future__ import annotations

import pytest

from mcsl_core.system import TaskConfig, build_world, learn, publish, run_task, submit

#: A task small enough for the fast tier; target 0 is met after the first round.
TINY = TaskConfig(
    num_devices=24,
    num_locations=36,
    num_edge_servers=3,
    max_rounds=3,
    target_accuracy=0.0,
    recruitment_budget=1000.0,
    game_steps=300,
    installments=8,
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return run_task(TINY, out, progress=False), out


def prepared(cfg: TaskConfig, out):
    """A task state after publication, submission and learning (the chain ready to settle)."""
    state = publish.open_task(cfg, build_world(cfg), out)
    publish.publish(state)
    submit.submit(state)
    learn.learn(state)
    return state
