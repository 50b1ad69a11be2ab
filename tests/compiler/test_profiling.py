"""Profiling helpers: batch sizes, interleaved medians, tiling."""

from __future__ import annotations

import time

import numpy as np

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
