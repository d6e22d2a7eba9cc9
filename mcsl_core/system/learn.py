"""Procedure 3, learning (paper IV-C, Algorithm 2; SPEC.md section 3).

One round (:func:`learn_round`): the edge servers train on their devices'
data (:mod:`mcsl_core.fl`), Byzantine servers poison their update; each server
stores its update in the content-addressed model store and signs a
:class:`~mcsl_core.ledger.ModelUpdate`; the nodes verify the round and drop
invalid updates; the elected leader aggregates; the block is agreed by the
consensus protocol, simulated message by message
(:func:`mcsl_core.consensus.simulate_pbft`; a silent leader forces a view
change and the new view's leader proposes), and certified by the nodes that are
not silent. When the model meets the requirement, the leader binds it to the
requestor in the same block. :func:`learn` runs rounds until then or until the
round budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mcsl_core.system._config import TaskConfig
from mcsl_core.system._state import RoundRecord, TaskState, chain_round

__all__ = ["Learner", "fl_config", "learn", "learn_round", "make_model", "prepare", "subseed"]


def subseed(seed: int, *tags: int) -> int:
    """A seed in [0, 2**63) for one use of the task's ``seed`` (``tags`` name the use)."""
    hi, lo = np.random.SeedSequence([seed, *tags]).generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) | (int(lo) >> 1)


def make_model(cfg: TaskConfig, dim: int, num_classes: int):
    """The ``learning.model`` network for inputs of size ``dim``."""
    from mcsl_core import fl

    if cfg.model == "logistic":
        return fl.logistic(dim, num_classes)
    if cfg.model == "mlp":
        return fl.mlp(dim, num_classes)
    if dim != 784:
        raise ValueError(f"learning.model: 'cnn' needs 28x28 images (dim 784), the data has dim {dim}")
    return fl.femnist_cnn(num_classes)


def fl_config(cfg: TaskConfig, n_active: int, n_byzantine: int):
    """The FL engine's config: every active server each round, and the robust-rule policy.

    Krum keeps the ``n_active - n_byzantine`` most central updates (multi-Krum);
    the trimmed mean trims the Byzantine share from each end (at least 10 %,
    at most 45 %).
    """
    from mcsl_core import fl

    honest = max(1, n_active - n_byzantine)
    trim = min(0.45, max(0.1, n_byzantine / n_active))
    return fl.FLConfig(
        rounds=cfg.max_rounds,
        clients_per_round=n_active,
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        client_lr=cfg.client_lr,
        seed=cfg.seed,
        aggregator=cfg.aggregator,
        num_byzantine=n_byzantine,
        strategy=cfg.strategy,
        multi_krum=honest if cfg.aggregator == "krum" else 1,
        trim_fraction=trim if cfg.aggregator == "trimmed_mean" else 0.1,
    )


@dataclass
class Learner:
    """What the rounds share: the model, the servers' data, the global parameters."""

    model: Any
    data: Any  # fl.FederatedData, one client per active edge server
    test: Any  # fl.FederatedData, held-out data of the devices whose data was used
    active: tuple[int, ...]  # edge-server indices with at least one accepted device
    byzantine: np.ndarray  # shape=[active], dtype=bool
    flcfg: Any
    opt: Any
    params: Any
    opt_state: Any
    key: Any  # jax PRNG key


def prepare(state: TaskState) -> Learner:
    """Group the accepted devices' data by edge server and initialise the global model."""
    import jax

    from mcsl_core import fl

    cfg, world = state.cfg, state.world
    groups, active = [], []
    for sidx in range(cfg.num_edge_servers):
        members = state.recruited[state.accepted & (state.nearest == sidx)]
        if members.size:
            groups.append(members)
            active.append(sidx)
    data = fl.merge_clients(world.train, groups, [state.parties.servers[s].name for s in active])
    # the requirement is judged on the held-out split of the devices whose data was used
    test_index = {cid: i for i, cid in enumerate(world.test.client_ids)}
    used = [world.train.client_ids[int(d)] for g in groups for d in g]
    test = world.test.select([test_index[c] for c in used if c in test_index])
    byz = np.arange(len(active)) < cfg.byzantine_servers
    model = make_model(cfg, world.train.dim, world.train.num_classes)
    opt = fl.FEDAVG_SERVER  # one object: its jitted server step compiles once per process
    params = fl.init_params(model, world.train.dim, jax.random.key(cfg.seed))
    state.store.put(jax.tree_util.tree_map(np.asarray, params))
    flcfg = fl_config(cfg, len(active), int(byz.sum()))
    return Learner(
        model, data, test, tuple(active), byz, flcfg, opt, params, opt.init(params), jax.random.key(cfg.seed)
    )


def _poison(updates, rows: np.ndarray, attack: str, scale: float):
    """Byzantine edge servers replace their update: -scale * u (sign flip) or scale * u."""
    import jax
    import jax.numpy as jnp

    factor = -scale if attack == "sign_flip" else scale
    w = jnp.asarray(np.where(rows, factor, 1.0), jnp.float32)
    return jax.tree_util.tree_map(lambda u: u * w.reshape((-1,) + (1,) * (u.ndim - 1)), updates)


def _train(state: TaskState, lr: Learner, number: int):
    from mcsl_core import fl

    cfg = state.cfg
    clients = np.arange(len(lr.active), dtype=np.int64)
    ru = fl.federated_round(lr.model, lr.params, lr.data, clients, lr.flcfg, key=lr.key, round_index=number)
    updates = ru.updates
    if lr.byzantine.any():
        updates = _poison(updates, lr.byzantine, cfg.byzantine_attack, cfg.byzantine_scale)
    return ru, updates


