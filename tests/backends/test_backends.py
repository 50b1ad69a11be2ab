"""The backend seam: open_runner picks a runner, every runner offers the same small interface."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from apparate_trt.backends import BACKENDS, IOSpec, Runner, check_backend, open_runner
from apparate_trt.errors import ApparateError


def _relu_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_default_runner_implements_the_interface_and_runs():
    with open_runner(_relu_model(), threads=1, name="relu") as runner:
        assert isinstance(runner, Runner)
        assert runner.name == "relu" and runner.input_names == ["x"] and runner.output_names == ["y"]
        assert runner.inputs == [IOSpec("x", "float32", ("N", 3))] and runner.inputs[0].batch_first
        x = np.array([[-1.0, 0.5, 2.0]], np.float32)
        np.testing.assert_array_equal(runner.run({"x": x, "unused": x})["y"], np.maximum(x, 0))
        with pytest.raises(ApparateError, match="relu needs input 'x'"):
            runner.run({})


def test_a_fixed_first_axis_is_not_a_batch_axis():
    model = _relu_model()
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 2
    with open_runner(model, threads=1) as runner:
        assert runner.inputs[0].shape == (2, 3) and not runner.inputs[0].batch_first


def test_backend_names_are_checked():
    assert check_backend(None) == "onnxruntime" and set(BACKENDS) == {"onnxruntime", "onnxruntime-gpu", "tensorrt"}
    with pytest.raises(
        ApparateError, match="unknown backend 'cuda'; use one of: onnxruntime, onnxruntime-gpu, tensorrt"
    ):
        open_runner(_relu_model(), backend="cuda")


def test_tensorrt_takes_engine_files_and_says_what_it_needs(tmp_path):
    with pytest.raises(ApparateError, match="runs serialized engines; build them with apparate-compile --backend"):
        open_runner(_relu_model(), backend="tensorrt", name="segment 0")
    from apparate_trt.backends.tensorrt import unavailable_reason

    if unavailable_reason() is None:  # pragma: no cover - a GPU machine with TensorRT
        pytest.skip("TensorRT is available here; the GPU tests cover it")
    with pytest.raises(ApparateError, match="needs an NVIDIA GPU with TensorRT"):
        open_runner(tmp_path / "segment_0.engine", backend="tensorrt")
    with pytest.raises(ApparateError, match="needs an NVIDIA GPU with TensorRT"):
        open_runner(b"not an engine", backend="tensorrt")


def test_a_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(ApparateError, match="does not exist; check the path"):
        open_runner(tmp_path / "nope.onnx")
