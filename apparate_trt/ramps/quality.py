"""How much of a stream one ramp can release: the share of inputs above the best threshold.

The number to raise when early exits are too few (``benchmarks/ramp_quality.py`` prints it per site
of an engine directory; a refit is accepted only when it rises, :mod:`apparate_trt.ramps.refit`).
"""

from __future__ import annotations

import numpy as np

from apparate_trt.ramps.model import softmax


def releasable_share(
    confidence: np.ndarray, agree: np.ndarray, max_disagreement: float, weights: np.ndarray | None = None
) -> float:
    """The largest share (0..1) of all inputs that one threshold could release (the most confident
    ones) while the wrongly released stay at most ``max_disagreement`` (a fraction) of ALL inputs,
    as the accuracy constraint counts them. A threshold cannot split inputs of equal confidence, so
    only cuts between distinct confidences count. ``weights`` [n] (> 0): the inputs each sample
    stands for (skip mode's audited rows weigh ``1 / audit_rate``); None: 1 each."""
    if confidence.size == 0:
        return 0.0
    w = np.ones(confidence.size) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    ranked, ranked_w = confidence[order], w[order]
    total = float(ranked_w.sum())
    wrong = np.cumsum(ranked_w * (agree[order] == 0))
    released = np.cumsum(ranked_w)
    cut = np.append(ranked[:-1] > ranked[1:], True)  # a threshold can fall after position k
    ok = np.flatnonzero(cut & (wrong <= max_disagreement * total + 1e-9))
    return float(released[ok[-1]] / total) if ok.size else 0.0


def head_quality(
    logits: np.ndarray, final_pred: np.ndarray, max_disagreement: float, weights: np.ndarray | None = None
) -> dict[str, float]:
    """A ramp's figures on samples with known final predictions: ``share`` (:func:`releasable_share`
    at ``max_disagreement``, maxprob confidence) and ``agreement`` (weighted share of samples whose
    ramp argmax is the model's), both fractions."""
    probs = softmax(logits)
    agree = probs.argmax(axis=1) == final_pred
    w = np.ones(agree.size) if weights is None else np.asarray(weights, dtype=np.float64)
    agreement = float((w * agree).sum() / w.sum()) if agree.size else 0.0
    share = releasable_share(probs.max(axis=1), agree.astype(np.uint8), max_disagreement, w)
    return {"share": share, "agreement": agreement}
