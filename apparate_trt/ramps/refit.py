"""Refitting a ramp head on served samples, judged on held-out ones (the runtime's ramp learning).

Every row that reaches the model's end labels each active ramp it passed: the runtime keeps the
ramp's pooled features and the model's final probabilities (``runtime.learning.reservoir``). A refit
(:func:`refit_head`) trains a new head on the samples not held out (the reservoir marks a share of
its rows held out when it takes them, so no head is ever judged on rows it trained on) exactly as
the compiler trains one (:func:`~apparate_trt.ramps.fit.train_head`, distilled from the model's
probabilities, each row weighted by the inputs it stands for), and measures the current head and the
new one on the held-out samples: the releasable share at the controller's target disagreement
(:func:`~apparate_trt.ramps.quality.releasable_share`) and the agreement with the model.

The new head starts from the current one (a warm start at a lower learning rate,
:data:`REFIT_TRAINING`): measured on the benchmark models, a head trained afresh on a few thousand
served samples releases no more than the compiled one, which was trained on augmented bootstrap
samples, while the warm-started one keeps what the compiled head knew and adds the stream's
(``benchmarks/refit_quality.py``). The new head is accepted only when its releasable share is
higher by at least ``min_gain`` (default :data:`MIN_GAIN`) AND higher in at least
:data:`ACCEPT_CONFIDENCE` of :data:`RESAMPLES` bootstrap resamples of the held-out rows: the share
at a 0.3% disagreement hangs on a handful of wrong rows, so one held-out estimate is noisy, and
each swap costs the ramp a probation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from apparate_trt.ramps.fit import HeadTraining, split_indices, train_head
from apparate_trt.ramps.model import RampWeights, ramp_forward, softmax
from apparate_trt.ramps.quality import head_quality, releasable_share

HELDOUT_FRACTION = 0.25
"""Share of the samples a refit holds out to judge the new head against the current one."""
MIN_GAIN = 0.01
"""Least rise of the releasable share (a fraction of inputs: 1 point) for a new head to be accepted."""
ACCEPT_CONFIDENCE = 0.75
"""Share of the held-out resamples in which the new head must release more than the current one."""
RESAMPLES = 200
"""Bootstrap resamples of the held-out rows that judge a refit."""
REFIT_TRAINING = HeadTraining(lr=3e-3)
"""A refit's training: the compiler's, warm-started from the current head at a third of its rate."""
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


def serving_releases(
    current: RampWeights, features: np.ndarray, final_pred: np.ndarray, target: float, weights: np.ndarray
) -> bool:
    """True when ``current`` releases any of these rows at ``target`` disagreement (else a refit
    starts from random weights: warm-starting from a head that releases nothing keeps nothing)."""
    return head_quality(ramp_forward(current, features), final_pred, target, weights)["share"] > 0


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
    warm_start: bool = True,
    confidence: float = ACCEPT_CONFIDENCE,
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
        seed: seeds the split, the training and the resamples.
        warm_start: start from ``current`` (True; random weights when ``current`` releases
            none of the training rows at ``target``) or from random weights (False).
        confidence: least share of the held-out resamples in which the new head must release
            more (0: the single held-out estimate decides).

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
    if warm_start and not serving_releases(current, features[train], final_pred[train], target, w[train]):
        warm_start = False  # a head that releases nothing at the target has nothing worth keeping
    new = train_head(
        features[train],
        final_pred[train],
        probs[train],
        kind,
        probs.shape[1],
        config or (REFIT_TRAINING if warm_start else HeadTraining()),
        seed,
        sample_weight=w[train],
        init=current if warm_start else None,
    )
    old_logits, new_logits = ramp_forward(current, features[held]), ramp_forward(new, features[held])
    before = head_quality(old_logits, final_pred[held], target, w[held])
    after = head_quality(new_logits, final_pred[held], target, w[held])
    gain = after["share"] - before["share"]
    wins = resampled_wins(old_logits, new_logits, final_pred[held], target, w[held], seed) if gain > 0 else 0.0
    after["resampled_wins"] = wins
    after["warm_start"] = bool(warm_start)
    accepted = gain > 0 and gain >= min_gain - 1e-12 and wins >= confidence - 1e-12
    return RefitResult(
        accepted, before, after, int(train.size), int(held.size), time.perf_counter() - start, new if accepted else None
    )


def resampled_wins(
    old_logits: np.ndarray,
    new_logits: np.ndarray,
    final_pred: np.ndarray,
    target: float,
    weights: np.ndarray,
    seed: int,
    resamples: int = RESAMPLES,
) -> float:
    """Share (0..1) of bootstrap resamples of the rows in which the new head's releasable share
    beats the old one's (the same resampled rows for both: a paired comparison)."""
    old_p, new_p = softmax(old_logits), softmax(new_logits)
    old_conf, new_conf = old_p.max(axis=1), new_p.max(axis=1)
    old_agree = (old_p.argmax(axis=1) == final_pred).astype(np.uint8)
    new_agree = (new_p.argmax(axis=1) == final_pred).astype(np.uint8)
    rng = np.random.default_rng(seed + 7919)
    n = final_pred.shape[0]
    wins = 0
    for _ in range(int(resamples)):
        rows = rng.integers(0, n, n)
        w = weights[rows]
        old = releasable_share(old_conf[rows], old_agree[rows], target, w)
        new = releasable_share(new_conf[rows], new_agree[rows], target, w)
        wins += new > old
    return wins / max(1, int(resamples))
