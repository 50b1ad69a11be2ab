"""Segments: split models are valid standalone ONNX models whose chain reproduces the model."""

from __future__ import annotations

import itertools
import time

import numpy as np
import onnx
import pytest
import tiny_models  # tests/tiny_models.py (tests/conftest.py puts tests/ on sys.path)
from onnx import TensorProto, helper, numpy_helper

from apparate_trt.backends import open_runner
from apparate_trt.compiler.chain import run_chain, verify_chain
from apparate_trt.compiler.sites import find_sites
from apparate_trt.errors import ApparateError
from apparate_trt.graph.ingest import node_inputs
from apparate_trt.graph.split import Segment, split_model, with_extra_outputs

BUILDERS = tiny_models.BUILDERS


def _feeds(tiny: tiny_models.TinyModel, n: int = 32, seed: int = 1) -> dict[str, np.ndarray]:
    return tiny_models.separable_inputs(tiny, n, seed)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def case(request):
    tiny = BUILDERS[request.param]()
    sites = find_sites(tiny.model, min_depth=0.0, max_depth=1.0)
    return tiny, sites


def _check_structure(model: onnx.ModelProto, segments: list[Segment], cut_sites) -> None:
    graph_inputs = [vi.name for vi in model.graph.input]
    assert len(segments) == len(cut_sites) + 1
    available = set(graph_inputs)
    for seg, site in zip(segments, list(cut_sites) + [None]):
        onnx.checker.check_model(seg.model, full_check=True)
        assert seg.model.ir_version == model.ir_version
        assert list(seg.model.opset_import) == list(model.opset_import)
        assert [vi.name for vi in seg.model.graph.input] == seg.inputs
        assert [vi.name for vi in seg.model.graph.output] == seg.outputs
        assert set(seg.inputs) <= available, "a segment reads a tensor no earlier segment produced"
        for vi in list(seg.model.graph.input) + list(seg.model.graph.output):
            assert vi.type.tensor_type.shape.dim[0].dim_param == "N", vi.name
        reads = {name for node in seg.model.graph.node for name in node_inputs(node)}
        assert {t.name for t in seg.model.graph.initializer} <= reads, "unused initializers kept"
        if site is None:
            assert seg.ends_at_site is None and seg.outputs == [o.name for o in model.graph.output]
        else:
            assert seg.ends_at_site == site.id and seg.outputs[0] == site.tensor
            assert set(seg.outputs) <= {site.tensor, *site.side_tensors}
        available |= set(seg.outputs)


def test_split_at_every_site_reproduces_the_model(case):
    tiny, sites = case
    segments = split_model(tiny.model, sites, [s.id for s in sites])
    _check_structure(tiny.model, segments, sites)
    check = verify_chain(tiny.model, segments, _feeds(tiny), "logits")
    assert check.argmax_equal and check.max_abs_diff < 1e-4 and check.near_ties == 0


def test_split_at_subsets_reproduces_the_model(case):
    tiny, sites = case
    feeds = _feeds(tiny, n=8)
    reference = open_runner(tiny.model, threads=1).run(feeds)["logits"]
    ids = [s.id for s in sites]
    subsets = [[], ids[:1], ids[-1:], ids[::2], ids[1::2]] + [list(p) for p in itertools.combinations(ids, 2)][:6]
    for subset in subsets:
        segments = split_model(tiny.model, sites, subset[::-1])  # any order
        _check_structure(tiny.model, segments, [s for s in sites if s.id in subset])
        logits = run_chain(segments, feeds)["logits"]
        np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=1e-4)


def test_bert_segments_receive_the_mask():
    tiny = tiny_models.bert_like()
    sites = find_sites(tiny.model)
    segments = split_model(tiny.model, sites, [s.id for s in sites])
    assert segments[0].inputs == ["input_ids", "attention_mask"]
    assert segments[0].outputs == ["layer1_out", "extended_mask"]
    for seg, site in zip(segments[1:], sites):
        assert seg.inputs[0] == site.tensor
    assert segments[1].inputs == ["layer1_out", "extended_mask"]
    assert segments[-1].inputs == ["layer3_out", "extended_mask"]
    # the last segment computes no mask of its own: it reads the one segment 0 made
    assert "attention_mask" not in segments[-1].inputs


