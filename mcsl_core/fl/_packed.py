"""Packed lanes: a compiled group's local training without padded steps.

The rank-grouped program of :mod:`mcsl_core.fl._compiled` trains every
client of a rank group for the largest step count any experiment needs there
(on FedProx Synthetic about 2.8x the real client-steps), and shuffles each
epoch with a stable ``argsort`` inside the program. Here the whole schedule is
laid out on the host before the run instead:

- **Epoch orders, precomputed.** Client ``c`` of round ``r`` in epoch ``e``
  draws ``uniform(fold_in(fold_in(fold_in(fold_in(train, r), c), e), i))`` for
  its real row ``i`` (the same keys as :func:`mcsl_core.fl._train._epoch_order`,
  threefry is bit-exact on every path), all in one batched call; one host sort
  of ``(client, draw, row)`` keys gives every stable order at once.
- **Packed lanes.** The ``K * c`` clients of a round (all experiments
  together) are packed onto ``L`` lanes by longest-first greedy assignment; a
  lane runs its clients one after another, each from its experiment's global
  parameters (``reset``), for exactly its ``local_epochs * ceil(n / batch)``
  real steps, and writes its delta when it ends. One round is a loop over the
  ``S_r`` slots of ``L`` lanes that its longest lane needs (the arrays are
  padded to the schedule's longest, ``S``; the loop's trip count is the
  round's), so the work is ``sum_r S_r * L`` lane-steps instead of the padded
  rank groups' (on the K = 16 MLP part of the sweep benchmark, 17 % fewer
  than ``R * S * L``).

Each client still takes exactly its per-round-loop steps (same rows, same
mask, same ``p - lr * g``), so experiment ``k`` equals :func:`run_fedavg` up to
float32 rounding of the batched kernels.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numba import njit

from mcsl_core.fl._data import FederatedData
from mcsl_core.fl._threefry import draws_numba as _draws_numba
from mcsl_core.fl._train import _masked_loss

PyTree = Any


class Packed(NamedTuple):
    """Slot arrays of a packed schedule (leading axes ``[R, S, L]``)."""

    rows: np.ndarray  # [R, S, L, batch] int32: global row of each batch entry (0 where masked)
    mask: np.ndarray  # [R, S, L, batch] bool: real row
    item: np.ndarray  # [R, S, L] int32: k * c + j (sampled slot j of experiment k); K * c idle
    step: np.ndarray  # [R, S, L] int32: e * steps_max + s, the client's step position
    reset: np.ndarray  # [R, S, L] bool: the client's first step (start from global params)
    end: np.ndarray  # [R, S, L] bool: the client's last step (write its delta)
    used: np.ndarray  # [R] int32: slots round r runs (its longest lane; the rest are idle)
    n: np.ndarray  # [K, R, c] int32: samples of each sampled client
    steps_max: int  # largest steps per epoch of any client


def _orders(data: FederatedData, sampled: np.ndarray, train_keys: np.ndarray, epochs: int):
    """Every client's epoch orders: ``(local, seg_start)`` with ``local`` the flat
    row positions (within the client) segment after segment, ``seg_start`` shape=[N+1].

    Segments are ordered ``((k * R + r) * c + j) * epochs + e``. Within a segment
    the order is a stable argsort of the draws (ties by row), as in ``_epoch_order``.
    """
    kk, rr, cc = sampled.shape
    n = data.num_samples[sampled].astype(np.int64)  # [K, R, c]
    nseg = np.repeat(n.reshape(-1), epochs)  # [N]
    seg_start = np.concatenate([[0], np.cumsum(nseg)])
    total = int(seg_start[-1])
    kidx, ridx, jidx, eidx = np.unravel_index(np.arange(nseg.size), (kk, rr, cc, epochs))
    cl = sampled[kidx, ridx, jidx]
    ubits = np.empty(total, np.uint32)  # bits of 1 + u, in [1, 2): same order as u
    _draws_numba(
        np.asarray(train_keys, np.uint32)[kidx],
        ridx.astype(np.uint32),
        cl.astype(np.uint32),
        eidx.astype(np.uint32),
        seg_start.astype(np.int64),
        ubits,
    )
    ib = max(1, int(nseg.max(initial=1) - 1).bit_length())  # bits of a row position
    sb = max(1, int(nseg.size).bit_length())
    if ib + sb + 23 <= 64:  # unique keys (23 mantissa bits of the draw): one sort is the stable argsort
        key = np.sort(_order_keys(ubits, seg_start.astype(np.int64), ib))
        local = (key & np.uint64((1 << ib) - 1)).astype(np.int64)
    else:
        seg = np.repeat(np.arange(nseg.size, dtype=np.int64), nseg)
        i = np.arange(total, dtype=np.int64) - seg_start[seg]
        local = i[np.lexsort((i, ubits, seg))]
    return local, seg_start


@njit(cache=True)
def _order_keys(ubits, seg_start, ib):
    """``seg << (23 + ib) | mantissa(draw) << ib | position`` for every row of every
    segment (the draws' float32 bits share sign and exponent, so the 23 mantissa bits
    order them)."""
    key = np.empty(ubits.size, np.uint64)
    for g in range(seg_start.size - 1):
        hi = np.uint64(g) << np.uint64(23 + ib)
        for i in range(seg_start[g + 1] - seg_start[g]):
            m = np.uint64(ubits[seg_start[g] + i] & 0x7FFFFF)
            key[seg_start[g] + i] = hi | (m << np.uint64(ib)) | np.uint64(i)
    return key


@njit(cache=True)
def _lpt(steps, lanes):
    """Longest-first greedy packing of every round's items onto ``lanes`` (``steps``:
    shape=[R, items]): items by decreasing steps (equal steps in index order), each to
    the least loaded lane, the lowest-numbered on a tie; items without steps run
    nowhere. Returns ``(order, ptr, load)``: lane ``l`` of round ``r`` runs
    ``order[ptr[r * L + l]:ptr[r * L + l + 1]]`` in that order, and ``load[r]`` is
    round ``r``'s longest lane."""
    rr, items = steps.shape
    seq = np.empty((rr, items), np.int64)  # items in assignment order
    lane = np.empty((rr, items), np.int64)  # and their lanes
    count = np.zeros(rr, np.int64)
    ptr = np.zeros(rr * lanes + 1, np.int64)
    load = np.zeros(rr, np.int64)
    for r in range(rr):
        lo = np.zeros(lanes, np.int64)
        for it in np.argsort(-steps[r], kind="mergesort"):
            if steps[r, it] == 0:
                break
            best = 0
            for l in range(1, lanes):
                if lo[l] < lo[best]:
                    best = l
            seq[r, count[r]], lane[r, count[r]] = it, best
            count[r] += 1
            lo[best] += steps[r, it]
            ptr[r * lanes + best + 1] += 1
        load[r] = lo.max()
    ptr = np.cumsum(ptr)
    order = np.empty(ptr[-1], np.int64)
    at = ptr[:-1].copy()
    for r in range(rr):
        for q in range(count[r]):
            w = r * lanes + lane[r, q]
            order[at[w]] = seq[r, q]
            at[w] += 1
    return order, ptr, load


