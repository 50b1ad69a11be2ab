"""Sites: the live-tensor sweep finds exactly the known layer/block boundaries of tiny models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tiny_models  # tests/tiny_models.py (tests/conftest.py puts tests/ on sys.path)
from onnx import TensorProto, helper, numpy_helper

from apparate_trt.compiler.sites import Site, find_sites, live_sets, liveness, side_tensors
from apparate_trt.graph.ingest import load_model

BUILDERS = tiny_models.BUILDERS


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tiny(request) -> tiny_models.TinyModel:
    return BUILDERS[request.param]()


def test_default_sites_are_exactly_the_known_boundaries(tiny):
    sites = find_sites(tiny.model)
    assert [s.tensor for s in sites] == tiny.site_tensors
    assert [s.id for s in sites] == list(range(len(sites)))
    for site in sites:
        assert site.side_tensors == tiny.side_tensors
        assert site.shape[0] == "N" and len(site.shape) >= 2
        assert tiny.model.graph.node[site.node_index].output[0] == site.tensor
        assert site.depth is None and 0.05 <= site.est_depth <= 0.9


def test_without_depth_filter_every_boundary_is_found(tiny):
    sites = find_sites(tiny.model, min_depth=0.0, max_depth=1.0)
    assert [s.tensor for s in sites] == tiny.all_boundaries
    depths = [s.est_depth for s in sites]
    assert depths == sorted(depths)


def test_sites_survive_ingest(tmp_path):
    """load_model (re-inference, pruning, sorting) keeps the sites of a saved model."""
    tiny = tiny_models.bert_like(layers=3)
    path = tmp_path / "bert.onnx"
    onnx.save(tiny.model, str(path))
    assert [s.tensor for s in find_sites(load_model(path))] == ["layer1_out", "layer2_out"]


def test_resnet_sites_scale_with_blocks():
    tiny = tiny_models.resnet_like(blocks=6)
    assert [s.tensor for s in find_sites(tiny.model)] == tiny.site_tensors
    assert len(tiny.site_tensors) == 5


def test_bert_mask_is_the_side_tensor():
    model = tiny_models.bert_like().model
    lv = liveness(model)
    assert side_tensors(lv) == {"extended_mask"}
    # Without side tensors no cut exists while the mask is live (layers 1..3 and their inputs).
    found = {s.tensor for s in find_sites(model, min_depth=0.0, max_depth=1.0, side_span=1.0)}
    assert found and not found & {"embeddings_out", "layer1_out", "layer2_out", "layer3_out"}


def test_live_sets_exclude_constants_and_count_graph_outputs():
    tiny = tiny_models.vgg_like()
    sets = live_sets(liveness(tiny.model))
    init_names = {t.name for t in tiny.model.graph.initializer}
    assert all(not (set(s) & init_names) for s in sets)
    assert sets[-1] == ["logits"]  # a graph output is read at the end
    assert sets[0] == [tiny.model.graph.node[0].output[0]]


def test_site_json_round_trip():
    site = Site(3, "t", ["mask"], ["N", 16, 8, 8], 42, depth=0.25, est_depth=0.3)
    obj = json.loads(json.dumps(site.to_json()))
    assert obj == {
        "id": 3,
        "tensor": "t",
        "side_tensors": ["mask"],
        "shape": ["N", 16, 8, 8],
        "node_index": 42,
        "depth": 0.25,
    }
    assert Site.from_json(obj) == site
    assert Site.from_json({**obj, "depth": None}).depth is None


def _graph_model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _dense_chain(n_layers: int, width: int = 16):
    rng = np.random.RandomState(0)
    nodes, inits, x = [], [], "x"
    for i in range(n_layers):
        inits.append(numpy_helper.from_array(rng.randn(width, width).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        x = f"h{i}"
    return nodes, inits, x


def test_model_without_a_cut_has_no_sites():
    """Two branches from the input to the output: no single live tensor anywhere."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Relu", ["x"], ["b"]),
        helper.make_node("MatMul", ["a", "w"], ["a2"]),
        helper.make_node("Add", ["a2", "b"], ["y"]),
    ]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    assert find_sites(model, min_depth=0.0, max_depth=1.0) == []


def test_dense_chain_gives_one_site_per_layer():
    nodes, inits, x = _dense_chain(4)
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 16])],
        inits,
    )
    assert [s.tensor for s in find_sites(model, 0.0, 1.0)] == ["h0", "h1", "h2"]


def test_control_flow_node_is_atomic_and_its_outer_reads_count():
    """An If whose branch reads h0 keeps h0 live until the If: no site between."""
    nodes, inits, x = _dense_chain(4)
    then_out = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["N", 16])
    then_graph = helper.make_graph([helper.make_node("Add", [x, "h0"], ["t_out"])], "then", [], [then_out])
    else_out = helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["N", 16])
    else_graph = helper.make_graph([helper.make_node("Sub", [x, "h0"], ["e_out"])], "else", [], [else_out])
    inits.append(numpy_helper.from_array(np.array(True), "cond"))
    nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph))
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        inits,
    )
    lv = liveness(model)
    assert lv.last_use["h0"] == len(model.graph.node) - 1
    # h0 stays live across h1..h3 until the If: only h0 itself is a cut (side tensors off) ...
    assert [s.tensor for s in find_sites(model, 0.0, 1.0, side_span=1.0)] == ["h0"]
    # ... or, with the default rule, h0 is a side tensor that later segments receive (the cut at
    # h0 then shows as its producer's input m0).
    sites = find_sites(model, 0.0, 1.0)
    assert [s.tensor for s in sites] == ["m0", "h1", "h2", "h3"]
    assert [s.side_tensors for s in sites] == [[], ["h0"], ["h0"], ["h0"]]


def test_graph_output_read_at_the_end_is_a_side_tensor():
    """An early tensor that is also a graph output stays live to the end: passed through."""
    tiny = tiny_models.resnet_like()
    model = onnx.ModelProto()
    model.CopyFrom(tiny.model)
    model.graph.output.append(helper.make_tensor_value_info("stem_out", TensorProto.FLOAT, None))
    sites = find_sites(model)
    assert [s.tensor for s in sites] == tiny.site_tensors
    assert all(s.side_tensors == ["stem_out"] for s in sites)


def test_quantized_activation_is_cut_before_its_quantize_pair():
    """A QDQ model: the cut goes before QuantizeLinear -> DequantizeLinear, never after it, so the
    next segment keeps the pair with the MatMul that ONNX Runtime fuses it into."""
    nodes, inits, x = _dense_chain(3)
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    quantized: list[onnx.NodeProto] = []
    for node in nodes:
        quantized.append(node)
        if node.op_type == "Relu" and node.output[0] != x:
            h = node.output[0]
            quantized += [
                helper.make_node("QuantizeLinear", [h, "scale", "zero"], [f"{h}_q"]),
                helper.make_node("DequantizeLinear", [f"{h}_q", "scale", "zero"], [f"{h}_dq"]),
            ]
    for node in quantized:  # the next layer reads the dequantized activation
        if node.op_type == "MatMul" and node.input[0] != "x":
            node.input[0] = f"{node.input[0]}_dq"
    model = _graph_model(
        quantized,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 16])],
        inits + [scale, zero],
    )
    assert [s.tensor for s in find_sites(model, 0.0, 1.0)] == ["h0", "h1"]
