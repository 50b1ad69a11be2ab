"""Latency profiles (DESIGN.md step 6): whole model, every finest segment, every ramp, per batch size.

Each measurement is the median wall time (ms) of repeated runs after warm-up, on real bootstrap
samples (tiled when there are fewer samples than the batch size). The number of repeats adapts
to the run time so that one measurement takes about ``budget_ms`` (at least ``min_repeats`` runs),
which bounds the total profiling time. Segment inputs are the previous segments' real outputs.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from apparate_trt.data import num_samples
from apparate_trt.runtime.backends.onnxruntime import OrtRunner

Log = Callable[[str], None]


@dataclass
class ProfileResult:
    """Median latencies (ms): ``model_ms[b]``, ``segments_ms[s][b]``, ``ramps_ms[r][b]`` per batch size index b."""

    batch_sizes: list[int]
    model_ms: list[float]
    segments_ms: list[list[float]]
    ramps_ms: list[list[float]]
    threads: int | None


@dataclass
class ProfileSettings:
    """How long each measurement may take (ms) and its repeat limits."""

    budget_ms: float = 80.0
    warmup: int = 2
    min_repeats: int = 3
    max_repeats: int = 200


def batch_sizes_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to ``max_batch``, plus ``max_batch`` itself if it is not a power of two."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


def median_ms(fn: Callable[[], object], settings: ProfileSettings) -> float:
    """Median wall time of ``fn()`` in ms, after warm-up, with repeats adapted to ``settings.budget_ms``."""
    first = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - first
    for _ in range(settings.warmup - 1):
        fn()
    repeats = int(np.clip(settings.budget_ms / max(elapsed * 1e3, 1e-3), settings.min_repeats, settings.max_repeats))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def tile_batch(inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The first ``batch_size`` samples, repeating the data if it holds fewer."""
    n = num_samples(inputs)
    index = np.arange(batch_size) % n
    return {name: np.ascontiguousarray(a[index]) for name, a in inputs.items()}


def profile_all(
    model: onnx.ModelProto,
    segment_models: Sequence[onnx.ModelProto],
    ramp_models: Sequence[onnx.ModelProto],
    ramp_inputs: Sequence[str],
    inputs: dict[str, np.ndarray],
    batch_sizes: Sequence[int],
    *,
    threads: int | None,
    settings: ProfileSettings = ProfileSettings(),
    log: Log = print,
) -> ProfileResult:
    """Profile the model, the segments (chained in order) and the ramps at each batch size."""
    whole = OrtRunner(model, threads=threads, name="the model")
    segments = [OrtRunner(m, threads=threads, name=f"segment {i}") for i, m in enumerate(segment_models)]
    ramps = [OrtRunner(m, threads=threads, name=f"ramp {i}") for i, m in enumerate(ramp_models)]
    model_ms: list[float] = []
    segments_ms: list[list[float]] = [[] for _ in segments]
    ramps_ms: list[list[float]] = [[] for _ in ramps]
    start = time.perf_counter()
    for b in batch_sizes:
        feeds = tile_batch(inputs, b)
        model_ms.append(median_ms(lambda: whole.run(feeds), settings))
        env: dict[str, np.ndarray] = dict(feeds)
        for i, seg in enumerate(segments):
            seg_feeds = {name: env[name] for name in seg.input_names}
            segments_ms[i].append(median_ms(lambda: seg.run(seg_feeds), settings))
            env.update(seg.run(seg_feeds))
        for i, (ramp, tensor) in enumerate(zip(ramps, ramp_inputs)):
            ramp_feeds = {ramp.input_names[0]: env[tensor]}
            ramps_ms[i].append(median_ms(lambda: ramp.run(ramp_feeds), settings))
        log(
            f"  batch {b:>3}: model {model_ms[-1]:.3f} ms, segments {sum(r[-1] for r in segments_ms):.3f} ms in total, "
            f"ramps {sum(r[-1] for r in ramps_ms):.3f} ms in total ({time.perf_counter() - start:.1f} s)"
        )
    return ProfileResult(list(batch_sizes), model_ms, segments_ms, ramps_ms, threads)
