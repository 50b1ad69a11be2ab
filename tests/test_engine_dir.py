"""The engine directory's manifest: round trip, latency helpers, and every corruption error."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from apparate_trt.engine_dir import (
    BootstrapInfo,
    BootstrapStats,
    InitialConfig,
    Manifest,
    ModelInfo,
    Profiles,
    RampEntry,
    SegmentEntry,
    SiteEntry,
    TensorSpec,
    interpolate_ms,
    read_manifest,
    write_bootstrap_stats,
    write_manifest,
)
from apparate_trt.errors import ApparateError


def make_manifest() -> Manifest:
    """Two sites, three segments, two ramps, profiled at batch sizes 1, 2, 4."""
    return Manifest(
        model=ModelInfo(
            "model.onnx",
            "tiny",
            "ab" * 32,
            [TensorSpec("x", "float32", ["N", 3, 8, 8])],
            [TensorSpec("y", "float32", ["N", 4])],
            "y",
            4,
        ),
        sites=[SiteEntry(0, "a", [], ["N", 8, 4, 4], 3, 0.25), SiteEntry(1, "b", ["mask"], ["N", 8, 2, 2], 7, 0.6)],
        segments=[
            SegmentEntry("segments/seg_000.onnx", ["x"], ["a"], 0),
            SegmentEntry("segments/seg_001.onnx", ["a"], ["b"], 1),
            SegmentEntry("segments/seg_002.onnx", ["b"], ["y"], None),
        ],
        ramps=[
            RampEntry(0, "ramps/ramp_000.onnx", ["a"], "logits", "conv_gap_linear", 4, 0.8, 0.05, 0.0125),
            RampEntry(1, "ramps/ramp_001.onnx", ["b"], "logits", "conv_gap_linear", 4, 0.9, 0.05, 0.0125),
        ],
        profiles=Profiles(
            "onnxruntime",
            1,
            [1, 2, 4],
            [4.0, 6.0, 10.0],
            [[1.0, 1.5, 2.5], [1.5, 2.0, 3.0], [1.5, 2.5, 4.5]],
            [[0.05, 0.06, 0.08], [0.05, 0.07, 0.1]],
        ),
        budget=0.02,
        initial_config=InitialConfig([0], [0.0]),
        bootstrap=BootstrapInfo("bootstrap_stats.npz", 50, 40, 10),
        tools={
            "apparate_trt": "0.1.0",
            "onnx": "1",
            "onnxruntime": "1",
            "torch": None,
            "python": "3.11",
            "tensorrt": None,
        },
        created="2026-01-01T00:00:00+00:00",
    )


def write_engine_dir(root: Path, manifest: Manifest) -> Path:
    for rel in manifest.referenced_files():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    n, s = 10, len(manifest.sites)
    write_bootstrap_stats(
        root / manifest.bootstrap.file,
        BootstrapStats(
            np.full((n, s), 0.5, np.float32),
            np.zeros((n, s), np.int32),
            np.zeros(n, np.int32),
            np.ones((n, s), np.uint8),
        ),
    )
    write_manifest(root, manifest)
    return root


@pytest.fixture()
def engine(tmp_path: Path) -> Path:
    (tmp_path / "engine").mkdir()
    return write_engine_dir(tmp_path / "engine", make_manifest())


def test_round_trip(engine: Path) -> None:
    read = read_manifest(engine)
    assert dataclasses.replace(read, file_sha256={}) == make_manifest()
    assert sorted(read.file_sha256) == sorted(read.referenced_files())  # every file's hash is recorded
    assert read.root == engine.resolve()
    assert read.path("ramps/ramp_001.onnx") == engine.resolve() / "ramps" / "ramp_001.onnx"
    stats = read.load_bootstrap_stats()
    assert stats.confidence.dtype == np.float32 and stats.agree.dtype == np.uint8 and stats.final_pred.shape == (10,)
    assert json.loads((engine / "manifest.json").read_text())["format_version"] == 1


def test_latency_helpers(engine: Path) -> None:
    m = read_manifest(engine)
    assert m.model_ms(1) == 4.0 and m.model_ms(3) == pytest.approx(8.0)
    assert m.model_ms(8) == pytest.approx(20.0)  # proportional beyond the largest profiled size
    np.testing.assert_allclose(m.site_reached_ms(1), [1.0, 2.5])
    np.testing.assert_allclose(m.site_saved_ms(1), [3.0, 1.5])
    np.testing.assert_allclose(m.site_saved_ms(4), [7.5, 4.5])
    np.testing.assert_allclose(m.ramp_cost_ms(2), [0.06, 0.07])
    np.testing.assert_allclose(m.ramp_cost_ms(3), [0.07, 0.085])
    assert interpolate_ms([1, 2], [1.0, 1.0], 0) == 1.0


def _error(directory: Path) -> str:
    with pytest.raises(ApparateError) as info:
        read_manifest(directory)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_directory(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope")


def test_not_an_engine_dir(tmp_path: Path) -> None:
    assert "not an engine directory" in _error(tmp_path)


def test_not_json(engine: Path) -> None:
    (engine / "manifest.json").write_text("{not json")
    assert "not valid JSON" in _error(engine)


def test_missing_key(engine: Path) -> None:
    data = json.loads((engine / "manifest.json").read_text())
    del data["ramps"][1]["file"]
    (engine / "manifest.json").write_text(json.dumps(data))
    assert "ramps[1].file" in _error(engine)


def test_wrong_type(engine: Path) -> None:
    data = json.loads((engine / "manifest.json").read_text())
    data["budget"] = "two percent"
    (engine / "manifest.json").write_text(json.dumps(data))
    assert "budget" in _error(engine)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_other_format_version(engine: Path, version: object) -> None:
    data = json.loads((engine / "manifest.json").read_text())
    data["format_version"] = version
    (engine / "manifest.json").write_text(json.dumps(data))
    message = _error(engine)
    assert "format_version" in message and "recompile" in message


def test_referenced_file_missing(engine: Path) -> None:
    (engine / "segments" / "seg_001.onnx").unlink()
    message = _error(engine)
    assert "segments/seg_001.onnx" in message and "recompile" in message


def test_inconsistent_counts(engine: Path) -> None:
    data = json.loads((engine / "manifest.json").read_text())
    data["profiles"]["ramps_ms"] = data["profiles"]["ramps_ms"][:1]
    (engine / "manifest.json").write_text(json.dumps(data))
    assert "ramps_ms" in _error(engine)


# ---- integrity: paths stay inside, files are what the manifest recorded -----------------------------


def _set_file(engine: Path, key: str, index: int | None, value: str) -> None:
    data = json.loads((engine / "manifest.json").read_text())
    entry = data[key] if index is None else data[key][index]
    entry["file"] = value
    (engine / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "key,index,value,entry",
    [
        ("ramps", 1, "../../../../etc/passwd", "ramps[1].file"),
        ("ramps", 0, "/etc/passwd", "ramps[0].file"),
        ("segments", 2, "segments/../../outside.onnx", "segments[2].file"),
        ("bootstrap", None, "/tmp/anything.npz", "bootstrap.file"),
        ("model", None, "", "model.file"),
        ("ramps", 1, "ramps/ramp\u0000.onnx", "ramps[1].file"),
    ],
)
def test_a_path_outside_the_directory_is_refused_naming_the_entry(engine: Path, key, index, value, entry) -> None:
    _set_file(engine, key, index, value)
    message = _error(engine)
    assert entry in message and "outside the engine directory" in message


def test_a_symbolic_link_out_of_the_directory_is_refused(engine: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(b"")
    target = engine / "ramps" / "ramp_000.onnx"
    target.unlink()
    os.symlink(outside, target)
    assert "ramps[0].file" in _error(engine)


@pytest.mark.parametrize("rel", ["model.onnx", "segments/seg_001.onnx", "ramps/ramp_001.onnx", "bootstrap_stats.npz"])
def test_a_changed_file_fails_at_start_up(engine: Path, rel: str) -> None:
    (engine / rel).write_bytes(os.urandom(64))
    message = _error(engine)
    assert rel in message and "SHA-256" in message and "\n" not in message
    assert read_manifest(engine, verify=False).root == engine.resolve()  # verify=False skips the content check


def test_without_recorded_hashes_every_onnx_file_is_parsed(tmp_path: Path) -> None:
    """A directory from before file_sha256: real ONNX files pass, random bytes in a ramp do not."""
    import onnx
    from onnx import TensorProto, helper

    engine = write_engine_dir(tmp_path, make_manifest())
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    for rel in make_manifest().referenced_files():
        if rel.endswith(".onnx"):
            onnx.save(helper.make_model(graph), str(engine / rel))
    data = json.loads((engine / "manifest.json").read_text())
    del data["file_sha256"]
    (engine / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(engine).file_sha256 == {}
    (engine / "ramps" / "ramp_001.onnx").write_bytes(b"\xff\x00 not a protobuf" * 7)
    message = _error(engine)
    assert "ramps/ramp_001.onnx" in message and "not a valid ONNX model" in message


def test_a_file_without_its_hash_is_refused(engine: Path) -> None:
    data = json.loads((engine / "manifest.json").read_text())
    del data["file_sha256"]["ramps/ramp_001.onnx"]
    (engine / "manifest.json").write_text(json.dumps(data))
    message = _error(engine)
    assert "ramps/ramp_001.onnx" in message and "no SHA-256" in message


def test_an_integer_written_as_a_float_is_refused(engine: Path) -> None:
    data = json.loads((engine / "manifest.json").read_text())
    data["model"]["num_classes"] = float(data["model"]["num_classes"])  # 10.0: the writer never writes it
    (engine / "manifest.json").write_text(json.dumps(data))
    message = _error(engine)
    assert "'model.num_classes' is bad" in message and "recompile" in message


def test_a_class_count_that_is_not_the_outputs_is_refused(engine: Path) -> None:
    data = json.loads((engine / "manifest.json").read_text())
    data["model"]["num_classes"] = data["model"]["num_classes"] + 1
    (engine / "manifest.json").write_text(json.dumps(data))
    message = _error(engine)
    assert "inconsistent" in message and "num_classes" in message
