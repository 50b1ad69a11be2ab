"""Ramps: kind by rank, fixed pooling, ONNX export numerically equal to the numpy forward."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from apparate_trt.backends import open_runner
from apparate_trt.graph.ingest import TensorInfo
from apparate_trt.ramps.model import (
    CONV_BOTTLENECK_GAP_MLP,
    CONV_BOTTLENECK_GRID2_MLP,
    CONV_GAP_LINEAR,
    CONV_GAP_MLP,
    CONV_GRID2_LINEAR,
    CONV_GRID2_MLP,
    CONV_GRID4_LINEAR,
    CONV_GRID4_MLP,
    DENSE_LINEAR,
    KINDS,
    RAMP_FEATURES,
    RAMP_OUTPUT,
    SEQ_CLS_DENSE_TANH_LINEAR,
    SEQ_MEAN_DENSE_TANH_LINEAR,
    SEQ_TOKEN_AVG_MLP,
    SEQ_TOKEN_MEAN_MLP,
    RampWeights,
    build_ramp_onnx,
    candidate_kinds,
    check_ramp,
    find_mask_input,
    head_weights,
    pool_features,
    ramp_forward,
    ramp_kind,
    with_head_weights,
)

RNG = np.random.default_rng(0)
CASES = {
    CONV_GAP_LINEAR: (["N", 6, 5, 7], (3, 6, 5, 7), [6]),
    CONV_GRID2_LINEAR: (["N", 6, 4, 6], (3, 6, 4, 6), [6 * 2 * 2]),
    CONV_GRID4_LINEAR: (["N", 3, 8, 16], (3, 3, 8, 16), [3 * 4 * 4]),
    CONV_GAP_MLP: (["N", 6, 5, 7], (3, 6, 5, 7), [6, 5]),
    CONV_GRID2_MLP: (["N", 6, 4, 6], (3, 6, 4, 6), [6 * 2 * 2, 8]),
    CONV_GRID4_MLP: (["N", 3, 8, 16], (3, 3, 8, 16), [3 * 4 * 4, 8]),
    SEQ_CLS_DENSE_TANH_LINEAR: (["batch", "seq", 12], (3, 9, 12), [12, 10]),
    DENSE_LINEAR: (["N", 20], (3, 20), [20]),
}


def _weights(sizes: list[int], classes: int = 4, activation: str = "tanh") -> RampWeights:
    dims = [*sizes, classes]
    return RampWeights(
        [
            (RNG.normal(size=(a, b)).astype(np.float32), RNG.normal(size=b).astype(np.float32))
            for a, b in zip(dims, dims[1:])
        ],
        activation,
    )


def test_kind_by_rank() -> None:
    assert ramp_kind(["N", 64, 8, 8]) == CONV_GAP_MLP
    assert ramp_kind(["N", 4, 8, 8, 8]) == CONV_GAP_MLP
    assert ramp_kind(["N", 128, 384]) == SEQ_CLS_DENSE_TANH_LINEAR
    assert ramp_kind(["N", 10]) == DENSE_LINEAR
    assert ramp_kind(["N"]) is None
    seq_masked = [SEQ_CLS_DENSE_TANH_LINEAR, SEQ_MEAN_DENSE_TANH_LINEAR, SEQ_TOKEN_MEAN_MLP]
    assert candidate_kinds(["N", "S", 8], "attention_mask") == seq_masked
    assert candidate_kinds(["N", "S", 8], None) == [SEQ_CLS_DENSE_TANH_LINEAR, SEQ_TOKEN_AVG_MLP]
    stages = [CONV_BOTTLENECK_GAP_MLP, CONV_BOTTLENECK_GRID2_MLP]
    assert candidate_kinds(["N", 8, 4, 4], "attention_mask") == [CONV_GAP_MLP, CONV_GRID2_MLP, *stages]
    assert candidate_kinds(["N", 8, 16, 8], None) == [CONV_GAP_MLP, CONV_GRID2_MLP, CONV_GRID4_MLP, *stages]
    assert candidate_kinds(["N", 8, 3, 3], None) == [CONV_GAP_MLP, CONV_BOTTLENECK_GAP_MLP]  # too small for a grid
    assert candidate_kinds(["N", 8, 12, 10], None) == [CONV_GAP_MLP, CONV_GRID2_MLP, *stages]  # 4 does not divide 10
    assert candidate_kinds(["N", 8, "H", "W"], None) == [CONV_GAP_MLP, CONV_BOTTLENECK_GAP_MLP]  # dynamic: no grid
    assert candidate_kinds(["N", 4, 8, 8, 8], None) == [CONV_GAP_MLP]  # rank 5: no per-position stage
    assert candidate_kinds(["N"], None) == []


def test_find_mask_input() -> None:
    ids, mask = TensorInfo("input_ids", "int64", ["N", "S"]), TensorInfo("attention_mask", "int64", ["N", "S"])
    assert find_mask_input([ids, mask]) is mask
    assert find_mask_input([ids]) is None
    assert find_mask_input([TensorInfo("mask_image", "float32", ["N", 4])]) is None


def test_pooling() -> None:
    x = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(pool_features(CONV_GAP_LINEAR, x), x.mean(axis=(2, 3)), rtol=1e-6)
    grid = RNG.normal(size=(2, 3, 4, 6)).astype(np.float32)
    pooled = pool_features(CONV_GRID2_LINEAR, grid).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(pooled[:, :, 1, 0], grid[:, :, 2:, :3].mean(axis=(2, 3)), rtol=1e-5)  # lower-left tile
    with pytest.raises(ValueError, match="does not divide"):
        pool_features(CONV_GRID4_LINEAR, grid)
    s = RNG.normal(size=(2, 7, 5)).astype(np.float32)
    np.testing.assert_array_equal(pool_features(SEQ_CLS_DENSE_TANH_LINEAR, s), s[:, 0, :])
    assert pool_features(DENSE_LINEAR, s[:, 0, :]).shape == (2, 5)
    mask = np.array([[1, 1, 0, 0, 0, 0, 0], [0] * 7])
    mean = pool_features(SEQ_MEAN_DENSE_TANH_LINEAR, s, mask)
    np.testing.assert_allclose(mean[0], s[0, :2].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(mean[1], np.zeros(5))  # an all-padding row pools to zeros, not NaN


def test_masked_mean_ramp_onnx_equals_numpy() -> None:
    site = SimpleNamespace(id=1, tensor="hidden", shape=["N", "S", 12])
    mask_info = TensorInfo("attention_mask", "int64", ["N", "S"])
    weights = _weights([12, 10], classes=2)
    model = build_ramp_onnx(site, SEQ_MEAN_DENSE_TANH_LINEAR, weights, mask_info)
    assert [i.name for i in model.graph.input] == ["hidden", "attention_mask"]
    x = RNG.normal(size=(4, 9, 12)).astype(np.float32)
    mask = (np.arange(9)[None, :] < np.array([[9], [5], [1], [0]])).astype(np.int64)
    got = open_runner(model, threads=1).run({"hidden": x, "attention_mask": mask})[RAMP_OUTPUT]
    np.testing.assert_allclose(
        got, ramp_forward(weights, pool_features(SEQ_MEAN_DENSE_TANH_LINEAR, x, mask)), rtol=1e-4, atol=1e-4
    )
    assert check_ramp(model, SEQ_MEAN_DENSE_TANH_LINEAR, weights, x, mask) < 1e-3
    with pytest.raises(ValueError, match="mask"):
        build_ramp_onnx(site, SEQ_MEAN_DENSE_TANH_LINEAR, weights)


@pytest.mark.parametrize("kind", list(CASES))
def test_onnx_ramp_equals_numpy(kind: str) -> None:
    shape, concrete, sizes = CASES[kind]
    site = SimpleNamespace(id=3, tensor="/layer/out_0", shape=shape)
    weights = _weights(sizes, activation=KINDS[kind].activation)
    model = build_ramp_onnx(site, kind, weights)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["/layer/out_0"]
    assert [o.name for o in model.graph.output] == [RAMP_OUTPUT, RAMP_FEATURES]
    x = RNG.normal(size=concrete).astype(np.float32)
    ran = open_runner(model, threads=1).run({"/layer/out_0": x})
    pooled = pool_features(kind, x)
    want = ramp_forward(weights, pooled)
    assert ran[RAMP_OUTPUT].shape == (3, 4)
    np.testing.assert_allclose(ran[RAMP_OUTPUT], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ran[RAMP_FEATURES], pooled, rtol=1e-5, atol=1e-5)  # what a refit learns from
    assert check_ramp(model, kind, weights, x) < 1e-3


@pytest.mark.parametrize("kind", [CONV_GAP_MLP, SEQ_CLS_DENSE_TANH_LINEAR, DENSE_LINEAR])
def test_a_head_read_from_a_ramp_graph_and_written_back_round_trips(kind: str) -> None:
    shape, concrete, sizes = CASES[kind]
    site = SimpleNamespace(id=3, tensor="/layer/out_0", shape=shape)
    model = build_ramp_onnx(site, kind, _weights(sizes, activation=KINDS[kind].activation))
    read = head_weights(model, kind)
    other = _weights(sizes, activation=KINDS[kind].activation)
    replaced = with_head_weights(model, other)
    onnx.checker.check_model(replaced, full_check=True)
    x = RNG.normal(size=concrete).astype(np.float32)
    got = open_runner(replaced, threads=1).run({"/layer/out_0": x})[RAMP_OUTPUT]
    np.testing.assert_allclose(got, ramp_forward(other, pool_features(kind, x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(head_weights(replaced, kind).layers[-1][1], other.layers[-1][1])
    assert [w.shape for w, _ in read.layers] == [w.shape for w, _ in other.layers]
    wrong = RampWeights([(np.zeros((2, 2), np.float32), np.zeros(2, np.float32))] * len(other.layers), other.activation)
    with pytest.raises(ValueError, match="shape"):
        with_head_weights(model, wrong)


def test_grid_ramp_needs_a_static_divisible_map() -> None:
    site = SimpleNamespace(id=0, tensor="h", shape=["N", 4, "H", "W"])
    with pytest.raises(ValueError, match="static height and width"):
        build_ramp_onnx(site, CONV_GRID2_LINEAR, _weights([16]))


def test_activation_must_match_the_kind() -> None:
    site = SimpleNamespace(id=0, tensor="h", shape=["N", 6, 5, 7])
    with pytest.raises(ValueError, match="relu between layers"):
        build_ramp_onnx(site, CONV_GAP_MLP, _weights([6, 5], activation="tanh"))
    with pytest.raises(ValueError, match="unknown ramp kind 'conv_fancy'"):
        build_ramp_onnx(site, "conv_fancy", _weights([6]))


def test_relu_head_zeroes_negative_hidden_units() -> None:
    """The numpy reference of a ReLU head, checked by hand on a 1-feature, 2-unit example."""
    weights = RampWeights(
        [
            (np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32)),
            (np.array([[1.0], [10.0]], np.float32), np.zeros(1, np.float32)),
        ],
        "relu",
    )
    np.testing.assert_allclose(ramp_forward(weights, np.array([[2.0], [-3.0]], np.float32)), [[2.0], [30.0]])


def test_every_kind_is_valid_in_an_engine_directory() -> None:
    from apparate_trt.engine_dir import RAMP_KINDS

    assert set(KINDS) == set(RAMP_KINDS)


def test_layer_count_must_match_kind() -> None:
    site = SimpleNamespace(id=0, tensor="h", shape=["N", 5, 8])
    with pytest.raises(ValueError, match="2 layers"):
        build_ramp_onnx(site, SEQ_CLS_DENSE_TANH_LINEAR, _weights([8]))