def choose_lanes(steps: np.ndarray) -> int:
    """Lanes for a schedule (``steps``: shape=[R, items] client-steps per round):
    about twice the longest client's steps per lane, so greedy packing leaves
    little idle (lane-steps ~ the real client-steps). Measured on the K = 64
    logistic sweep (the per-slot cost is mostly per lane): lanes for 1x the
    longest client 1.9 s, 2x 1.5 s, 4x 1.9 s, 0.5x 2.9 s."""
    per_round = steps.sum(axis=1).max()
    longest = max(int(steps.max()), 1)
    return int(max(1, min(steps.shape[1], -(-int(per_round) // (2 * longest)))))


def pack(
    data: FederatedData,
    sampled: np.ndarray,
    train_keys: np.ndarray,
    batch: int,
    epochs: int,
    lanes: int | None = None,
) -> Packed:
    """Lay a group's schedule out in packed lanes (``sampled``: shape=[K, R, c])."""
    kk, rr, cc = sampled.shape
    n = data.num_samples[sampled].astype(np.int64)
    spe = -(-n // batch)  # [K, R, c] steps per epoch
    smax = max(int(spe.max(initial=0)), 1)
    item_steps = (spe * epochs).transpose(1, 0, 2).reshape(rr, kk * cc)  # [R, K*c]
    lanes = choose_lanes(item_steps) if lanes is None else int(lanes)
    order, ptr, load = _lpt(np.ascontiguousarray(item_steps), lanes)
    slots = max(1, int(load.max(initial=0)))
    local, seg_start = _orders(data, sampled, train_keys, epochs)
    first = data.offsets[:-1].astype(np.int64)[sampled]  # [K, R, c] each client's first row
    rows = np.zeros((rr, slots, lanes, batch), np.int32)
    mask = np.zeros((rr, slots, lanes, batch), bool)
    item = np.full((rr, slots, lanes), kk * cc, np.int32)
    step = np.zeros((rr, slots, lanes), np.int32)
    reset = np.zeros((rr, slots, lanes), bool)
    end = np.zeros((rr, slots, lanes), bool)
    _fill(order, ptr, n, spe, first, local, seg_start, epochs, smax, rows, mask, item, step, reset, end)
    used = np.maximum(load, 1).astype(np.int32)
    return Packed(rows, mask, item, step, reset, end, used, n.astype(np.int32), smax)


@njit(cache=True)
def _fill(order, ptr, n, spe, first, local, seg_start, epochs, smax, rows, mask, item, step, reset, end):
    """Write the slots of every lane: its items (``order[ptr[r * L + l]:ptr[r * L + l + 1]]``)
    one after another, each epoch's ``spe`` batches of its precomputed order, padding
    entries pointing at the client's first row with a false mask."""
    rr, cc = n.shape[1], n.shape[2]
    lanes, batch = rows.shape[2], rows.shape[3]
    for r in range(rr):
        for l in range(lanes):
            t = 0
            for q in range(ptr[r * lanes + l], ptr[r * lanes + l + 1]):
                it = order[q]
                k, j = it // cc, it % cc
                nc, sc, s0 = n[k, r, j], spe[k, r, j], first[k, r, j]
                for e in range(epochs):
                    base = seg_start[((k * rr + r) * cc + j) * epochs + e]
                    for s in range(sc):
                        for b in range(batch):
                            pos = s * batch + b
                            real = pos < nc
                            rows[r, t + s, l, b] = s0 + local[base + pos] if real else s0
                            mask[r, t + s, l, b] = real
                        step[r, t + s, l] = e * smax + s
                        item[r, t + s, l] = it
                    if e == 0:
                        reset[r, t, l] = True
                    t += sc
                end[r, t - 1, l] = True


def train_round(model, params: PyTree, x_all, y_all, lr, slots, used, n, steps_max: int, epochs: int):
    """One round's local training of every experiment's clients, packed.

    ``params``: leaves shape=[K, ...]; ``lr``: shape=[K]; ``slots``: the round's
    ``(rows, mask, item, step, reset, end)`` (leading axes ``[S, L]``), of which the
    first ``used`` (a traced scalar) run, the rest being idle; ``n``:
    shape=[K, c]. Returns ``(deltas, losses)``: leaves shape=[K, c, ...] and
    shape=[K, c] (mean loss over the client's real rows and epochs), in sampled order.
    """
    kk, cc = n.shape
    items = kk * cc
    grad_fn = jax.vmap(jax.value_and_grad(functools.partial(_masked_loss, model)))
    lanes = slots[2].shape[1]
    p0 = jax.tree_util.tree_map(lambda a: jnp.zeros((lanes, *a.shape[1:]), a.dtype), params)
    owner = jnp.arange(items) // cc  # experiment of each item
    # every item's final local parameters; a client without steps keeps the global ones (delta 0)
    d0 = jax.tree_util.tree_map(lambda a: a[owner], params)
    l0 = jnp.zeros((items, epochs, steps_max), jnp.float32)

    def bcast(v, a):
        return v.reshape(v.shape + (1,) * (a.ndim - 1))

    def body(carry, xs):
        p, dbuf, lbuf = carry
        rows, mask, item, step, reset, end = xs
        exp = jnp.minimum(item // cc, kk - 1)  # idle lanes (item == K * c): any experiment, no effect
        p = jax.tree_util.tree_map(lambda a, g: jnp.where(bcast(reset, a), g[exp], a), p, params)
        loss, g = grad_fn(p, x_all[rows], y_all[rows], mask)
        step_lr = lr[exp]
        p = jax.tree_util.tree_map(lambda a, b: a - bcast(step_lr, a) * b, p, g)
        e_i, s_i = step // steps_max, step % steps_max
        lbuf = lbuf.at[item, e_i, s_i].set(loss * jnp.sum(mask, axis=1), mode="drop")
        out = jnp.where(end, item, items)  # out of bounds: dropped
        dbuf = jax.tree_util.tree_map(lambda d, a: d.at[out].set(a, mode="drop"), dbuf, p)
        return (p, dbuf, lbuf), None

    def slot(t, carry):
        return body(carry, tuple(lax.dynamic_index_in_dim(a, t, keepdims=False) for a in slots))[0]

    _, dbuf, lbuf = lax.fori_loop(0, used, slot, (p0, d0, l0))
    deltas = jax.tree_util.tree_map(lambda d, g: (d - g[owner]).reshape(kk, cc, *d.shape[1:]), dbuf, params)
    ls = jnp.sum(jnp.sum(lbuf, axis=-1), axis=-1).reshape(kk, cc)
    return deltas, ls / jnp.maximum(n * epochs, 1).astype(jnp.float32)
