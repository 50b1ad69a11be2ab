"""Where a segmented chain loses time against the unsplit model: measured, per batch size.

    python benchmarks/diagnose_chain.py --engine-dir out/bench/cv --data data/cv/eval.npz \
        [--sites 6] [--rounds 200] [--out benchmarks/results/chain_overhead.json]

Times one batch (ms, median over ``--rounds`` interleaved rounds, same inputs) through:
``unsplit`` (model.onnx), ``split@SITES`` (the chain split at ``--sites``, default the engine's
initial active sites, no ramps), ``split@SITES+ramps`` (the same with their ramps run, as Apparate
does with thresholds that never exit), ``finest`` (split at every site, no ramps: the oracle's path)
and ``finest+ramps`` (every ramp: the static and patience baselines' path). It also prints what an
exit at each of ``--sites`` saves per the profile, so the chain's cost can be set against it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from apparate_trt.backends import open_runner
from apparate_trt.data import load_inputs, take
from apparate_trt.engine_dir import Manifest, read_manifest
from apparate_trt.graph.split import split_model

Path_ = Callable[[dict[str, np.ndarray]], None]


def chain(manifest: Manifest, sites: Sequence[int], ramps: bool, threads: int | None) -> Path_:
    """A callable running one batch through the model split at ``sites`` (with their ramps)."""
    import onnx

    if list(sites) == [s.id for s in manifest.sites]:
        stages = [
            (open_runner(manifest.path(s.file), threads=threads), list(s.outputs), s.ends_at_site)
            for s in manifest.segments
        ]
    else:
        model = onnx.load(str(manifest.path(manifest.model.file)))
        stages = [
            (open_runner(s.model, threads=threads), list(s.outputs), s.ends_at_site)
            for s in split_model(model, manifest.sites, list(sites))
        ]
    ramp_runners = {
        r.site: (open_runner(manifest.path(r.file), threads=1), r.output)
        for r in manifest.ramps
        if ramps and r.site in sites
    }

    def run(inputs: dict[str, np.ndarray]) -> None:
        env = dict(inputs)
        for runner, outputs, site in stages:
            env.update(runner.run(env, outputs))
            if site in ramp_runners:
                runner_r, out = ramp_runners[site]
                runner_r.run(env, [out])

    return run


def unsplit(manifest: Manifest, threads: int | None) -> Path_:
    """A callable running one batch through model.onnx."""
    runner = open_runner(manifest.path(manifest.model.file), threads=threads)
    return lambda inputs: runner.run(inputs, [manifest.model.output]) and None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", type=Path, default=Path("out/bench/cv"))
    p.add_argument("--data", type=Path, default=Path("data/cv/eval.npz"))
    p.add_argument("--sites", default=None, help="comma-separated sites (default: the engine's initial active sites)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    m = read_manifest(args.engine_dir)
    sites = [int(s) for s in args.sites.split(",")] if args.sites else list(m.initial_config.active_sites)
    every = [s.id for s in m.sites]
    paths = {
        "unsplit": unsplit(m, args.threads),
        f"split@{sites}": chain(m, sites, False, args.threads),
        f"split@{sites}+ramps": chain(m, sites, True, args.threads),
        "finest": chain(m, every, False, args.threads),
        "finest+ramps": chain(m, every, True, args.threads),
    }
    data = load_inputs(args.data, m.model.inputs)
    result: dict[str, dict[str, float]] = {}
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        batch = take(data, slice(0, b))
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(5):
            for fn in paths.values():
                fn(batch)
        for _ in range(args.rounds):
            for name, fn in paths.items():
                t0 = time.perf_counter()
                fn(batch)
                times[name].append((time.perf_counter() - t0) * 1000.0)
        result[str(b)] = {k: float(np.median(v)) for k, v in times.items()}
        base = result[str(b)]["unsplit"]
        print(f"batch {b}: " + ", ".join(f"{k} {v:.3f} ms ({v / base - 1:+.1%})" for k, v in result[str(b)].items()))
        print(
            f"  profile: an exit at sites {sites} saves {[round(float(x), 3) for x in m.site_saved_ms(b)[sites]]} "
            f"ms at batch {b}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "engine_dir": str(args.engine_dir),
                    "sites": sites,
                    "median_ms": result,
                    "saved_ms_per_exit": {str(b): [float(x) for x in m.site_saved_ms(int(b))[sites]] for b in result},
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