def test_cut_ids_in_any_order_give_segments_in_graph_order():
    tiny = tiny_models.resnet_like()
    sites = find_sites(tiny.model)
    a = split_model(tiny.model, sites, [2, 0])
    b = split_model(tiny.model, sites, [0, 2])
    assert [(s.inputs, s.outputs, s.ends_at_site) for s in a] == [(s.inputs, s.outputs, s.ends_at_site) for s in b]
    assert [s.ends_at_site for s in a] == [0, 2, None]


def test_unknown_site_id_is_rejected():
    tiny = tiny_models.vgg_like()
    sites = find_sites(tiny.model)
    with pytest.raises(ValueError, match="no site with id 7"):
        split_model(tiny.model, sites, [0, 7])


def test_split_is_fast_enough_for_a_background_thread():
    tiny = tiny_models.mbconv_like()
    sites = find_sites(tiny.model, 0.0, 1.0)
    start = time.perf_counter()
    for _ in range(5):
        split_model(tiny.model, sites, [s.id for s in sites])
    assert (time.perf_counter() - start) / 5 < 0.5


def test_constants_are_copied_not_passed():
    """A Constant node (and what is computed from it) read in every layer is copied into each
    segment that needs it, never passed between segments."""
    rng = np.random.RandomState(0)
    nodes = [
        helper.make_node("Constant", [], ["c0"], value=numpy_helper.from_array(np.full(8, 0.1, np.float32))),
        helper.make_node("Mul", ["c0", "two"], ["c"]),
    ]
    inits = [numpy_helper.from_array(np.float32(2.0), "two")]
    x = "x"
    for i in range(4):
        inits.append(numpy_helper.from_array(rng.randn(8, 8).astype(np.float32), f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", "c"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"h{i}"]),
        ]
        x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 8])],
        inits,
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    sites = find_sites(model, 0.0, 1.0)
    assert [s.tensor for s in sites] == ["h0", "h1", "h2"]
    segments = split_model(model, sites, [s.id for s in sites])
    for seg in segments:
        assert "c" not in seg.inputs and "c" not in seg.outputs
        assert [n.op_type for n in seg.model.graph.node][:2] == ["Constant", "Mul"]
    feeds = {"x": rng.randn(3, 8).astype(np.float32)}
    np.testing.assert_allclose(run_chain(segments, feeds)[x], open_runner(model, threads=1).run(feeds)[x], rtol=1e-5)


def test_with_extra_outputs_exposes_intermediate_tensors():
    tiny = tiny_models.resnet_like()
    names = ["block1_out", "block2_out", "logits"]
    model = with_extra_outputs(tiny.model, names)
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["logits", "block1_out", "block2_out"]
    assert [o.name for o in tiny.model.graph.output] == ["logits"], "the original must not change"
    feeds = _feeds(tiny, n=4)
    out = open_runner(model, threads=1).run(feeds)
    assert out["block1_out"].shape == (4, 16, 16, 16) and out["block2_out"].shape == (4, 16, 16, 16)
    segments = split_model(tiny.model, find_sites(tiny.model), [0])
    np.testing.assert_allclose(run_chain(segments[:1], feeds)["block1_out"], out["block1_out"], atol=1e-5)


def _tamper(segment: Segment, scale: float) -> None:
    """Scale every weight of ``segment``'s model."""
    for init in segment.model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32 and value.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array(value * scale + 0.5, init.name))


def test_verify_chain_names_the_first_diverging_segment():
    tiny = tiny_models.resnet_like()
    sites = find_sites(tiny.model)
    segments = split_model(tiny.model, sites, [s.id for s in sites])
    _tamper(segments[1], -3.0)
    with pytest.raises(ApparateError, match=r"first diverging: segment 1 \(ending at site 1"):
        verify_chain(tiny.model, segments, _feeds(tiny), "logits")


