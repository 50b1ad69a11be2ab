"""A change of the stream, read off the model's own final outputs (issue 32).

With no active ramp the controller has no ramp feedback to judge the stream by, only the model's
final outputs. :class:`StreamShift` compares the recent block of those outputs with a reference
block taken when the slow loop last gave up (no ramp paid): the share of each predicted class
(total variation distance) and the mean top probability. When either moved past its limit, the
stream has changed since the ramps were judged, and the wait before the next probe is cut short:
degraded images that made every ramp useless give way to normal ones again, and the engine should
not wait out its probe backoff before it tries a ramp on them.

State is bounded: two count vectors of at most ``classes`` entries and two running sums.
"""

from __future__ import annotations

import numpy as np

SHIFT_MIN_SAMPLES = 256
"""Samples each block needs before the two are compared (below, the class shares are noise)."""
SHIFT_CLASS_DISTANCE = 0.2
"""Total variation distance (fraction, 0..1) between the blocks' predicted-class shares that counts
as a change. Two blocks of 256 samples from one 10-class stream differ by about 0.08 (sampling noise)."""
SHIFT_CONFIDENCE = 0.08
"""Change (absolute, 0..1) of the mean top probability of the final outputs that counts as a change.
Its noise between two blocks of 256 samples of one stream is about 0.01-0.02."""


def top_probability(logits: np.ndarray) -> np.ndarray:
    """float64 [n]: the softmax's largest probability per row of ``logits`` [n, classes]."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.nan_to_num(z - np.max(z, axis=1, keepdims=True), nan=0.0, neginf=-1e9)
    e = np.exp(z)
    return 1.0 / np.sum(e, axis=1)


class _Block:
    """Predicted-class counts and the sum of top probabilities over some samples."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)
        self.confidence_sum = 0.0
        self.samples = 0

    def add(self, predictions: np.ndarray, confidence: np.ndarray) -> None:
        predictions = predictions[predictions >= 0]
        if predictions.size == 0:
            return
        needed = int(predictions.max()) + 1
        if needed > self.counts.size:
            self.counts = np.pad(self.counts, (0, needed - self.counts.size))
        self.counts += np.bincount(predictions, minlength=self.counts.size)
        self.confidence_sum += float(np.sum(confidence))
        self.samples += int(predictions.size)

    def shares(self, size: int) -> np.ndarray:
        counts = np.pad(self.counts, (0, size - self.counts.size)).astype(np.float64)
        return counts / max(1, self.samples)

    def mean_confidence(self) -> float:
        return self.confidence_sum / max(1, self.samples)


class StreamShift:
    """Whether the stream's final outputs moved since :meth:`mark` (see the module docstring)."""

    def __init__(
        self,
        min_samples: int = SHIFT_MIN_SAMPLES,
        class_distance: float = SHIFT_CLASS_DISTANCE,
        confidence_change: float = SHIFT_CONFIDENCE,
    ) -> None:
        self.min_samples = int(min_samples)
        self.class_distance = float(class_distance)
        self.confidence_change = float(confidence_change)
        self._reference: _Block | None = None
        self._recent = _Block()

    def add(self, final_pred: np.ndarray, final_logits: np.ndarray | None) -> None:
        """Count a batch's final predictions (int [n], -1 for a row without one) and logits [n, classes]."""
        if self._reference is None:  # nothing to compare with (a hot path while ramps pay): no work
            return
        predictions = np.asarray(final_pred, dtype=np.int64).reshape(-1)
        if final_logits is None or np.shape(final_logits)[0] != predictions.size or predictions.size == 0:
            return
        confidence = top_probability(np.asarray(final_logits))[predictions >= 0]
        if self._reference.samples < self.min_samples:
            self._reference.add(predictions, confidence)
            return
        self._recent.add(predictions, confidence)
        if self._recent.samples >= 4 * self.min_samples:  # keep the recent block recent
            self._recent = _Block()

    def mark(self) -> None:
        """Start a new reference: the next ``min_samples`` outputs describe the stream as it is now."""
        self._reference = _Block()
        self._recent = _Block()

    def clear(self) -> None:
        """No reference: nothing to compare with until the next :meth:`mark`."""
        self._reference = None
        self._recent = _Block()

    def changed(self) -> str | None:
        """A reason (str) when the recent outputs differ from the reference's, else None."""
        reference = self._reference
        if reference is None or reference.samples < self.min_samples or self._recent.samples < self.min_samples:
            return None
        size = max(reference.counts.size, self._recent.counts.size)
        distance = 0.5 * float(np.abs(reference.shares(size) - self._recent.shares(size)).sum())
        if distance >= self.class_distance:
            return f"the predicted classes' shares moved by {distance:.2f} (total variation)"
        moved = self._recent.mean_confidence() - reference.mean_confidence()
        if abs(moved) >= self.confidence_change:
            return f"the model's mean top probability moved by {moved:+.3f}"
        return None
