"""Federated data: the LEAF loader, the FedProx Synthetic(alpha, beta) generator,
and the MCS mapping of devices (data sources) onto edge servers (SPEC.md 3).

A :class:`FederatedData` stores every client's rows back to back in one array
(client-major, ``offsets`` marking where each client starts), so the training
engine keeps the whole dataset on the device once and gathers minibatches by
index inside compiled code. Ragged clients are padded to a small set of bucket
sizes (:func:`bucket_steps`) with masks; masked steps leave the model unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcsl_core._validation import check_nonneg_int, check_range

__all__ = [
    "FederatedData",
    "PackedClients",
    "assign_to_servers",
    "bucket_steps",
    "load_leaf",
    "sample_devices",
    "synthetic_fedprox",
]


def bucket_steps(steps: int) -> int:
    """Padded number of minibatch steps for a client needing ``steps``.

    Buckets are 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ... (powers of two and
    1.5 times powers of two), so padding wastes at most a third of the work and
    a dataset compiles to only a handful of shapes.
    """
    if steps <= 1:
        return 1
    p = 1 << (int(steps) - 1).bit_length()  # next power of two >= steps
    three_q = 3 * p // 4
    return three_q if three_q >= steps else p


class PackedClients(tuple):
    """Padded view of some clients: ``(x, y, mask)``.

    x: shape=[clients, steps * batch_size, dim], dtype=float32 (padding rows are zero)
    y: shape=[clients, steps * batch_size], dtype=int32
    mask: shape=[clients, steps * batch_size], dtype=bool (True on real rows)
    """

    __slots__ = ()

    def __new__(cls, x, y, mask):
        return super().__new__(cls, (x, y, mask))

    x = property(lambda self: self[0])
    y = property(lambda self: self[1])
    mask = property(lambda self: self[2])


@dataclass(frozen=True, eq=False)
class FederatedData:
    """Data of many clients, packed for training.

    Attributes
    ----------
    x : np.ndarray
        shape=[total_samples, dim], dtype=float32; client ``i`` owns rows
        ``offsets[i]:offsets[i+1]``.
    y : np.ndarray
        shape=[total_samples], dtype=int32, labels in ``[0, num_classes)``.
    offsets : np.ndarray
        shape=[clients + 1], dtype=int64, ``offsets[0] == 0``.
    client_ids : tuple[str, ...]
        One id per client (LEAF writer ids in file order; ``"server<k>"`` after
        :func:`assign_to_servers`).
    num_classes : int
    hierarchies : tuple | None
        LEAF's optional per-user hierarchy entries, else None.
    """

    x: np.ndarray
    y: np.ndarray
    offsets: np.ndarray
    client_ids: tuple[str, ...]
    num_classes: int
    hierarchies: tuple[Any, ...] | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        x = np.ascontiguousarray(self.x, dtype=np.float32)
        y = np.ascontiguousarray(self.y, dtype=np.int32)
        off = np.ascontiguousarray(self.offsets, dtype=np.int64)
        if x.ndim != 2:
            raise ValueError(f"x must have shape [samples, dim], got shape {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
        if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != x.shape[0]:
            raise ValueError("offsets must start at 0 and end at the number of samples")
        if np.any(np.diff(off) < 0):
            raise ValueError("offsets must be non-decreasing")
        if len(self.client_ids) != off.size - 1:
            raise ValueError(f"client_ids has {len(self.client_ids)} entries for {off.size - 1} clients")
        if isinstance(self.num_classes, bool) or int(self.num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes!r}")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            bad = int(np.flatnonzero((y < 0) | (y >= self.num_classes))[0])
            raise ValueError(f"y must lie in [0, {self.num_classes}); got {int(y[bad])} at index {bad}")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "offsets", off)
        object.__setattr__(self, "client_ids", tuple(str(c) for c in self.client_ids))
        object.__setattr__(self, "num_classes", int(self.num_classes))

    # -- sizes ---------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def num_samples(self) -> np.ndarray:
        """shape=[clients], dtype=int64: samples per client."""
        return np.diff(self.offsets)

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return self.num_clients

    def client(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and labels of client ``i`` (views, no copy)."""
        i = self._index(i)
        s, e = self.offsets[i], self.offsets[i + 1]
        return self.x[s:e], self.y[s:e]

    def _index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.num_clients:
            raise ValueError(f"client index must be an int in [0, {self.num_clients}), got {i!r}")
        return int(i)

    # -- padding -------------------------------------------------------------
    def steps(self, batch_size: int) -> np.ndarray:
        """shape=[clients]: minibatches per local epoch, ``ceil(n / batch_size)``."""
        return -(-self.num_samples // int(batch_size))

    def padded_steps(self, batch_size: int) -> np.ndarray:
        """shape=[clients]: each client's steps rounded up to its bucket (:func:`bucket_steps`)."""
        return np.array([bucket_steps(int(s)) for s in self.steps(batch_size)], dtype=np.int64)

    def pack(self, clients: Sequence[int], batch_size: int, steps: int | None = None) -> PackedClients:
        """Pad the given clients to one shape (``steps`` minibatches; default the
        largest bucket among them). Padding rows are zero with ``mask`` False."""
        idx = [self._index(int(c)) for c in clients]
        need = int(max(self.steps(batch_size)[idx], default=1))
        steps = bucket_steps(need) if steps is None else int(steps)
        if steps < need:
            raise ValueError(f"steps={steps} is fewer than the {need} the largest client needs")
        rows = steps * int(batch_size)
        x = np.zeros((len(idx), rows, self.dim), np.float32)
        y = np.zeros((len(idx), rows), np.int32)
        m = np.zeros((len(idx), rows), bool)
        for j, c in enumerate(idx):
            xc, yc = self.client(c)
            x[j, : len(yc)], y[j, : len(yc)], m[j, : len(yc)] = xc, yc, True
        return PackedClients(x, y, m)

    # -- subsets ---------------------------------------------------------------
    def select(self, clients: Sequence[int]) -> FederatedData:
        """A new FederatedData holding only the given clients, in that order."""
        idx = [self._index(int(c)) for c in clients]
        if not idx:
            raise ValueError("clients must name at least one client")
        parts = [np.arange(self.offsets[c], self.offsets[c + 1]) for c in idx]
        rows = np.concatenate(parts)
        off = np.concatenate([[0], np.cumsum([p.size for p in parts])])
        hier = None if self.hierarchies is None else tuple(self.hierarchies[c] for c in idx)
        return FederatedData(
            self.x[rows], self.y[rows], off, tuple(self.client_ids[c] for c in idx), self.num_classes, hier
        )


# ---------------------------------------------------------------------------
# LEAF
# ---------------------------------------------------------------------------
def _leaf_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json")
        if not files:
            raise ValueError(f"path {str(path)!r} holds no .json files")
        return files
    if path.is_file():
        return [path]
    raise ValueError(f"path {str(path)!r} does not exist")


_MAX_LABEL = 2**31 - 2  # labels are int32 and num_classes = max label + 1 must be an int32 too


def _leaf_blob(f: Path) -> tuple[list, list, dict, list | None]:
    """``(users, num_samples, user_data, hierarchies)`` of one LEAF file, checked
    at the file level (every failure a ``ValueError`` naming the file)."""
    try:
        blob = json.loads(f.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{f}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{f}: not readable LEAF JSON ({exc})") from exc
    if not isinstance(blob, dict):
        raise ValueError(f"{f}: top level must be a JSON object")
    for key in ("users", "num_samples", "user_data"):
        if key not in blob:
            raise ValueError(f"{f}: missing key {key!r}")
    users, counts, udata = blob["users"], blob["num_samples"], blob["user_data"]
    if not isinstance(users, list) or not isinstance(counts, list) or len(users) != len(counts):
        raise ValueError(f"{f}: 'users' and 'num_samples' must be lists of equal length")
    if not isinstance(udata, dict):
        first = f" (first user {str(users[0])!r})" if users else ""
        raise ValueError(
            f"{f}: 'user_data' must be a JSON object keyed by user, got {type(udata).__name__}{first}"
        )
    fh = blob.get("hierarchies")
    if fh is not None and (not isinstance(fh, list) or len(fh) != len(users)):
        raise ValueError(f"{f}: 'hierarchies' must list one entry per user")
    return users, counts, udata, fh


def _leaf_user(where: str, entry, n) -> tuple[np.ndarray, np.ndarray]:
    """One user's ``(x, y)``: x float32 [n, dim] (shape [0, 0] when n is 0 and
    x carries no row length), y int32 [n]; every failure names ``where``."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: user_data entry must be a JSON object, got {type(entry).__name__}")
    if "x" not in entry or "y" not in entry:
        raise ValueError(f"{where} user_data lacks 'x' or 'y'")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{where}: num_samples must be a non-negative int, got {n!r}")
    xr, yr = entry["x"], entry["y"]
    if not isinstance(xr, list) or not isinstance(yr, list):
        raise ValueError(f"{where}: x and y must be JSON arrays")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in yr):
        raise ValueError(f"{where}: y must hold numbers only")
    try:
        x = np.asarray(xr, dtype=np.float32)
        y_raw = np.asarray(yr, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{where}: x and y must be numeric arrays ({exc})") from exc
    if y_raw.ndim != 1 or y_raw.size != n:
        raise ValueError(f"{where}: num_samples says {n} but y has shape {y_raw.shape}")
    if x.ndim == 1 and n == 0:
        x = x.reshape(0, 0)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"{where}: num_samples says {n} but x has shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{where}: x holds NaN or infinite values")
    bad = (y_raw != np.round(y_raw)) | (y_raw < 0) | (y_raw > _MAX_LABEL) | ~np.isfinite(y_raw)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}: label {yr[i]!r} at index {i} is not an integer in [0, {_MAX_LABEL}] (labels are int32)"
        )
    return x, y_raw.astype(np.int32)


def load_leaf(path: str | Path | Sequence[str | Path], *, num_classes: int | None = None) -> FederatedData:
    """Load LEAF JSON files (one file, a directory of them, or a list).

    Each file holds ``users``, ``num_samples``, ``user_data{uid: {x, y}}`` and
    optionally ``hierarchies``. Clients keep file order (files sorted by name
    within a directory). Every entry is checked: a malformed file (not UTF-8,
    not JSON, wrong types, counts that disagree, labels that are not integers
    in ``[0, 2**31 - 2]``) raises ``ValueError`` naming the file and the user.
    A user with no samples is kept (an empty client).

    Parameters
    ----------
    path : file, directory or list of them
    num_classes : int, optional
        Label range ``[0, num_classes)``; default ``max(label) + 1`` (pass 62
        for FEMNIST so a split missing rare classes keeps the full range).
    """
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    files = [f for p in paths for f in _leaf_files(p)]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ids: list[str] = []
    hier: list[Any] = []
    has_hier = None
    dim = None
    seen: dict[str, Path] = {}
    for f in files:
        users, counts, udata, fh = _leaf_blob(f)
        if has_hier is None:
            has_hier = fh is not None
        elif has_hier != (fh is not None):
            raise ValueError(f"{f}: 'hierarchies' present in some files but not others")
        for j, (u, n) in enumerate(zip(users, counts)):
            u = str(u)
            where = f"{f}: user {u!r}"
            if u in seen:
                raise ValueError(f"{where} appears twice (also in {seen[u]})")
            seen[u] = f
            if u not in udata:
                raise ValueError(f"{where} has no user_data entry")
            x, y = _leaf_user(where, udata[u], n)
            if n > 0:  # an empty user says nothing about the row length
                if dim is None:
                    dim = x.shape[1]
                elif x.shape[1] != dim:
                    raise ValueError(f"{where}: feature size {x.shape[1]} differs from {dim} seen before")
            if num_classes is not None and y.size and y.max() >= num_classes:
                bad = int(np.flatnonzero(y >= num_classes)[0])
                raise ValueError(f"{where}: label {int(y[bad])} at index {bad} outside [0, {num_classes})")
            xs.append(x)
            ys.append(y)
            ids.append(u)
            if fh is not None:
                hier.append(fh[j])
    if not ids:
        raise ValueError(f"path {path!r} holds no users")
    dim = 0 if dim is None else dim
    xs = [x if x.shape[0] else np.zeros((0, dim), np.float32) for x in xs]
    off = np.concatenate([[0], np.cumsum([y.size for y in ys])]).astype(np.int64)
    y_all = np.concatenate(ys)
    k = num_classes if num_classes is not None else int(y_all.max(initial=0)) + 1
    return FederatedData(np.concatenate(xs), y_all, off, tuple(ids), k, tuple(hier) if has_hier else None)


# ---------------------------------------------------------------------------
# FedProx Synthetic(alpha, beta)
# ---------------------------------------------------------------------------
def synthetic_fedprox(
    alpha: float,
    beta: float,
    *,
    num_clients: int = 30,
    dim: int = 60,
    num_classes: int = 10,
    seed: int = 0,
) -> tuple[FederatedData, FederatedData]:
    """FedProx's Synthetic(alpha, beta) data (Li et al. 2020, ``generate_niid.py``).

    Device ``k``: ``u_k ~ N(0, alpha^2)``, ``B_k ~ N(0, beta^2)``;
    ``W_k ~ N(u_k, 1)`` (shape [dim, classes]), ``b_k ~ N(u_k, 1)``;
    ``v_k ~ N(B_k, 1)`` (shape [dim]); ``x ~ N(v_k, Sigma)`` with
    ``Sigma = diag(j^-1.2)``; ``y = argmax(softmax(x W_k + b_k))``. Samples per
    device ``floor(LogNormal(4, 2)) + 50``; each device's first 90 % is train,
    the rest test. ``alpha`` and ``beta`` are standard deviations.

    Returns
    -------
    (train, test) : FederatedData, FederatedData
    """
    alpha = float(check_range("alpha", alpha, 0.0).reshape(-1)[0])
    beta = float(check_range("beta", beta, 0.0).reshape(-1)[0])
    for name, v in (("num_clients", num_clients), ("dim", dim), ("num_classes", num_classes)):
        if int(check_nonneg_int(name, v).reshape(-1)[0]) < 1:
            raise ValueError(f"{name} must be >= 1, got {v!r}")
    seed = int(check_nonneg_int("seed", seed).reshape(-1)[0])
    rng = np.random.default_rng(seed)
    counts = np.floor(rng.lognormal(4.0, 2.0, num_clients)).astype(np.int64) + 50
    u = rng.normal(0.0, alpha, num_clients)
    b_shift = rng.normal(0.0, beta, num_clients)
    sd = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of diag(j^-1.2)
    tr_x, tr_y, te_x, te_y, n_tr, n_te = [], [], [], [], [], []
    for k in range(num_clients):
        w = rng.normal(u[k], 1.0, (dim, num_classes))
        b = rng.normal(u[k], 1.0, num_classes)
        v = rng.normal(b_shift[k], 1.0, dim)
        x = v + sd * rng.standard_normal((counts[k], dim))
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotone
        cut = int(0.9 * counts[k])
        tr_x.append(x[:cut]), tr_y.append(y[:cut]), te_x.append(x[cut:]), te_y.append(y[cut:])
        n_tr.append(cut), n_te.append(counts[k] - cut)
    ids = tuple(f"device{k}" for k in range(num_clients))

    def build(xs, ys, ns):
        off = np.concatenate([[0], np.cumsum(ns)])
        return FederatedData(np.concatenate(xs), np.concatenate(ys), off, ids, num_classes)

    return build(tr_x, tr_y, n_tr), build(te_x, te_y, n_te)


# ---------------------------------------------------------------------------
# MCS mapping: devices -> edge servers
# ---------------------------------------------------------------------------
def _groups(n: int, num_servers: int, rule: str, seed: int) -> list[np.ndarray]:
    if rule == "contiguous":
        order = np.arange(n)
    elif rule == "random":
        order = np.random.default_rng(seed).permutation(n)
    elif rule == "round_robin":
        return [np.arange(s, n, num_servers) for s in range(num_servers)]
    else:
        raise ValueError(f"rule must be 'contiguous', 'random' or 'round_robin', got {rule!r}")
    return np.array_split(order, num_servers)


def assign_to_servers(
    data: FederatedData, num_servers: int, *, rule: str = "random", seed: int = 0
) -> tuple[FederatedData, list[np.ndarray]]:
    """Give each edge server the union of its devices' data (SPEC.md 3).

    Devices (the clients of ``data``; a LEAF writer is one device) are split
    into ``num_servers`` groups of near-equal device count: ``"contiguous"``
    (file order), ``"random"`` (a seeded permutation, then contiguous) or
    ``"round_robin"``. Every server gets at least one device.

    Returns
    -------
    servers : FederatedData
        One client per edge server, ids ``"server<k>"``.
    members : list of np.ndarray
        ``members[k]``: indices (into ``data``) of server ``k``'s devices.
    """
    k = int(check_nonneg_int("num_servers", num_servers).reshape(-1)[0])
    if not 1 <= k <= data.num_clients:
        raise ValueError(
            f"num_servers must lie in [1, {data.num_clients}] (one device at least each), got {num_servers!r}"
        )
    seed = int(check_nonneg_int("seed", seed).reshape(-1)[0])
    groups = [np.sort(g) for g in _groups(data.num_clients, k, rule, seed)]
    return merge_clients(data, groups, [f"server{s}" for s in range(k)]), groups


def merge_clients(data: FederatedData, groups: Sequence[Sequence[int]], ids: Sequence[str]) -> FederatedData:
    """One client per group holding the union of its members' rows (in group order).

    ``groups[k]`` are client indices into ``data``; ``ids[k]`` names merged client ``k``.
    """
    if len(ids) != len(groups):
        raise ValueError(f"ids has {len(ids)} entries for {len(groups)} groups")
    merged = data.select([int(d) for g in groups for d in g])
    counts = np.array(
        [int(data.num_samples[np.asarray(g, dtype=np.int64)].sum()) for g in groups], dtype=np.int64
    )
    off = np.concatenate([[0], np.cumsum(counts)])
    return FederatedData(merged.x, merged.y, off, tuple(ids), data.num_classes)


def sample_devices(data: FederatedData, fraction: float, *, seed: int = 0) -> FederatedData:
    """Keep a seeded random share ``fraction`` of the devices (LEAF's ``--sf``);
    at least one device, order preserved. Fig. 5's "dataset fraction"."""
    f = float(check_range("fraction", fraction, 0.0, 1.0, lo_open=True).reshape(-1)[0])
    n = max(1, round(f * data.num_clients))
    keep = np.sort(
        np.random.default_rng(int(check_nonneg_int("seed", seed).reshape(-1)[0])).choice(
            data.num_clients, n, replace=False
        )
    )
    return data.select(keep.tolist())