def test_verify_chain_reports_a_segment_that_fails_to_run():
    tiny = tiny_models.vgg_like()
    sites = find_sites(tiny.model)
    segments = split_model(tiny.model, sites, [0])
    segments[1].model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(ApparateError, match="segment 1"):
        verify_chain(tiny.model, segments, _feeds(tiny), "logits")


def test_graph_output_produced_early_is_passed_to_the_end():
    tiny = tiny_models.resnet_like()
    model = with_extra_outputs(tiny.model, ["stem_out"])
    sites = find_sites(model)
    segments = split_model(model, sites, [s.id for s in sites])
    assert segments[0].outputs == ["block1_out", "stem_out"]
    assert segments[-1].outputs == ["logits"]
    env = run_chain(segments, _feeds(tiny, n=4))
    ref = open_runner(model, threads=1).run(_feeds(tiny, n=4))
    np.testing.assert_allclose(env["stem_out"], ref["stem_out"])


def _pooled(x: np.ndarray) -> np.ndarray:
    """Per-sample features of a site tensor: channel means of a map, first token of a sequence."""
    return x.mean(axis=(2, 3)) if x.ndim == 4 else x[:, 0] if x.ndim == 3 else x


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_tiny_data_gives_spread_predictions_learnable_at_the_first_site(kind):
    """The data generators make the model's predictions vary and be predictable from the first
    site's pooled features (what ramp training relies on)."""
    tiny = BUILDERS[kind]()
    first = find_sites(tiny.model)[0].tensor
    feeds = _feeds(tiny, n=400, seed=5)
    out = open_runner(with_extra_outputs(tiny.model, [first]), threads=1).run(feeds)
    pred = out["logits"].argmax(axis=1)
    counts = np.bincount(pred, minlength=tiny.num_classes)
    assert counts.max() < (0.5 if tiny.num_classes > 2 else 0.7) * len(pred)
    assert (counts > 0).sum() == tiny.num_classes
    feats = _pooled(out[first]).astype(np.float64)
    feats = np.hstack([(feats - feats.mean(0)) / (feats.std(0) + 1e-6), np.ones((len(feats), 1))])
    targets = np.eye(tiny.num_classes)[pred]
    train, test = slice(0, 300), slice(300, None)
    coef = np.linalg.lstsq(feats[train], targets[train], rcond=None)[0]
    agreement = float(np.mean((feats[test] @ coef).argmax(axis=1) == pred[test]))
    chance = counts.max() / len(pred)
    assert agreement > max(0.7, chance + 0.2), agreement


def test_a_batch_size_read_from_the_input_shape_is_recomputed_not_carried():
    """``n = x.size(0); ...; x.view(n, -1)``: the scalar ``n`` is live across every site. No segment
    receives it; the one that reshapes recomputes it from the input, so a smaller (compacted) batch
    sees its own size, and the chain matches the model at every batch size."""
    model = tiny_models.resnet_like(view_early=True).model
    sites = find_sites(model, min_depth=0.0, max_depth=1.0)
    segments = split_model(model, sites, [s.id for s in sites])
    scalar = next(n.output[0] for n in model.graph.node if n.op_type == "Gather")
    assert all(scalar not in seg.inputs and scalar not in seg.outputs for seg in segments)
    assert "input" in segments[-1].inputs  # the last segment reads the input's shape itself
    for batch in (1, 3, 8):
        feeds = {"input": np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)}
        check = verify_chain(model, segments, feeds, "logits")
        assert check.argmax_equal and check.max_abs_diff < 1e-4
    # a compacted batch: the last segment on 2 rows of the site tensor and of the input
    env = run_chain(segments[:-1], feeds)
    rows = np.array([1, 6])
    last = segments[-1]
    out = run_chain([last], {name: env[name][rows] for name in last.inputs})
    assert out["logits"].shape == (2, 10)
