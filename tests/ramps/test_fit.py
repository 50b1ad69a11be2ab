"""Head training: the standardisation folds exactly into the first layer; splits are disjoint."""

from __future__ import annotations

import numpy as np

from apparate_trt.ramps.fit import HeadTraining, fold_standardisation, split_indices, train_head, unfold_standardisation
from apparate_trt.ramps.model import RampWeights, ramp_forward


def test_fold_standardisation_is_exact() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 5.0, size=(10, 4)).astype(np.float32)
    mean, std = x.mean(axis=0).astype(np.float64), x.std(axis=0).astype(np.float64)
    weights = RampWeights(
        [
            (rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)),
            (rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)),
        ]
    )
    folded = fold_standardisation(weights, mean, std)
    want = ramp_forward(weights, ((x - mean) / std).astype(np.float32))
    np.testing.assert_allclose(ramp_forward(folded, x), want, rtol=1e-4, atol=1e-4)


def test_split_indices() -> None:
    train, held = split_indices(100, 0.2, seed=0)
    assert len(held) == 20 and len(train) == 80 and not set(train) & set(held)
    train, held = split_indices(2, 0.2, seed=0)
    assert len(train) == 1 and len(held) == 1


def test_unfold_standardisation_inverts_fold() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(-1.0, 3.0, size=(12, 4)).astype(np.float32)
    mean, std = x.mean(axis=0).astype(np.float64), x.std(axis=0).astype(np.float64)
    weights = RampWeights([(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32))])
    back = unfold_standardisation(fold_standardisation(weights, mean, std), mean, std)
    np.testing.assert_allclose(back.layers[0][0], weights.layers[0][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(back.layers[0][1], weights.layers[0][1], rtol=1e-4, atol=1e-4)


def test_a_warm_start_begins_at_the_given_head() -> None:
    import pytest

    pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 4.0, size=(300, 6)).astype(np.float32)
    labels = (x[:, 0] > 2.0).astype(np.int64)
    head = RampWeights([(rng.normal(size=(6, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32))])
    # a learning rate of 0: the trained head is the one it started from
    still = train_head(x, labels, None, "dense_linear", 2, HeadTraining(lr=0.0), seed=0, init=head)
    np.testing.assert_allclose(ramp_forward(still, x), ramp_forward(head, x), rtol=1e-3, atol=1e-3)
    fresh = train_head(x, labels, None, "dense_linear", 2, HeadTraining(lr=0.0), seed=0)
    assert not np.allclose(ramp_forward(fresh, x), ramp_forward(head, x), atol=1e-2)