def _sign_and_verify(state: TaskState, lr: Learner, number: int, ru, updates):
    """Each server stores and signs its update; the nodes verify the round. Returns kept indices."""
    import jax

    from mcsl_core import ledger as L

    host = jax.tree_util.tree_map(np.asarray, updates)
    signed, blobs = [], []
    for j, sidx in enumerate(lr.active):
        blob = L.encode_tree(jax.tree_util.tree_map(lambda u: u[j], host))  # noqa: B023 (used at once)
        tx = L.ModelUpdate(
            state.cfg.task_id, chain_round(number), state.parties.servers[sidx].name,
            state.store.put_bytes(blob), int(ru.num_samples[j]),
        )  # fmt: skip
        signed.append(tx.sign(state.parties.servers[sidx]))
        blobs.append(blob)
    pairs = list(zip(signed, blobs))
    check = L.verify_update_round(state.chain, pairs, task_id=state.cfg.task_id, round=chain_round(number))
    keep = np.flatnonzero(check.valid)
    state.updates_dropped += len(signed) - int(keep.size)
    return signed, keep, max(len(b) for b in blobs)


def _aggregate(lr: Learner, number: int, ru, updates, keep: np.ndarray):
    import jax

    from mcsl_core import fl

    kept = jax.tree_util.tree_map(lambda u: u[keep], updates)
    agg = fl.aggregate(kept, ru.num_samples[keep], lr.flcfg, key=jax.random.fold_in(lr.key, number))
    lr.params, lr.opt_state = fl.server_update(lr.opt, lr.params, lr.opt_state, agg)
    return fl.evaluate(lr.model, lr.params, lr.test)


def agree(cfg: TaskConfig, number: int, n_updates: int, update_bytes: int):
    """The consensus simulation of round ``number``'s block (a silent first leader where configured)."""
    from mcsl_core import consensus

    leader_faulty = number in cfg.faulty_leader_rounds
    res = consensus.simulate_pbft(
        cfg.num_nodes,
        n_updates,
        update_bytes=float(cfg.update_bytes or update_bytes),
        faulty=cfg.faulty_nodes + int(leader_faulty),
        leader_faulty=leader_faulty,
        protocol=cfg.protocol,
        seed=subseed(cfg.seed, 3, number),
    )
    if not res.committed:  # the config validation rules this out; a kernel change must not hide it
        raise RuntimeError(f"round {number}: the simulated consensus did not commit the block")
    return res


def _certify(state: TaskState, lr: Learner, number: int, signed, keep, ev, view: int) -> str:
    """The new view's leader records the round (and the result, once met); the live nodes sign."""
    import jax

    from mcsl_core import ledger as L

    cfg, nodes, chain = state.cfg, state.parties.nodes, state.chain
    silent = set(nodes.names[len(nodes.names) - cfg.faulty_nodes :]) if cfg.faulty_nodes else set()
    if number in cfg.faulty_leader_rounds:
        silent.add(nodes.leader(chain, 0).name)
    address = state.store.put(jax.tree_util.tree_map(np.asarray, lr.params))
    leader = nodes.leader(chain, view).name
    servers = tuple(state.parties.servers[lr.active[j]].name for j in keep)
    metrics = {"accuracy": float(ev.accuracy), "loss": float(ev.loss)}
    txs = [signed[j] for j in keep] + [
        L.AggregatedModel(cfg.task_id, chain_round(number), leader, address, servers, metrics)
    ]
    state.met = bool(ev.accuracy >= cfg.target_accuracy)
    if state.met:
        txs.append(L.ResultBinding(cfg.task_id, chain_round(number), state.parties.requestor.name, address))
        state.final_model, state.finaliser = address, leader
    chain.append(nodes.propose(chain, txs, view=view, signers=[n for n in nodes.names if n not in silent]))
    return leader


def learn_round(state: TaskState, lr: Learner, number: int) -> RoundRecord:
    """Round ``number`` (from 1): train, sign, verify, aggregate, agree, certify."""
    with state.stages("training"):
        ru, updates = _train(state, lr, number)
    with state.stages("signing_verification"):
        signed, keep, size = _sign_and_verify(state, lr, number, ru, updates)
    with state.stages("training"):
        ev = _aggregate(lr, number, ru, updates, keep)
    with state.stages("consensus_simulation"):
        cres = agree(state.cfg, number, int(keep.size), size)
    with state.stages("ledger"):
        leader = _certify(state, lr, number, signed, keep, ev, int(cres.view_changes))
    rec = RoundRecord(
        number, float(ev.accuracy), float(ev.loss), float(np.mean(ru.loss)), int(keep.size),
        float(cres.time_s), int(cres.messages), int(cres.view_changes), leader,
    )  # fmt: skip
    state.rounds.append(rec)
    return rec


def learn(state: TaskState, *, progress: bool = False) -> TaskState:
    """Rounds until the requirement is met or ``task.max_rounds`` are spent."""
    from tqdm.auto import tqdm

    lr = prepare(state)
    bar = tqdm(
        total=state.cfg.max_rounds, desc="learning rounds", unit="round", disable=not progress, leave=False
    )
    for number in range(1, state.cfg.max_rounds + 1):
        rec = learn_round(state, lr, number)
        bar.update(1)
        bar.set_postfix(acc=f"{rec.accuracy:.3f}")
        if state.met:
            break
    bar.close()
    last = state.rounds[-1]
    verdict = "requirement met" if state.met else "round budget exhausted"
    state.say(f"learning: accuracy {last.accuracy:.3f} after {last.number} rounds ({verdict})")
    return state
