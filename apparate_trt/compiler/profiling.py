"""Latency profiles (DESIGN.md step 6): whole model, every finest segment, every ramp, per batch size.

Each measurement is the median wall time (ms) of repeated runs after warm-up, on real bootstrap
samples (tiled when there are fewer samples than the batch size). At one batch size, the model,
every segment and every ramp are timed in interleaved rounds (one run of each per round), so that
load from other processes skews them alike. The number of rounds adapts to the run time so that a
measurement takes about ``budget_ms`` (at least ``min_repeats`` rounds), which bounds the total
profiling time. Segment inputs are the previous segments' real outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from apparate_trt.backends import ChainRunner, Runner, open_runner
from apparate_trt.backends.onnxruntime import default_threads
from apparate_trt.data import num_samples

Log = Callable[[str], None]
Opener = Callable[[str, int, onnx.ModelProto, "int | None"], Runner]

#: ORT intra-op threads of a ramp session: a ramp is a few small ops, and waking a second thread
#: costs more than it saves (it doubles a ramp's latency on CPU). Recorded in the manifest.
RAMP_THREADS = 1


@dataclass
class ProfileResult:
    """Median latencies (ms): ``model_ms[b]``, ``segments_ms[s][b]``, ``ramps_ms[r][b]`` per batch size index b."""

    batch_sizes: list[int]
    model_ms: list[float]
    segments_ms: list[list[float]]
    ramps_ms: list[list[float]]
    threads: int
    ramp_threads: int = RAMP_THREADS


@dataclass
class ProfileSettings:
    """About how long each measurement may take (ms), warm-up runs, and the limits on rounds."""

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


def median_ms(fns: Sequence[Callable[[], object]], settings: ProfileSettings) -> list[float]:
    """Median wall time (ms) of each of ``fns``, measured in interleaved rounds after warm-up.

    Each round runs every function once, so that a burst of load from other processes slows all
    of them alike instead of one measurement. The number of rounds adapts so that the whole takes
    about ``settings.budget_ms`` per function (between ``min_repeats`` and ``max_repeats`` rounds).
    """
    first = []
    for fn in fns:
        start = time.perf_counter()
        fn()
        first.append(time.perf_counter() - start)
        for _ in range(settings.warmup - 1):
            fn()
    round_ms = max(sum(first) * 1e3, 1e-3)
    rounds = int(np.clip(settings.budget_ms * len(fns) / round_ms, settings.min_repeats, settings.max_repeats))
    times = np.empty((rounds, len(fns)))
    for r in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[r, i] = time.perf_counter() - start
    return [float(v) for v in np.median(times, axis=0) * 1e3]


def tile_batch(inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The first ``batch_size`` samples, repeating the data if it holds fewer."""
    n = num_samples(inputs)
    index = np.arange(batch_size) % n
    return {name: np.ascontiguousarray(a[index]) for name, a in inputs.items()}


def profile_all(
    model: onnx.ModelProto,
    segment_models: Sequence[onnx.ModelProto],
    ramp_models: Sequence[onnx.ModelProto],
    ramp_inputs: Sequence[Sequence[str]],
    inputs: dict[str, np.ndarray],
    batch_sizes: Sequence[int],
    *,
    threads: int | None,
    settings: ProfileSettings = ProfileSettings(),
    log: Log = print,
    open_model: Opener | None = None,
) -> ProfileResult:
    """Profile the model, the segments (chained in order) and the ramps at each batch size.

    ``ramp_inputs[i]`` names the tensors ramp i reads (its site tensor, maybe a model input).
    ``threads`` is the ORT intra-op thread count of the model and the segments (None: all cores);
    ramps run with ``RAMP_THREADS``. ``open_model(kind, index, model, threads)`` opens each runner
    (``kind``: ``model``, ``segment`` or ``ramp``; None: ONNX Runtime on the CPU; the compiler
    passes TensorRT engines' runners on ``--backend tensorrt``). The result records the numbers used.
    """
    threads = threads or default_threads()
    if open_model is None:

        def open_model(kind: str, index: int, m: onnx.ModelProto, n_threads: int | None) -> Runner:
            return open_runner(m, threads=n_threads, name="the model" if kind == "model" else f"{kind} {index}")

    whole = open_model("model", 0, model, threads)
    segments = [open_model("segment", i, m, threads) for i, m in enumerate(segment_models)]
    ramps = [open_model("ramp", i, m, RAMP_THREADS) for i, m in enumerate(ramp_models)]
    model_ms: list[float] = []
    segments_ms: list[list[float]] = [[] for _ in segments]
    ramps_ms: list[list[float]] = [[] for _ in ramps]
    start = time.perf_counter()
    for b in batch_sizes:
        feeds = tile_batch(inputs, b)
        measured = median_ms(_chain_calls(whole, segments, ramps, ramp_inputs, feeds), settings)
        model_ms.append(measured[0])
        for i in range(len(segments)):
            segments_ms[i].append(measured[1 + 2 * i])
        for i in range(len(ramps)):
            ramps_ms[i].append(measured[2 + 2 * i])
        log(
            f"  batch {b:>3}: model {model_ms[-1]:.3f} ms, segments {sum(r[-1] for r in segments_ms):.3f} ms in total, "
            f"ramps {sum(r[-1] for r in ramps_ms):.3f} ms in total ({time.perf_counter() - start:.1f} s)"
        )
    return ProfileResult(list(batch_sizes), model_ms, segments_ms, ramps_ms, threads)


def _chain_calls(
    whole: Runner,
    segments: Sequence[Runner],
    ramps: Sequence[Runner],
    ramp_inputs: Sequence[Sequence[str]],
    feeds: dict[str, np.ndarray],
) -> list[Callable[[], object]]:
    """One call per measurement, in execution order: the model, then segment 0, ramp 0, segment 1,
    ramp 1, ..., the last segment, each on the real outputs of the ones before it.

    Runners that keep tensors on a device (:class:`~apparate_trt.backends.base.ChainRunner`) are
    timed as the executor runs them: a segment reads the previous one's device tensors and keeps
    its outputs there, a ramp fetches its logits, and each call waits until its work is done.
    """
    chained = all(isinstance(r, ChainRunner) for r in [whole, *segments, *ramps])
    env: dict = dict(feeds)
    seg_feeds = []
    for seg in segments:
        seg_feeds.append({name: env[name] for name in seg.input_names})
        env.update(seg.submit(seg_feeds[-1], keep=seg.output_names).kept if chained else seg.run(seg_feeds[-1]))
    ramp_feeds = [{name: env[name] for name in names} for names in ramp_inputs]
    if chained:
        calls: list[Callable[[], object]] = [lambda: whole.submit(feeds, fetch=whole.output_names).wait()]
    else:
        calls = [lambda: whole.run(feeds)]
    for i, (seg, f) in enumerate(zip(segments, seg_feeds)):
        if chained:  # a segment's kept outputs are ready once a zero-output fetch behind it completes
            calls.append(lambda seg=seg, f=f: seg.submit(f, keep=seg.output_names).wait())
        else:
            calls.append(lambda seg=seg, f=f: seg.run(f))
        if i < len(ramps):
            if chained:
                calls.append(lambda ramp=ramps[i], f=ramp_feeds[i]: ramp.submit(f, fetch=ramp.output_names).wait())
            else:
                calls.append(lambda ramp=ramps[i], f=ramp_feeds[i]: ramp.run(f))
    return calls
