"""The serving backend: its choice and messages, and the device-resident chain the GPU backends run,
exercised on the CPU device with real ONNX Runtime sessions (OrtDeviceRunner on ``cpu``)."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import THREADS, assert_same_output

from apparate_trt.backends import ChainRunner
from apparate_trt.backends.trt_layout import BuildRecord, DeviceKey, EngineEntry
from apparate_trt.errors import ApparateError
from apparate_trt.runtime import api
from apparate_trt.runtime.config import EngineConfig
from apparate_trt.runtime.executor import Executor
from apparate_trt.runtime.serving_backend import ServingBackend, choose_backend


def _cpu_chain(overlap: bool | None = None) -> ServingBackend:
    return ServingBackend("onnxruntime-gpu", device="cpu", overlap=overlap)


def _releases(executor: Executor, batch) -> tuple[object, list[tuple[int, int, int | None]], dict[int, np.ndarray]]:
    calls: list[tuple[int, int, int | None]] = []
    rows: dict[int, np.ndarray] = {}

    def on_release(i, row, pred, site, t, last=False):
        calls.append((i, pred, site))
        if site is not None:
            rows[i] = np.array(row)

    return executor.run_batch(batch, on_release), calls, rows


@pytest.mark.parametrize("overlap", [False, True], ids=["in-order", "overlapped"])
@pytest.mark.parametrize("name", ["resnet", "bert"])
def test_the_device_chain_releases_what_the_host_chain_does(name, overlap, request):
    compiled = request.getfixturevalue(name)  # bert: the attention mask flows on as a side tensor
    sites = [s.id for s in compiled.manifest.sites]
    batch = compiled.batch(8)
    host, chain = (
        Executor(compiled.manifest, THREADS),
        Executor(compiled.manifest, THREADS, backend=_cpu_chain(overlap)),
    )
    try:
        for active in ([], [sites[0]], [sites[0], sites[-1]]):
            thresholds = [0.3] * len(active)
            host.configure(active, thresholds, wait=True)
            chain.configure(active, thresholds, wait=True)
            expected, expected_calls, expected_rows = _releases(host, batch)
            outcome, calls, rows = _releases(chain, batch)
            assert outcome.active_sites == active
            assert_same_output(outcome.final_logits, compiled.reference[:8])
            assert sorted(calls, key=str) == sorted(expected_calls, key=str)
            np.testing.assert_array_equal(outcome.exit_site, expected.exit_site)
            np.testing.assert_allclose(outcome.confidence, expected.confidence, rtol=1e-5, atol=1e-6)
            for i, row in expected_rows.items():
                np.testing.assert_allclose(rows[i], row, rtol=1e-5, atol=1e-6)
            if active:
                assert all(isinstance(stage.runner, ChainRunner) for stage in chain._plan.stages)
            # overlapped: the GPU runs ahead of the host, so stage times are not measured (the controller
            # falls back to the profile); in order they are
            assert np.isnan(outcome.segments_ms).all() == overlap
    finally:
        host.close()
        chain.close()


def test_the_device_chain_keeps_ramp_features_for_the_learner(resnet):
    site = resnet.manifest.sites[0].id
    executor = Executor(resnet.manifest, THREADS, backend=_cpu_chain(True))
    try:
        executor.keep_features = True
        executor.configure([site], [0.0], wait=True)
        outcome = executor.run_batch(resnet.batch(4), lambda *a, **k: None)
        assert outcome.features is not None and outcome.features[site].shape[0] == 4
    finally:
        executor.close()


def test_skip_mode_is_refused_on_a_device_chain(resnet):
    with pytest.raises(ApparateError, match="exit mode 'skip' compacts batches on the host.*--exit-mode release"):
        Executor(resnet.manifest, THREADS, exit_mode="skip", backend=_cpu_chain())


def test_auto_serves_on_onnxruntime_where_there_is_no_gpu_and_named_gpu_backends_say_what_is_missing(resnet):
    from apparate_trt.backends.ort_device import cuda_provider_missing
    from apparate_trt.backends.tensorrt import unavailable_reason

    if unavailable_reason() is None or cuda_provider_missing() is None:  # pragma: no cover - a GPU machine
        pytest.skip("a GPU backend is available here")
    assert choose_backend(resnet.manifest).name == "onnxruntime"
    assert choose_backend(resnet.manifest, "onnxruntime").describe() == "onnxruntime"
    with pytest.raises(ApparateError, match="tensorrt backend needs an NVIDIA GPU with TensorRT"):
        choose_backend(resnet.manifest, "tensorrt")
    with pytest.raises(ApparateError, match="pip install onnxruntime-gpu"):
        choose_backend(resnet.manifest, "onnxruntime-gpu")
    with pytest.raises(ApparateError, match="--backend must be one of auto, onnxruntime, onnxruntime-gpu, tensorrt"):
        choose_backend(resnet.manifest, "cuda")
    with pytest.raises(ApparateError, match="unknown backend 'cuda'"):
        EngineConfig(backend="cuda")


def test_a_max_batch_beyond_the_engines_profile_is_refused(resnet, monkeypatch):
    entry = EngineEntry("model.plan", "model.onnx", {})
    record = BuildRecord(DeviceKey("NVIDIA H200", "9.0", "11.4.0"), 8, 8, False, "fp32", entry, [], [])
    backend = ServingBackend("onnxruntime-gpu", device="cpu", engines=resnet.engine_dir, record=record)
    monkeypatch.setattr(api, "choose_backend", lambda manifest, requested: backend)
    with pytest.raises(ApparateError, match="max batch 16 exceeds the 8 the TensorRT engines .* --max-batch 8 or less"):
        api.load(resnet.engine_dir, max_batch=16, refits=False)


def test_an_engine_reports_its_backend(resnet):
    engine = api.load(resnet.engine_dir, threads=THREADS, refits=False, backend="onnxruntime")
    try:
        assert engine.stats()["backend"] == "onnxruntime"
    finally:
        engine.close()
