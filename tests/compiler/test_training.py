"""Ramp training: features from one pass, heads that agree with the original model, folded weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tiny_models

from apparate_trt.backends import open_runner
from apparate_trt.compiler.prestages import learn_prestages
from apparate_trt.compiler.sites import find_sites
from apparate_trt.compiler.training import (
    Features,
    TrainConfig,
    collect_features,
    fold_ids,
    train_ramps,
)
from apparate_trt.graph.ingest import load_model, model_io
from apparate_trt.ramps.model import (
    MASKED_KINDS,
    build_ramp_onnx,
    candidate_kinds,
    check_ramp,
    find_mask_input,
)
from apparate_trt.ramps.prestage import PreStageTraining

QUIET = {"log": lambda line: None}


def candidates_of(sites, mask) -> list[list[str]]:
    return [candidate_kinds(s.shape, mask.name if mask else None) for s in sites]


def _features(tmp_path, tiny, data):
    path = tmp_path / "model.onnx"
    onnx.save(tiny.model, str(path))
    model = load_model(path)
    sites = find_sites(model)
    mask = find_mask_input(model_io(model)[0])
    candidates = candidates_of(sites, mask)
    mask_name = mask.name if mask else None
    stages = learn_prestages(
        model,
        sites,
        candidates,
        data,
        "logits",
        mask=mask_name,
        config=PreStageTraining(min_steps=100, max_steps=100),
        **QUIET,
    )
    feats = collect_features(
        model, sites, candidates, data, "logits", mask=mask_name, batch_size=64, threads=1, prestages=stages, **QUIET
    )
    return model, sites, mask, feats


@pytest.mark.parametrize(
    ("builder", "data", "classes", "floor"),
    [
        (tiny_models.resnet_like, lambda n: tiny_models.separable_images("resnet", n, seed=5), 10, 0.5),
        (tiny_models.bert_like, lambda n: tiny_models.separable_tokens(n, seed=5), 2, 0.7),
    ],
)
def test_ramps_agree_with_the_model_far_above_chance(tmp_path, builder, data, classes, floor) -> None:
    feeds = data(300)
    model, sites, mask, feats = _features(tmp_path, builder(), feeds)
    # the features are the site tensors' pooled values and the scores the model's own output
    reference = open_runner(model, threads=1).run(feeds)["logits"]
    np.testing.assert_allclose(feats.final_scores, reference, rtol=1e-5, atol=1e-5)
    assert len(feats.pooled) == len(sites) >= 3
    assert all(p.shape[0] == 300 for options in feats.pooled for p in options.values())
    # every candidate kind of every site was pooled (a BERT-like model's sites get both sequence
    # kinds, a ResNet-like model's feature maps the grid kinds that fit them)
    assert [list(options) for options in feats.pooled] == candidates_of(sites, mask)
    assert any(len(options) >= 2 for options in feats.pooled)
    # the model's predictions are spread over the classes, so agreement is not a majority vote
    majority = np.bincount(feats.final_pred, minlength=classes).max() / 300
    result = train_ramps(feats, TrainConfig(seed=0), threads=1, **QUIET)
    assert all(r.kind in feats.pooled[i] for i, r in enumerate(result.ramps))
    agreements = [r.agreement for r in result.ramps]
    assert max(agreements) >= max(floor, majority + 0.15), (agreements, majority)
    assert agreements[-1] >= 1.0 / classes + 0.25
    stats = result.stats
    # cross-fitted by default: every sample that trained no per-position stage has statistics,
    # from a ramp trained without it
    held = np.setdiff1d(np.arange(300), feats.prestages.rows)
    assert feats.prestages.rows.size == 150 and feats.prestages.stages
    assert result.folds == TrainConfig().folds and np.array_equal(result.heldout_index, held)
    assert stats.confidence.shape == stats.agree.shape == (150, len(sites)) and stats.final_pred.shape == (150,)
    np.testing.assert_allclose(stats.agree.mean(axis=0), agreements, rtol=1e-6)
    assert np.all((stats.confidence >= 1.0 / classes - 1e-6) & (stats.confidence <= 1.0))
    # each trained ramp exported as ONNX computes what numpy computes on real activations
    for site, ramp, example in zip(sites, result.ramps, feats.examples):
        masked = ramp.kind in MASKED_KINDS
        onnx_ramp = build_ramp_onnx(site, ramp.kind, ramp.weights, mask if masked else None)
        check_ramp(onnx_ramp, ramp.kind, ramp.weights, example, feats.mask_example if masked else None)


def _random_labels(n: int = 300, dim: int = 400, classes: int = 4, seed: int = 0) -> Features:
    """Features with labels that do not depend on them: a ramp can only memorise them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    scores = rng.normal(size=(n, classes)).astype(np.float32)
    return Features([{"dense_linear": x}], scores, [])


