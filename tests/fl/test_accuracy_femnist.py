"""FedAvg with LEAF's CNN reaches 75 % on the real FEMNIST subset (slow: CNN training)."""

from __future__ import annotations

import numpy as np
import pytest

from mcsl_core import fl


@pytest.mark.slow
def test_fedavg_cnn_reaches_75_percent_on_femnist(femnist_dir):
    train = fl.load_leaf(femnist_dir / "train", num_classes=62)
    test = fl.load_leaf(femnist_dir / "test", num_classes=62)
    cfg = fl.FLConfig(
        rounds=60,
        clients_per_round=20,
        local_epochs=1,
        batch_size=10,
        client_lr=0.06,
        seed=0,
        eval_every=5,
        target_accuracy=0.75,
        strategy="loop",
        progress=False,
    )
    res = fl.run_fedavg(fl.femnist_cnn(), train, cfg, test=test)
    assert np.nanmax(res.history.eval_accuracy) >= 0.75


@pytest.mark.slow
def test_cnn_strategies_agree_on_femnist_shapes(rng):
    """The CNN's im2col path under loop and vmap gives the same updates."""
    off = np.array([0, 7, 19, 30])
    data = fl.FederatedData(
        rng.random((30, 784), dtype=np.float32), rng.integers(0, 62, 30), off, ("a", "b", "c"), 62
    )
    model = fl.femnist_cnn()
    params = fl.init_params(model, 784, 0)
    cfg = fl.FLConfig(batch_size=5, client_lr=0.05)
    a = fl.federated_round(model, params, data, [0, 1, 2], cfg, strategy="loop")
    b = fl.federated_round(model, params, data, [0, 1, 2], cfg, strategy="vmap")
    for x, y in zip(jax_leaves(a.updates), jax_leaves(b.updates)):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
