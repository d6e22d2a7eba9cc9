"""Packed lanes (mcsl_core.fl._packed): the host-side epoch orders are the
in-program ones bit for bit, and the packing covers every real client-step once."""

import heapq

import jax
import numpy as np

from mcsl_core import fl
from mcsl_core.fl import _packed
from mcsl_core.fl._train import _epoch_order


def _data():
    return fl.synthetic_fedprox(1.0, 1.0, num_clients=12, dim=5, num_classes=3, seed=3)[0]


def test_orders_equal_in_program_epoch_order():
    """Reference: ``_epoch_order`` (jax threefry draws, stable argsort on device)
    for every client, round and epoch of a small schedule of two experiments."""
    tr = _data()
    sampled = np.stack([np.stack([fl.select_clients(12, 4, s, r) for r in range(3)]) for s in (0, 7)])
    keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(s))) for s in (11, 2**31 + 5)])
    local, seg_start = _packed._orders(tr, sampled, keys, 2)
    g = 0
    for k in range(2):
        for r in range(3):
            for j in range(4):
                c = int(sampled[k, r, j])
                n = int(tr.num_samples[c])
                ck = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(keys[k]), r), c)
                for e in range(2):
                    want = np.asarray(_epoch_order(jax.random.fold_in(ck, e), n, n + 7))[:n]
                    np.testing.assert_array_equal(local[seg_start[g] : seg_start[g + 1]], want)
                    g += 1


def test_pack_covers_each_real_step_once():
    """Invariant: each sampled client's real rows appear exactly ``epochs`` times,
    in its own slots, starting with a reset and ending with an end flag."""
    tr = _data()
    sampled = np.stack([np.stack([fl.select_clients(12, 4, s, r) for r in range(2)]) for s in (0, 1, 2)])
    keys = np.zeros((3, 2), np.uint32)
    pk = _packed.pack(tr, sampled, keys, 3, 2, lanes=3)
    starts = tr.offsets[:-1]
    for r in range(2):
        for k in range(3):
            for j in range(4):
                it = k * 4 + j
                sel = pk.item[r] == it
                c = int(sampled[k, r, j])
                rows = pk.rows[r][sel][pk.mask[r][sel]]
                want = np.repeat(np.arange(starts[c], starts[c] + tr.num_samples[c]), 2)
                np.testing.assert_array_equal(np.sort(rows), want)
                assert pk.reset[r][sel].sum() == 1 and pk.end[r][sel].sum() == 1


def _lpt_reference(steps, lanes):
    """Longest-first greedy packing with a heap of (load, lane): each lane's items, the longest load."""
    heap = [(0, lane) for lane in range(lanes)]
    out = [[] for _ in range(lanes)]
    for it in np.argsort(-steps, kind="stable"):
        if steps[it] == 0:
            break
        load, lane = heapq.heappop(heap)
        out[lane].append(int(it))
        heapq.heappush(heap, (load + int(steps[it]), lane))
    return out, max(load for load, _ in heap)


def test_lpt_equals_the_heap_packing():
    r = np.random.default_rng(0)
    for _ in range(100):
        rounds, items, lanes = int(r.integers(1, 4)), int(r.integers(1, 40)), int(r.integers(1, 9))
        steps = r.integers(0, 6, size=(rounds, items)).astype(np.int64)
        order, ptr, load = _packed._lpt(steps, lanes)
        for k in range(rounds):
            want, longest = _lpt_reference(steps[k], lanes)
            got = [list(order[ptr[k * lanes + j] : ptr[k * lanes + j + 1]]) for j in range(lanes)]
            assert got == want and load[k] == longest


def _pack_reference(data, sampled, train_keys, batch, epochs, lanes):
    """The packing written out in Python, one client and epoch at a time."""
    kk, rr, cc = sampled.shape
    n = data.num_samples[sampled].astype(np.int64)
    spe = -(-n // batch)
    smax = max(int(spe.max(initial=0)), 1)
    item_steps = (spe * epochs).transpose(1, 0, 2).reshape(rr, kk * cc)
    plans = [_lpt_reference(item_steps[r], lanes) for r in range(rr)]
    slots = max(1, max(p[1] for p in plans))
    local, seg_start = _packed._orders(data, sampled, train_keys, epochs)
    starts = data.offsets[:-1].astype(np.int64)
    rows = np.zeros((rr, slots, lanes, batch), np.int32)
    mask = np.zeros((rr, slots, lanes, batch), bool)
    item = np.full((rr, slots, lanes), kk * cc, np.int32)
    step = np.zeros((rr, slots, lanes), np.int32)
    reset = np.zeros((rr, slots, lanes), bool)
    end = np.zeros((rr, slots, lanes), bool)
    for r, (lane_items, _) in enumerate(plans):
        for l, its in enumerate(lane_items):
            t = 0
            for it in its:
                k, j = divmod(it, cc)
                nc, sc = int(n[k, r, j]), int(spe[k, r, j])
                s0 = starts[sampled[k, r, j]]
                for e in range(epochs):
                    g = (((k * rr + r) * cc + j) * epochs) + e
                    blk = np.zeros(sc * batch, np.int64)
                    blk[:nc] = local[seg_start[g] : seg_start[g + 1]]
                    rows[r, t : t + sc, l] = (s0 + blk).reshape(sc, batch)
                    mask[r, t : t + sc, l] = (np.arange(sc * batch) < nc).reshape(sc, batch)
                    step[r, t : t + sc, l] = e * smax + np.arange(sc)
                    item[r, t : t + sc, l] = it
                    if e == 0:
                        reset[r, t, l] = True
                    t += sc
                end[r, t - 1, l] = True
    return rows, mask, item, step, reset, end


def test_pack_equals_the_per_client_python_packing():
    tr = _data()
    for seed, k, rounds, c, batch, epochs, lanes in [
        (0, 3, 2, 4, 3, 2, 3),
        (5, 2, 3, 5, 10, 1, 2),
        (9, 4, 1, 6, 4, 3, 7),
    ]:
        sampled = np.stack(
            [np.stack([fl.select_clients(12, c, seed + s, r) for r in range(rounds)]) for s in range(k)]
        )
        keys = np.arange(2 * k, dtype=np.uint32).reshape(k, 2)
        pk = _packed.pack(tr, sampled, keys, batch, epochs, lanes=lanes)
        want = _pack_reference(tr, sampled, keys, batch, epochs, lanes)
        for name, got, ref in zip(("rows", "mask", "item", "step", "reset", "end"), pk[:6], want):
            np.testing.assert_array_equal(got, ref, err_msg=name)
        busy = want[2] < k * c  # [R, S, L]
        last = np.array([np.nonzero(b.any(axis=1))[0].max(initial=0) + 1 for b in busy])
        np.testing.assert_array_equal(pk.used, last)  # a round's loop runs exactly its busy slots
