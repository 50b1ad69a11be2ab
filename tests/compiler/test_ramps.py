"""Ramps: kind by rank, fixed pooling, ONNX export numerically equal to the numpy forward."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from apparate_trt.compiler.ramps import (
    CONV_GAP_LINEAR,
    DENSE_LINEAR,
    RAMP_OUTPUT,
    SEQ_CLS_DENSE_TANH_LINEAR,
    RampWeights,
    build_ramp_onnx,
    check_ramp,
    pool_features,
    ramp_forward,
    ramp_kind,
)
from apparate_trt.runtime.backends.onnxruntime import OrtRunner

RNG = np.random.default_rng(0)
CASES = {
    CONV_GAP_LINEAR: (["N", 6, 5, 7], (3, 6, 5, 7), [6]),
    SEQ_CLS_DENSE_TANH_LINEAR: (["batch", "seq", 12], (3, 9, 12), [12, 10]),
    DENSE_LINEAR: (["N", 20], (3, 20), [20]),
}


def _weights(sizes: list[int], classes: int = 4) -> RampWeights:
    dims = [*sizes, classes]
    return RampWeights([(RNG.normal(size=(a, b)).astype(np.float32), RNG.normal(size=b).astype(np.float32)) for a, b in zip(dims, dims[1:])])


def test_kind_by_rank() -> None:
    assert ramp_kind(["N", 64, 8, 8]) == CONV_GAP_LINEAR
    assert ramp_kind(["N", 4, 8, 8, 8]) == CONV_GAP_LINEAR
    assert ramp_kind(["N", 128, 384]) == SEQ_CLS_DENSE_TANH_LINEAR
    assert ramp_kind(["N", 10]) == DENSE_LINEAR
    assert ramp_kind(["N"]) is None


def test_pooling() -> None:
    x = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(pool_features(CONV_GAP_LINEAR, x), x.mean(axis=(2, 3)), rtol=1e-6)
    s = RNG.normal(size=(2, 7, 5)).astype(np.float32)
    np.testing.assert_array_equal(pool_features(SEQ_CLS_DENSE_TANH_LINEAR, s), s[:, 0, :])
    assert pool_features(DENSE_LINEAR, s[:, 0, :]).shape == (2, 5)


@pytest.mark.parametrize("kind", list(CASES))
def test_onnx_ramp_equals_numpy(kind: str) -> None:
    shape, concrete, sizes = CASES[kind]
    site = SimpleNamespace(id=3, tensor="/layer/out_0", shape=shape)
    weights = _weights(sizes)
    model = build_ramp_onnx(site, kind, weights)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["/layer/out_0"]
    assert [o.name for o in model.graph.output] == [RAMP_OUTPUT]
    x = RNG.normal(size=concrete).astype(np.float32)
    got = OrtRunner(model, threads=1).run({"/layer/out_0": x})[RAMP_OUTPUT]
    want = ramp_forward(weights, pool_features(kind, x))
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert check_ramp(model, kind, weights, x) < 1e-3


def test_layer_count_must_match_kind() -> None:
    site = SimpleNamespace(id=0, tensor="h", shape=["N", 5, 8])
    with pytest.raises(ValueError, match="2 layers"):
        build_ramp_onnx(site, SEQ_CLS_DENSE_TANH_LINEAR, _weights([8]))
