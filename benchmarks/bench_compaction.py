"""What compacting a batch costs (skip mode), against the segment time it saves.

    python benchmarks/bench_compaction.py --engine-dir out/bench/cv --data data/cv/eval.npz \
        --out benchmarks/results/compaction.json

For every site of the engine: run the finest segments on a full batch up to the site (the tensor
environment the executor holds there), then time ``runtime.compaction.compact`` keeping half of
the rows (the rows that did not exit) and, beside it, the rest of the model on the full batch and
on the half batch. Prints one line per site and writes the medians (us for the compaction, ms for
the segments) as JSON. Interleaved rounds, medians.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from apparate_trt.backends import Runner, open_runner
from apparate_trt.data import load_inputs, take
from apparate_trt.engine_dir import read_manifest
from apparate_trt.runtime.compaction import compact, dynamic_batch_inputs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", type=Path, required=True, help="engine directory (apparate-compile --out)")
    p.add_argument("--data", type=Path, required=True, help="samples (.npz, one array per model input)")
    p.add_argument("--batch", type=int, default=8, help="full batch size (default 8, the serving default)")
    p.add_argument("--rounds", type=int, default=50, help="timed rounds per site (default 50)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.batch < 2 or args.rounds < 1:
        p.error("--batch must be at least 2 and --rounds at least 1")
    manifest = read_manifest(args.engine_dir)
    inputs = take(load_inputs(args.data, manifest.model.inputs), slice(0, args.batch))
    runners = [open_runner(manifest.path(s.file), threads=args.threads, name=s.file) for s in manifest.segments]
    batch_names = {spec.name for spec in manifest.model.inputs}
    for runner in runners:
        batch_names |= dynamic_batch_inputs(runner.inputs)[0]
    keep = np.arange(0, args.batch, 2)
    rows = []
    env = dict(inputs)
    for k, seg in enumerate(manifest.segments[:-1]):
        env.update(runners[k].run(env, list(seg.outputs)))
        compact_us, full_ms, half_ms = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            small = compact(env, keep, batch_names, args.batch)
            compact_us.append((time.perf_counter() - t0) * 1e6)
            full_ms.append(_rest_ms(runners, manifest, k + 1, env))
            half_ms.append(_rest_ms(runners, manifest, k + 1, small))
        row = {
            "site": seg.ends_at_site,
            "compact_us": float(np.median(compact_us)),
            "rest_full_ms": float(np.median(full_ms)),
            "rest_half_ms": float(np.median(half_ms)),
        }
        row["saved_ms"] = row["rest_full_ms"] - row["rest_half_ms"]
        rows.append(row)
        print(
            f"site {row['site']:>2}: compact {row['compact_us']:7.1f} us; rest of the model "
            f"{row['rest_full_ms']:6.2f} ms at "
            f"batch {args.batch}, {row['rest_half_ms']:6.2f} ms at {keep.size} rows (saves {row['saved_ms']:.2f} ms)",
            flush=True,
        )
    summary = {
        "engine_dir": str(args.engine_dir),
        "batch": args.batch,
        "kept_rows": int(keep.size),
        "rounds": args.rounds,
        "threads": args.threads,
        "sites": rows,
        "compact_us_median_over_sites": float(np.median([r["compact_us"] for r in rows])) if rows else None,
        "command": " ".join(["python", *sys.argv]),
    }
    print(f"median compaction over sites: {summary['compact_us_median_over_sites']:.1f} us")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        print(f"written to {args.out}")
    return 0


def _rest_ms(runners: list[Runner], manifest, start: int, env: dict[str, np.ndarray]) -> float:
    """Wall time (ms) of the finest segments from ``start`` to the end on ``env``."""
    local = dict(env)
    t0 = time.perf_counter()
    for runner, seg in zip(runners[start:], manifest.segments[start:]):
        local.update(runner.run(local, list(seg.outputs)))
    return (time.perf_counter() - t0) * 1000.0


if __name__ == "__main__":
    sys.exit(main())
