"""Ramps that keep learning, served: a long stream with and without refits, beside vanilla.

    python benchmarks/refit_stream.py [--data-dir data] [--engine-dir out/cv] [--stream eval.npz] \
        [--rate-fraction 0.5] [--segment 1500] [--out benchmarks/results/refit_stream.json] \
        [--plot benchmarks/results/refit_stream.png]

Serves the whole stream (the CV model's 9,000 evaluation images by default) at fixed-rate arrivals
(cv-fixed: half of vanilla's measured capacity) three times on the same arrivals, one system at
a time so that a refit's child process never runs during another system's requests: vanilla,
apparate with the ramps as compiled (``refits=False``) and apparate whose ramps keep learning
(the default). Prints and writes, per segment of ``--segment`` consecutive requests, each
system's median latency (ms), early-exit share and agreement with the original model, and overall
the median and P99 latency, the ratios to vanilla's, the accuracy, the share of windows of 256
within 1%, and the refits run and accepted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt.data import load_inputs, num_samples, take
from apparate_trt.engine_dir import read_manifest
from apparate_trt.eval.replay import replay, replay_controller_options
from apparate_trt.eval.report import build_report
from apparate_trt.runtime.api import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import (  # noqa: E402
    CAPACITY_PROBE,
    CONSTRAINT,
    MAX_BATCH,
    MAX_DELAY_MS,
    WINDOW,
    burst_throughput,
    warm_up,
    write_figures,
)

SYSTEMS = {
    "vanilla": {"mode": "vanilla"},
    "apparate (compiled ramps)": {"mode": "apparate", "refits": False},
    "apparate (ramps keep learning)": {"mode": "apparate", "refits": True},
}


def serve(
    engine_dir: Path, settings: dict[str, Any], inputs: dict[str, np.ndarray], arrivals: np.ndarray, threads: int
) -> dict[str, Any]:
    """Serve ``inputs`` at ``arrivals`` on one fresh engine; the report and per-request arrays."""
    engine = load(
        engine_dir,
        max_batch=MAX_BATCH,
        max_delay_ms=MAX_DELAY_MS,
        accuracy_constraint=CONSTRAINT,
        threads=threads,
        controller_options=replay_controller_options(arrivals.shape[0]) if settings["mode"] == "apparate" else None,
        **settings,
    )
    try:
        warm_up(engine, inputs)
        t0 = time.perf_counter()
        result = replay(engine, inputs, arrivals, progress=True)
        wall = time.perf_counter() - t0
    finally:
        engine.close()
    report = build_report(result, CONSTRAINT, window_size=WINDOW)
    return {"report": report, "result": result, "wall_s": wall}


def segments(result: Any, size: int) -> list[dict[str, Any]]:
    """Median latency (ms), early-exit share and agreement of each ``size`` consecutive requests."""
    out = []
    n = result.requests
    for lo in range(0, n, size):
        rows = np.arange(lo, min(n, lo + size))
        done = rows[result.completed[rows]]
        out.append(
            {
                "first": int(lo),
                "requests": int(rows.size),
                "p50_ms": float(np.median(result.latency_ms[done])) if done.size else None,
                "early_share": float(np.mean(result.exit_site[done] >= 0)) if done.size else None,
                "agreement": float(np.mean(result.released_pred[done] == result.final_pred[done]))
                if done.size
                else None,
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data-dir", type=Path, default=Path("data/cv"), help="the model's data directory")
    p.add_argument("--engine-dir", type=Path, default=Path("out/cv"), help="its engine directory")
    p.add_argument("--stream", default="eval.npz", help="the served stream, in the data directory")
    p.add_argument("--rate-fraction", type=float, default=0.5, help="arrival rate as a share of vanilla's capacity")
    p.add_argument("--limit", type=int, default=None, help="serve only the first N requests")
    p.add_argument("--segment", type=int, default=1500, help="requests per stream segment in the table")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems to serve (vanilla first)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--plot", type=Path, help="write the per-segment medians as a PNG here")
    args = p.parse_args(argv)
    manifest = read_manifest(args.engine_dir)
    inputs = load_inputs(args.data_dir / args.stream, manifest.model.inputs)
    if args.limit:
        inputs = take(inputs, slice(0, min(args.limit, num_samples(inputs))))
    n = num_samples(inputs)
    probe = load(args.engine_dir, mode="vanilla", max_batch=MAX_BATCH, max_delay_ms=MAX_DELAY_MS, threads=args.threads)
    try:
        warm_up(probe, inputs)
        capacity = burst_throughput(probe, inputs, CAPACITY_PROBE * 4)
    finally:
        probe.close()
    rate = args.rate_fraction * capacity
    arrivals = np.arange(n, dtype=np.float64) / rate
    print(
        f"{manifest.model.name}: {n} requests, fixed arrivals at {rate:.1f} rps"
        f" ({args.rate_fraction:g} x vanilla's {capacity:.1f} rps)",
        flush=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    chosen = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown or "vanilla" not in chosen:
        p.error(f"--systems must name vanilla and any of {list(SYSTEMS)}; got {unknown or chosen}")
    for name, settings in ((name, SYSTEMS[name]) for name in chosen):
        print(f"serving {name} ...", flush=True)
        runs[name] = serve(args.engine_dir, settings, inputs, arrivals, args.threads)
    base = runs["vanilla"]["report"]["latency_ms"]
    figures: dict[str, Any] = {
        "requests": n,
        "rate_rps": rate,
        "vanilla_capacity_rps": capacity,
        "segment": args.segment,
        "systems": {},
    }
    for name, run in runs.items():
        report = run["report"]
        learning = report.get("learning") or {}
        refit_events = [e for e in report["events"] if e["kind"] == "refit"]
        figures["systems"][name] = {
            "p50_ms": report["latency_ms"]["p50"],
            "p99_ms": report["latency_ms"]["p99"],
            "p50_vs_vanilla": report["latency_ms"]["p50"] / base["p50"],
            "p99_vs_vanilla": report["latency_ms"]["p99"] / base["p99"],
            "accuracy": report["accuracy"]["overall"],
            "windows_within_1pct": 1.0 - report["windows_violating"],
            "early_share": 1.0 - report["exit_share"].get("final", 1.0),
            "refits": learning.get("refits", 0),
            "refits_accepted": learning.get("refits_accepted", 0),
            "refit_seconds": learning.get("refit_seconds", 0.0),
            "reservoir_bytes": learning.get("reservoir_bytes", 0),
            "refit_events": [
                {k: e.get(k) for k in ("t", "site", "accepted", "before", "after", "requests_served")}
                for e in refit_events
            ],
            "controller_events": [
                {k: e.get(k) for k in ("t", "kind", "reason", "active_sites", "thresholds")}
                for e in report["events"]
                if e["kind"] not in ("tune", "refit")
            ],
            "segments": segments(run["result"], args.segment),
            "wall_s": run["wall_s"],
        }
    print(
        "| system | p50 ms | p99 ms | p50 vs vanilla | accuracy | windows within 1% | early exits | refits (accepted) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in figures["systems"].items():
        cells = [
            f"{s['p50_ms']:.2f}",
            f"{s['p99_ms']:.1f}",
            f"{s['p50_vs_vanilla']:.2f}x",
            f"{100 * s['accuracy']:.2f}%",
            f"{100 * s['windows_within_1pct']:.1f}%",
            f"{100 * s['early_share']:.1f}%",
            f"{s['refits']} ({s['refits_accepted']})",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"per segment of {args.segment} requests: median latency ms / early exits")
    for name, s in figures["systems"].items():
        cells = "  ".join(f"{seg['p50_ms']:.2f}/{100 * (seg['early_share'] or 0):.0f}%" for seg in s["segments"])
        print(f"  {name:32s} {cells}")
    write_figures(figures, args.out, args.plot, plot)
    return 0


def plot(figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for name, s in figures["systems"].items():
        xs = [seg["first"] + seg["requests"] / 2 for seg in s["segments"]]
        top.plot(xs, [seg["p50_ms"] for seg in s["segments"]], marker="o", label=name)
        bottom.plot(xs, [100 * (seg["early_share"] or 0) for seg in s["segments"]], marker="o", label=name)
    top.set_ylabel("median latency (ms)")
    bottom.set_ylabel("early exits (%)")
    bottom.set_xlabel("request (stream order)")
    top.legend(fontsize=7)
    top.set_title(
        f"{figures['requests']} requests at {figures['rate_rps']:.0f} rps, per segment of {figures['segment']}"
    )
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
