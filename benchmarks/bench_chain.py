"""The segmented chain's cost: the runtime's executor with 1, 2 and 4 active ramps that never exit,
against the unsplit model through the vanilla executor, at batch 1 and 8 (issue 3's benchmark).

    python benchmarks/bench_chain.py --engine-dir out/cv --data data/cv/eval.npz \
        [--ramps 1,2,4] [--batches 1,8] [--rounds 200] [--threads N] [--out FILE]

Both paths are the real runtime (``Executor.run_batch``, unconfigured for the unsplit model), same
inputs, measured in interleaved rounds (vanilla, then every chain, repeated) so that machine drift
hits them alike; each cell is the median batch latency in ms. Active sites are spread evenly over
the model's sites. Goal (issue 3): at most 3% slower than the
unsplit model with 2 active ramps. The path ``unsplit in the executor (overload fallback)`` is the
first chain's executor running the batch unsplit, as the engine does under a backlog.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import read_manifest
from apparate_trt.runtime.executor import Executor

GOAL_OVERHEAD_2_RAMPS = 0.03  # fraction: at most 3% slower than the unsplit model


def spread_sites(site_ids: Sequence[int], k: int) -> list[int]:
    """``k`` site ids spread evenly over ``site_ids`` (execution order), first and last excluded
    when there is room, so the ramps sit inside the useful range."""
    ids = list(site_ids)
    if k >= len(ids):
        return ids
    positions = np.linspace(0, len(ids) - 1, k + 2)[1:-1] if k < len(ids) - 1 else np.linspace(0, len(ids) - 1, k)
    return sorted({ids[int(round(p))] for p in positions})


def _noop(*_args: object) -> None:
    return None


def timed(run: Callable[[], object]) -> float:
    """Wall time of one call, in ms."""
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1e3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-dir", required=True, help="engine directory (apparate-compile --out)")
    parser.add_argument("--data", required=True, help="npz of model inputs (first axis = samples)")
    parser.add_argument("--ramps", default="1,2,4", help="active ramp counts to measure (default 1,2,4)")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    parser.add_argument("--rounds", type=int, default=200, help="interleaved rounds per batch size (default 200)")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    parser.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)

    manifest = read_manifest(args.engine_dir)
    data = load_inputs(args.data, manifest.model.inputs, min_samples=max(int(b) for b in args.batches.split(",")))
    useful = [s.id for s in manifest.sites]
    vanilla = Executor(manifest, threads=args.threads)  # never configured: the unsplit model
    chains: dict[str, Executor] = {}
    for k in (int(x) for x in args.ramps.split(",")):
        sites = spread_sites(useful, k)
        ex = Executor(manifest, threads=args.threads)
        ex.configure(sites, [0.0] * len(sites), wait=True)  # threshold 0: ramps run, never exit
        chains[f"{len(sites)} ramps @ {sites}"] = ex

    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        batch = {name: arr[:b] for name, arr in data.items()}
        paths = {"unsplit": lambda: vanilla.run_batch(batch, _noop)}
        paths.update({name: (lambda ex=ex: ex.run_batch(batch, _noop)) for name, ex in chains.items()})
        first = next(iter(chains.values()), None)
        if first is not None:  # the overload fallback: the configured executor, batch run unsplit
            paths["unsplit in the executor (overload fallback)"] = lambda: first.run_batch(batch, _noop, unsplit=True)
        for run in paths.values():  # warm-up
            for _ in range(5):
                run()
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, run in paths.items():
                times[name].append(timed(run))
        base = float(np.median(times["unsplit"]))
        for name, ts in times.items():
            med = float(np.median(ts))
            rows.append({"batch": b, "path": name, "median_ms": med, "vs_unsplit": med / base - 1.0})
        print(f"batch {b}: done", file=sys.stderr, flush=True)

    print("| batch | path | median ms | vs unsplit |")
    print("|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['path']} | {r['median_ms']:.3f} | {r['vs_unsplit']:+.1%} |")
    two = [r for r in rows if r["path"].startswith("2 ramps")]
    for r in two:
        verdict = "met" if r["vs_unsplit"] <= GOAL_OVERHEAD_2_RAMPS else "missed"
        print(
            f"goal (2 ramps at most {GOAL_OVERHEAD_2_RAMPS:.0%} slower), batch {r['batch']}: "
            f"{r['vs_unsplit']:+.1%} -> {verdict}"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"engine_dir": args.engine_dir, "rounds": args.rounds, "rows": rows}, indent=1)
        )
    for ex in chains.values():
        ex.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
