"""Ramp training on bootstrap data (DESIGN.md step 5).

One pass of the original model over the bootstrap data (:func:`collect_features`) keeps, per site
and candidate ramp kind, the ramp's pooled features, plus the model's final scores. Where a site
has several candidate kinds, each is trained on 75% of the train part and the one that agrees best
on the other 25% is kept. Every ramp head is then trained (:func:`train_ramps`) to predict the
ORIGINAL MODEL's output: by default distilled from its probabilities (cross-entropy against the
softmax of its scores), which teaches a ramp to be unsure where the model is; ``distill=False``
trains on its argmax instead. On the benchmark models distillation raised the share of inputs a
ramp can release at 0.3% disagreement, markedly on the 2-class NLP model, whose argmax alone says
nothing of how close a call was.

Its statistics (confidence and prediction per sample, which seed and tune the controller at
start) must come from samples it did not train on. By default they are cross-fitted
(``TrainConfig.folds`` = 5): a ramp trained on four folds gives the outputs for the fifth, so
every bootstrap sample contributes, while the exported ramp is trained on all of them. With
``folds`` < 2 one seeded split holds ``heldout_fraction`` out instead.

Extra training rows (``extra``: features of near-copies and blends of samples,
``compiler.augment``) name the sample each was made from (a blend both of its samples) and are
trained on only together with them, so that nothing made from a validation or held-out sample is
ever trained on. The backbone is frozen: only the small heads are
trained, with Adam, seeded. Features are standardised for training and the standardisation is
folded into the first layer, so the exported ramp takes raw pooled features.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from apparate_trt._optional import require
from apparate_trt.backends import open_runner
from apparate_trt.compiler.prestages import PreStages
from apparate_trt.data import num_samples, take
from apparate_trt.engine_dir import BootstrapStats
from apparate_trt.graph.split import with_extra_outputs
from apparate_trt.ramps.fit import HeadTraining, split_indices, target_probabilities, train_head
from apparate_trt.ramps.model import (
    MASKED_KINDS,
    RampWeights,
    SiteLike,
    kind_spec,
    pool_features,
    ramp_forward,
    softmax,
)
from apparate_trt.ramps.prestage import PreStageTraining

Log = Callable[[str], None]


@dataclass
class Features:
    """What one pass over the bootstrap data keeps.

    ``pooled[i]``: per candidate kind of site i (in preference order), float32 [N, D] pooled
    features; ``final_scores``: float32 [N, K] the model's score output; ``examples[i]``: the raw
    activation of site i for the first few samples and ``mask_example`` the mask rows for them,
    used to check each exported ramp against numpy.
    """

    pooled: list[dict[str, np.ndarray]]
    final_scores: np.ndarray
    examples: list[np.ndarray]
    mask_example: np.ndarray | None = None
    source: np.ndarray | None = None
    """For extra rows (near-copies and blends): the bootstrap index each row was made from; None otherwise."""
    partner: np.ndarray | None = None
    """For extra rows: the second bootstrap index a blended row was made from (a row that is not
    a blend names its own source); None when no row is a blend."""
    prestages: PreStages | None = None
    """The frozen per-position stages of the kinds that have one (``compiler.prestages``); their
    training rows are kept out of the held-out statistics."""

    @property
    def final_pred(self) -> np.ndarray:
        return self.final_scores.argmax(axis=1).astype(np.int32)


@dataclass
class TrainConfig(HeadTraining):
    """Ramp training hyper-parameters: each head's (:class:`~apparate_trt.ramps.fit.HeadTraining`)
    and the bootstrap data's use (defaults train 16 ramps x 1,000 samples in seconds)."""

    heldout_fraction: float = 0.2
    distill: bool = True
    """Train on the model's probabilities (True) or on its argmax (False)."""
    seed: int = 0
    folds: int = 5
    """Cross-fitting: >= 2 splits the bootstrap samples into this many folds and gives every sample
    the ramp outputs of a ramp trained on the other folds, so that all of them (not only a held-out
    fifth) seed and tune the controller at start; the exported ramp is trained on every sample.
    0 or 1: one seeded split, ``heldout_fraction`` held out."""
    augment_copies: int | None = None
    """Near-copies of each train sample to train on too (``compiler.augment``); None: the default
    for the model's inputs (every copy for an image or token-sequence model, none otherwise)."""
    blend_copies: int | None = None
    """Blends of each train sample with another one to train on too (``compiler.augment``); None:
    the default for the model's inputs (``augment.DEFAULT_BLENDS`` for an image model, else none)."""
    prestage: PreStageTraining = dataclasses.field(default_factory=PreStageTraining)
    """The training of the per-position stages (``compiler.prestages``) of the kinds that have one;
    the head settings above (``epochs``, ``min_steps``, ``max_steps``, ...) do not apply to it."""


