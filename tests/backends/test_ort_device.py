"""ONNX Runtime with tensors kept on the device (the onnxruntime-gpu backend's runner), run on the
CPU device: kept outputs are OrtValues that feed the next runner without a host copy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from tiny_models import dense_layer

from apparate_trt.backends import ChainRunner, Runner, Submission, open_runner
from apparate_trt.backends.ort_device import OrtDeviceRunner, cuda_provider_missing, providers_for
from apparate_trt.errors import ApparateError


def _layer(name: str, inp: str, out: str, k: int, n: int, seed: int):
    model = dense_layer(name, inp, out, k, n, seed, relu=True)
    return model, numpy_helper.to_array(model.graph.initializer[0])


def test_kept_outputs_stay_ortvalues_and_feed_the_next_runner():
    (m1, w1), (m2, w2) = _layer("a", "x", "h", 4, 6, 0), _layer("b", "h", "y", 6, 3, 1)
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    with OrtDeviceRunner(m1, threads=1, device="cpu") as first, OrtDeviceRunner(m2, threads=1, device="cpu") as second:
        assert isinstance(first, ChainRunner) and isinstance(first, Runner) and first.device == "cpu"
        sub = first.submit({"x": x}, keep=["h"])
        assert isinstance(sub, Submission) and isinstance(sub.kept["h"], ort.OrtValue) and sub.wait() == {}
        y = second.submit(sub.kept, fetch=["y"]).wait()["y"]
    np.testing.assert_allclose(y, np.maximum(np.maximum(x @ w1, 0) @ w2, 0), rtol=1e-5, atol=1e-5)


def test_an_output_can_be_kept_and_fetched_and_unknown_ones_are_refused():
    m, w = _layer("a", "x", "h", 4, 6, 0)
    x = np.ones((2, 4), np.float32)
    with OrtDeviceRunner(m, threads=1, device="cpu", name="segment 0") as runner:
        sub = runner.submit({"x": x}, keep=["h"], fetch=["h"])
        np.testing.assert_allclose(sub.wait()["h"], sub.kept["h"].numpy())
        with pytest.raises(ApparateError, match=r"segment 0 has no outputs \['z'\]"):
            runner.submit({"x": x}, fetch=["z"])
        with pytest.raises(ApparateError, match="segment 0 needs input 'x'"):
            runner.submit({}, fetch=["h"])


def test_a_plain_cpu_runner_is_not_a_chain_runner():
    m, _ = _layer("a", "x", "h", 4, 6, 0)
    with open_runner(m, threads=1) as runner:
        assert not isinstance(runner, ChainRunner)


def test_cuda_without_onnxruntime_gpu_says_how_to_install_it():
    with pytest.raises(ApparateError, match="unknown ONNX Runtime device 'tpu'"):
        providers_for("tpu")
    if cuda_provider_missing() is None:  # pragma: no cover - onnxruntime-gpu on a GPU machine
        pytest.skip("the CUDA execution provider is available here")
    with pytest.raises(ApparateError, match="pip uninstall -y onnxruntime && pip install onnxruntime-gpu"):
        open_runner(_layer("a", "x", "h", 4, 6, 0)[0], backend="onnxruntime-gpu")
