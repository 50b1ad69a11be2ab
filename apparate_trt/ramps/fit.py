"""Training a ramp head on pooled features, the compiler's and the runtime's refits alike.

A head is trained to predict the ORIGINAL MODEL's output: distilled from its probabilities
(cross-entropy against them), or on its argmax when none are given. Features are standardised
for training and the standardisation is folded into the first layer, so the trained head takes raw
pooled features (:func:`fold_standardisation`). Optional per-row weights (the rows each one stands
for, e.g. ``1 / audit_rate`` for an audited row in skip mode) weigh the loss. Adam, a cosine
schedule, seeded. Needs torch (the ``train`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apparate_trt._optional import require
from apparate_trt.ramps.model import RampWeights, kind_spec, softmax
from apparate_trt.ramps.steps import step_count


@dataclass
class HeadTraining:
    """Hyper-parameters of one head's training (defaults train a head on 1,000 rows in about a second)."""

    epochs: int = 20
    min_steps: int = 200
    max_steps: int = 400
    """Optimiser steps are ``epochs`` passes, raised to ``min_steps`` and capped at ``max_steps``,
    then rounded up to whole passes (near-copies multiply the rows; the cap keeps training time flat)."""
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 1e-4
    max_hidden: int = 128
    """A cap on the hidden width of two-layer heads (each kind has its own, ``ramps.model.KindSpec.hidden``)."""


def head_sizes(kind: str, features: int, num_classes: int, config: HeadTraining) -> list[int]:
    """Layer widths of a ``kind`` head on ``features`` pooled features: [in, (hidden,) classes]."""
    spec = kind_spec(kind)
    if spec.layers == 2:
        return [features, min(features, spec.hidden, config.max_hidden), num_classes]
    return [features, num_classes]


def split_indices(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``n`` samples: (train indices, held-out indices), both non-empty if n >= 2."""
    order = np.random.default_rng(seed).permutation(n)
    heldout = min(n - 1, max(1, int(round(heldout_fraction * n)))) if n >= 2 else 0
    return np.sort(order[heldout:]), np.sort(order[:heldout])


def target_probabilities(scores: np.ndarray) -> np.ndarray:
    """The model's output as probabilities: itself if it already is (rows >= 0 summing to 1), else softmax."""
    if scores.size and scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores.astype(np.float32)
    return softmax(scores)


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    # Features that barely vary (e.g. a [CLS] token after one layer) would get huge folded weights
    # that float round-off then disturbs: floor the scale at 1% of the features' overall magnitude.
    magnitude = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return mean, np.maximum(std, 0.01 * magnitude) if magnitude > 0 else np.ones_like(std)


def unfold_standardisation(weights: RampWeights, mean: np.ndarray, std: np.ndarray) -> RampWeights:
    """The inverse of :func:`fold_standardisation`: weights for ``(x - mean) / std`` equal to
    ``weights`` applied to raw features."""
    w0, b0 = weights.layers[0]
    w = w0.astype(np.float64) * std[:, None]
    b = b0.astype(np.float64) + mean @ w0.astype(np.float64)
    first = (w.astype(np.float32), b.astype(np.float32))
    return RampWeights([first, *weights.layers[1:]], weights.activation, weights.pre)


def fold_standardisation(weights: RampWeights, mean: np.ndarray, std: np.ndarray) -> RampWeights:
    """Weights for raw features equal to ``weights`` applied to ``(x - mean) / std``."""
    w0, b0 = weights.layers[0]
    w = w0.astype(np.float64) / std[:, None]
    b = b0.astype(np.float64) - mean @ w
    first = (w.astype(np.float32), b.astype(np.float32))
    return RampWeights([first, *weights.layers[1:]], weights.activation, weights.pre)


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray | None,
    kind: str,
    num_classes: int,
    config: HeadTraining,
    seed: int,
    sample_weight: np.ndarray | None = None,
    init: RampWeights | None = None,
) -> RampWeights:
    """Train one ramp head on pooled ``features`` [N, D] to predict ``labels`` (or ``probs``
    [N, classes] when given); ``sample_weight`` [N] (> 0) weighs each row's loss (None: all 1).
    ``init``: a head of the same shapes to start from (a warm start; None: random)."""
    torch = require("torch", extra="train", purpose="ramp training")
    torch.manual_seed(seed)
    mean, std = _standardiser(features)
    x = torch.from_numpy(((features - mean) / std).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    p = torch.from_numpy(probs.astype(np.float32)) if probs is not None else None
    w = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight, dtype=np.float64)
        w = torch.from_numpy((weights / weights.mean()).astype(np.float32))
    spec = kind_spec(kind)
    sizes = head_sizes(kind, features.shape[1], num_classes, config)
    layers: list = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(torch.nn.Tanh() if spec.activation == "tanh" else torch.nn.ReLU())
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
    net = torch.nn.Sequential(*layers)
    if init is not None:
        start = unfold_standardisation(init, mean, std)
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        if len(linear) != len(start.layers) or any(
            m.weight.shape != (wi.shape[1], wi.shape[0]) for m, (wi, _) in zip(linear, start.layers)
        ):
            raise ValueError("the head to start from does not have this kind's layer shapes")
        with torch.no_grad():
            for m, (wi, bi) in zip(linear, start.layers):
                m.weight.copy_(torch.from_numpy(np.ascontiguousarray(wi.T, dtype=np.float32)))
                m.bias.copy_(torch.from_numpy(np.asarray(bi, dtype=np.float32)))
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = x.shape[0]
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, -(-n // batch))
    steps = step_count(n, batch, config.epochs, config.min_steps, config.max_steps)
    epochs = max(1, -(-steps // steps_per_epoch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for begin in range(0, n, batch):
            idx = order[begin : begin + batch]
            logits = net(x[idx])
            if p is not None:
                per_row = -(p[idx] * torch.log_softmax(logits, dim=1)).sum(dim=1)
            else:
                per_row = torch.nn.functional.cross_entropy(logits, y[idx], reduction="none")
            loss = (per_row * w[idx]).mean() if w is not None else per_row.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    trained = RampWeights(
        [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linear], spec.activation
    )
    return fold_standardisation(trained, mean, std)