@dataclass
class TrainedRamp:
    """A trained ramp head and its held-out results (confidence = max softmax probability)."""

    kind: str
    weights: RampWeights
    agreement: float
    train_agreement: float
    confidence: np.ndarray  # float32 [num_heldout]
    pred: np.ndarray  # int32 [num_heldout]


@dataclass
class TrainResult:
    """All ramps, the held-out statistics (for the engine dir) and the train/held-out split."""

    ramps: list[TrainedRamp]
    stats: BootstrapStats
    train_index: np.ndarray
    heldout_index: np.ndarray
    folds: int = 0  # >= 2: cross-fitted statistics (every sample held out of one fold)


def collect_features(
    model: onnx.ModelProto,
    sites: Sequence[SiteLike],
    candidates: Sequence[Sequence[str]],
    inputs: dict[str, np.ndarray],
    score_name: str,
    *,
    mask: str | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    example_rows: int = 4,
    prestages: PreStages | None = None,
    log: Log = print,
) -> Features:
    """Run the model once over ``inputs`` in batches; pool every site's activation on the fly for
    each of its ``candidates`` kinds (``mask`` names the attention mask input that masked kinds
    read; a masked kind is dropped at a site whose sequence length differs from the mask's; a kind
    with a per-position stage runs its frozen stage from ``prestages`` first, and is dropped where
    none was learned)."""
    tensors = [site.tensor for site in sites]
    runner = open_runner(
        with_extra_outputs(model, tensors) if tensors else model, threads=threads, name="the model with site outputs"
    )
    wanted = [score_name, *dict.fromkeys(tensors)]
    n = num_samples(inputs)
    # preallocated per kind on its first batch and filled in place: no list of chunks to concatenate
    pooled: list[dict[str, np.ndarray]] = [{} for _ in sites]
    filled: list[dict[str, int]] = [{} for _ in sites]
    scores: list[np.ndarray] = []
    examples: list[np.ndarray] = []
    start, next_report = time.perf_counter(), 0.25
    for begin in range(0, n, batch_size):
        batch = take(inputs, slice(begin, begin + batch_size))
        out = runner.run(batch, outputs=wanted)
        scores.append(np.asarray(out[score_name], dtype=np.float32).reshape(out[score_name].shape[0], -1))
        mask_rows = batch[mask] if mask is not None else None
        for i, (site, kinds) in enumerate(zip(sites, candidates)):
            activation = out[site.tensor]
            for kind in kinds:
                if kind in MASKED_KINDS and (mask_rows is None or mask_rows.shape[:2] != activation.shape[:2]):
                    continue
                pre = prestages.get(i, kind) if prestages is not None else None
                if kind_spec(kind).pre_width and pre is None:
                    continue
                rows = pool_features(kind, activation, mask_rows, pre)
                if kind not in pooled[i]:
                    if begin:
                        continue  # missing from an earlier batch: incomplete, dropped below
                    pooled[i][kind] = np.empty((n, rows.shape[1]), dtype=np.float32)
                    filled[i][kind] = 0
                pooled[i][kind][begin : begin + rows.shape[0]] = rows
                filled[i][kind] += rows.shape[0]
            if begin == 0:
                examples.append(np.array(activation[:example_rows], dtype=np.float32))
        done = min(n, begin + batch_size)
        if done / n >= next_report or done == n:
            log(f"  features: {done}/{n} samples ({time.perf_counter() - start:.1f} s)")
            next_report = done / n + 0.25
    complete = [{k: v for k, v in site.items() if counts[k] == n} for site, counts in zip(pooled, filled)]
    return Features(
        pooled=complete,
        final_scores=np.concatenate(scores),
        examples=examples,
        mask_example=np.array(inputs[mask][:example_rows]) if mask is not None else None,
        prestages=prestages,
    )


def cross_fitted(n: int, config: TrainConfig) -> bool:
    """True when ``n`` samples are cross-fitted under ``config`` (at least 2 folds of 2 samples)."""
    return config.folds >= 2 and n >= 2 * config.folds


