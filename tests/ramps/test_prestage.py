"""Ramps with a learned per-position stage before the pooling (issue 31)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from apparate_trt.graph.ingest import TensorInfo
from apparate_trt.ramps.fit import HeadTraining, target_probabilities, train_head
from apparate_trt.ramps.model import (
    CONV_BOTTLENECK_GAP_MLP,
    CONV_BOTTLENECK_GRID2_MLP,
    CONV_GAP_MLP,
    CONV_GRID2_MLP,
    MASKED_KINDS,
    SEQ_CLS_DENSE_TANH_LINEAR,
    SEQ_MEAN_DENSE_TANH_LINEAR,
    SEQ_TOKEN_AVG_MLP,
    SEQ_TOKEN_MEAN_MLP,
    RampWeights,
    build_ramp_onnx,
    candidate_kinds,
    check_ramp,
    head_weights,
    kind_spec,
    pool_features,
    ramp_forward,
    with_head_weights,
)
from apparate_trt.ramps.prestage import PreStage, PreStageTraining, prepool, prepool_stride, train_prestage

RNG = np.random.default_rng(0)
MASK = TensorInfo("attention_mask", "int64", ["N", "S"])


def _w(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    return RNG.normal(size=(a, b)).astype(np.float32), RNG.normal(size=b).astype(np.float32)


@pytest.mark.parametrize(
    "kind,shape,act",
    [
        (CONV_BOTTLENECK_GAP_MLP, ["N", 6, 40, 40], (3, 6, 40, 40)),  # pre-pooled in 3 x 3 tiles
        (CONV_BOTTLENECK_GAP_MLP, ["N", 6, 5, 7], (3, 6, 5, 7)),
        (CONV_BOTTLENECK_GRID2_MLP, ["N", 6, 8, 8], (3, 6, 8, 8)),
        (SEQ_TOKEN_MEAN_MLP, ["N", "S", 12], (3, 9, 12)),
        (SEQ_TOKEN_AVG_MLP, ["N", "S", 12], (3, 9, 12)),
    ],
)
def test_onnx_ramp_equals_numpy_and_keeps_its_stage(kind: str, shape: list, act: tuple) -> None:
    spec = kind_spec(kind)
    channels = shape[1] if len(shape) == 4 else shape[2]
    pre = PreStage(*_w(channels, spec.pre_width), stride=prepool_stride(shape))
    pooled = spec.pre_width * (spec.cells**2 if spec.pooling == "grid" else 1)
    weights = RampWeights([_w(pooled, 8), _w(8, 4)], spec.activation, pre)
    mask = MASK if kind in MASKED_KINDS else None
    model = build_ramp_onnx(SimpleNamespace(id=0, tensor="x", shape=shape), kind, weights, mask)
    x = RNG.normal(size=act).astype(np.float32)
    rows = np.array([[1] * 9, [1] * 5 + [0] * 4, [1, 1] + [0] * 7]) if mask is not None else None
    assert check_ramp(model, kind, weights, x, rows) < 1e-3
    read = head_weights(model, kind)
    assert read.pre is not None and read.pre.stride == pre.stride
    np.testing.assert_allclose(read.pre.weight, pre.weight)
    # a refit replaces the head only: the stage and the features it feeds stay
    zero = RampWeights([(w * 0, b * 0) for w, b in weights.layers], spec.activation)
    refitted = head_weights(with_head_weights(model, zero), kind)
    np.testing.assert_allclose(refitted.pre.bias, pre.bias)
    assert not np.any(refitted.layers[0][0])


def test_stage_needed_and_prepool_bounds_positions() -> None:
    with pytest.raises(ValueError, match="per-position stage"):
        pool_features(CONV_BOTTLENECK_GAP_MLP, np.zeros((2, 3, 4, 4), np.float32))
    assert prepool_stride(["N", 16, 64, 64]) == 4  # 16 x 16 positions
    assert prepool_stride(["N", 16, 8, 8]) == 1
    assert prepool_stride(["N", 16, "H", "W"]) == 1
    x = RNG.normal(size=(2, 3, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(prepool(x, 3)[0, 0, 0, 0], x[0, 0, :3, :3].mean(), rtol=1e-5)
    assert CONV_BOTTLENECK_GAP_MLP in candidate_kinds(["N", 8, 4, 4], None)
    assert candidate_kinds(["N", 4, 8, 8, 8], None)[-1] != CONV_BOTTLENECK_GAP_MLP  # rank 5: no stage
    assert candidate_kinds(["N", "S", 8], "mask") == [
        SEQ_CLS_DENSE_TANH_LINEAR,
        SEQ_MEAN_DENSE_TANH_LINEAR,
        SEQ_TOKEN_MEAN_MLP,
    ]
    assert candidate_kinds(["N", "S", 8], None) == [SEQ_CLS_DENSE_TANH_LINEAR, SEQ_TOKEN_AVG_MLP]


def _head_like_model(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Site activations [n, 8, 6, 6] and the logits of a head like a CNN's own (1x1 convolution,
    ReLU at every position, then global average pooling and a linear layer)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 6, 6)).astype(np.float32)
    conv, bias = rng.normal(size=(8, 24)).astype(np.float32), rng.normal(size=24).astype(np.float32) - 2.0
    linear = rng.normal(size=(24, 5)).astype(np.float32) * 3
    hidden = np.maximum(np.einsum("nchw,cb->nbhw", x, conv) + bias[None, :, None, None], 0).mean(axis=(2, 3))
    return x, hidden @ linear


def test_bottleneck_ramp_reproduces_a_conv_head_that_pool_first_ramps_cannot() -> None:
    """The issue's case: the model's head applies a 1x1 convolution and an activation before it
    pools. Where the features' signal lies in how channels combine at each position, a ramp that
    pools first cannot recover it; one with the per-position stage does."""
    x, logits = _head_like_model(4000, seed=1)
    probs = target_probabilities(logits)
    labels = logits.argmax(axis=1)
    train, test = slice(0, 3200), slice(3200, None)
    config = HeadTraining(epochs=40, max_steps=1500)
    pre = train_prestage(
        x[train], probs[train], 64, "gap", config=PreStageTraining(min_steps=1500, max_steps=1500, lr=1e-2), seed=0
    )
    agreement = {}
    for kind, stage in ((CONV_BOTTLENECK_GAP_MLP, pre), (CONV_GAP_MLP, None), (CONV_GRID2_MLP, None)):
        feats = pool_features(kind, x, pre=stage)
        head = train_head(feats[train], labels[train], probs[train], kind, 5, config, seed=0)
        agreement[kind] = float((ramp_forward(head, feats[test]).argmax(axis=1) == labels[test]).mean())
    assert agreement[CONV_BOTTLENECK_GAP_MLP] >= 0.95, agreement
    pool_first = max(agreement[CONV_GAP_MLP], agreement[CONV_GRID2_MLP])
    assert agreement[CONV_BOTTLENECK_GAP_MLP] >= pool_first + 0.05, agreement


def test_token_stage_trains_on_masked_sequences() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1200, 10, 6)).astype(np.float32)
    mask = (np.arange(10)[None, :] < rng.integers(3, 11, size=1200)[:, None]).astype(np.int64)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    per_token = np.maximum(x @ w, 0) * mask[:, :, None]
    logits = (per_token.sum(axis=1) / mask.sum(axis=1, keepdims=True)) @ np.array([[3.0, -3.0]] * 4, np.float32)
    probs = target_probabilities(logits)
    pre = train_prestage(x, probs, 16, "mean", mask=mask, config=PreStageTraining(min_steps=800, max_steps=800), seed=0)
    feats = pool_features(SEQ_TOKEN_MEAN_MLP, x, mask, pre)
    labels = logits.argmax(axis=1)
    head = train_head(feats[:1000], labels[:1000], probs[:1000], SEQ_TOKEN_MEAN_MLP, 2, HeadTraining(), seed=0)
    assert (ramp_forward(head, feats[1000:]).argmax(axis=1) == labels[1000:]).mean() >= 0.9
