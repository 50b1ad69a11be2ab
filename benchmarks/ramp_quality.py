"""How good each ramp of an engine directory is where it matters: its confident share.

    python benchmarks/ramp_quality.py --engine-dir out/bench/cv --data data/cv/eval.npz \
        [--samples 4000] [--errors 0.003,0.01] [--out benchmarks/results/ramp_quality.json]

Runs the model (its finest segment chain) and every site's ramp once over the first
``--samples`` inputs of ``--data`` (the served stream, which the ramps never trained on), with
``policies.stream_ramps``, the oracle's offline pass. Prints per site: agreement with the model's
argmax, and for each disagreement level in ``--errors`` the largest share of inputs that an
oracle-placed threshold could release at that site while the wrongly released inputs stay within
that share of all inputs (as the accuracy constraint counts them). It bounds what the controller
can release at one ramp for a given target (it aims at 0.3% disagreement for a 1% constraint), so
it is the number to raise when early exits are too few. Maxprob confidence, as the controller uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apparate_trt.data import load_inputs, num_samples, take
from apparate_trt.engine_dir import read_manifest
from apparate_trt.errors import ApparateError
from apparate_trt.eval.policies import stream_ramps
from apparate_trt.ramps.quality import releasable_share


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--engine-dir", type=Path, required=True, help="engine directory (apparate-compile --out)")
    p.add_argument("--data", type=Path, required=True, help="npz of model inputs the ramps did not train on")
    p.add_argument("--samples", type=int, default=4000, help="inputs to use (the first ones)")
    p.add_argument("--errors", default="0.003,0.01", help="comma-separated disagreement levels (fractions)")
    p.add_argument("--batch", type=int, default=64, help="batch size of the model pass")
    p.add_argument("--out", type=Path, help="write the table as JSON here")
    args = p.parse_args(argv)
    try:
        levels = [float(e) for e in args.errors.split(",") if e.strip()]
    except ValueError:
        p.error(f"--errors must be comma-separated fractions such as 0.003,0.01; got {args.errors!r}")
    if not levels or not all(0.0 <= e <= 1.0 for e in levels):
        p.error(f"--errors must hold fractions in [0, 1]; got {args.errors!r}")
    try:
        return report(args, levels)
    except ApparateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def report(args: argparse.Namespace, levels: list[float]) -> int:
    """Measure and print (and with ``--out`` write) the table."""
    manifest = read_manifest(args.engine_dir)
    inputs = load_inputs(args.data, manifest.model.inputs)
    inputs = take(inputs, slice(0, min(args.samples, num_samples(inputs))))
    n = num_samples(inputs)
    outputs = stream_ramps(manifest, inputs, batch_size=args.batch)
    rows = []
    for entry in manifest.ramps:
        agree = (outputs.ramp_pred[entry.site] == outputs.final_pred).astype(np.uint8)
        conf = outputs.confidence[entry.site]
        rows.append(
            {
                "site": entry.site,
                "kind": entry.kind,
                "agreement": float(agree.mean()),
                "confident_share": {f"{e:g}": releasable_share(conf, agree, e) for e in levels},
            }
        )
    header = " | ".join(f"releasable, <= {100 * e:g}% wrong" for e in levels)
    print(f"{manifest.model.name}: {n} inputs of {args.data}")
    print(f"| site | ramp kind | agreement | {header} |")
    print("|---:|---|---:|" + "---:|" * len(levels))
    for r in rows:
        shares = " | ".join(f"{100 * v:.1f}%" for v in r["confident_share"].values())
        print(f"| {r['site']} | {r['kind']} | {r['agreement']:.3f} | {shares} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"engine_dir": str(args.engine_dir), "data": str(args.data), "samples": n, "rows": rows}, indent=1
            )
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
