"""Issue 4's benchmark: Apparate against vanilla, static early exits, patience and the oracle.

    python benchmarks/run_workloads.py                      # full run -> benchmarks/results/
    python benchmarks/run_workloads.py --quick --out DIR    # a few hundred requests, into DIR

For every workload (``benchmarks/workloads.py``): compile (or reuse) the engine directory from the
model's bootstrap data under ``--engines`` (default ``out/bench``); measure vanilla's capacity
(median of bursts of back-to-back full batches) and set the arrival rate from it; run the oracle's
offline pass over the stream; then serve the same stream with the same arrivals through every
system, ``--repeats`` times (default: the workload's own, ``Workload.repeats``), the order of the
systems rotated each repeat so that machine drift favours none; within a repeat the systems are
interleaved chunk by chunk (``--chunk`` requests: every system serves chunk 1, then every system
serves chunk 2, ...; engines keep their state), so the machine's load changes hit all systems alike.
Reported numbers are medians over the repeats. Each system's saturation throughput is the median of
five bursts of back-to-back full batches after its replay (rounds over every system, the order
rotated per round); its ratio to vanilla's is the median of the per-round ratios.

Writes into the output directory: ``summary.json``, ``summary.md`` (tables, goals, machine,
command), ``latency_cdf_<workload>.png``, ``drift_timeline.png`` and ``apparate_timeline_<workload>
.png``, and ``runs/<workload>.json`` (every run's report; apparate's controller events and
threshold history; vanilla's and the adaptive systems' per-request arrivals and
latencies). The full run also rewrites the results block of ``benchmarks/README.md``.
Prints progress lines and, at the end, which goals are met.

Latencies in ms, rates in requests per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import (  # noqa: E402
    ABLATIONS,
    BURST_ROUNDS,
    CAPACITY_PROBE,
    CONSTRAINT,
    MAX_BATCH,
    MAX_DELAY_MS,
    SYSTEMS,
    WINDOW,
    WORKLOADS,
    RunRecord,
    SystemFactory,
    Workload,
    burst_size,
    burst_throughput,
    drift_phases,
    ensure_engine,
    load_stream,
    make_arrivals,
    paired_ratio,
    serve_interleaved,
    warm_up,
    windows_after_changes,
)

from apparate_trt.data import load_inputs, take  # noqa: E402
from apparate_trt.errors import ApparateError  # noqa: E402
from apparate_trt.eval import policies  # noqa: E402
from apparate_trt.eval.report import write_report  # noqa: E402

RESULTS = HERE / "results"
README = HERE / "README.md"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
GOALS = {
    "cv_p50_cut": 0.50,
    "nlp_p50_cut": 0.20,
    "accuracy": 0.99,
    "windows_ok": 0.95,
    "throughput": 0.97,
    "oracle_share": 0.80,
}
SKIP_GOALS = {"cv-fixed": 0.50, "cv-poisson": 0.50, "nlp-poisson": 0.80, "drift": 0.70}
"""Issue 13: skip mode's median as a multiple of vanilla's, per workload."""
SKIP_THROUGHPUT = {"cv": 1.25, "nlp": 1.10}
"""Issue 13: skip mode's saturation throughput as a multiple of vanilla's (same-round bursts), per model."""


def log(line: str) -> None:
    """A progress line on stdout (flushed)."""
    print(line, flush=True)


# ------------------------------------------------------------------------------ arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="a few hundred requests per workload and system, one repeat (needs --out)"
    )
    p.add_argument(
        "--out", type=Path, help="output directory (default benchmarks/results; --quick must name another one)"
    )
    p.add_argument(
        "--data", type=Path, default=Path("data"), help="data root with cv/ and nlp/ (scripts/build_real_models.py)"
    )
    p.add_argument(
        "--engines",
        type=Path,
        default=Path("out/bench"),
        help="engine directory cache (compiled when missing or stale)",
    )
    p.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS), help="comma-separated workloads to run")
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated systems (vanilla is always run); also {', '.join(ABLATIONS)}: apparate in exit mode "
        f"auto, apparate without its overload fallback, apparate-skip with it",
    )
    p.add_argument("--requests", type=int, help="requests per run (default: the whole stream; --quick: 300)")
    p.add_argument(
        "--repeats",
        type=int,
        help="repeats of every system (default: each workload's own, 2, and 1 for drift; --quick: 1)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads per session (default: all cores)"
    )
    p.add_argument(
        "--burst",
        type=int,
        help="requests per saturation burst (default: about 1.75 s at vanilla's capacity, "
        "800 on the CV model and 180 on the NLP one; --quick: 200)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    p.add_argument(
        "--max-stream-s",
        type=float,
        default=None,
        help="serve at most this many seconds of each stream's arrivals (bounds the full run on a slow model; 0: "
        "no bound; "
        "default: each workload's own, 30 s, and the whole drift stream so that every phase is seen)",
    )
    p.add_argument(
        "--max-delay-ms",
        type=float,
        default=MAX_DELAY_MS,
        help=f"the dynamic batcher's max queueing delay (ms), the same for every system (default {MAX_DELAY_MS:g}, "
        f"the API's default; "
        "0: a batch leaves as soon as the worker is free, as Triton's default)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        help="requests per interleaving chunk: systems alternate chunk by chunk (default 1000; --quick: 100)",
    )
    args = p.parse_args(argv)
    if not args.max_delay_ms >= 0:
        p.error(f"--max-delay-ms must be >= 0, got {args.max_delay_ms}")
    if args.out is None:
        if args.quick:
            p.error("--quick writes only to a directory you give: add --out DIR (never over benchmarks/results)")
        args.out = RESULTS
    if args.quick and args.out.resolve() == RESULTS.resolve():
        p.error("--quick must not write over benchmarks/results; pass another --out DIR")
    args.requests = args.requests or (300 if args.quick else None)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    args.repeats = args.repeats or (1 if args.quick else None)  # None: each workload's own
    if args.max_stream_s is not None and args.max_stream_s < 0:
        p.error(f"--max-stream-s must be >= 0 (0: no bound), got {args.max_stream_s}")
    args.chunk = args.chunk or (100 if args.quick else 1000)
    args.burst = args.burst if args.burst is not None else (200 if args.quick else None)
    args.workloads = [w for w in WORKLOADS if w.name in args.workloads.split(",")]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS + ABLATIONS]
    if unknown:
        p.error(f"unknown system(s) {unknown}; use {', '.join(SYSTEMS + ABLATIONS)}")
    args.systems = ["vanilla"] + [s for s in systems if s != "vanilla"]
    return args


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "load_avg_start": os.getloadavg(),
    }


# ------------------------------------------------------------------------------ one workload
def run_workload(
    w: Workload, args: argparse.Namespace, factories: dict[str, SystemFactory], capacity: dict[str, float]
) -> dict[str, Any]:
    """Serve ``w`` through every system ``args.repeats`` times (None: the workload's own); return its raw results."""
    repeats = args.repeats or w.repeats
    max_stream_s = w.max_stream_s if args.max_stream_s is None else args.max_stream_s
    data_dir = args.data / w.model
    factory = factories[w.model]
    inputs = load_stream(w.stream_path(args.data), factory.manifest, args.requests)
    n = int(next(iter(inputs.values())).shape[0])
    warm = take(load_inputs(data_dir / "bootstrap.npz", factory.manifest.model.inputs), slice(0, 3 * MAX_BATCH))
    if w.model not in capacity:
        capacity[w.model] = measure_capacity(factory, inputs, warm, args.burst)
    burst = args.burst if args.burst is not None else burst_size(capacity[w.model])  # 0: no bursts
    rate = w.rate_fraction * capacity[w.model]
    arrivals = make_arrivals(w.arrivals, rate, n, args.seed)
    if max_stream_s and arrivals[-1] > max_stream_s:  # bound the run time: the stream's first max_stream_s seconds
        n = int(np.searchsorted(arrivals, max_stream_s, side="right"))
        arrivals, inputs = arrivals[:n], take(inputs, slice(0, n))
    log(
        f"[{w.name}] {n} requests, {w.arrivals} arrivals at {rate:.0f} rps ({w.rate_fraction:.0%} of vanilla's "
        f"{capacity[w.model]:.0f} rps), "
        f"stream duration {arrivals[-1]:.1f} s; saturation bursts of {burst} requests"
    )
    t0 = time.perf_counter()
    factory.oracle = policies.stream_oracle(factory.manifest, inputs, threads=args.threads)
    log(
        f"[{w.name}] oracle offline pass: {time.perf_counter() - t0:.1f} s; oracle exits before the end for "
        f"{np.mean(factory.oracle.site >= 0):.1%} of requests"
    )
    runs: list[RunRecord] = []
    for repeat in range(repeats):
        log(
            f"[{w.name}] repeat {repeat + 1}/{repeats}: {len(args.systems)} systems interleaved in chunks of "
            f"{args.chunk} requests"
        )
        records = serve_interleaved(factory, args.systems, inputs, arrivals, warm, burst, repeat, args.chunk, log)
        runs += records
        for record in records:
            lat = record.report["latency_ms"]
            log(
                f"[{w.name} {repeat + 1}/{repeats}] {record.system:<16} p50 {lat['p50']:7.2f} ms  p99 "
                f"{lat['p99']:7.2f} ms  "
                f"accuracy {record.report['accuracy']['overall']:.4f}  early exits "
                f"{1 - record.report['exit_share'].get('final', 1.0):.1%}  "
                f"saturation {record.throughput_rps:6.0f} rps"
            )
    phases = drift_phases(data_dir / "drift_meta.json", n) if w.stream == "drift.npz" else []
    return {
        "workload": w,
        "n": n,
        "repeats": repeats,
        "rate": rate,
        "capacity": capacity[w.model],
        "burst": burst,
        "runs": runs,
        "phases": phases,
        "configs": {s: factory.describe(s) for s in args.systems if s != "oracle"},
        "oracle_exit_share": float(np.mean(factory.oracle.site >= 0)),
    }


def measure_capacity(
    factory: SystemFactory, inputs: dict[str, np.ndarray], warm: dict[str, np.ndarray], burst: int | None
) -> float:
    """Vanilla's capacity (rps): the median of three bursts of back-to-back full batches of
    ``burst`` requests (None: sized by :func:`burst_size` from a first probe burst)."""
    engine = factory.load("vanilla")
    try:
        warm_up(engine, warm)
        if burst is None:
            burst = burst_size(burst_throughput(engine, inputs, CAPACITY_PROBE))
        rates = [burst_throughput(engine, inputs, max(burst, 4 * MAX_BATCH)) for _ in range(3)]
    finally:
        engine.close()
    log(f"  vanilla capacity: {np.median(rates):.0f} rps (bursts: {', '.join(f'{r:.0f}' for r in rates)})")
    return float(np.median(rates))


# ------------------------------------------------------------------------------ summary
def _median(values: Sequence[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(finite)) if finite else None


PER_REQUEST_SYSTEMS = ("vanilla", "apparate", "apparate-skip", "apparate-auto")
"""Systems whose first repeat's per-request latencies go into runs/<workload>.json (for tails)."""


def per_request(record: RunRecord) -> dict[str, Any]:
    """``{"requests": {"arrival_s": [...], "latency_ms": [...]}}`` of the completed requests, in
    arrival order (seconds since the stream's start, ms rounded to 0.01) for the first repeat of
    :data:`PER_REQUEST_SYSTEMS`; empty for other runs. A tail can then be traced to its time."""
    if record.system not in PER_REQUEST_SYSTEMS or record.repeat != 0:
        return {}
    return {
        "requests": {
            "arrival_s": [round(float(t), 4) for t in record.arrivals_s],
            "latency_ms": [round(float(v), 2) for v in record.latency_ms],
        }
    }


def summarize_system(runs: list[RunRecord], phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of one system's runs."""
    reports = [r.report for r in runs]
    lat = {k: _median([rep["latency_ms"][k] for rep in reports]) for k in ("p50", "p95", "p99")}
    out: dict[str, Any] = {
        "latency_ms": lat,
        "throughput_rps": _median([r.throughput_rps for r in runs]),
        "burst_rps": [rate for r in sorted(runs, key=lambda r: r.repeat) for rate in r.burst_rps],
        "served_rps": _median([rep["throughput_rps"] for rep in reports]),
        "accuracy": {
            "overall": _median([rep["accuracy"]["overall"] for rep in reports]),
            "worst_window": _median([rep["accuracy"]["worst_window"] for rep in reports]),
            "windows_violating": _median([rep["windows_violating"] for rep in reports]),
            "window_size": WINDOW,
        },
        "exit_share": _median_shares([rep["exit_share"] for rep in reports]),
        "repeats": len(runs),
        "failed": int(sum(rep["failed"] for rep in reports)),
        "unsplit_batch_share": _median([_unsplit_share(rep) for rep in reports]),
        "rows": {
            k: _median([float(rep.get("rows", {}).get(k, 0.0)) / max(1, rep["requests"]) for rep in reports])
            for k in ("released", "audited", "skipped")
        },
        "compute_saved_ms_per_request": _median(
            [float(rep.get("rows", {}).get("compute_saved_ms", 0.0)) / max(1, rep["requests"]) for rep in reports]
        ),
    }
    if phases:
        kept = []
        per_phase: dict[str, list[float]] = {p["name"]: [] for p in phases}
        for rep in reports:
            windows = np.asarray(rep["accuracy"]["windows"])
            keep = windows_after_changes(windows.size, phases)
            kept.append(float(np.mean(windows[keep] < 1 - CONSTRAINT - 1e-12)) if keep.any() else 0.0)
            for p in phases:
                sel = windows[p["start"] // WINDOW : max(p["start"] // WINDOW + 1, p["end"] // WINDOW)]
                per_phase[p["name"]].append(float(sel.min()) if sel.size else float("nan"))
        out["accuracy"]["windows_violating_after_changes"] = _median(kept)
        out["accuracy"]["worst_window_per_phase"] = {k: _median(v) for k, v in per_phase.items()}
    return out


def _unsplit_share(report: dict[str, Any]) -> float | None:
    """Share of the stream's batches the overload fallback ran unsplit (None: no batch counted)."""
    batches = report.get("batches") or {}
    return batches["unsplit"] / batches["run"] if batches.get("run") else None


def _median_shares(shares: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in shares for k in s}, key=lambda k: (k == "final", int(k) if k != "final" else 0))
    return {k: float(np.median([s.get(k, 0.0) for s in shares])) for k in keys}


def add_ratios(systems: dict[str, dict[str, Any]]) -> None:
    """Each system's latency percentiles and throughput as a ratio to vanilla's (throughput: the
    median of the ratios of bursts in the same round, None without bursts)."""
    base = systems["vanilla"]
    for entry in systems.values():
        entry["latency_vs_vanilla"] = {
            k: (entry["latency_ms"][k] / base["latency_ms"][k])
            if base["latency_ms"][k] and entry["latency_ms"][k]
            else None
            for k in ("p50", "p95", "p99")
        }
        entry["throughput_vs_vanilla"] = paired_ratio(
            entry["burst_rps"], base["burst_rps"]
        )  # median of same-round ratios


def evaluate_goals(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of issue 4, per workload where it applies: met or not, with the numbers."""
    goals: list[dict[str, Any]] = []

    def add(name: str, workload: str, met: bool | None, detail: str) -> None:
        goals.append({"goal": name, "workload": workload, "met": met, "detail": detail})

    for wname, systems in summary.items():
        if "apparate" not in systems:
            continue
        app, van = systems["apparate"], systems["vanilla"]
        ratio = app["latency_vs_vanilla"]["p50"]
        cut = None if ratio is None else 1 - ratio
        if wname.startswith("cv"):
            add(
                "CV median >= 50% below vanilla",
                wname,
                cut is not None and cut >= GOALS["cv_p50_cut"],
                f"{_pct(cut)} below",
            )
        if wname.startswith("nlp"):
            add(
                "NLP median >= 20% below vanilla",
                wname,
                cut is not None and cut >= GOALS["nlp_p50_cut"],
                f"{_pct(cut)} below",
            )
        acc = app["accuracy"]
        ok_windows = None if acc["windows_violating"] is None else 1 - acc["windows_violating"]
        add(
            "accuracy >= 99% overall",
            wname,
            acc["overall"] is not None and acc["overall"] >= GOALS["accuracy"],
            f"{_pct(acc['overall'], 2)}",
        )
        add(
            ">= 95% of windows within 1%",
            wname,
            ok_windows is not None and ok_windows >= GOALS["windows_ok"],
            f"{_pct(ok_windows)} of windows",
        )
        tv = app["throughput_vs_vanilla"]
        add(
            "throughput >= 97% of vanilla",
            wname,
            tv is not None and tv >= GOALS["throughput"],
            f"{_pct(tv)} of vanilla",
        )
        if "oracle" in systems:
            o = systems["oracle"]["latency_ms"]["p50"]
            v, a = van["latency_ms"]["p50"], app["latency_ms"]["p50"]
            share = (v - a) / (v - o) if o is not None and v - o > 0 else None
            add(
                ">= 80% of the oracle's median saving",
                wname,
                share is not None and share >= GOALS["oracle_share"],
                f"{_pct(share)} (vanilla {v:.2f}, apparate {a:.2f}, oracle {o:.2f} ms)",
            )
        if wname == "drift":
            after = acc.get("windows_violating_after_changes")
            held = after is not None and after <= 1 - GOALS["windows_ok"]
            add(
                "drift: apparate within 1% after the window that sees each change",
                wname,
                held,
                f"{_pct(after)} of windows violating after changes",
            )
            broken = []
            for s in ("static-shared", "static-per-ramp", "patience"):
                if s not in systems:
                    continue
                e = systems[s]
                viol = e["accuracy"]["windows_violating_after_changes"] or 0.0
                slower = (e["latency_ms"]["p50"] or 0) > (a or 0)
                broken.append(f"{s}: {_pct(viol)} windows violating, p50 {e['latency_ms']['p50']:.2f} ms")
                if not (viol > 1 - GOALS["windows_ok"] or slower):
                    held = False
            add("drift: static baselines break 1% or lose savings", wname, held and bool(broken), "; ".join(broken))
    goals += evaluate_skip_goals(summary)
    return goals


def evaluate_skip_goals(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's goals for skip mode (``apparate-skip``), per workload where it ran."""
    goals: list[dict[str, Any]] = []
    for wname, systems in summary.items():
        if "apparate-skip" not in systems:
            continue
        skip, van = systems["apparate-skip"], systems["vanilla"]
        ratio = skip["latency_vs_vanilla"]["p50"]
        limit = SKIP_GOALS.get(wname)
        if limit is not None:
            goals.append(
                {
                    "goal": f"skip: median <= {limit:.2f}x vanilla's",
                    "workload": wname,
                    "met": ratio is not None and ratio <= limit,
                    "detail": _x(ratio),
                }
            )
        acc = skip["accuracy"]
        ok_windows = None if acc["windows_violating"] is None else 1 - acc["windows_violating"]
        goals.append(
            {
                "goal": "skip: accuracy >= 99% overall",
                "workload": wname,
                "met": acc["overall"] is not None and acc["overall"] >= GOALS["accuracy"],
                "detail": _pct(acc["overall"], 2),
            }
        )
        goals.append(
            {
                "goal": "skip: >= 95% of windows within 1%",
                "workload": wname,
                "met": ok_windows is not None and ok_windows >= GOALS["windows_ok"],
                "detail": f"{_pct(ok_windows)} of windows",
            }
        )
        tv = skip["throughput_vs_vanilla"]
        model = "nlp" if wname.startswith("nlp") else "cv"
        if wname != "drift":
            goals.append(
                {
                    "goal": f"skip: saturation throughput >= {SKIP_THROUGHPUT[model]:.2f}x vanilla's",
                    "workload": wname,
                    "met": tv is not None and tv >= SKIP_THROUGHPUT[model],
                    "detail": _x(tv),
                }
            )
        if wname == "cv-fixed" and "oracle-skip" in systems:
            o = systems["oracle-skip"]["latency_ms"]["p50"]
            v, a = van["latency_ms"]["p50"], skip["latency_ms"]["p50"]
            share = (v - a) / (v - o) if o is not None and v - o > 0 else None
            goals.append(
                {
                    "goal": ">= 80% of the skip oracle's median saving",
                    "workload": wname,
                    "met": share is not None and share >= GOALS["oracle_share"],
                    "detail": f"{_pct(share)} (vanilla {v:.2f}, apparate-skip {a:.2f}, oracle-skip {o:.2f} ms)",
                }
            )
    return goals


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(summary: dict[str, Any], meta: dict[str, Any], goals: list[dict[str, Any]]) -> str:
    """summary.md: one table per workload, the goals, the machine and the command."""
    lines = [
        "# Benchmark: Apparate against vanilla, static early exits, patience and the oracle",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['platform']}, "
        f"ONNX Runtime {meta['machine']['onnxruntime']} (CPU), ORT threads per session: "
        f"{meta['threads'] or 'all cores'}  ",
        f"Load average (1/5/15 min) at start {', '.join(f'{x:.1f}' for x in meta['machine']['load_avg_start'])}, "
        f"at end {', '.join(f'{x:.1f}' for x in meta['load_avg_end'])} (the machine is shared with other work)  ",
        f"Batching for every system: max batch {MAX_BATCH}, max queueing delay "
        f"{meta.get('max_delay_ms', MAX_DELAY_MS):g} ms. Accuracy constraint {CONSTRAINT:.0%}, "
        f"windows of {WINDOW} requests. Medians over each workload's repeats (below); within a repeat the systems "
        f"are interleaved in chunks of {meta['chunk']} requests (order rotated per chunk). Run took "
        f"{meta['wall_s'] / 60:.1f} min.",
        "",
        "Latency: first released result minus scheduled arrival. "
        f"Throughput: saturation, the median of {BURST_ROUNDS} bursts of back-to-back full batches per repeat, in "
        f"rounds over every system; "
        "rps / van is the median of each round's ratio to vanilla's burst in that round. "
        "Accuracy: agreement with the original model.",
        "",
        "Apparate runs with its overload fallback (a batch dispatched while a full batch more waits runs unsplit, "
        "without ramps); "
        "apparate-no-fallback, where run, is the same without it; the baselines never have it, nor does "
        "apparate-skip (the API's default "
        "in skip mode; apparate-skip-fallback, where run, has it). "
        "apparate-skip and oracle-skip run in exit mode skip: a released row leaves the batch (apparate-skip: but "
        "for an audit sample); "
        "their accuracy judges every request, skipped ones included, against the original model's output from the "
        "offline pass "
        "over the stream. 'left the batch': share of requests released early that did not run to the end.",
        "",
    ]
    for wname, systems in summary.items():
        info = meta["workloads"][wname]
        lines += [
            f"## {wname}",
            "",
            f"{info['description']}; {info['requests']} requests at {info['rate_rps']:.0f} rps, "
            f"{info.get('repeats', '?')} repeat(s) "
            f"(vanilla capacity {info['capacity_rps']:.0f} rps; saturation bursts of {info.get('burst', '?')} "
            f"requests). "
            f"Oracle exits early for {_pct(info['oracle_exit_share'])} of requests.",
            "",
            "| system | p50 ms | p95 ms | p99 ms | p50 / van | p95 / van | p99 / van | sat. rps | rps / van | "
            "accuracy | worst window | windows > 1% | early exits | left the batch |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in systems.items():
            lat, r, acc = e["latency_ms"], e["latency_vs_vanilla"], e["accuracy"]
            early = 1 - e["exit_share"].get("final", 1.0)
            lines.append(
                f"| {name} | {_ms(lat['p50'])} | {_ms(lat['p95'])} | {_ms(lat['p99'])} | {_x(r['p50'])} | "
                f"{_x(r['p95'])} | {_x(r['p99'])} | "
                f"{e['throughput_rps']:.0f} | {_x(e['throughput_vs_vanilla'])} | {_pct(acc['overall'], 2)} | "
                f"{_pct(acc['worst_window'])} | "
                f"{_pct(acc['windows_violating'])} | {_pct(early)} | {_pct(e.get('rows', {}).get('skipped'))} |"
            )
        unsplit = systems.get("apparate", {}).get("unsplit_batch_share")
        if unsplit is not None:
            lines += [
                "",
                f"Apparate ran {_pct(unsplit)} of its batches on this stream unsplit (overload fallback); the "
                f"saturation bursts are not counted.",
            ]
        if any("worst_window_per_phase" in e["accuracy"] for e in systems.values()):
            phase_names = list(
                next(e for e in systems.values() if "worst_window_per_phase" in e["accuracy"])["accuracy"][
                    "worst_window_per_phase"
                ]
            )
            lines += [
                "",
                "Worst window per drift phase, and windows violating 1% outside the two windows at each change:",
                "",
                "| system | " + " | ".join(phase_names) + " | violating after changes |",
                "|---" * (len(phase_names) + 2) + "|",
            ]
            for name, e in systems.items():
                per = e["accuracy"].get("worst_window_per_phase")
                if per:
                    lines.append(
                        f"| {name} | "
                        + " | ".join(_pct(per[p]) for p in phase_names)
                        + f" | {_pct(e['accuracy']['windows_violating_after_changes'])} |"
                    )
        configs = info.get("configs", {})
        if configs:
            lines += [
                "",
                "Fixed configurations tuned on the bootstrap statistics: "
                + "; ".join(
                    f"{s}: " + ", ".join(f"{k}={_short(v)}" for k, v in c.items()) for s, c in configs.items() if c
                ),
            ]
        lines.append("")
    lines += ["## Goals", "", "| goal | workload | met | measured |", "|---|---|---|---|"]
    for g in goals:
        lines.append(f"| {g['goal']} | {g['workload']} | {'yes' if g['met'] else 'NO'} | {g['detail']} |")
    lines.append("")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------ plots
def write_plots(out: Path, raw: dict[str, dict[str, Any]]) -> list[Path]:
    """Latency CDFs per workload, the drift timeline and apparate's controller timelines."""
    from apparate_trt.eval.plots import plot_latency_cdf, plot_timeline

    paths = []
    for wname, res in raw.items():
        pooled: dict[str, list[np.ndarray]] = {}
        for run in res["runs"]:
            pooled.setdefault(run.system, []).append(run.latency_ms)
        paths.append(
            plot_latency_cdf(
                {s: np.concatenate(v) for s, v in pooled.items()},
                out / f"latency_cdf_{wname}.png",
                title=f"{wname}: latency CDF (all repeats)",
            )
        )
        app = next((r for r in res["runs"] if r.system == "apparate"), None)
        if app is not None:
            paths.append(plot_timeline(app.report, out / f"apparate_timeline_{wname}.png", app.arrivals_s))
    if "drift" in raw:
        paths.append(plot_drift(out / "drift_timeline.png", raw["drift"]))
    return paths


def plot_drift(path: Path, res: dict[str, Any]) -> Path:
    """Accuracy per window for every system, and apparate's thresholds and active ramps, over the
    drift stream (x: request index; phase changes marked)."""
    from apparate_trt.eval.plots import _pyplot

    plt = _pyplot()
    fig, (ax_acc, ax_thr, ax_sites) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    first = {}
    for run in res["runs"]:
        first.setdefault(run.system, run)
    for system, run in first.items():
        windows = np.asarray(run.report["accuracy"]["windows"])
        if system != "vanilla" and windows.size:
            ax_acc.plot((np.arange(windows.size) + 1) * WINDOW, windows, "o-", markersize=3, label=system)
    ax_acc.axhline(1 - CONSTRAINT, color="red", linestyle="--", linewidth=1, label="1% constraint")
    ax_acc.set_ylabel(f"accuracy per window of {WINDOW}")
    ax_acc.legend(loc="lower left", fontsize=8, ncol=3)
    app = first.get("apparate")
    if app is not None:
        history = app.report.get("threshold_history", [])
        t_arr = app.arrivals_s
        times = np.asarray([h["t"] for h in history], dtype=np.float64)
        index = np.searchsorted(t_arr, times) if t_arr.size else times  # time -> request index
        for site in sorted({s for h in history for s in h["active_sites"]}):
            thr = np.asarray([dict(zip(h["active_sites"], h["thresholds"])).get(site, np.nan) for h in history])
            ax_thr.step(index, thr, where="post", label=f"site {site}")
            ax_sites.plot(index, np.where(np.isnan(thr), np.nan, site), linewidth=6, solid_capstyle="butt")
        if ax_thr.get_legend_handles_labels()[0]:  # no ramp was ever active: nothing to label
            ax_thr.legend(loc="upper right", fontsize=7, ncol=4)
    ax_thr.set_ylabel("apparate thresholds")
    ax_sites.set_ylabel("apparate active ramps")
    ax_sites.set_xlabel("request index in the drift stream")
    for p in res["phases"]:
        for ax in (ax_acc, ax_thr, ax_sites):
            ax.axvline(p["start"], color="gray", alpha=0.5, linewidth=1)
        ax_acc.text(p["start"] + 20, 1.0, p["name"], fontsize=8, va="top")
    for ax in (ax_acc, ax_thr, ax_sites):
        ax.grid(True, alpha=0.3)
    fig.suptitle("drift: accuracy per window (all systems), apparate's thresholds and active ramps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ main
def update_readme(md: str, plots: list[Path]) -> None:
    """Replace the results block of benchmarks/README.md with the table and the plots."""
    text = README.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        log(f"warning: {README} has no results markers; not updated")
        return
    images = "\n".join(f"![{p.stem}](results/{p.name})" for p in plots)
    block = f"{README_START}\n{md}\n{images}\n{README_END}"
    head, rest = text.split(README_START, 1)
    README.write_text(head + block + rest.split(README_END, 1)[1], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    command = "python benchmarks/run_workloads.py" + (
        "" if argv is None and len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    )
    meta: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "threads": args.threads,
        "chunk": args.chunk,
        "max_delay_ms": args.max_delay_ms,
        "workloads": {},
    }
    repeats = args.repeats or "each workload's"
    log(
        f"benchmark: {len(args.workloads)} workload(s) x {len(args.systems)} systems x {repeats} repeat(s); "
        f"load average {meta['machine']['load_avg_start'][0]:.1f} on {meta['machine']['cores']} cores"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    factories: dict[str, SystemFactory] = {}
    capacity: dict[str, float] = {}
    raw: dict[str, dict[str, Any]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for w in args.workloads:
        data_dir = args.data / w.model
        if not w.stream_path(args.data).is_file() or not (data_dir / "model.onnx").is_file():
            log(
                f"[{w.name}] skipped: {w.stream_path(args.data)} or its model.onnx is missing (python "
                f"scripts/build_real_models.py)"
            )
            continue
        if w.model not in factories:
            log(f"[{w.model}] engine directory")
            engine_dir = args.engines / w.model
            manifest = ensure_engine(data_dir, engine_dir, args.threads, log)
            factories[w.model] = SystemFactory(engine_dir, manifest, args.threads, args.max_delay_ms)
        res = run_workload(w, args, factories, capacity)
        raw[w.name] = res
        systems = {s: summarize_system([r for r in res["runs"] if r.system == s], res["phases"]) for s in args.systems}
        add_ratios(systems)
        summary[w.name] = systems
        meta["workloads"][w.name] = {
            "description": w.description,
            "requests": res["n"],
            "repeats": res["repeats"],
            "rate_rps": res["rate"],
            "capacity_rps": res["capacity"],
            "burst": res["burst"],
            "arrivals": w.arrivals,
            "phases": res["phases"],
            "configs": res["configs"],
            "oracle_exit_share": res["oracle_exit_share"],
        }
        runs_dir = args.out / "runs"
        write_report(
            {
                "workload": w.name,
                "runs": [
                    {
                        "system": r.system,
                        "repeat": r.repeat,
                        "throughput_rps": r.throughput_rps,
                        "report": r.report
                        if (r.system == "apparate" and r.repeat == 0)
                        else {k: v for k, v in r.report.items() if k not in ("threshold_history",)},
                        **per_request(r),
                    }
                    for r in res["runs"]
                ],
            },
            runs_dir / f"{w.name}.json",
        )
        log(f"[{w.name}] done; {(time.perf_counter() - t0) / 60:.1f} min elapsed")
    if not summary:
        raise ApparateError(
            f"no workload ran: build the data under {args.data} with `python scripts/build_real_models.py`"
        )
    goals = evaluate_goals(summary)
    meta["wall_s"] = time.perf_counter() - t0
    meta["load_avg_end"] = os.getloadavg()
    write_report({**summary, "_meta": meta, "_goals": goals}, args.out / "summary.json")
    md = markdown(summary, meta, goals)
    (args.out / "summary.md").write_text(md, encoding="utf-8")
    plots = write_plots(args.out, raw)
    if args.out.resolve() == RESULTS.resolve():
        update_readme(md, plots)
    log("")
    log(md)
    met = sum(bool(g["met"]) for g in goals)
    log(f"goals met: {met}/{len(goals)}; results in {args.out} ({meta['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ApparateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