def bootstrap_split(n: int, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The (train, held-out) indices of ``n`` bootstrap samples that :func:`train_ramps` uses: with
    cross-fitting every sample is both (each is held out of one fold's ramp)."""
    if cross_fitted(n, config):
        every = np.arange(n)
        return every, every
    return split_indices(n, config.heldout_fraction, config.seed)


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """A seeded assignment of ``n`` samples to ``folds`` folds of (nearly) equal size: int [n]."""
    order = np.random.default_rng(seed).permutation(n)
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.arange(n) % folds
    return ids


@dataclass
class _Rows:
    """Training rows of one site and kind: pooled features, the model's argmax and probabilities."""

    x: np.ndarray
    y: np.ndarray
    p: np.ndarray | None


class _TrainingSet:
    """The bootstrap rows of every site and kind, plus the extra rows made from them."""

    def __init__(self, features: Features, extra: Features | None, distill: bool) -> None:
        self.features = features
        self.extra = extra
        self.final_pred = features.final_pred
        self.excluded = features.prestages.rows if features.prestages is not None else np.zeros(0, np.int64)
        self.probs = target_probabilities(features.final_scores) if distill else None
        if extra is not None:
            if extra.source is None:
                raise ValueError(
                    "extra training rows must name the bootstrap sample each was made from (Features.source)"
                )
            self.extra_pred = extra.final_pred
            self.extra_probs = target_probabilities(extra.final_scores) if distill else None

    def rows(self, site: int, kind: str, index: np.ndarray) -> _Rows:
        """The rows of bootstrap samples ``index`` at ``site`` for ``kind``, with the extra rows made from them."""
        x = self.features.pooled[site][kind][index]
        y = self.final_pred[index]
        p = None if self.probs is None else self.probs[index]
        extra = self.extra
        if extra is None or kind not in extra.pooled[site]:
            return _Rows(x, y, p)
        keep = np.isin(extra.source, index)
        if extra.partner is not None:  # a blend trains only together with both of its samples
            keep &= np.isin(extra.partner, index)
        x = np.concatenate([x, extra.pooled[site][kind][keep]])
        y = np.concatenate([y, self.extra_pred[keep]])
        if p is not None and self.extra_probs is not None:
            p = np.concatenate([p, self.extra_probs[keep]])
        return _Rows(x, y, p)


def choose_kind(
    data: _TrainingSet,
    site: int,
    train_idx: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    seed: int,
) -> tuple[str, dict[str, float]]:
    """The candidate kind whose head, trained on 75% of the train part, agrees best on the other 25%.

    Returns (kind, agreement per kind); with one candidate, (it, {}). Ties keep the earlier kind.
    """
    options = data.features.pooled[site]
    kinds = list(options)
    if len(kinds) == 1:
        return kinds[0], {}
    fit_pos, val_pos = split_indices(len(train_idx), 0.25, seed)
    fit, val = train_idx[fit_pos], train_idx[val_pos]
    unseen = np.setdiff1d(val, data.excluded)  # rows that trained no per-position stage
    val = unseen if unseen.size else val
    scores: dict[str, float] = {}
    for kind in kinds:
        rows = data.rows(site, kind, fit)
        weights = train_head(rows.x, rows.y, rows.p, kind, num_classes, config, seed)
        pred = ramp_forward(weights, options[kind][val]).argmax(axis=1)
        scores[kind] = float((pred == data.final_pred[val]).mean())
    return max(kinds, key=lambda k: scores[k]), scores


def train_ramps(
    features: Features,
    config: TrainConfig = TrainConfig(),
    *,
    extra: Features | None = None,
    threads: int | None = 1,
    log: Log = print,
) -> TrainResult:
    """Train every site's ramp (choosing among its candidate kinds); measure agreement with the
    original model on the held-out part (with cross-fitting, ``config.folds``: out of fold, on
    every sample). ``extra``: features of near-copies of bootstrap samples (``source`` set),
    trained on only where their source sample is. ``threads``: torch threads (1 suits these small
    heads)."""
    torch = require("torch", extra="train", purpose="ramp training")
    n = features.final_scores.shape[0]
    num_classes = features.final_scores.shape[1]
    train_idx, held_idx = bootstrap_split(n, config)
    folds = fold_ids(n, config.folds, config.seed) if cross_fitted(n, config) else None
    final_pred = features.final_pred
    data = _TrainingSet(features, extra, config.distill)
    unseen = np.setdiff1d(held_idx, data.excluded)  # no per-position stage trained on these
    held_idx = unseen if unseen.size else held_idx
    ramps: list[TrainedRamp] = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads or 1))
    try:
        for i, options in enumerate(features.pooled):
            start = time.perf_counter()
            seed = config.seed * 1000 + i
            kind, scores = choose_kind(data, i, train_idx, num_classes, config, seed)
            pooled = options[kind]
            rows = data.rows(i, kind, train_idx)
            weights = train_head(rows.x, rows.y, rows.p, kind, num_classes, config, seed=seed)
            if features.prestages is not None:
                weights = dataclasses.replace(weights, pre=features.prestages.get(i, kind))
            if folds is not None:
                ramp = _cross_fit(data, i, kind, weights, folds, held_idx, num_classes, config, seed)
            else:
                ramp = _evaluate(kind, weights, pooled, final_pred, train_idx, held_idx)
            ramps.append(ramp)
            copies = f", {rows.y.shape[0] - train_idx.size} of them copies" if rows.y.shape[0] > train_idx.size else ""
            chosen = (
                f", chosen by inner validation: {', '.join(f'{k} {v:.3f}' for k, v in scores.items())}"
                if scores
                else ""
            )
            log(
                f"  ramp {i + 1}/{len(features.pooled)} ({kind}, {pooled.shape[1]} features, {rows.y.shape[0]} "
                f"train rows{copies}): {'held-out' if folds is None else 'out-of-fold'} agreement "
                f"{ramp.agreement:.3f} (train {ramp.train_agreement:.3f}, {time.perf_counter() - start:.1f} s{chosen})"
            )
    finally:
        torch.set_num_threads(old_threads)
    return TrainResult(
        ramps, heldout_stats(ramps, final_pred[held_idx]), train_idx, held_idx, 0 if folds is None else config.folds
    )


