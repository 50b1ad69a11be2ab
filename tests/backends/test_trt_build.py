"""Engine building's CPU-checkable parts: the FP16 policy per TensorRT version, Polygraphy profiles,
the ONNX inputs and observed shapes a profile takes, and the message when TensorRT is absent."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from tiny_models import dense_layer

from apparate_trt.backends.base import IOSpec
from apparate_trt.backends.trt_build import (
    build_engine,
    observed_shapes,
    onnx_inputs,
    polygraphy_profile,
    precision_policy,
    tensorrt_major,
)
from apparate_trt.backends.trt_layout import ShapeRange
from apparate_trt.errors import ApparateError


def test_fp16_is_the_builder_flag_on_tensorrt_10_and_refused_with_the_way_out_on_11():
    assert tensorrt_major("11.4.0.106") == 11 and tensorrt_major("10.13.0.35") == 10
    assert precision_policy(True, "10.13.0.35")[0] is True
    flag, words = precision_policy(False, "11.4.0.106")
    assert flag is False and "strongly typed" in words
    with pytest.raises(ApparateError, match="TensorRT 11.4.0.106 builds strongly typed networks.*AutoCast"):
        precision_policy(True, "11.4.0.106")
    with pytest.raises(ApparateError, match="cannot read the TensorRT version"):
        tensorrt_major("eleven")


def test_a_profile_holds_every_input_range_in_polygraphy():
    profile = polygraphy_profile({"x": ShapeRange((1, 4), (8, 4), (16, 4)), "m": ShapeRange((1, 7), (8, 7), (16, 7))})
    assert set(profile.keys()) == {"x", "m"}
    assert (
        tuple(profile["x"].min) == (1, 4) and tuple(profile["x"].opt) == (8, 4) and tuple(profile["x"].max) == (16, 4)
    )


def test_onnx_inputs_leave_out_initializers_and_observed_shapes_follow_the_chain():
    first, second = dense_layer("a", "x", "h", 4, 6, 0), dense_layer("b", "h", "y", 6, 3, 1)
    second.graph.input.append(helper.make_tensor_value_info("b_w", TensorProto.FLOAT, [6, 3]))  # old-style export
    assert onnx_inputs(second) == [IOSpec("h", "float32", ("N", 6))]
    shapes = observed_shapes([first, second], {"x": np.ones((2, 4), np.float32)})
    assert shapes == {"x": (2, 4), "h": (2, 6), "y": (2, 3)}


def test_building_without_tensorrt_says_what_is_missing():
    from apparate_trt.backends.tensorrt import unavailable_reason

    if unavailable_reason() is None:  # pragma: no cover - a GPU machine: benchmarks/gpu_check.py builds for real
        pytest.skip("TensorRT is available here")
    with pytest.raises(ApparateError, match="needs an NVIDIA GPU with TensorRT"):
        build_engine(
            dense_layer("a", "x", "h", 4, 6, 0),
            {"x": ShapeRange((1, 4), (8, 4), (16, 4))},
            fp16=False,
            timing_cache=None,
        )
