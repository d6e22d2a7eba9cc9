"""Each procedure alone on a tiny world: publication without learning, submission, one learning round."""

from __future__ import annotations

import numpy as np

from mcsl_core import ledger as L
from mcsl_core import mechanism
from mcsl_core.system import build_world, learn, publish, submit
from tests.system.conftest import TINY


def test_the_world_is_a_pure_function_of_config_and_seed():
    a, b, c = build_world(TINY), build_world(TINY), build_world(TINY, seed=1)
    assert a.bids == b.bids and np.array_equal(a.device_xy, b.device_xy)
    assert all(np.array_equal(a.mechanism[k], b.mechanism[k]) for k in a.mechanism)
    assert a.bids != c.bids
    for k, (lo, hi) in (("eta", TINY.eta), ("eps", TINY.eps), ("theta", TINY.theta)):
        assert ((a.mechanism[k] >= lo) & (a.mechanism[k] <= hi)).all()


def test_publication_without_learning(tmp_path):
    state = publish.open_task(TINY, build_world(TINY), tmp_path)
    publish.publish(state)
    chain = state.chain
    try:
        info = chain.task(TINY.task_id)
        assert (
            info.publication.requestor == "requestor" and info.publication.budget == TINY.recruitment_budget
        )
        selected = set(info.recruitment.selected)
        assert selected == {state.world.device_ids[i] for i in state.recruited}
        # the budget holds and the cover is what the selected bids sense (recomputed from the bids)
        bids = {b.device: b for b in state.world.bids}
        assert sum(bids[d].cost for d in selected) <= TINY.recruitment_budget
        assert set(info.recruitment.covered) == {loc for d in selected for loc in bids[d].locations}
        assert len(chain) == 4  # genesis, registrations, publication, recruitment: no learning
        assert not any(isinstance(r.tx, L.ModelUpdate) for r in chain.task_records(TINY.task_id))
    finally:
        chain.close()


def test_submission_pays_each_accepted_device_its_game_solution(tmp_path):
    world = build_world(TINY)
    state = publish.open_task(TINY, world, tmp_path)
    publish.publish(state)
    submit.submit(state)
    try:
        rec = state.recruited
        # the nearest server by brute force over every server
        for i, d in enumerate(rec):
            dist = [np.hypot(*(world.device_xy[d] - s)) for s in world.server_xy]
            assert state.nearest[i] == int(np.argmin(dist))
        pays = {
            r.tx.device: r.tx
            for r in state.chain.task_records(TINY.task_id)
            if isinstance(r.tx, L.DataSubmissionPayment)
        }
        assert set(pays) == {world.device_ids[d] for d in rec[state.accepted]}
        for i, d in enumerate(rec):  # one game at a time against the batched solve
            one = mechanism.MechanismParams(
                R=TINY.R, alpha_s=TINY.alpha_s, beta_s=TINY.beta_s, v_bar=TINY.v_bar, s_bar=TINY.s_bar,
                c_d=TINY.c_d, **{k: float(world.mechanism[k][d]) for k in ("eta", "xi", "eps", "theta")},
            )  # fmt: skip
            sol = mechanism.solve(one, constrained=True)
            assert bool(sol.valid & sol.accepted) == bool(state.accepted[i])
            if state.accepted[i]:
                tx = pays[world.device_ids[d]]
                assert tx.edge_server == f"edge{state.nearest[i]}"
                assert (tx.v, tx.s) == (float(sol.v), float(sol.s))
    finally:
        state.chain.close()


def test_one_learning_round(tmp_path):
    cfg = TINY.replace(target_accuracy=1.0)
    state = publish.open_task(cfg, build_world(cfg), tmp_path)
    publish.publish(state)
    submit.submit(state)
    learner = learn.prepare(state)
    before = len(state.chain)
    rec = learn.learn_round(state, learner, 1)
    try:
        assert len(state.chain) == before + 1 and rec.number == 1 and not state.met
        records = state.chain.task_records(cfg.task_id)
        ups = [r.tx for r in records if isinstance(r.tx, L.ModelUpdate)]
        (agg,) = [r.tx for r in records if isinstance(r.tx, L.AggregatedModel)]
        assert {u.round for u in ups} == {0} and agg.round == 0  # the chain counts rounds from 0
        assert len(ups) == rec.updates_kept == len(learner.active)
        assert agg.leader == rec.leader and agg.metrics["accuracy"] == rec.accuracy
        # the recorded model is the learner's, byte for byte in the store
        import jax

        want = L.encode_tree(jax.tree_util.tree_map(np.asarray, learner.params))
        assert state.store.get_bytes(agg.address) == want
        for u in ups:  # every recorded update is in the store under its address
            assert L.tree_address(L.decode_tree(state.store.get_bytes(u.address))) == u.address
        assert state.chain.task(cfg.task_id).next_round == 1
    finally:
        state.chain.close()
