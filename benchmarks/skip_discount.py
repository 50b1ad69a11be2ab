"""Skip mode's winner's-curse discount, with and without the audited exits' weight.

    python benchmarks/skip_discount.py [--seeds 3] [--batches 4000] [--audit-rate 0.25]

Drives the real controller (``runtime/control/controller.py``) in skip mode on the synthetic stationary
stream of the controller tests (``tests/runtime/control/test_controller.py``: two ramps, batches of 8) at
the given audit rate, once as shipped and once with the discount's ``exit_weight`` ignored
(``search_constraint`` as it was before skip mode scaled it). Prints, per variant, the realised
disagreement of every served row after the first 1,000 batches, the share of 256-row windows over
the 1% constraint and the share of rows that exited early, averaged over the seeds, beside the
target disagreement (0.3 of the constraint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "runtime" / "control"))

from test_controller import Stream, make_manifest  # noqa: E402
from test_controller_skip import run_skip_batch  # noqa: E402

import apparate_trt.runtime.control.controller as controller_module  # noqa: E402
from apparate_trt.defaults import DEFAULT_TARGET_FRACTION  # noqa: E402
from apparate_trt.runtime.control.controller import Controller  # noqa: E402

CONSTRAINT = 0.01
WARMUP_BATCHES = 1000
WINDOW = 256


def serve(seed: int, batches: int, rate: float) -> tuple[float, float, float]:
    """(disagreement, share of windows over the constraint, early-exit share) of one stream."""
    stream, rng = Stream(seed=seed), np.random.default_rng(seed + 10)
    ctl = Controller(
        make_manifest([2, 5], budget=0.02),
        accuracy_constraint=CONSTRAINT,
        initial_thresholds="never",
        adjust_every_batches=10**6,
        exit_mode="skip",
        audit_rate=rate,
    )
    config = ctl.initial_config()
    correct, exits = [], []
    for b in range(batches):
        conf, agree = stream.sample(8)
        outcome, ok = run_skip_batch(config, conf, agree, ctl.audit_rate, rng)
        correct.append(ok)
        exits.append(outcome.exit_site)
        config = ctl.observe(outcome, t=float(b)) or config
    c = np.concatenate(correct)[WARMUP_BATCHES * 8 :]
    e = np.concatenate(exits)[WARMUP_BATCHES * 8 :]
    windows = c[: len(c) // WINDOW * WINDOW].reshape(-1, WINDOW).mean(axis=1)
    return float(1.0 - c.mean()), float(np.mean(windows < 1.0 - CONSTRAINT)), float(np.mean(e >= 0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="independent streams per variant (default 3)")
    p.add_argument("--batches", type=int, default=4000, help="batches of 8 per stream (default 4000)")
    p.add_argument("--audit-rate", type=float, default=0.25, help="skip mode's audit rate (default 0.25)")
    args = p.parse_args(argv)
    shipped = controller_module.search_constraint

    def unweighted(target: float, ramps: int, samples: float, exit_weight: float = 1.0) -> float:
        return shipped(target, ramps, samples)

    print(
        f"target disagreement {100 * DEFAULT_TARGET_FRACTION * CONSTRAINT:.2f}%; audit rate {args.audit_rate}; "
        f"{args.seeds} streams of {args.batches} batches"
    )
    print("| discount | disagreement | windows over 1% | early exits |\n|---|---|---|---|")
    for name, fn in (("scaled by the audited exits' weight (shipped)", shipped), ("unweighted (before)", unweighted)):
        controller_module.search_constraint = fn
        try:
            rows = np.mean([serve(seed, args.batches, args.audit_rate) for seed in range(args.seeds)], axis=0)
        finally:
            controller_module.search_constraint = shipped
        print(f"| {name} | {100 * rows[0]:.2f}% | {100 * rows[1]:.1f}% | {100 * rows[2]:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
