"""Replicas on Ray Serve against the single-process server: saturation throughput and the median
at half load, over the same gRPC protocol, on the CV model.

    python benchmarks/bench_replicas.py [--engine-dir out/cv] [--data data/cv/eval.npz] \\
        [--requests 1500] [--replicas 1,2] [--threads 1] [--out benchmarks/results/replicas.json]

Each system is ``apparate-run --serve`` in a subprocess on free 127.0.0.1 ports, one at a time:
the single-process server, then ``--replicas N`` for each N (a local Ray instance each time),
every engine with ``--threads`` ONNX Runtime threads. Per system: its saturation throughput
(``--requests`` requests sent at once through tritonclient's gRPC ``async_infer``; answered /
the span from the first send to the last answer), then the median latency of Poisson arrivals at
half of the single-process server's saturation throughput (the same arrivals for every system,
from its own scheduled arrival time to the answer, so generator lag counts against the server).
Accuracy is agreement of the answer with the original model. Prints a Markdown table with the
ratios to the single-process server; ``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import read_manifest
from apparate_trt.eval.arrivals import poisson_arrivals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import ServerProcess, drive, reference_pred, server_run  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--engine-dir", type=Path, default=Path("out/cv"), help="compiled engine directory")
    p.add_argument("--data", type=Path, default=Path("data/cv/eval.npz"), help="samples to send (.npz)")
    p.add_argument("--requests", type=int, default=1500, help="requests per measurement")
    p.add_argument("--replicas", default="1,2", help="comma-separated replica counts to measure")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per engine (per replica)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--accuracy-constraint", type=float, default=0.01)
    p.add_argument("--queue-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def measure(
    name: str, extra: Sequence[str], args: argparse.Namespace, inputs: dict[str, np.ndarray], ref: np.ndarray, rate: Any
) -> dict[str, Any]:
    """Saturation throughput, then (with ``rate`` None: at half of it) the half-load run of one system."""
    manifest = read_manifest(args.engine_dir)
    n = args.requests
    burst = {k: v[:n] for k, v in inputs.items()}
    load = {k: v[n : 2 * n] for k, v in inputs.items()}
    server = ServerProcess(args.engine_dir, "apparate", args, extra)
    try:
        at_once = np.zeros(n)
        responses, t0 = drive(server.grpc_port, manifest, manifest.model.name, burst, at_once, timeout_s=600)
        saturation = server_run(name, 0.0, responses, t0, at_once, ref[:n])
        half = 0.5 * saturation.throughput_rps if rate is None else rate
        arrivals = poisson_arrivals(half, n, args.seed)
        responses, t0 = drive(server.grpc_port, manifest, manifest.model.name, load, arrivals, timeout_s=600)
        loaded = server_run(name, half, responses, t0, arrivals, ref[n : 2 * n])
    finally:
        rc = server.stop()
    print(
        f"{name}: saturation {saturation.throughput_rps:.1f} rps; at {half:.1f} rps p50 "
        f"{loaded.latency_ms['p50']:.2f} ms, p99 {loaded.latency_ms['p99']:.1f} ms; exit status {rc}",
        file=sys.stderr,
        flush=True,
    )
    return {
        "system": name,
        "saturation_rps": saturation.throughput_rps,
        "saturation_errors": saturation.errors,
        "half_load_rps": half,
        "p50_ms": loaded.latency_ms["p50"],
        "p99_ms": loaded.latency_ms["p99"],
        "accuracy": loaded.accuracy,
        "early_share": loaded.early_share,
        "errors": loaded.errors,
        "exit_status": rc,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = read_manifest(args.engine_dir)
    data = load_inputs(args.data, manifest.model.inputs)
    total = next(iter(data.values())).shape[0]
    order = np.arange(2 * args.requests) % total
    inputs = {k: np.ascontiguousarray(v[order]) for k, v in data.items()}
    ref = reference_pred(manifest, inputs, args.threads)
    counts = [int(c) for c in args.replicas.split(",") if c.strip()]
    rows = [measure("single process", [], args, inputs, ref, None)]
    rate = rows[0]["half_load_rps"]
    for count in counts:
        rows.append(measure(f"{count} replica(s)", ["--replicas", str(count)], args, inputs, ref, rate))
    base = rows[0]
    print(
        f"CV model, {args.threads} ONNX Runtime thread(s) per engine, {args.requests} requests per measurement; "
        f"half load = {rate:.1f} rps (half the single-process server's saturation)\n"
    )
    print("| system | saturation rps | vs single | p50 ms at half load | vs single | p99 ms | accuracy | early exits |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        r["saturation_vs_single"] = r["saturation_rps"] / base["saturation_rps"]
        r["p50_vs_single"] = r["p50_ms"] / base["p50_ms"]
        cells = [
            f"{r['saturation_rps']:.1f}",
            f"{r['saturation_vs_single']:.2f}x",
            f"{r['p50_ms']:.2f}",
            f"{r['p50_vs_single']:.2f}x",
            f"{r['p99_ms']:.1f}",
            f"{100 * r['accuracy']:.2f}%",
            f"{100 * r['early_share']:.1f}%",
        ]
        print(f"| {r['system']} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"engine_dir": str(args.engine_dir), "threads": args.threads, "requests": args.requests, "rows": rows}
        args.out.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