def test_cross_fitted_statistics_never_come_from_a_ramp_that_trained_on_the_sample() -> None:
    feats = _random_labels()
    # exact copies of every sample as extra rows: a leak of a sample's copy into the fold that
    # scores it would show as out-of-fold agreement far above chance
    extra = Features(
        [{"dense_linear": feats.pooled[0]["dense_linear"].copy()}], feats.final_scores.copy(), [], source=np.arange(300)
    )
    result = train_ramps(
        feats, TrainConfig(seed=0, folds=5, weight_decay=0.0, epochs=200, max_steps=2000), extra=extra, **QUIET
    )
    ramp = result.ramps[0]
    assert ramp.train_agreement > 0.9  # the exported ramp memorised its training samples ...
    assert ramp.agreement < 0.45  # ... but each sample was scored by a ramp that never saw it (chance: 0.25)
    assert result.stats.confidence.shape == (300, 1)


def test_a_blend_trains_only_in_folds_that_hold_both_of_its_samples() -> None:
    feats = _random_labels()
    # each extra row is an exact copy of sample j, blended "from" another sample i: were only its
    # source checked, a fold would train on copies of the very samples it scores
    j = np.arange(300)
    i = np.roll(j, 7)
    extra = Features(
        [{"dense_linear": feats.pooled[0]["dense_linear"].copy()}], feats.final_scores.copy(), [], source=i, partner=j
    )
    config = TrainConfig(seed=0, folds=5, weight_decay=0.0, epochs=200, max_steps=2000)
    result = train_ramps(feats, config, extra=extra, **QUIET)
    assert result.ramps[0].agreement < 0.45  # chance: 0.25
    leaky = Features(extra.pooled, extra.final_scores, [], source=i)  # the same rows, partner unknown
    assert train_ramps(feats, config, extra=leaky, **QUIET).ramps[0].agreement > 0.6  # the leak the partner check stops


def test_one_held_out_split_when_folds_are_off() -> None:
    result = train_ramps(_random_labels(), TrainConfig(seed=0, folds=0), **QUIET)
    assert result.folds == 0 and result.heldout_index.size == 60 and result.train_index.size == 240
    assert result.stats.confidence.shape == (60, 1)
    assert not set(result.train_index) & set(result.heldout_index)


def test_fold_ids_are_balanced_and_seeded() -> None:
    ids = fold_ids(103, 5, seed=1)
    assert sorted(np.bincount(ids)) == [20, 20, 21, 21, 21]
    np.testing.assert_array_equal(ids, fold_ids(103, 5, seed=1))


def test_training_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    scores = (x @ rng.normal(size=(6, 3))).astype(np.float32)
    feats = Features([{"dense_linear": x}], scores, [])
    a = train_ramps(feats, TrainConfig(seed=3), **QUIET)
    b = train_ramps(feats, TrainConfig(seed=3), **QUIET)
    np.testing.assert_array_equal(a.ramps[0].weights.layers[0][0], b.ramps[0].weights.layers[0][0])
    assert a.ramps[0].agreement > 0.8  # a linear teacher is learnable by a linear ramp


def test_distillation_on_probabilities() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    logits = x @ rng.normal(size=(5, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = train_ramps(
        Features([{"dense_linear": x}], probs.astype(np.float32), []), TrainConfig(distill=True), **QUIET
    )
    assert result.ramps[0].agreement > 0.8


def test_kind_choice_keeps_the_candidate_that_agrees_better() -> None:
    rng = np.random.default_rng(4)
    informative = rng.normal(size=(400, 8)).astype(np.float32)
    noise = rng.normal(size=(400, 8)).astype(np.float32)
    scores = (informative @ rng.normal(size=(8, 2))).astype(np.float32)
    options = {"seq_cls_dense_tanh_linear": noise, "seq_mean_dense_tanh_linear": informative}
    result = train_ramps(Features([options], scores, []), TrainConfig(), **QUIET)
    assert result.ramps[0].kind == "seq_mean_dense_tanh_linear" and result.ramps[0].agreement > 0.8
