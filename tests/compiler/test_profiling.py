"""Profiling helpers: batch sizes, interleaved medians, tiling."""

from __future__ import annotations

import time

import numpy as np
from tiny_models import dense_layer

from apparate_trt.compiler.profiling import ProfileSettings, batch_sizes_up_to, median_ms, tile_batch


def test_batch_sizes() -> None:
    assert batch_sizes_up_to(1) == [1]
    assert batch_sizes_up_to(16) == [1, 2, 4, 8, 16]
    assert batch_sizes_up_to(12) == [1, 2, 4, 8, 12]


def test_median_ms_orders_and_bounds() -> None:
    calls: list[int] = []

    def sleeper(ms: float, tag: int):
        def run() -> None:
            calls.append(tag)
            time.sleep(ms / 1e3)

        return run

    settings = ProfileSettings(budget_ms=10.0, warmup=1, min_repeats=3, max_repeats=5)
    start = time.perf_counter()
    fast, slow = median_ms([sleeper(1.0, 0), sleeper(4.0, 1)], settings)
    assert time.perf_counter() - start < 1.0
    assert 0.9 <= fast < slow and 3.9 <= slow < 40.0
    assert 3 <= calls.count(0) - 1 <= 5 and calls.count(0) == calls.count(1)  # interleaved rounds


def test_tile_batch_repeats_samples() -> None:
    data = {"x": np.arange(3)[:, None].astype(np.float32)}
    np.testing.assert_array_equal(tile_batch(data, 5)["x"][:, 0], [0, 1, 2, 0, 1])


def test_chain_runners_are_profiled_on_device_tensors() -> None:
    """The profiler times runners that keep tensors on a device as the executor runs them (each
    segment on the previous one's device tensors): real ONNX Runtime sessions on the CPU device."""
    from apparate_trt.backends.ort_device import OrtDeviceRunner
    from apparate_trt.compiler.profiling import profile_all

    whole = dense_layer("m", "x", "y", 8, 3)
    segments = [dense_layer("a", "x", "h", 8, 16), dense_layer("b", "h", "y", 16, 3)]
    ramps = [dense_layer("r", "h", "logits", 16, 3)]
    opened: list[OrtDeviceRunner] = []

    def open_model(kind, index, model, threads):
        opened.append(OrtDeviceRunner(model, threads=1, name=f"{kind} {index}", device="cpu"))
        return opened[-1]

    settings = ProfileSettings(budget_ms=2.0, warmup=1, min_repeats=2, max_repeats=3)
    data = {"x": np.ones((4, 8), np.float32)}
    result = profile_all(
        whole,
        segments,
        ramps,
        [["h"]],
        data,
        [1, 2],
        threads=1,
        settings=settings,
        log=lambda _: None,
        open_model=open_model,
    )
    assert [r.name for r in opened] == ["model 0", "segment 0", "segment 1", "ramp 0"]
    assert len(result.model_ms) == 2 and len(result.segments_ms) == 2 and len(result.ramps_ms) == 1
    assert all(v > 0 for row in [result.model_ms, *result.segments_ms, *result.ramps_ms] for v in row)
