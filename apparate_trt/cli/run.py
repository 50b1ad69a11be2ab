"""``apparate-run``: replay a workload against an engine directory, or serve it (``--serve``)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apparate_trt.cli._common import HelpFormatter, Parser, flush_print, run_main
from apparate_trt.defaults import (
    DEFAULT_ACCURACY_CONSTRAINT,
    DEFAULT_AUDIT_RATE,
    DEFAULT_EXIT_MODES,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DELAY_MS,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_REFIT_EVERY,
    MIN_AUDIT_RATE,
)
from apparate_trt.errors import ApparateError

if TYPE_CHECKING:
    from apparate_trt.runtime.config import EngineConfig

DESCRIPTION = """\
Serve an engine directory written by apparate-compile.

Replay (default): the samples of --data arrive in real time by --arrivals, are batched dynamically
(--max-batch, --max-delay-ms) and really run. Each request's result is released at its first
confident ramp; the final output is free feedback that tunes the ramps' thresholds and moves
ramps (--mode apparate). --exit-mode release runs every row on to the end of its batch (the
paper's design); --exit-mode skip lets a released row leave the batch, so the later segments run
on fewer rows, except an audit sample (--audit-rate) that runs on as feedback, weighted by
1 / rate so the controller's estimates stay unbiased; --exit-mode auto does so only for batches
taken while another request waits. In skip mode the report judges the requests
that left early against the original model run offline on them afterwards. --mode vanilla serves the unsplit original
model through the same batching, as the baseline. The ramps keep learning (--no-refits turns it
off): rows that reach the model's end fill each active ramp's reservoir, a ramp's head is refitted
on it in a niced child process and swapped in when it releases more of held-out samples at the
controller's target; --save-ramps DIR keeps the refitted ramps as a new engine directory.
Latency = release time - arrival time on the wall clock. Prints a report (latency p50/p95/p99,
throughput, accuracy against the original model overall and per window, exit share per ramp, the
controller's decisions and refits); --report writes it as JSON (keys in docs/REPORT.md),
--plot writes a latency CDF and a controller timeline as PNG.

Serving (--serve): an Open Inference Protocol (KServe v2) server, REST on --http-port and gRPC on
--grpc-port, until SIGTERM or Ctrl-C (docs/SERVING.md). It binds 127.0.0.1 unless --host says
otherwise; --tls-cert/--tls-key add TLS and --auth-token-file (or $APPARATE_AUTH_TOKEN) a bearer token.
--replicas N (or auto) serves the same protocol from N engine replicas on Ray Serve, each with
--threads ONNX Runtime threads (default 1), on a local Ray instance or --ray-address's cluster
(the 'cluster' extra; docs/SERVING.md).
"""

EPILOG = """\
arrival processes (RATE in requests per second):
  fixed:RATE     one request every 1/RATE s (a camera)
  poisson:RATE   exponential gaps with mean 1/RATE s (independent users), seeded by --seed
  trace:FILE     one arrival time in seconds per line (# comments allowed)

EVAL.npz holds one array per model input, named as in the model, first axis = samples (as for
apparate-compile --data). Request i is sample i.

exit status: 0 success, 2 bad input (one line 'error: ...' on stderr), 130 interrupted.

examples:
  apparate-run --engine-dir out/cv --data data/cv/eval.npz --arrivals poisson:100 --report cv.json --plot plots/
  apparate-run --engine-dir out/cv --data data/cv/eval.npz --arrivals poisson:100 --mode vanilla
  apparate-run --engine-dir out/cv --data data/cv/eval.npz --arrivals poisson:100 --compare-vanilla
  apparate-run --engine-dir out/cv --data data/cv/eval.npz --arrivals poisson:100 --exit-mode skip --audit-rate 0.25
  apparate-run --engine-dir out/cv --serve --model-name cv --http-port 8000 --grpc-port 8001
  apparate-run --engine-dir out/cv --serve --replicas 2 --threads 1
  apparate-run --engine-dir out/cv --serve --replicas auto --min-replicas 1 --max-replicas 4
"""


def build_parser() -> Parser:
    """The argument parser (every flag documented, defaults shown)."""
    p = Parser(prog="apparate-run", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument(
        "--engine-dir",
        required=True,
        metavar="DIR",
        help="engine directory written by apparate-compile --out (required)",
    )
    p.add_argument(
        "--data",
        metavar="EVAL.npz",
        default=None,
        help="samples to replay: one array per model input, named as in the model, first axis = samples (required "
        "unless --serve)",
    )
    p.add_argument(
        "--arrivals",
        default="poisson:100",
        metavar="SPEC",
        help="arrival process: fixed:RATE, poisson:RATE (requests per second) or trace:FILE (seconds, one per line)",
    )
    p.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="B", help="largest batch the dynamic batcher forms"
    )
    p.add_argument(
        "--max-delay-ms",
        type=float,
        default=DEFAULT_MAX_DELAY_MS,
        metavar="D",
        help="longest time (ms) the oldest queued request waits for its batch to fill",
    )
    p.add_argument(
        "--accuracy-constraint",
        type=float,
        default=DEFAULT_ACCURACY_CONSTRAINT,
        metavar="C",
        help="allowed share of results that disagree with the original model over a window, in [0, 1) (0.01 = 1%%)",
    )
    p.add_argument(
        "--mode",
        choices=["apparate", "vanilla"],
        default="apparate",
        help="apparate: ramps with adaptive thresholds; vanilla: the unsplit original model (baseline)",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "onnxruntime-gpu", "tensorrt"],
        default="auto",
        help="what runs the segments and ramps: onnxruntime (CPU, any machine); onnxruntime-gpu (ONNX Runtime's CUDA "
        "provider, tensors kept on the GPU); tensorrt (the engine directory's TensorRT engines for this GPU, chained "
        "in device memory); auto: tensorrt where this machine and the directory have it, else onnxruntime. The GPU "
        "backends run --exit-mode release only",
    )
    p.add_argument(
        "--exit-mode",
        choices=["release", "skip", "auto"],
        default=None,
        help="release: every row runs to the end of its batch; skip: a released row leaves the batch but for an audit "
        "sample; auto: skip while requests wait behind a batch, release otherwise (CPU backends, as skip) "
        "(default: the backend's, " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EXIT_MODES.items()) + ")",
    )
    p.add_argument(
        "--audit-rate",
        type=float,
        default=DEFAULT_AUDIT_RATE,
        metavar="P",
        help=f"skip mode: probability that a released row still runs to the end as feedback, in [{MIN_AUDIT_RATE}, 1] "
        "(every row while the controller's window is thin)",
    )
    p.add_argument(
        "--confidence",
        choices=["maxprob", "entropy"],
        default="maxprob",
        help="ramp confidence: max softmax probability, or 1 - normalised entropy",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime intra-op threads per session (default: all cores this process may use)",
    )
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="replay only the first N samples (default: all)"
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="random seed of the poisson arrival process (default: 0)"
    )
    p.add_argument(
        "--report",
        metavar="report.json",
        default=None,
        help="also write the report as JSON to this file, creating missing directories (keys: docs/REPORT.md)",
    )
    p.add_argument(
        "--plot",
        metavar="DIR",
        default=None,
        help="write latency_cdf.png and timeline.png into DIR (needs matplotlib, the 'plot' extra)",
    )
    p.add_argument(
        "--accuracy-window",
        type=int,
        default=256,
        metavar="W",
        help="requests per accuracy window in the report (consecutive requests in arrival order)",
    )
    p.add_argument(
        "--window-size",
        type=int,
        default=1024,
        metavar="N",
        help="controller feedback window, in samples (the thresholds are tuned on it)",
    )
    p.add_argument(
        "--initial-thresholds",
        choices=["bootstrap", "never"],
        default="bootstrap",
        help="start with thresholds tuned on the engine's held-out bootstrap statistics, or at never-exit until "
        "the first feedback",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        metavar="N",
        help="most requests waiting for a batch; past it new requests are refused (replay: counted as failed)",
    )
    p.add_argument(
        "--no-overload-fallback",
        dest="overload_fallback",
        action="store_const",
        const=False,
        default=None,
        help="always run the active ramps; by default (release mode) a batch dispatched while a full batch more "
        "waits runs on "
        "the unsplit model without ramps (under overload exits save less than the split and ramps cost the queue)",
    )
    p.add_argument(
        "--overload-fallback",
        dest="overload_fallback",
        action="store_const",
        const=True,
        help="use the overload fallback in skip and auto mode too (off there by default: shedding released rows "
        "drains a backlog faster)",
    )
    p.add_argument(
        "--no-refits",
        dest="refits",
        action="store_false",
        help="keep the ramps as compiled; by default (apparate mode) each active ramp keeps a reservoir of the "
        "served stream (newest 8192 samples, at most 32 MiB per ramp, 128 MiB in all) and its head is refitted on "
        "it every 1024 new samples in a niced child process, swapped in only when it releases more of held-out "
        "samples (needs torch, the 'train' extra)",
    )
    p.add_argument(
        "--refit-every",
        type=int,
        default=DEFAULT_REFIT_EVERY,
        metavar="N",
        help=f"new samples an active ramp gathers before its next refit (default {DEFAULT_REFIT_EVERY})",
    )
    p.add_argument(
        "--save-ramps",
        metavar="DIR",
        default=None,
        help="at the end (replay) or on stop (serve), write an engine directory to DIR (new or empty) with the "
        "refitted ramps, each manifest entry recording where it came from; it loads as any engine directory",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line while the replay runs")
    p.add_argument(
        "--compare-vanilla",
        action="store_true",
        help="then replay the same arrivals on the unsplit model (--mode vanilla, same batching) and print "
        "both side by side with the latency ratio",
    )
    serve = p.add_argument_group("serving (--serve)")
    serve.add_argument(
        "--serve", action="store_true", help="serve over the Open Inference Protocol instead of replaying --data"
    )
    serve.add_argument(
        "--model-name",
        default=None,
        metavar="NAME",
        help="model name in the protocol's URLs (default: the engine's model name)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    serve.add_argument("--http-port", type=int, default=8000, metavar="PORT", help="REST port (0: pick a free one)")
    serve.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="gRPC port (0: pick a free one)")
    serve.add_argument(
        "--request-timeout-s",
        type=float,
        default=30.0,
        metavar="S",
        help="longest time (s) a served request may wait before it fails with a timeout",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="REST connections open at once (idle ones cost no worker); one more is answered 503 and closed "
        f"(default {DEFAULT_MAX_CONNECTIONS})",
    )
    serve.add_argument(
        "--max-inflight",
        type=int,
        default=1024,
        metavar="N",
        help="requests in flight at once over REST and gRPC; one more gets 503 / RESOURCE_EXHAUSTED (default 1024)",
    )
    serve.add_argument(
        "--tls-cert",
        default=None,
        metavar="PEM",
        help="serve REST and gRPC over TLS with this certificate (chain), PEM; needs --tls-key",
    )
    serve.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert, PEM")
    serve.add_argument(
        "--auth-token-file",
        default=None,
        metavar="FILE",
        help="require 'Authorization: Bearer TOKEN' (gRPC metadata 'authorization') on every call but the health "
        "probes, TOKEN read from FILE (default: $APPARATE_AUTH_TOKEN if set, else no token)",
    )
    cluster = p.add_argument_group("replicas on Ray Serve (--serve --replicas)")
    cluster.add_argument(
        "--replicas",
        default=None,
        metavar="N|auto",
        help="serve from N engine replicas on Ray Serve (each its own batching, executor and controller, "
        "--threads threads each, default 1), or 'auto' to autoscale on ongoing requests between "
        "--min-replicas and --max-replicas (default: one process, no Ray)",
    )
    cluster.add_argument("--min-replicas", type=int, default=1, metavar="N", help="--replicas auto: fewest replicas")
    cluster.add_argument("--max-replicas", type=int, default=4, metavar="N", help="--replicas auto: most replicas")
    cluster.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=16.0,
        metavar="N",
        help="--replicas auto: the ongoing requests per replica that the autoscaler aims for",
    )
    cluster.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join this Ray cluster (ray://HOST:10001 or HOST:6379; every node must see --engine-dir at the "
        "same path) instead of starting a local Ray instance on 127.0.0.1 that stops on exit",
    )
    return p


def parse_replicas(value: str | None) -> int | str | None:
    """``--replicas``: None, ``"auto"`` or a whole number >= 1; ValueError otherwise."""
    if value is None or value == "auto":
        return value
    count = int(value)
    if count < 1:
        raise ValueError(value)
    return count


def validate_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse out-of-range flag values with one line naming the flag (exits 2 via ``p.error``)."""
    checks = [
        (args.max_batch >= 1, f"--max-batch must be at least 1, got {args.max_batch}"),
        (
            math.isfinite(args.max_delay_ms) and args.max_delay_ms >= 0,
            f"--max-delay-ms must be a number >= 0, got {args.max_delay_ms}",
        ),
        (
            0.0 <= args.accuracy_constraint < 1.0,
            f"--accuracy-constraint must be in [0, 1) (e.g. 0.01 for 1%), got {args.accuracy_constraint}",
        ),
        (args.threads is None or args.threads >= 1, f"--threads must be at least 1, got {args.threads}"),
        (args.limit is None or args.limit >= 1, f"--limit must be at least 1, got {args.limit}"),
        (args.accuracy_window >= 1, f"--accuracy-window must be at least 1, got {args.accuracy_window}"),
        (args.window_size >= 1, f"--window-size must be at least 1, got {args.window_size}"),
        (
            MIN_AUDIT_RATE <= args.audit_rate <= 1.0,
            f"--audit-rate must be in [{MIN_AUDIT_RATE}, 1] so that feedback never stops, got {args.audit_rate}",
        ),
        (args.queue_size >= 1, f"--queue-size must be at least 1, got {args.queue_size}"),
        (0 <= args.http_port <= 65535, f"--http-port must be in 0..65535, got {args.http_port}"),
        (0 <= args.grpc_port <= 65535, f"--grpc-port must be in 0..65535, got {args.grpc_port}"),
        (
            math.isfinite(args.request_timeout_s) and args.request_timeout_s > 0,
            f"--request-timeout-s must be > 0, got {args.request_timeout_s}",
        ),
        (args.max_connections >= 1, f"--max-connections must be at least 1, got {args.max_connections}"),
        (args.max_inflight >= 1, f"--max-inflight must be at least 1, got {args.max_inflight}"),
        (
            (args.tls_cert is None) == (args.tls_key is None),
            "TLS needs both --tls-cert and --tls-key (PEM files), or neither",
        ),
        (args.serve or args.data is not None, "--data EVAL.npz is required to replay (or pass --serve to serve)"),
        (
            args.refit_every is None or args.refit_every >= 1,
            f"--refit-every must be at least 1, got {args.refit_every}",
        ),
        (
            args.save_ramps is None or (args.mode == "apparate" and args.refits),
            "--save-ramps saves refitted ramps: it needs --mode apparate and refits on (drop --no-refits)",
        ),
        (
            args.save_ramps is None or not _holds_files(args.save_ramps),
            f"--save-ramps {args.save_ramps} exists and is not empty: give a new or empty directory",
        ),
        (
            not (args.compare_vanilla and (args.serve or args.mode == "vanilla")),
            "--compare-vanilla compares an apparate replay with vanilla: drop --serve or --mode vanilla",
        ),
    ]
    try:
        args.replicas = parse_replicas(args.replicas)
    except ValueError:
        p.error(f"--replicas must be a whole number >= 1 or 'auto', got {args.replicas!r}")
    checks += [
        (args.replicas is None or args.serve, "--replicas serves from replicas: add --serve"),
        (
            args.replicas is None or args.save_ramps is None,
            "--save-ramps needs one process (each replica refits its own ramps): drop --replicas",
        ),
        (
            1 <= args.min_replicas <= args.max_replicas,
            f"--min-replicas and --max-replicas need 1 <= min <= max, got {args.min_replicas} and {args.max_replicas}",
        ),
        (
            math.isfinite(args.target_ongoing_requests) and args.target_ongoing_requests > 0,
            f"--target-ongoing-requests must be > 0, got {args.target_ongoing_requests}",
        ),
        (
            args.ray_address is None or args.replicas is not None,
            "--ray-address joins a Ray cluster for replicas: add --replicas N",
        ),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)


def _holds_files(path: str) -> bool:
    """True when ``path`` exists and is not an empty directory."""
    p = Path(path)
    return p.exists() and (not p.is_dir() or any(p.iterdir()))


def serve_command(args: argparse.Namespace) -> int:
    """``--serve``: hand over to the server (imported lazily: it needs the 'serve' extra)."""
    try:
        from apparate_trt.runtime.server import serve
        from apparate_trt.runtime.server.security import load_security
    except ModuleNotFoundError as exc:
        raise ApparateError(
            f"--serve needs the server module and its dependencies, which are missing ({exc}); "
            "install them with: pip install 'apparate_trt[serve]'"
        ) from None
    from apparate_trt.runtime.server.config import ServingConfig

    config = ServingConfig(
        engine=engine_config(args),
        model_name=args.model_name,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        request_timeout_s=args.request_timeout_s,
        security=load_security(args.tls_cert, args.tls_key, args.auth_token_file),
        max_connections=args.max_connections,
        max_inflight=args.max_inflight,
        save_ramps=args.save_ramps,
    )
    if args.replicas is not None:
        return serve_replicas_command(args, config)
    return int(serve(args.engine_dir, config) or 0)


def serve_replicas_command(args: argparse.Namespace, config: Any) -> int:
    """``--serve --replicas``: the same server over Ray Serve replicas (the 'cluster' extra)."""
    from apparate_trt.runtime.cluster import ClusterConfig, serve_replicated

    cluster = ClusterConfig(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        threads=args.threads,
        ray_address=args.ray_address,
    )
    return int(serve_replicated(args.engine_dir, config, cluster) or 0)


def engine_config(args: argparse.Namespace, **controller_options: Any) -> EngineConfig:
    """The engine's settings from the flags (checked: ApparateError names a bad one)."""
    from apparate_trt.runtime.config import EngineConfig

    return EngineConfig(
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        accuracy_constraint=args.accuracy_constraint,
        mode=args.mode,
        threads=args.threads,
        queue_size=args.queue_size,
        confidence=args.confidence,
        overload_fallback=args.overload_fallback,
        exit_mode=args.exit_mode,
        backend=None if args.backend == "auto" else args.backend,
        audit_rate=args.audit_rate,
        refits=args.refits,
        learning_options={"refit_every": args.refit_every},
        controller_options={
            "window_size": args.window_size,
            "initial_thresholds": args.initial_thresholds,
            **controller_options,
        },
    )


def replay_command(args: argparse.Namespace) -> int:
    """Replay --data at --arrivals; print the report; write --report and --plot."""
    from apparate_trt.data import load_inputs, num_samples, take
    from apparate_trt.engine_dir import read_manifest
    from apparate_trt.eval.arrivals import parse_arrivals
    from apparate_trt.eval.replay import offline_predictions, replay, replay_controller_options
    from apparate_trt.eval.report import build_report, comparison_table, format_report, write_report
    from apparate_trt.runtime import api
    from apparate_trt.runtime.gc_freeze import freeze_after_load, unfreeze

    manifest = read_manifest(args.engine_dir, verify=False)  # api.load below checks every file
    inputs = load_inputs(args.data, manifest.model.inputs, min_samples=1, what="evaluation data")
    count = num_samples(inputs) if args.limit is None else min(args.limit, num_samples(inputs))
    arrivals = parse_arrivals(args.arrivals, count, seed=args.seed)
    inputs = take(inputs, slice(0, arrivals.shape[0]))
    if args.plot:
        from apparate_trt.eval.plots import ensure_matplotlib

        ensure_matplotlib()  # fail before the replay, not after it, when matplotlib is missing
    settings = _settings(args, arrivals.shape[0])
    flush_print(
        f"apparate-run: {manifest.model.name} ({len(manifest.sites)} sites), mode {args.mode}, "
        f"{arrivals.shape[0]} requests, arrivals {args.arrivals}, max batch {args.max_batch}, max delay "
        f"{args.max_delay_ms} ms"
    )
    # the report shows every decision: the controller keeps the whole replay's record
    engine = api.load(args.engine_dir, engine_config(args, **replay_controller_options(arrivals.shape[0])))
    settings["exit_mode"] = engine.exit_mode
    settings["backend"] = engine.executor.backend.describe()
    settings["overload_fallback"] = engine.overload_fallback
    freeze_after_load()  # full GC collections off the replay's tail (runtime/gc_freeze.py)
    try:
        result = replay(engine, inputs, arrivals, progress=not args.quiet)
    finally:
        engine.close()
        unfreeze()
    if args.save_ramps:
        flush_print(_save_ramps(engine, args.save_ramps))
    if result.skipped is not None and result.skipped.any():
        flush_print(
            f"judging the {int(result.skipped.sum())} requests that left the batch early against the original "
            f"model (offline)"
        )
        skipped = result.skipped.nonzero()[0]
        result.final_pred[skipped] = offline_predictions(
            manifest, take(inputs, skipped), threads=args.threads, batch_size=args.max_batch
        )
        result.reference_used = True
    report = build_report(result, args.accuracy_constraint, window_size=args.accuracy_window, settings=settings)
    flush_print(format_report(report))
    if args.compare_vanilla:
        flush_print(f"replaying the same {arrivals.shape[0]} arrivals on the unsplit model (vanilla) ...")
        baseline = api.load(args.engine_dir, engine_config(args).replace(mode="vanilla"))
        freeze_after_load()  # as for the engine above, so both replays run alike
        try:
            vanilla = replay(baseline, inputs, arrivals, progress=not args.quiet)
        finally:
            baseline.close()
            unfreeze()
        vanilla_report = build_report(vanilla, args.accuracy_constraint, window_size=args.accuracy_window)
        report["vanilla"] = vanilla_report
        flush_print("Apparate beside vanilla on the same arrivals:")
        flush_print(comparison_table({args.mode: report, "vanilla": vanilla_report}, baseline="vanilla"))
    if args.report:
        flush_print(f"report written to {write_report(report, args.report)}")
    if args.plot:
        from apparate_trt.eval.plots import write_plots

        done = result.completed
        paths = write_plots(args.plot, report, result.latency_ms[done], result.arrivals_s[done])
        flush_print(f"plots written: {', '.join(str(p) for p in paths)}")
    return 0


def _save_ramps(engine: Any, directory: str) -> str:
    """Save the (closed) engine's refitted ramps to ``directory``; a line saying what was saved."""
    out = engine.save_ramps(directory)
    refitted = sorted(engine.learner.refitted()) if engine.learner is not None else []
    what = f"ramps at sites {refitted} refitted" if refitted else "no ramp refitted: the ramps as compiled"
    return f"engine directory written to {out} ({what})"


def _settings(args: argparse.Namespace, requests: int) -> dict[str, Any]:
    return {
        "engine_dir": str(Path(args.engine_dir)),
        "data": str(args.data),
        "arrivals": args.arrivals,
        "seed": args.seed,
        "requests": requests,
        "max_batch": args.max_batch,
        "max_delay_ms": args.max_delay_ms,
        "accuracy_constraint": args.accuracy_constraint,
        "mode": args.mode,
        "confidence": args.confidence,
        "threads": args.threads,
        "overload_fallback": args.overload_fallback,
        "window_size": args.window_size,
        "initial_thresholds": args.initial_thresholds,
        "audit_rate": args.audit_rate,
        "refits": args.refits,
        "refit_every": args.refit_every,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``apparate-run``; returns (and, as a script, exits with) the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    return run_main(lambda: serve_command(args) if args.serve else replay_command(args))


if __name__ == "__main__":
    sys.exit(main())
