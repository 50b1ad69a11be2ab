"""Refitting a ramp head on served samples, judged on held-out ones (the runtime's ramp learning).

Every row that reaches the model's end labels each active ramp it passed: the runtime keeps the
ramp's pooled features and the model's final probabilities (``runtime.learning.reservoir``). A refit
(:func:`refit_head`) trains a new head on the samples not held out (the reservoir marks a share of
its rows held out when it takes them, so no head is ever judged on rows it trained on) exactly as
the compiler trains one (:func:`~apparate_trt.ramps.fit.train_head`, distilled from the model's
probabilities, each row weighted by the inputs it stands for), and measures the current head and the
new one on the held-out samples: the releasable share at the controller's target disagreement
(:func:`~apparate_trt.ramps.quality.releasable_share`) and the agreement with the model. The new
head is accepted only when its releasable share is higher by at least ``min_gain`` (default
:data:`MIN_GAIN`, so that held-out noise does not swap heads, each swap costing a probation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from apparate_trt.ramps.fit import HeadTraining, split_indices, train_head
from apparate_trt.ramps.model import RampWeights, ramp_forward
from apparate_trt.ramps.quality import head_quality

HELDOUT_FRACTION = 0.25
"""Share of the samples a refit holds out to judge the new head against the current one."""
MIN_GAIN = 0.01
"""Least rise of the releasable share (a fraction of inputs: 1 point) for a new head to be accepted."""
MIN_SAMPLES = 256
"""Fewest samples a refit trains and judges on (fewer: the held-out share is too noisy to judge)."""
MIN_SIDE = 64
"""Fewest samples on each side of the split (training, held out)."""


@dataclass
class RefitResult:
    """One refit's outcome. ``before`` / ``after``: the current and the new head's ``share`` and
    ``agreement`` (fractions) on the held-out samples; ``weights``: the new head (kept only when
    ``accepted``); ``fit_s``: seconds the training and judging took."""

    accepted: bool
    before: dict[str, float]
    after: dict[str, float]
    train_samples: int
    heldout_samples: int
    fit_s: float
    weights: RampWeights | None = field(default=None, repr=False)

    def summary(self) -> dict[str, object]:
        """The figures, JSON-ready (no weights)."""
        return {
            "accepted": self.accepted,
            "before": dict(self.before),
            "after": dict(self.after),
            "train_samples": self.train_samples,
            "heldout_samples": self.heldout_samples,
            "fit_s": self.fit_s,
        }


def refit_head(
    kind: str,
    current: RampWeights,
    features: np.ndarray,
    probs: np.ndarray,
    target: float,
    *,
    weights: np.ndarray | None = None,
    heldout: np.ndarray | None = None,
    config: HeadTraining | None = None,
    heldout_fraction: float = HELDOUT_FRACTION,
    min_gain: float = MIN_GAIN,
    seed: int = 0,
) -> RefitResult:
    """Train a new ``kind`` head on served samples and judge it against ``current``.

    Args:
        kind: the ramp's kind (its head's layers and activation).
        current: the head serving now.
        features: float32 [m, D] the ramp's pooled features of m served rows.
        probs: float32 [m, classes] the model's final probabilities of those rows.
        target: the disagreement (a fraction of all inputs) at which the releasable share is
            measured: the controller's target (``target_fraction * accuracy_constraint``).
        weights: [m] the inputs each row stands for (None: 1 each).
        heldout: bool [m], the rows to judge on (the others train); None: a seeded random
            ``heldout_fraction`` of them.
        config: training hyper-parameters (None: the defaults).
        heldout_fraction: share of the rows held out when ``heldout`` is None.
        min_gain: least rise of the releasable share (a fraction) that accepts the new head.
        seed: seeds the split and the training.

    Raises ValueError with fewer than :data:`MIN_SAMPLES` rows (or fewer than 64 on either side
    of the split, :data:`MIN_SIDE`) or mismatched arrays.
    """
    start = time.perf_counter()
    m = int(features.shape[0])
    if m < MIN_SAMPLES:
        raise ValueError(f"a refit needs at least {MIN_SAMPLES} samples, got {m}")
    if probs.shape[0] != m or (weights is not None and np.shape(weights)[0] != m):
        raise ValueError(f"features, probabilities and weights disagree on the samples ({m}, {probs.shape[0]})")
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if heldout is None:
        train, held = split_indices(m, heldout_fraction, seed)
    else:
        mask = np.asarray(heldout, dtype=bool)
        if mask.shape != (m,):
            raise ValueError(f"the held-out mask has {mask.size} entries for {m} samples")
        train, held = np.flatnonzero(~mask), np.flatnonzero(mask)
    if min(train.size, held.size) < MIN_SIDE:
        raise ValueError(
            f"a refit needs at least {MIN_SIDE} samples to train and {MIN_SIDE} to judge on, got {train.size} and "
            f"{held.size}"
        )
    final_pred = probs.argmax(axis=1)
    new = train_head(
        features[train],
        final_pred[train],
        probs[train],
        kind,
        probs.shape[1],
        config or HeadTraining(),
        seed,
        sample_weight=w[train],
    )
    before = head_quality(ramp_forward(current, features[held]), final_pred[held], target, w[held])
    after = head_quality(ramp_forward(new, features[held]), final_pred[held], target, w[held])
    gain = after["share"] - before["share"]
    accepted = gain > 0 and gain >= min_gain - 1e-12
    return RefitResult(
        accepted, before, after, int(train.size), int(held.size), time.perf_counter() - start, new if accepted else None
    )
