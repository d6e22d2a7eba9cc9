"""LEAF loader, FedProx generator, MCS mapping of devices onto edge servers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcsl_core import fl
from tests.conftest import examples
from tests.reference import fl_ref


def _leaf_dir(tmp_path, rng, sizes=((3, 5), (2, 4)), dim=6, classes=4):
    """Two LEAF files with random users; returns (dir, list of (uid, x, y)) in file order."""
    d = tmp_path / "leaf"
    d.mkdir()
    truth = []
    for fi, (n_users, base) in enumerate(sizes):
        users, xs, ys = [], [], []
        for u in range(n_users):
            n = base + u
            users.append(f"f{fi}_{u}")
            xs.append(rng.random((n, dim)).astype(np.float32))
            ys.append(rng.integers(0, classes, n))
        fl_ref.write_leaf(d / f"part_{fi}.json", users, xs, ys, hierarchies=[f"h{fi}"] * n_users)
        truth += list(zip(users, xs, ys))
    return d, truth


def test_load_leaf_generated_round_trip(tmp_path, rng):
    d, truth = _leaf_dir(tmp_path, rng)
    data = fl.load_leaf(d, num_classes=4)
    assert data.client_ids == tuple(u for u, _, _ in truth)
    np.testing.assert_array_equal(data.num_samples, [len(y) for _, _, y in truth])
    for i, (_, x, y) in enumerate(truth):
        xc, yc = data.client(i)
        np.testing.assert_array_equal(xc, x)
        np.testing.assert_array_equal(yc, y)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int32
    assert data.hierarchies == ("h0",) * 3 + ("h1",) * 2
    # a single file and a list of files load the same users
    one = fl.load_leaf(d / "part_1.json", num_classes=4)
    assert one.client_ids == data.client_ids[3:]
    both = fl.load_leaf([d / "part_0.json", d / "part_1.json"], num_classes=4)
    np.testing.assert_array_equal(both.x, data.x)


def _write(tmp_path, blob):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(blob))
    return p


def _good():
    return {
        "users": ["a", "b"],
        "num_samples": [2, 1],
        "user_data": {"a": {"x": [[0.1, 0.2], [0.3, 0.4]], "y": [0, 1]}, "b": {"x": [[0.5, 0.6]], "y": [2]}},
    }


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b.pop("users"), "missing key 'users'"),
        (lambda b: b["num_samples"].__setitem__(0, 3), "user 'a'.*num_samples says 3"),
        (lambda b: b["user_data"]["b"].__setitem__("x", [[0.5, 0.6, 0.7]]), "user 'b'.*feature size 3"),
        (lambda b: b["user_data"]["b"].__setitem__("y", [-1]), "user 'b'.*label"),
        (lambda b: b["user_data"]["b"].__setitem__("y", [1.5]), "user 'b'.*label"),
        (lambda b: b["user_data"]["a"].__setitem__("y", [0, 9]), "user 'a'.*outside \\[0, 5\\)"),
        (lambda b: b["user_data"].pop("b"), "user 'b' has no user_data"),
        (lambda b: b["user_data"]["a"]["x"].__setitem__(0, [float("nan"), 0.0]), "user 'a'.*NaN"),
        (lambda b: b.__setitem__("users", ["a", "a"]), "user 'a' appears twice"),
        # issue 10 item 10: labels beyond int32 are refused, not wrapped; wrong JSON types name the user
        (lambda b: b["user_data"]["b"].__setitem__("y", [2**31]), "user 'b'.*label 2147483648"),
        (lambda b: b["user_data"]["b"].__setitem__("y", [2**31 - 1]), "user 'b'.*label 2147483647"),
        (lambda b: b["user_data"]["b"].__setitem__("y", [10**400]), "user 'b'.*numeric"),
        (lambda b: b["user_data"]["b"].__setitem__("y", [True]), "user 'b'.*numbers"),
        (lambda b: b["user_data"]["b"].__setitem__("y", "2"), "user 'b'.*JSON arrays"),
        (lambda b: b["user_data"]["b"].__setitem__("x", {"0": [0.5, 0.6]}), "user 'b'.*JSON arrays"),
        (lambda b: b["user_data"]["b"].__setitem__("x", [[0.5, "a"]]), "user 'b'.*numeric"),
        (lambda b: b["user_data"]["b"].__setitem__("x", [[0.5], [0.6, 0.7]]), "user 'b'.*numeric"),
        (lambda b: b["user_data"].__setitem__("b", [[0.5, 0.6]]), "user 'b'.*JSON object"),
        (lambda b: b.__setitem__("user_data", [b["user_data"]]), "user_data.*first user 'a'"),
        (lambda b: b.__setitem__("user_data", "ab"), "user_data.*first user 'a'"),
        (lambda b: b["num_samples"].__setitem__(1, 1.0), "user 'b'.*num_samples"),
    ],
)
def test_load_leaf_malformed_names_file_and_user(tmp_path, mutate, match):
    blob = _good()
    mutate(blob)
    p = _write(tmp_path, blob)
    with pytest.raises(ValueError, match=match) as info:
        fl.load_leaf(p, num_classes=5)
    assert "bad.json" in str(info.value)


def test_load_leaf_keeps_an_empty_first_user(tmp_path):
    """A valid file whose first user has 0 samples (LEAF writes ``x: []``) loads: the
    feature size comes from the first non-empty user, the empty client stays."""
    blob = _good()
    blob["users"].insert(0, "e")
    blob["num_samples"].insert(0, 0)
    blob["user_data"]["e"] = {"x": [], "y": []}
    data = fl.load_leaf(_write(tmp_path, blob), num_classes=5)
    assert data.client_ids == ("e", "a", "b") and data.num_samples.tolist() == [0, 2, 1]
    assert data.dim == 2 and data.client(0)[0].shape == (0, 2)
    np.testing.assert_array_equal(data.client(1)[0], np.float32([[0.1, 0.2], [0.3, 0.4]]))
    only = {"users": ["e"], "num_samples": [0], "user_data": {"e": {"x": [], "y": []}}}
    empty = fl.load_leaf(_write(tmp_path, only))
    assert empty.num_clients == 1 and empty.x.shape == (0, 0)


def test_load_leaf_largest_int32_class_and_non_utf8(tmp_path):
    blob = _good()
    blob["user_data"]["b"]["y"] = [2**31 - 2]  # the largest label whose num_classes (label + 1) is an int32
    data = fl.load_leaf(_write(tmp_path, blob))
    assert int(data.y[-1]) == 2**31 - 2 and data.num_classes == 2**31 - 1
    p = tmp_path / "latin1.json"
    p.write_bytes(b'{"users": ["\xe9"], "num_samples": [0], "user_data": {}}')
    with pytest.raises(ValueError, match="latin1.json.*not UTF-8"):
        fl.load_leaf(p)


def test_load_leaf_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        fl.load_leaf(tmp_path / "nope")
    with pytest.raises(ValueError, match="no .json"):
        fl.load_leaf(tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json"):
        fl.load_leaf(tmp_path / "x.json")


def test_load_leaf_real_femnist(femnist_dir):
    train = fl.load_leaf(femnist_dir / "train", num_classes=62)
    test = fl.load_leaf(femnist_dir / "test", num_classes=62)
    # the subset's README: 79 writers, 10,988 train and 1,257 test samples
    assert train.num_clients == test.num_clients == 79
    assert int(train.num_samples.sum()) == 10988 and int(test.num_samples.sum()) == 1257
    assert train.dim == 784 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    assert set(train.client_ids) == set(test.client_ids)
    first = json.loads(sorted((femnist_dir / "train").glob("*.json"))[0].read_text())
    assert train.client_ids[: len(first["users"])] == tuple(first["users"])
    np.testing.assert_array_equal(train.client(0)[1], first["user_data"][first["users"][0]]["y"])


def test_synthetic_fedprox_statistics():
    tr, te = fl.synthetic_fedprox(0.0, 0.0, num_clients=1500, dim=4, num_classes=3, seed=3)
    n = tr.num_samples + te.num_samples
    assert n.min() >= 50
    # floor(LogNormal(4, 2)) + 50: P(n - 50 < e^4) = P(Z < 0) = 1/2, P(n - 50 < e^6) = Phi(1) = 0.841
    assert abs(np.mean(n - 50 < np.exp(4.0)) - 0.5) < 0.04
    assert abs(np.mean(n - 50 < np.exp(6.0)) - 0.8413) < 0.03
    np.testing.assert_array_equal(tr.num_samples, (0.9 * n).astype(int))
    assert tr.num_classes == 3 and tr.y.max() < 3


def test_synthetic_fedprox_beta_spreads_device_means():
    # device means v_k ~ N(B_k, 1), B_k ~ N(0, beta^2): the spread of per-device
    # feature means across devices is about sqrt(1 + beta^2)
    for beta, want in ((0.0, 1.0), (3.0, np.sqrt(10.0))):
        tr, _ = fl.synthetic_fedprox(0.5, beta, num_clients=400, dim=3, seed=1)
        means = np.array([tr.client(i)[0][:, 0].mean() for i in range(tr.num_clients)])
        assert abs(means.std() / want - 1.0) < 0.15


def test_synthetic_same_seed_same_data_and_bad_input():
    a, _ = fl.synthetic_fedprox(1.0, 1.0, num_clients=5, seed=7)
    b, _ = fl.synthetic_fedprox(1.0, 1.0, num_clients=5, seed=7)
    np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(ValueError, match="alpha"):
        fl.synthetic_fedprox(-1.0, 1.0)
    with pytest.raises(ValueError, match="num_clients"):
        fl.synthetic_fedprox(1.0, 1.0, num_clients=0)


@settings(max_examples=examples(40), deadline=None)
@given(
    counts=st.lists(st.integers(0, 7), min_size=1, max_size=12),
    k=st.integers(1, 12),
    rule=st.sampled_from(["contiguous", "random", "round_robin"]),
    seed=st.integers(0, 2**32 - 1),
)
@example(counts=[0], k=1, rule="random", seed=0)
@example(counts=[0, 5, 0, 0, 3], k=5, rule="round_robin", seed=1)
def test_assign_to_servers_is_a_partition(counts, k, rule, seed):
    k = min(k, len(counts))
    off = np.concatenate([[0], np.cumsum(counts)])
    x = np.arange(off[-1], dtype=np.float32)[:, None]
    data = fl.FederatedData(x, np.zeros(off[-1], np.int32), off, tuple(map(str, range(len(counts)))), 2)
    servers, members = fl.assign_to_servers(data, k, rule=rule, seed=seed)
    assert servers.num_clients == k and all(len(m) >= 1 for m in members)
    assert sorted(np.concatenate(members).tolist()) == list(range(len(counts)))
    assert max(map(len, members)) - min(map(len, members)) <= 1
    for s, m in enumerate(members):
        want = np.concatenate([data.client(int(d))[0][:, 0] for d in m]) if m.size else np.zeros(0)
        np.testing.assert_array_equal(servers.client(s)[0][:, 0], want)


def test_assign_and_sample_bad_input(rng):
    tr, _ = fl.synthetic_fedprox(1.0, 1.0, num_clients=4, dim=2, seed=0)
    with pytest.raises(ValueError, match="num_servers"):
        fl.assign_to_servers(tr, 5)
    with pytest.raises(ValueError, match="rule"):
        fl.assign_to_servers(tr, 2, rule="nope")
    with pytest.raises(ValueError, match="fraction"):
        fl.sample_devices(tr, 0.0)
    assert fl.sample_devices(tr, 0.5, seed=1).num_clients == 2


def test_bucket_steps_and_pack():
    for s in range(1, 300):
        b = fl.bucket_steps(s)
        assert s <= b and (b - s) < b / 3  # padding is under a third of the work
    assert len({fl.bucket_steps(s) for s in range(1, 65)}) == 12
    tr, _ = fl.synthetic_fedprox(1.0, 1.0, num_clients=3, dim=2, seed=0)
    pk = tr.pack([2, 0], batch_size=10)
    n = tr.num_samples
    assert pk.x.shape[1] == fl.bucket_steps(int(np.ceil(max(n[2], n[0]) / 10))) * 10
    np.testing.assert_array_equal(pk.mask.sum(axis=1), [n[2], n[0]])
    np.testing.assert_array_equal(pk.x[0, : n[2]], tr.client(2)[0])
    assert not pk.x[0, n[2] :].any()
    with pytest.raises(ValueError, match="client index"):
        tr.client(3)


def _merge_ref(data, groups, ids):
    """merge_clients by hand: each group's members' rows, concatenated in group order."""
    xs, ys, off = [], [], [0]
    for g in groups:
        rows_x = [data.x[data.offsets[d] : data.offsets[d + 1]] for d in g]
        rows_y = [data.y[data.offsets[d] : data.offsets[d + 1]] for d in g]
        xs += rows_x
        ys += rows_y
        off.append(off[-1] + sum(len(r) for r in rows_y))
    return np.concatenate(xs), np.concatenate(ys), off


@settings(max_examples=examples(40), deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=9),
    data_st=st.data(),
)
@example(counts=[2, 0, 3], data_st=None)
def test_merge_clients_against_a_by_hand_reference(counts, data_st):
    off = np.concatenate([[0], np.cumsum(counts)])
    n = int(off[-1])
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = (np.arange(n) % 3).astype(np.int32)
    data = fl.FederatedData(x, y, off, tuple(f"d{i}" for i in range(len(counts))), 3)
    if data_st is None:  # the pinned case: groups out of order, a member repeated across groups
        groups = [[2, 0], [1], [0, 1, 2]]
    else:
        member = st.integers(0, len(counts) - 1)
        groups = data_st.draw(st.lists(st.lists(member, min_size=1, max_size=4), min_size=1, max_size=5))
    ids = [f"s{k}" for k in range(len(groups))]
    got = fl.merge_clients(data, groups, ids)
    wx, wy, woff = _merge_ref(data, groups, ids)
    np.testing.assert_array_equal(got.x, wx)
    np.testing.assert_array_equal(got.y, wy)
    assert got.offsets.tolist() == woff and got.client_ids == tuple(ids) and got.num_classes == 3
    with pytest.raises(ValueError, match="ids"):
        fl.merge_clients(data, groups, [*ids, "extra"])
