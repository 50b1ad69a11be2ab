"""The TensorRT engine layout, keys, profiles and buffer plans: pure Python, checked on the CPU."""

from __future__ import annotations

import json

import pytest

from apparate_trt.backends.base import IOSpec
from apparate_trt.backends.trt_layout import (
    BUILD_RECORD,
    MODEL_ENGINE,
    TRT_DIR,
    BuildRecord,
    DeviceKey,
    EngineEntry,
    ShapeRange,
    buffer_bytes,
    built_keys,
    plan_buffers,
    profile_ranges,
    ramp_engine,
    read_build_record,
    segment_engine,
    select_engines,
    write_build_record,
)
from apparate_trt.errors import ApparateError

H200 = DeviceKey("NVIDIA H200", "9.0", "11.4.0.106")
L4 = DeviceKey("NVIDIA L4", "8.9", "11.4.0.106")


def test_a_key_names_its_folder_by_gpu_compute_capability_and_tensorrt_version():
    assert H200.folder == "nvidia-h200_sm90_trt11.4.0.106"
    assert L4.folder == "nvidia-l4_sm89_trt11.4.0.106"
    assert DeviceKey("NVIDIA H200", "9.0", "10.13.0").folder != H200.folder  # another TensorRT: another folder
    assert H200.describe() == "NVIDIA H200 (compute 9.0, TensorRT 11.4.0.106)"


def test_a_batch_axis_spans_one_to_the_max_batch_and_other_dims_come_from_the_model_or_the_data():
    specs = [
        IOSpec("x", "float32", ("N", 3, 224, 224)),
        IOSpec("ids", "int64", ("N", "S")),
        IOSpec("k", "float32", (5,)),
    ]
    ranges = profile_ranges(specs, {"ids": (1, 128), "k": (5,)}, max_batch=16, opt_batch=8)
    assert ranges["x"] == ShapeRange((1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))
    assert ranges["ids"] == ShapeRange((1, 128), (8, 128), (16, 128))
    assert ranges["k"] == ShapeRange((5,), (5,), (5,))  # no batch axis: fixed
    assert ranges["x"].as_lists() == {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [16, 3, 224, 224]}


def test_the_optimal_batch_is_clamped_and_a_fixed_batch_stays_fixed():
    assert profile_ranges([IOSpec("x", "float32", ("N", 4))], {}, 4, 64)["x"].opt == (4, 4)
    assert profile_ranges([IOSpec("x", "float32", ("N", 4))], {}, 4, 0)["x"].opt == (1, 4)
    fixed = profile_ranges([IOSpec("x", "float32", (2, 4))], {}, 16, 8)["x"]
    assert fixed.min == fixed.opt == fixed.max == (2, 4)


def test_an_unobserved_symbolic_dimension_and_a_bad_max_batch_are_clear_errors():
    with pytest.raises(ApparateError, match="input 'ids' has a dimension 1 .'S'. that neither the model nor the"):
        profile_ranges([IOSpec("ids", "int64", ("N", "S"))], {}, 16, 8)
    with pytest.raises(ApparateError, match="maximum batch must be >= 1"):
        profile_ranges([IOSpec("x", "float32", ("N", 4))], {}, 0, 1)


def test_buffers_are_sized_for_the_largest_shape_once():
    assert buffer_bytes((16, 3, 224, 224), "float32") == 16 * 3 * 224 * 224 * 4
    assert buffer_bytes((16, 128), "int64") == 16 * 128 * 8
    assert buffer_bytes((0, 10), "float32") == 1  # an empty tensor still gets an address
    assert plan_buffers({"x": (16, 8), "y": (16, 10)}, {"x": "float16", "y": "float32"}) == {"x": 256, "y": 640}
    with pytest.raises(ApparateError, match=r"no dtype known for tensors \['y'\]"):
        plan_buffers({"y": (1,)}, {})


def _record(key: DeviceKey, segments: int = 2, ramps: int = 1) -> BuildRecord:
    shapes = {"x": {"min": [1, 4], "opt": [8, 4], "max": [16, 4]}}
    return BuildRecord(
        key=key,
        max_batch=16,
        opt_batch=8,
        fp16=False,
        precision="the ONNX graph's own types",
        model=EngineEntry(MODEL_ENGINE, "model.onnx", shapes),
        segments=[EngineEntry(segment_engine(i), f"segments/segment_{i}.onnx", shapes) for i in range(segments)],
        ramps=[EngineEntry(ramp_engine(i), f"ramps/ramp_{i}.onnx", shapes, site=i) for i in range(ramps)],
    )


def _write_engines(engine_dir, record: BuildRecord, skip: str | None = None):
    folder = engine_dir / TRT_DIR / record.key.folder
    (folder / "segments").mkdir(parents=True)
    (folder / "ramps").mkdir()
    for entry in [record.model, *record.segments, *record.ramps]:
        if entry.file != skip:
            (folder / entry.file).write_bytes(b"engine")
    write_build_record(folder, record)
    return folder


def test_a_build_record_round_trips_and_a_corrupt_one_says_to_rebuild(tmp_path):
    record = _record(H200)
    write_build_record(tmp_path, record)
    assert read_build_record(tmp_path) == record
    (tmp_path / BUILD_RECORD).write_text("{not json")
    with pytest.raises(ApparateError, match="cannot be read .* rebuild it with apparate-compile --backend tensorrt"):
        read_build_record(tmp_path)
    (tmp_path / BUILD_RECORD).write_text(json.dumps({"version": 1, "key": {}}))
    with pytest.raises(ApparateError, match="not a valid TensorRT build record"):
        read_build_record(tmp_path)
    (tmp_path / BUILD_RECORD).write_text(json.dumps({**record.to_json(), "version": 99}))
    with pytest.raises(ApparateError, match="version 99 build record"):
        read_build_record(tmp_path)
    with pytest.raises(ApparateError, match="is missing: the TensorRT folder is incomplete"):
        read_build_record(tmp_path / "nowhere")


def test_engines_are_selected_for_this_machine_and_refused_for_another(tmp_path):
    with pytest.raises(ApparateError, match="has no TensorRT engines; build them here with apparate-compile --backend"):
        select_engines(tmp_path, H200)
    folder = _write_engines(tmp_path, _record(H200))
    assert select_engines(tmp_path, H200) == (folder, _record(H200))
    with pytest.raises(ApparateError) as caught:
        select_engines(tmp_path, L4)
    message = str(caught.value)
    assert "has TensorRT engines for NVIDIA H200 (compute 9.0, TensorRT 11.4.0.106), not for this machine" in message
    assert "NVIDIA L4 (compute 8.9" in message and "runs only on the GPU model and TensorRT version" in message
    assert set(built_keys(tmp_path)) == {H200.folder}


def test_a_missing_engine_or_a_record_for_another_key_is_refused(tmp_path):
    _write_engines(tmp_path, _record(H200), skip=segment_engine(1))
    with pytest.raises(ApparateError, match=r"segment_1.plan' is missing"):
        select_engines(tmp_path, H200)
    other = tmp_path / "other"
    folder = _write_engines(other, _record(H200))
    write_build_record(folder, _record(L4))  # a folder renamed by hand
    with pytest.raises(ApparateError, match="says its engines are for NVIDIA L4"):
        select_engines(other, H200)
