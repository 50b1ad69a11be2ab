"""What a ramp move's plan build costs the requests served meanwhile, with and without the idle gate.

    python benchmarks/bench_plan_builds.py --engine-dir out/bench/nlp --data data/nlp/eval.npz \
        [--rate 53] [--requests 1200] [--rounds 2] [--out FILE]

A ramp move needs the model split at the new active sites; on a large model that split runs in a
child process (``apparate_trt.runtime.split_worker``). This replays a Poisson stream through the
real engine (``apparate_trt.load``, default settings, the slow loop off so that the served ramps
stay put) three ways, interleaved in rounds:

- ``no builds``: nothing else runs;
- ``builds, no gate``: a background thread rebuilds plans for other active sets back to back
  (the cache cleared before each), the worker running freely at its niced priority;
- ``builds, gate``: the same, with the executor's ``IdleGate`` stopping the worker while a batch
  runs (the default).

Each cell is the median over rounds of the stream's median / p99 latency (ms, first release minus
scheduled arrival), with the plans built per stream. The rate should be about half of the model's
capacity (the issue-4 workloads' load).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apparate_trt.data import load_inputs, take
from apparate_trt.engine_dir import read_manifest
from apparate_trt.eval.arrivals import poisson_arrivals
from apparate_trt.eval.replay import replay
from apparate_trt.runtime.api import load

VARIANTS = ("no builds", "builds, no gate", "builds, gate")


def other_site_sets(site_ids: Sequence[int], served: Sequence[int]) -> list[tuple[int, ...]]:
    """Pairs of sites other than the ``served`` set: the plans the background thread builds."""
    ids = list(site_ids)
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    return [p for p in pairs if list(p) != list(served)] or [tuple(ids[:1])]


def serve_once(engine_dir: str, inputs: dict[str, np.ndarray], arrivals: np.ndarray, variant: str) -> dict[str, float]:
    """Replay the stream once with ``variant``; returns p50 / p99 latency (ms) and the plans built."""
    engine = load(engine_dir, controller_options={"adjust_every_batches": 10**9})
    executor = engine.executor
    executor.build_gate.enabled = variant != "builds, no gate"
    sets = other_site_sets([s.id for s in engine.manifest.sites], engine.executor.active_sites)
    stop, built = threading.Event(), [0]

    def rebuild() -> None:
        while not stop.is_set():
            executor.rebuild_plan(sets[built[0] % len(sets)])
            built[0] += 1

    thread = threading.Thread(target=rebuild, daemon=True)
    if variant != "no builds":
        thread.start()
    try:
        latency = replay(engine, inputs, arrivals, progress=False).latency_ms
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        engine.close()
    latency = latency[np.isfinite(latency)]
    return {"p50": float(np.median(latency)), "p99": float(np.percentile(latency, 99)), "plans_built": built[0]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--engine-dir", required=True, help="engine directory of a large model (apparate-compile --out)"
    )
    parser.add_argument("--data", required=True, help="npz of model inputs (first axis = samples)")
    parser.add_argument(
        "--rate", type=float, default=53.0, help="Poisson arrival rate, requests per second (default 53)"
    )
    parser.add_argument("--requests", type=int, default=1200, help="requests per stream (default 1200)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three variants (default 2)")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.requests < 1 or args.rounds < 1:
        parser.error(
            f"--rate must be > 0 and --requests and --rounds >= 1; got --rate {args.rate}, "
            f"--requests {args.requests}, --rounds {args.rounds}"
        )
    manifest = read_manifest(args.engine_dir)
    inputs = take(load_inputs(args.data, manifest.model.inputs), slice(0, args.requests))
    arrivals = poisson_arrivals(args.rate, args.requests, 0)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
            runs[variant].append(serve_once(args.engine_dir, inputs, arrivals, variant))
            last = runs[variant][-1]
            print(
                f"round {r + 1}/{args.rounds} {variant}: p50 {last['p50']:.2f} ms, p99 {last['p99']:.1f} ms, "
                f"{last['plans_built']} plans built",
                file=sys.stderr,
                flush=True,
            )
    rows = [
        {
            "variant": v,
            "p50_ms": float(np.median([x["p50"] for x in runs[v]])),
            "p99_ms": float(np.median([x["p99"] for x in runs[v]])),
            "plans_built": float(np.median([x["plans_built"] for x in runs[v]])),
        }
        for v in VARIANTS
    ]
    print("| variant | p50 ms | p99 ms | plans built per stream |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['p50_ms']:.2f} | {row['p99_ms']:.1f} | {row['plans_built']:.0f} |")
    if args.out:
        result = {
            "engine_dir": args.engine_dir,
            "rate_rps": args.rate,
            "requests": args.requests,
            "rounds": args.rounds,
            "rows": rows,
            "runs": runs,
        }
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
