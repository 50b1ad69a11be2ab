"""Head training: the standardisation folds exactly into the first layer; splits are disjoint."""

from __future__ import annotations

import numpy as np

from apparate_trt.ramps.fit import fold_standardisation, split_indices
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
