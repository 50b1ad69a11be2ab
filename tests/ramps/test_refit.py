"""Refits: a head that releases more on held-out samples is accepted, one that does not is not."""

from __future__ import annotations

import numpy as np
import pytest

from apparate_trt.ramps.model import DENSE_LINEAR, RampWeights, ramp_forward
from apparate_trt.ramps.refit import MIN_SAMPLES, refit_head, resampled_wins

pytest.importorskip("torch")

FEATURES, CLASSES = 8, 3


def _stream(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of m rows and the model's probabilities: a linear rule the head can learn."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, FEATURES)).astype(np.float32)
    logits = 4.0 * x[:, :CLASSES]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return x, (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _zero_head() -> RampWeights:
    return RampWeights([(np.zeros((FEATURES, CLASSES), np.float32), np.zeros(CLASSES, np.float32))])


def test_a_useless_head_is_replaced_by_one_that_agrees() -> None:
    x, probs = _stream(1200, seed=0)
    result = refit_head(DENSE_LINEAR, _zero_head(), x, probs, target=0.003, seed=0)
    assert result.accepted and result.weights is not None
    assert result.before["share"] == 0.0 and result.after["share"] > 0.3
    assert result.after["agreement"] > 0.9 > result.before["agreement"]
    assert result.train_samples + result.heldout_samples == 1200 and result.heldout_samples == 300
    # the accepted head is what was judged: it agrees with the model on new rows too
    fresh, fresh_probs = _stream(500, seed=1)
    agree = (ramp_forward(result.weights, fresh).argmax(axis=1) == fresh_probs.argmax(axis=1)).mean()
    assert agree > 0.9
    assert set(result.summary()) == {"accepted", "before", "after", "train_samples", "heldout_samples", "fit_s"}


def test_a_head_that_gains_less_than_min_gain_is_rejected() -> None:
    x, probs = _stream(1200, seed=0)
    good = refit_head(DENSE_LINEAR, _zero_head(), x, probs, target=0.003, seed=0).weights
    assert good is not None
    again = refit_head(DENSE_LINEAR, good, x, probs, target=0.003, min_gain=0.5, seed=1)
    assert not again.accepted and again.weights is None
    assert again.after["share"] - again.before["share"] < 0.5


def test_the_held_out_mask_decides_what_is_judged_on() -> None:
    x, probs = _stream(400, seed=2)
    heldout = np.zeros(400, dtype=bool)
    heldout[:100] = True
    result = refit_head(DENSE_LINEAR, _zero_head(), x, probs, target=0.003, heldout=heldout, seed=0)
    assert (result.train_samples, result.heldout_samples) == (300, 100)


def test_too_few_samples_are_refused() -> None:
    x, probs = _stream(MIN_SAMPLES - 1, seed=3)
    with pytest.raises(ValueError, match=f"at least {MIN_SAMPLES} samples"):
        refit_head(DENSE_LINEAR, _zero_head(), x, probs, target=0.003)
    x, probs = _stream(400, seed=3)
    with pytest.raises(ValueError, match="to judge on"):
        refit_head(DENSE_LINEAR, _zero_head(), x, probs, target=0.003, heldout=np.zeros(400, dtype=bool))


def test_resampled_wins_tell_a_better_head_from_an_equal_one() -> None:
    x, probs = _stream(800, seed=3)
    final = probs.argmax(axis=1)
    good = refit_head(DENSE_LINEAR, _zero_head(), x, probs, target=0.003, seed=0).weights
    assert good is not None
    w = np.ones(final.size)
    better = resampled_wins(ramp_forward(_zero_head(), x), ramp_forward(good, x), final, 0.003, w, seed=0)
    same = resampled_wins(ramp_forward(good, x), ramp_forward(good, x), final, 0.003, w, seed=0)
    assert better == 1.0 and same == 0.0


def test_a_noisy_gain_is_not_enough() -> None:
    """Confidence 1.01 can never be met: the single held-out gain alone does not accept a head."""
    x, probs = _stream(1200, seed=0)
    result = refit_head(DENSE_LINEAR, _zero_head(), x, probs, target=0.003, seed=0, confidence=1.01)
    assert not result.accepted and result.after["share"] > result.before["share"]
    assert result.after["resampled_wins"] == 1.0
