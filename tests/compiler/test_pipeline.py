"""compile_model end to end on tiny models: the engine directory as the runtime reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from apparate_trt.backends import open_runner
from apparate_trt.compiler.pipeline import compile_model, serving_batch
from apparate_trt.compiler.profiling import ProfileSettings
from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import read_manifest, write_manifest

FAST = ProfileSettings(budget_ms=5.0, min_repeats=2, max_repeats=20)


@pytest.mark.parametrize("fixture", ["tiny_resnet_engine", "tiny_bert_engine"])
def test_engine_dir_is_complete_and_consistent(request: pytest.FixtureRequest, fixture: str) -> None:
    engine, eval_npz = request.getfixturevalue(fixture)
    m = read_manifest(engine)
    assert len(m.sites) == 3 and len(m.segments) == 4 and len(m.ramps) == 3
    assert m.profiles.batch_sizes == [1, 2, 4] and m.profiles.backend == "onnxruntime"
    depths = [s.depth for s in m.sites]
    assert all(0 < d < 1 for d in depths) and depths == sorted(depths)
    assert all(0.0 <= r.agreement <= 1.0 and r.cost_ms > 0 for r in m.ramps)
    b = serving_batch(m.profiles.batch_sizes)
    cost = m.ramp_cost_ms(b)[m.initial_config.active_sites].sum()
    assert cost <= m.budget * m.model_ms(b) + 1e-9 and m.initial_config.thresholds == [0.0] * len(
        m.initial_config.active_sites
    )
    stats = m.load_bootstrap_stats()
    assert stats.confidence.shape == (m.bootstrap.num_heldout, 3) == stats.agree.shape
    np.testing.assert_allclose(stats.agree.mean(axis=0), [r.agreement for r in m.ramps], atol=1e-6)

    # the segment files chained through an environment reproduce model.onnx; ramps run on the sites
    feeds = {k: v[:8] for k, v in load_inputs(eval_npz, m.model.inputs).items()}
    want = open_runner(m.path(m.model.file), threads=1).run(feeds)[m.model.output]
    env = dict(feeds)
    for seg in m.segments:
        env.update(open_runner(m.path(seg.file), threads=1).run(env, seg.outputs))
    np.testing.assert_allclose(env[m.model.output], want, rtol=1e-4, atol=1e-4)
    for ramp in m.ramps:
        assert ramp.inputs[0] == m.sites[ramp.site].tensor
        logits = open_runner(m.path(ramp.file), threads=1).run({name: env[name] for name in ramp.inputs})[ramp.output]
        assert logits.shape == (8, m.model.num_classes) and np.all(np.isfinite(logits))
    assert all(s.side_tensors for s in m.sites) == (fixture == "tiny_bert_engine")


def test_manifest_round_trips_through_json(tiny_resnet_engine: tuple[Path, Path], tmp_path: Path) -> None:
    engine, _ = tiny_resnet_engine
    copy = tmp_path / "copy"
    shutil.copytree(engine, copy)
    m = read_manifest(copy)
    write_manifest(copy, m)
    assert read_manifest(copy) == m
    assert json.loads((copy / "manifest.json").read_text()) == json.loads((engine / "manifest.json").read_text())


def test_force_replaces_an_engine_dir(tiny_bert_engine: tuple[Path, Path], tmp_path: Path) -> None:
    engine, _ = tiny_bert_engine
    out = tmp_path / "engine"
    shutil.copytree(engine, out)
    (out / "stale.txt").write_text("old")
    root = engine.parent
    lines: list[str] = []
    m = compile_model(
        root / "model.onnx",
        root / "bootstrap.npz",
        out,
        force=True,
        max_batch=1,
        threads=1,
        blends=3,
        log=lines.append,
        profile_settings=FAST,
    )
    assert m.profiles.batch_sizes == [1] and not (out / "stale.txt").exists()
    copies = [
        line for line in lines if "near-copies of" in line
    ]  # a token model's ramps train on edited copies by default
    assert len(copies) == 1 and "drop 1 token" in copies[0] and "cut the last half" in copies[0]
    assert "blends" not in copies[0]  # token ids cannot be mixed: an explicit --blends says it is ignored
    assert [line for line in lines if "--blends 3 ignored" in line]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".engine.")]  # no temporary left over


def test_an_image_model_trains_on_copies_and_blends(tiny_resnet_engine: tuple[Path, Path], tmp_path: Path) -> None:
    root = tiny_resnet_engine[0].parent
    lines: list[str] = []
    compile_model(
        root / "model.onnx",
        root / "bootstrap.npz",
        tmp_path / "engine",
        max_batch=1,
        threads=1,
        augment=1,
        blends=2,
        log=lines.append,
        profile_settings=FAST,
    )
    copies = [line for line in lines if "near-copies of" in line]
    assert (
        len(copies) == 1
        and "mirror" in copies[0]
        and "down 1 px" not in copies[0]
        and "2 blends with another sample" in copies[0]
    )
    features = [line for line in lines if "features:" in line]
    assert features[-1].split()[1] == f"{3 * 300}/{3 * 300}"  # one mirror + two blends of each of the 300 samples


def test_model_without_sites_compiles_to_zero_ramps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [w, b],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "m.onnx")
    )
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(20, 6)).astype(np.float32))
    lines: list[str] = []
    m = compile_model(
        tmp_path / "m.onnx",
        tmp_path / "d.npz",
        tmp_path / "out",
        max_batch=2,
        threads=1,
        log=lines.append,
        profile_settings=FAST,
    )
    assert any(line.startswith("warning: no usable ramp site") for line in lines)
    assert m.sites == [] and m.ramps == [] and len(m.segments) == 1 and m.initial_config.active_sites == []
    assert m.load_bootstrap_stats().confidence.shape == (m.bootstrap.num_heldout, 0)
    assert "compile time:" in lines[-1]