def _cross_fit(
    data: _TrainingSet,
    site: int,
    kind: str,
    weights: RampWeights,
    folds: np.ndarray,
    held: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    seed: int,
) -> TrainedRamp:
    """The exported ramp (``weights``, trained on every sample) with out-of-fold statistics: each
    sample's confidence and prediction come from a ramp trained on the other folds (``folds``:
    :func:`fold_ids`); the statistics are those of the samples ``held`` (all of them unless some
    trained a per-position stage)."""
    pooled = data.features.pooled[site][kind]
    n = pooled.shape[0]
    confidence = np.zeros(n, dtype=np.float32)
    pred = np.zeros(n, dtype=np.int32)
    for f in range(config.folds):
        out = folds == f
        rows = data.rows(site, kind, np.flatnonzero(~out))
        probs = softmax(
            ramp_forward(
                train_head(rows.x, rows.y, rows.p, kind, num_classes, config, seed=seed + 100 * (f + 1)), pooled[out]
            )
        )
        confidence[out], pred[out] = probs.max(axis=1), probs.argmax(axis=1)
    final_pred = data.final_pred
    train_pred = ramp_forward(weights, pooled).argmax(axis=1)
    return TrainedRamp(
        kind=kind,
        weights=weights,
        agreement=float((pred[held] == final_pred[held]).mean()),
        train_agreement=float((train_pred == final_pred).mean()),
        confidence=confidence[held],
        pred=pred[held],
    )


def _evaluate(
    kind: str,
    weights: RampWeights,
    pooled: np.ndarray,
    final_pred: np.ndarray,
    train_idx: np.ndarray,
    held_idx: np.ndarray,
) -> TrainedRamp:
    probs = softmax(ramp_forward(weights, pooled))
    pred = probs.argmax(axis=1).astype(np.int32)
    agree = pred == final_pred
    return TrainedRamp(
        kind=kind,
        weights=weights,
        agreement=float(agree[held_idx].mean()) if held_idx.size else float("nan"),
        train_agreement=float(agree[train_idx].mean()) if train_idx.size else float("nan"),
        confidence=probs[held_idx].max(axis=1).astype(np.float32),
        pred=pred[held_idx],
    )


def heldout_stats(ramps: Sequence[TrainedRamp], final_pred: np.ndarray) -> BootstrapStats:
    """The engine directory's bootstrap statistics: per held-out sample and site."""
    n = final_pred.shape[0]
    confidence = np.stack([r.confidence for r in ramps], axis=1) if ramps else np.zeros((n, 0), np.float32)
    ramp_pred = np.stack([r.pred for r in ramps], axis=1) if ramps else np.zeros((n, 0), np.int32)
    return BootstrapStats(
        confidence=confidence.astype(np.float32),
        ramp_pred=ramp_pred.astype(np.int32),
        final_pred=final_pred.astype(np.int32),
        agree=(ramp_pred == final_pred[:, None]).astype(np.uint8),
    )
