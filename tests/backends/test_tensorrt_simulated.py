"""The TensorRT backend's own code end to end on a *simulated* GPU (``simulated_gpu``: CUDA work runs
when its stream is synchronised, engines are ONNX models run by ONNX Runtime). It checks apparate_trt's
logic: buffers sized once, host inputs staged through pinned memory, device tensors chained between
engines, ramps ordered after their segment on the side stream, results read only after their event,
the engine directory's TensorRT folder, the backend choice, merged plans built at run time and the
CLI. It is not a GPU run: ``benchmarks/gpu_check.py`` is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import simulated_gpu
from runtime_helpers import THREADS, assert_same_output
from tiny_models import dense_layer

from apparate_trt.backends.base import IOSpec
from apparate_trt.backends.trt_layout import BUILD_RECORD, PLANS_DIR, TRT_DIR, profile_ranges, select_engines
from apparate_trt.errors import ApparateError

KEY_FOLDER = "simulated-gpu_sm90_trt" + simulated_gpu.VERSION


def _engine(model, max_batch=16):
    """A simulated engine of a one-input [N, k] model, profile batch 1..max_batch."""
    k = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    ranges = profile_ranges([IOSpec(model.graph.input[0].name, "float32", ("N", k))], {}, max_batch, 4)
    return simulated_gpu.engine_bytes(model.SerializeToString(), ranges)


def test_engines_chain_in_device_memory_and_free_what_they_allocated(monkeypatch):
    cudart = simulated_gpu.install(monkeypatch)
    from apparate_trt.backends.tensorrt import DeviceArray, TrtRunner

    first, second = dense_layer("a", "x", "h", 4, 6, 0, relu=True), dense_layer("b", "h", "y", 6, 3, 1)
    w1, w2 = (
        np.frombuffer(m.graph.initializer[0].raw_data, np.float32).reshape(-1, n) for m, n in ((first, 6), (second, 3))
    )
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    a, b = TrtRunner(_engine(first), name="segment 0"), TrtRunner(_engine(second), name="segment 1")
    assert a.max_shapes == {"x": (16, 4), "h": (16, 6)}  # buffers planned once, at the profile's maximum
    allocated = len(cudart.memory)
    kept = a.submit({"x": x}, keep=["h"])
    assert isinstance(kept.kept["h"], DeviceArray) and kept.kept["h"].shape == (5, 6)
    fetched = b.submit(kept.kept, fetch=["y"], side=True)  # the side stream waits for segment 0
    assert len(cudart.memory) == allocated  # nothing allocated on the batch path
    np.testing.assert_allclose(fetched.wait()["y"], np.maximum(x @ w1, 0) @ w2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.run({"x": x})["h"], np.maximum(x @ w1, 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ApparateError, match=r"segment 0: input 'x' of shape \[32, 4\] exceeds the engine's profile"):
        a.submit({"x": np.zeros((32, 4), np.float32)})
    with pytest.raises(ApparateError, match="segment 1: input 'h' is int64 on the device, needs float32"):
        b.submit({"h": DeviceArray(kept.kept["h"].ptr, (5, 6), "int64")})
    with pytest.raises(ApparateError, match="cannot load segment 2 .built by another TensorRT version"):
        TrtRunner(b"not an engine", name="segment 2")
    a.close()
    b.close()
    assert cudart.memory == {}


@pytest.fixture
def trt_resnet(tmp_path, monkeypatch, tiny_resnet_engine):
    """The tiny ResNet compiled with --backend tensorrt on the simulated GPU: (engine dir, eval npz)."""
    simulated_gpu.install(monkeypatch)
    from apparate_trt.compiler.pipeline import compile_model
    from apparate_trt.compiler.profiling import ProfileSettings

    source = tiny_resnet_engine[0].parent
    lines: list[str] = []
    compile_model(
        source / "model.onnx",
        source / "bootstrap.npz",
        tmp_path / "engine",
        max_batch=4,
        threads=1,
        log=lines.append,
        budget=0.5,  # the tiny engines' budget (conftest.TINY_BUDGET)
        backend="auto",  # auto: TensorRT, since this machine (simulated) can build engines
        profile_settings=ProfileSettings(budget_ms=5.0, min_repeats=2, max_repeats=10),
    )
    assert any("build 1" in line or "TensorRT engines for Simulated GPU" in line for line in lines), lines
    return tmp_path / "engine", tiny_resnet_engine[1]


def test_compile_writes_this_machines_engines_and_profiles_on_them(trt_resnet):
    from apparate_trt.engine_dir import read_manifest

    engine_dir, _ = trt_resnet
    manifest = read_manifest(engine_dir)
    assert manifest.profiles.backend == "tensorrt"
    folder = engine_dir / TRT_DIR / KEY_FOLDER
    record = json.loads((folder / BUILD_RECORD).read_text())
    assert record["max_batch"] == 4 and len(record["segments"]) == len(manifest.segments)
    assert len(record["ramps"]) == len(manifest.ramps) and record["model"]["onnx"] == "model.onnx"
    assert (
        record["segments"][0]["shapes"]["input"]["max"][0] == 4 if "input" in record["segments"][0]["shapes"] else True
    )
    assert all((folder / e["file"]).is_file() for e in [record["model"], *record["segments"], *record["ramps"]])
    from apparate_trt.backends.trt_layout import DeviceKey

    with pytest.raises(ApparateError, match="not for this machine, NVIDIA L4"):
        select_engines(engine_dir, DeviceKey("NVIDIA L4", "8.9", simulated_gpu.VERSION))


def test_the_chained_engines_release_what_onnx_runtime_does_and_build_merged_plans_off_the_batch_path(
    trt_resnet, resnet
):
    from apparate_trt.engine_dir import read_manifest
    from apparate_trt.runtime.executor import Executor
    from apparate_trt.runtime.serving_backend import choose_backend

    engine_dir, _ = trt_resnet
    manifest = read_manifest(engine_dir)
    backend = choose_backend(manifest)  # auto
    assert backend.name == "tensorrt" and backend.describe().startswith("tensorrt (Simulated GPU (compute 9.0")
    sites = [s.id for s in manifest.sites]
    batch = resnet.batch(4)
    host, chain = Executor(manifest, THREADS), Executor(manifest, THREADS, backend=backend)
    try:
        for active in (sites, [sites[0]], []):  # the finest split, a merged plan, the unsplit model
            host.configure(active, [0.3] * len(active), wait=True)
            chain.configure(active, [0.3] * len(active), wait=True)
            got, want = [], []
            b = chain.run_batch(batch, lambda i, row, pred, site, t, last=False: got.append((i, pred, site)))
            a = host.run_batch(batch, lambda i, row, pred, site, t, last=False: want.append((i, pred, site)))
            assert_same_output(b.final_logits, resnet.reference[:4])
            assert sorted(got, key=str) == sorted(want, key=str)
            np.testing.assert_allclose(b.confidence, a.confidence, rtol=1e-5, atol=1e-6)
            assert np.isnan(b.segments_ms).all()  # asynchronous: the controller uses the profile
        merged = list((engine_dir / TRT_DIR / KEY_FOLDER / PLANS_DIR).glob("sites_*_segment_*.plan"))
        assert len(merged) == 2, "the merged plan's two segments got engines, cached for the next run"
    finally:
        host.close()
        chain.close()


def test_apparate_run_replays_on_the_engines_and_refuses_a_larger_batch(trt_resnet, capsys):
    from apparate_trt.cli.run import main

    engine_dir, eval_npz = trt_resnet
    report = engine_dir.parent / "report.json"
    argv = ["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--threads", "1", "--quiet", "--no-refits"]
    assert main([*argv, "--limit", "40", "--max-batch", "4", "--report", str(report)]) == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["settings"]["backend"].startswith("tensorrt") and data["completed"] == 40
    assert main([*argv, "--limit", "8", "--max-batch", "8"]) != 0
    assert "exceeds the 4 the TensorRT engines" in capsys.readouterr().err
    assert main([*argv, "--limit", "8", "--max-batch", "4", "--backend", "tensorrt", "--exit-mode", "skip"]) != 0
    assert "exit mode 'skip' compacts batches on the host" in capsys.readouterr().err


def test_a_cuda_error_at_start_is_named_not_taken_for_a_missing_gpu(monkeypatch):
    cudart = simulated_gpu.install(monkeypatch)
    from apparate_trt.backends.tensorrt import unavailable_reason

    assert unavailable_reason() is None
    monkeypatch.setattr(cudart, "cudaGetDeviceCount", lambda: (35, None))  # e.g. cudaErrorInsufficientDriver
    assert (
        unavailable_reason() == "CUDA reports cudaErrorSimulated (no GPU, or a driver too old for this cuda-bindings)"
    )
    monkeypatch.setattr(cudart, "cudaGetDeviceCount", lambda: (simulated_gpu.SUCCESS, 0))
    assert unavailable_reason() == "no NVIDIA GPU is visible"
