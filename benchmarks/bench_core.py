"""C core (apparate_trt._core) against the numpy reference (tests/core/policy_reference.py).

Cases, both implementations measured in the same run on the same inputs:
  (a) exit decisions for one batch of 8 inputs with 2 and 4 active ramps of 10 classes: per ramp,
      confidence and decision from the ramp's logits (``ramp_exits``, the executor's hot path),
      chained over the ramps with one ``done`` array; goal < 5 us per batch for the C path.
      Also the same decisions in one call per batch (``batch_exits``, all ramps' logits at hand).
  (b) one threshold search (``search_thresholds``) over a 512-sample window with 4 ramps;
      goal < 1 ms.
Times are medians over many repeats (each repeat times a loop of calls, to beat timer resolution),
in microseconds, with the best repeat beside them (the cost without interference from other
processes; on a shared machine the median can be several times higher). Prints a Markdown table;
``--out FILE`` also writes the numbers as JSON.

    python benchmarks/bench_core.py [--quick] [--out results/core.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from apparate_trt import _core as C

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "core"))
import policy_reference as R  # noqa: E402  (the numpy twin lives beside the core's tests)

BATCH = 8
CLASSES = 10
CONSTRAINT = 0.01


def time_us(fn, repeats: int, loops: int) -> tuple[float, float]:
    """(median, best) over `repeats` of the mean time of one call (us), each repeat timing `loops`
    calls. The best repeat shows the cost without interference from other processes."""
    fn()  # warm up
    times = []
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in range(loops):
                fn()
            times.append((time.perf_counter_ns() - t0) / loops / 1e3)
    finally:
        gc.enable()
    return statistics.median(times), min(times)


def measure(case: str, c_fn, numpy_fn, repeats: int, c_loops: int, numpy_loops: int, goal_us: float) -> dict:
    """One table row: both implementations timed back to back (us)."""
    c_med, c_best = time_us(c_fn, repeats, c_loops)
    n_med, n_best = time_us(numpy_fn, repeats, numpy_loops)
    return {
        "case": case,
        "c_us": c_med,
        "c_best_us": c_best,
        "numpy_us": n_med,
        "numpy_best_us": n_best,
        "speedup": n_med / c_med,
        "goal_us": goal_us,
        "meets_goal": c_med < goal_us,
    }


def decisions_case(impl, logits: list[np.ndarray], thresholds: list[float]):
    """One batch: every active ramp's confidence and exit decision, in execution order."""
    ramp_exits = impl.ramp_exits

    def run():
        done = np.zeros(BATCH, np.uint8)
        for lg, thr in zip(logits, thresholds):
            ramp_exits(lg, thr, done)
        return done

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, ~seconds)")
    ap.add_argument("--out", metavar="FILE", help="also write the results as JSON to FILE")
    args = ap.parse_args(argv)
    rep_fast, rep_slow = (30, 7) if args.quick else (300, 31)

    rng = np.random.default_rng(0)
    rows = []
    for r in (2, 4):
        logits = [(rng.normal(size=(BATCH, CLASSES)) * (2 + 2 * i)).astype(np.float32) for i in range(r)]
        thresholds = [0.1] * r
        # both implementations decide the same exits
        np.testing.assert_array_equal(decisions_case(C, logits, thresholds)(), decisions_case(R, logits, thresholds)())
        rows.append(
            measure(
                f"exit decisions, batch {BATCH}, {r} ramps: {r} x ramp_exits",
                decisions_case(C, logits, thresholds),
                decisions_case(R, logits, thresholds),
                rep_fast,
                200,
                20,
                goal_us=5.0,
            )
        )
        stacked = np.stack(logits)
        thr = np.array(thresholds)
        np.testing.assert_array_equal(C.batch_exits(stacked, thr)[2], R.batch_exits(stacked, thr)[2])
        rows.append(
            measure(
                f"exit decisions, batch {BATCH}, {r} ramps: 1 x batch_exits",
                lambda: C.batch_exits(stacked, thr),
                lambda: R.batch_exits(stacked, thr),
                rep_fast,
                200,
                20,
                goal_us=5.0,
            )
        )

    conf, agree, saved = R.synthetic_window(rng, 4, 512)
    c_res, r_res = (
        C.search_thresholds(conf, agree, saved, CONSTRAINT),
        R.search_thresholds(conf, agree, saved, CONSTRAINT),
    )
    np.testing.assert_array_equal(c_res[0], r_res[0])  # same thresholds from both
    rows.append(
        measure(
            "threshold search, 512 samples x 4 ramps",
            lambda: C.search_thresholds(conf, agree, saved, CONSTRAINT),
            lambda: R.search_thresholds(conf, agree, saved, CONSTRAINT),
            rep_slow,
            5,
            1,
            goal_us=1000.0,
        )
    )

    print("| case | C core (us), median (best) | numpy reference (us), median (best) | speed-up | goal (C median) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        verdict = "met" if row["meets_goal"] else "MISSED"
        print(
            f"| {row['case']} | {row['c_us']:.2f} ({row['c_best_us']:.2f}) | {row['numpy_us']:.1f} "
            f"({row['numpy_best_us']:.1f}) | {row['speedup']:.0f}x | < {row['goal_us']:g} us: {verdict} |"
        )
    print(
        f"\nsearch result: thresholds {np.round(c_res[0], 4).tolist()}, accuracy {c_res[1]:.4f}, "
        f"saved {c_res[2]:.3f} ms/sample (constraint {CONSTRAINT})"
    )

    if args.out:
        result = {
            "benchmark": "bench_core",
            "quick": args.quick,
            "machine": {
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
            "units": "microseconds, median over repeats",
            "cases": rows,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
