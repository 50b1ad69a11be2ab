"""Ingest: loading, checking, canonicalising an ONNX model, and picking its score output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_models  # tests/tiny_models.py (tests/conftest.py puts tests/ on sys.path)
from onnx import TensorProto, helper, numpy_helper

from apparate_trt.backends import open_runner
from apparate_trt.errors import ApparateError
from apparate_trt.graph.ingest import TensorInfo, load_model, model_io, score_output


def _mlp(
    out_shape=("N", 3), out_type=TensorProto.FLOAT, batch="N", extra_outputs=(), nodes_first=(), dead=False
) -> onnx.ModelProto:
    """x [batch, 4] -> Gemm -> Relu -> Gemm -> y [batch, 3]; options add outputs or dead nodes."""
    rng = np.random.RandomState(0)
    inits = [
        numpy_helper.from_array(rng.randn(4, 8).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.randn(8, 3).astype(np.float32), "w2"),
    ]
    nodes = list(nodes_first) + [
        helper.make_node("Gemm", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"]),
    ]
    if dead:
        inits.append(numpy_helper.from_array(np.ones((8,), np.float32), "unused_w"))
        nodes.append(helper.make_node("Mul", ["r", "unused_w"], ["dead"]))
        inits.append(numpy_helper.from_array(np.ones((3,), np.float32), "never_read"))
    outputs = [helper.make_tensor_value_info("y", out_type, list(out_shape))] + list(extra_outputs)
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _save(model: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _error(path) -> str:
    with pytest.raises(ApparateError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------
# Good models
# ----------------------------------------------------------------------------------------------


def test_loads_tiny_model_with_symbolic_batch(tmp_path):
    tiny = tiny_models.bert_like(layers=2)
    model = load_model(_save(tiny.model, tmp_path))
    inputs, outputs = model_io(model)
    assert inputs == [TensorInfo("input_ids", "int64", ["N", "S"]), TensorInfo("attention_mask", "int64", ["N", "S"])]
    assert outputs == [TensorInfo("logits", "float32", ["N", 2])]
    assert outputs[0].to_json() == {"name": "logits", "dtype": "float32", "shape": ["N", 2]}
    shapes = {vi.name: vi for vi in model.graph.value_info}
    assert shapes["layer1_out"].type.tensor_type.shape.dim[0].dim_param == "N"


def test_prunes_dead_nodes_and_unused_initializers(tmp_path):
    model = load_model(_save(_mlp(dead=True), tmp_path))
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Relu", "Gemm"]
    assert sorted(t.name for t in model.graph.initializer) == ["w1", "w2"]


def test_sorts_unsorted_graph(tmp_path):
    model = _mlp()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    loaded = load_model(_save(model, tmp_path))
    assert [n.output[0] for n in loaded.graph.node] == ["h", "r", "y"]


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path):
    model = _mlp()
    model.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [4, 8]))
    loaded = load_model(_save(model, tmp_path))
    assert [i.name for i in model_io(loaded)[0]] == ["x"]


def test_batch_fixed_to_one_becomes_symbolic(tmp_path):
    model = load_model(_save(_mlp(out_shape=(1, 3), batch=1), tmp_path))
    inputs, outputs = model_io(model)
    assert inputs[0].shape == ["N", 4] and outputs[0].shape == ["N", 3]
    x = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    assert open_runner(model, threads=1).run({"x": x})["y"].shape == (5, 3)


def test_batch_one_hard_coded_in_graph_is_an_error(tmp_path):
    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "shape")
    model = _mlp(out_shape=(1, 3), batch=1)
    model.graph.initializer.append(shape)
    model.graph.node.insert(0, helper.make_node("Reshape", ["x", "shape"], ["x1"]))
    model.graph.node[1].input[0] = "x1"
    message = _error(_save(model, tmp_path))
    assert "batch size to 1" in message and "dynamic batch axis" in message


def test_external_data_is_loaded(tmp_path):
    model = _mlp()
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    loaded = load_model(path)
    w1 = next(t for t in loaded.graph.initializer if t.name == "w1")
    assert numpy_helper.to_array(w1).shape == (4, 8)


# ----------------------------------------------------------------------------------------------
# Bad files and models
# ----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    message = _error(tmp_path / "nope.onnx")
    assert "does not exist" in message and "nope.onnx" in message


def test_directory_instead_of_file(tmp_path):
    assert "not a file" in _error(tmp_path)


@pytest.mark.parametrize("content", [b"this is not a model at all\n", bytes(range(256)) * 4, b""])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    message = _error(path)
    assert "is not an ONNX model" in message and "export" in message


def test_checker_failure_names_the_problem(tmp_path):
    model = _mlp()
    model.graph.node[1].input[0] = "no_such_tensor"
    message = _error(_save(model, tmp_path))
    assert "fails the ONNX checker" in message and "no_such_tensor" in message


def test_missing_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        _mlp(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    (tmp_path / "weights.bin").unlink()
    message = _error(path)
    assert "weights.bin" in message and "missing" in message


def test_custom_domain_is_unsupported(tmp_path):
    model = _mlp()
    model.graph.node.append(helper.make_node("FancyOp", ["y"], ["z"], domain="my.ops"))
    model.graph.output[0].name = "z"
    model.opset_import.append(helper.make_opsetid("my.ops", 1))
    message = _error(_save(model, tmp_path))
    assert "FancyOp" in message and "my.ops" in message


def test_cycle_is_an_error(tmp_path):
    model = _mlp()
    model.graph.node[0].input[0] = "y"  # Gemm(y) -> Relu -> Gemm -> y
    assert "cycle" in _error(_save(model, tmp_path))


# ----------------------------------------------------------------------------------------------
# Score output
# ----------------------------------------------------------------------------------------------


def test_score_output_single():
    assert score_output(_mlp()) == ("y", 3)
    assert score_output(tiny_models.resnet_like(blocks=2).model) == ("logits", 10)


def test_score_output_ambiguous_lists_names_and_flag():
    extra = helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 8])
    model = _mlp(extra_outputs=[extra])
    with pytest.raises(ApparateError, match=r"2 outputs \(y, r\).*--output NAME"):
        score_output(model)
    assert score_output(model, "y") == ("y", 3)
    assert score_output(model, "r") == ("r", 8)
    with pytest.raises(ApparateError, match="no output 'logits'.*y, r"):
        score_output(model, "logits")


@pytest.mark.parametrize(
    "shape, elem, match",
    [
        (("N", 3, 2), TensorProto.FLOAT, r"not \[batch, classes\]"),
        (("N",), TensorProto.FLOAT, r"not \[batch, classes\]"),
        (("N", "C"), TensorProto.FLOAT, "known class count"),
        (("N", 1), TensorProto.FLOAT, ">= 2"),
        (("N", 3), TensorProto.INT64, "not float scores"),
    ],
)
def test_score_output_must_be_float_batch_by_classes(shape, elem, match):
    model = _mlp(out_shape=shape, out_type=elem)
    with pytest.raises(ApparateError, match=match):
        score_output(model)
