"""Saturation throughput of every system, with bursts interleaved across systems.

    python benchmarks/saturation.py [--models cv,nlp] [--systems ...] [--rounds 9] [--burst 400] \
        [--out benchmarks/results/saturation.json]

A finer check of ``run_workloads.py``'s throughput column on a shared machine: all systems are
loaded at once (engines from ``--engines``, as the benchmark compiled them), then ``--rounds``
rounds each run one burst of ``--burst`` back-to-back requests per system (order rotated per
round), so a change in the machine's load hits every system alike. Reports the median completion
rate (rps) per system and its ratio to vanilla's: the median over rounds of the ratio to
vanilla's burst in the same round. ``--systems`` may also name ``apparate-no-fallback`` (apparate
without its overload fallback) and ``apparate-skip-fallback`` (skip mode with it). Apparate's
controller is warmed by one replay of the first 1000 stream samples at half of vanilla's burst rate
first, so its ramps and thresholds are those it serves with.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import (  # noqa: E402
    ABLATIONS,
    APPARATE_SYSTEMS,
    SYSTEMS,
    StreamTagger,
    SystemFactory,
    burst_throughput,
    ensure_engine,
    interleaved_bursts,
    load_stream,
    paired_ratio,
    warm_up,
)

from apparate_trt.data import load_inputs, take  # noqa: E402
from apparate_trt.eval import policies  # noqa: E402
from apparate_trt.eval.replay import replay  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cv,nlp", help="comma-separated: cv, nlp (default both)")
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated systems (vanilla is always run; also {', '.join(ABLATIONS)})",
    )
    p.add_argument("--data", type=Path, default=Path("data"), help="data root with cv/ and nlp/")
    p.add_argument(
        "--engines", type=Path, default=Path("out/bench"), help="engine directory cache (as run_workloads.py)"
    )
    p.add_argument("--rounds", type=int, default=9, help="rounds of one burst per system")
    p.add_argument("--burst", type=int, default=400, help="requests per burst")
    p.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads per session (default: all cores)"
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    systems = ["vanilla"] + [s for s in args.systems.split(",") if s and s != "vanilla"]
    unknown = [s for s in systems if s not in SYSTEMS + ABLATIONS]
    if unknown or args.rounds < 1 or args.burst < 8:
        p.error(f"unknown system(s) {unknown}" if unknown else "--rounds must be >= 1 and --burst >= 8")
    results = {}
    for model in args.models.split(","):
        data_dir = args.data / model
        if not (data_dir / "eval.npz").is_file():
            print(f"[{model}] skipped: no {data_dir / 'eval.npz'}")
            continue
        manifest = ensure_engine(data_dir, args.engines / model, args.threads, print)
        factory = SystemFactory(args.engines / model, manifest, args.threads)
        inputs = load_stream(data_dir / "eval.npz", manifest, max(args.burst, 1000))
        factory.oracle = policies.stream_oracle(manifest, inputs, threads=args.threads)
        warm = take(load_inputs(data_dir / "bootstrap.npz", manifest.model.inputs), slice(0, 24))
        engines = {s: factory.load(s) for s in systems}
        try:
            for engine in engines.values():
                warm_up(engine, warm)
            rate = 0.5 * burst_throughput(engines["vanilla"], inputs, args.burst)
            for s in systems:
                if s in APPARATE_SYSTEMS:
                    replay(
                        StreamTagger(engines[s]),
                        inputs,
                        np.arange(len(next(iter(inputs.values())))) / rate,
                        progress=False,
                    )
            rates = interleaved_bursts(engines, systems, inputs, args.burst, args.rounds)
        finally:
            for engine in engines.values():
                engine.close()
        results[model] = {
            s: {"throughput_rps": float(np.median(v)), "vs_vanilla": paired_ratio(v, rates["vanilla"]), "bursts_rps": v}
            for s, v in rates.items()
        }
        print(
            f"[{model}] "
            + "  ".join(
                f"{s} {r['throughput_rps']:.0f} rps ({r['vs_vanilla']:.2f}x)" for s, r in results[model].items()
            )
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rounds": args.rounds, "burst": args.burst, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
