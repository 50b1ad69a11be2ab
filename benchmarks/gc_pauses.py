"""Python's cyclic GC pauses while an engine serves (issue 32, tails): replays the CV stream on
vanilla and on Apparate at fixed arrivals, times every collection through ``gc.callbacks``, and
prints each system's p50/p99/max latency (ms) beside the collections' count and longest pause (ms).
``--freeze`` runs ``gc.collect(); gc.freeze()`` after the warm-up, so collections skip what loading made.

    python benchmarks/gc_pauses.py [--freeze] [--engine-dir out/bench/cv] [--data data/cv/eval.npz]
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt.data import load_inputs, take
from apparate_trt.engine_dir import read_manifest
from apparate_trt.errors import ApparateError
from apparate_trt.eval.replay import replay
from apparate_trt.runtime.api import load

WARM_UP_REQUESTS = 64
"""Requests served one at a time before the replay (the stream's first rows), so first-run allocations are done."""

_pauses: list[tuple[int, float]] = []
_started: dict[str, float] = {}


def _time_collections(phase: str, info: dict[str, Any]) -> None:
    """gc callback: record (generation, pause ms) of each collection."""
    if phase == "start":
        _started["t"] = time.perf_counter()
    elif "t" in _started:
        _pauses.append((int(info["generation"]), (time.perf_counter() - _started.pop("t")) * 1000.0))


def serve_once(engine_dir: Path, inputs: dict[str, np.ndarray], mode: str, rate: float, freeze: bool) -> str:
    """One replay of ``inputs`` at ``rate`` rps on ``mode``; the line of figures it prints."""
    engine = load(engine_dir, max_batch=8, max_delay_ms=5.0, mode=mode, refits=False)
    try:
        for i in range(WARM_UP_REQUESTS):
            engine.submit({k: v[i] for k, v in inputs.items()}).final.result(60.0)
        if freeze:
            gc.collect()
            gc.freeze()
        _pauses.clear()
        n = int(next(iter(inputs.values())).shape[0])
        result = replay(engine, inputs, np.arange(n) / rate, progress=False)
    finally:
        engine.close()
        gc.unfreeze()
    latency = result.latency_ms[result.completed]
    if latency.size == 0:
        raise ApparateError(f"no request of the {mode} replay completed; see the errors above")
    full = [ms for generation, ms in _pauses if generation == 2]
    return (
        f"{mode}: p50 {np.median(latency):.2f} ms, p99 {np.percentile(latency, 99):.1f} ms, max {latency.max():.1f} ms"
        f" | {len(_pauses)} collections, {len(full)} full, longest {max((ms for _, ms in _pauses), default=0.0):.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-dir", type=Path, default=Path("out/bench/cv"), help="default: out/bench/cv")
    parser.add_argument("--data", type=Path, default=Path("data/cv/eval.npz"), help="the stream (.npz of inputs)")
    parser.add_argument(
        "--requests", type=int, default=4000, help=f"requests replayed per system (>= {WARM_UP_REQUESTS}; default 4000)"
    )
    parser.add_argument("--rate", type=float, default=380.0, help="arrivals per second, fixed rate (default 380)")
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() after the warm-up")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.rate) and args.rate > 0) or args.requests < WARM_UP_REQUESTS:
        parser.error(
            f"--rate must be a finite number > 0 and --requests >= {WARM_UP_REQUESTS}; "
            f"got --rate {args.rate}, --requests {args.requests}"
        )
    try:
        manifest = read_manifest(args.engine_dir)
        data = load_inputs(args.data, manifest.model.inputs, min_samples=args.requests, what="the stream")
        inputs = dict(take(data, slice(0, args.requests)))
        gc.callbacks.append(_time_collections)
        for mode in ("vanilla", "apparate"):
            print(serve_once(args.engine_dir, inputs, mode, args.rate, args.freeze), flush=True)
    except ApparateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if _time_collections in gc.callbacks:
            gc.callbacks.remove(_time_collections)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
