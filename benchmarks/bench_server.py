"""The Open Inference Protocol server under open-loop load: Apparate beside vanilla, and the
server's overhead over in-process replay.

For each mode (``apparate``, ``vanilla``) the script starts ``apparate-run --serve`` as a
subprocess on free 127.0.0.1 ports and drives it with an open-loop load generator of its own:
Poisson arrivals at each request rate, one gRPC unary infer per arrival sent with tritonclient's
``async_infer`` (a slow server never slows the arrivals down). A request's latency is the time its
(early) response arrived minus its scheduled arrival time, so generator lag counts against the
server, as for a real client. The same arrivals are then replayed in-process
(:func:`apparate_trt.eval.replay.replay` on an engine loaded in this process, same settings):
the difference of the medians is the server's overhead (protocol, serialization, loopback,
threads). Accuracy is agreement of the released answer with the original model (``model.onnx``
run directly with ONNX Runtime).

Prints a Markdown table; ``--out FILE`` writes the numbers as JSON.

    python benchmarks/bench_server.py --engine-dir out/cv --data data/cv/eval.npz [--quick] \
        [--rates 50,100,200] [--requests 1000] [--threads 1] [--out results/server.json]

Latencies in ms, rates and throughput in requests per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rest_load import RestResponses, drive_rest

from apparate_trt.backends import open_runner
from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import Manifest, read_manifest
from apparate_trt.errors import ApparateError
from apparate_trt.eval.arrivals import poisson_arrivals
from apparate_trt.eval.report import latency_summary

READY = re.compile(r"REST at [^ ]+:(\d+) and gRPC at [^ ]+:(\d+)")
QUICK = {"rates": [50.0, 150.0], "requests": 300}
FULL = {"rates": [50.0, 100.0, 200.0, 400.0], "requests": 1500}


@dataclass
class Run:
    """One measured run: ``path`` is ``server`` or ``replay``."""

    mode: str
    path: str
    rate: float
    requests: int
    completed: int
    latency_ms: dict[str, float | None]
    throughput_rps: float
    accuracy: float | None
    early_share: float
    errors: dict[str, int] = field(default_factory=dict)

    def row(self) -> str:
        lat = self.latency_ms
        acc = "-" if self.accuracy is None else f"{100 * self.accuracy:.2f}%"
        errs = sum(self.errors.values())
        return (
            f"| {self.mode} | {self.path} | {self.rate:g} | {self.completed}/{self.requests} | {_ms(lat['p50'])} | "
            f"{_ms(lat['p95'])} | {_ms(lat['p99'])} | {self.throughput_rps:.1f} | {acc} | "
            f"{100 * self.early_share:.1f}% | {errs} |"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


HEADER = (
    "| mode | path | rate (rps) | answered | p50 ms | p95 ms | p99 ms | throughput (rps) | accuracy | early exits "
    "| errors |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


# ----------------------------------------------------------------------------------------- data
def reference_pred(manifest: Manifest, inputs: dict[str, np.ndarray], threads: int | None) -> np.ndarray:
    """The original model's argmax per sample (``model.onnx`` directly, batches of 64)."""
    runner = open_runner(manifest.path(manifest.model.file), threads=threads)
    n = next(iter(inputs.values())).shape[0]
    preds = []
    for start in range(0, n, 64):
        out = runner.run({k: v[start : start + 64] for k, v in inputs.items()}, [manifest.model.output])[
            manifest.model.output
        ]
        preds.append(np.argmax(out, axis=1))
    return np.concatenate(preds).astype(np.int32)


# ------------------------------------------------------------------------------------- the server
class ServerProcess:
    """``apparate-run --serve`` in a subprocess on free ports; SIGTERM on :meth:`stop`."""

    def __init__(
        self,
        engine_dir: Path,
        mode: str,
        args: argparse.Namespace,
        extra: Sequence[str] = (),
        source: Path | None = None,
    ) -> None:
        cmd = [
            sys.executable,
            "-c",
            "from apparate_trt.cli.run import main; raise SystemExit(main())",
            "--engine-dir",
            str(engine_dir.resolve()),
            "--serve",
            "--mode",
            mode,
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--max-batch",
            str(args.max_batch),
            "--max-delay-ms",
            str(args.max_delay_ms),
            "--accuracy-constraint",
            str(args.accuracy_constraint),
            "--queue-size",
            str(args.queue_size),
        ]
        if args.threads is not None:
            cmd += ["--threads", str(args.threads)]
        cmd += list(extra)
        self.proc = subprocess.Popen(
            cmd,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **({"PYTHONPATH": str(source)} if source else {})},
            cwd=source,  # python -c puts the working directory first on sys.path
        )
        self.log: list[str] = []
        self._ports: list[tuple[int, int]] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while not self._ports:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ApparateError("the server did not start:\n" + "".join(self.log))
            time.sleep(0.05)
        self.http_port, self.grpc_port = self._ports[0]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            match = READY.search(line)
            if match:
                self._ports.append((int(match.group(1)), int(match.group(2))))

    def stop(self) -> int:
        """SIGTERM, wait (60 s), return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


# ---------------------------------------------------------------------------------- load generator
class _Responses(RestResponses):
    """The arrays of :class:`rest_load.RestResponses`, filled from tritonclient's callback thread."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.lock = threading.Lock()
        self.all_done = threading.Event()

    def on_response(self, index: int, output: str, result: Any, error: Any) -> None:
        t = time.monotonic()
        with self.lock:
            if error is not None:
                key = str(error.status() or "error")
                self.errors[key] = self.errors.get(key, 0) + 1
            else:
                self.t_done[index] = t
                self.pred[index] = int(np.argmax(result.as_numpy(output)[0]))
                self.early[index] = not result.get_response().parameters["apparate_is_final"].bool_param
            self.count += 1
            if self.count == self.n:
                self.all_done.set()


def drive(
    grpc_port: int,
    manifest: Manifest,
    model_name: str,
    inputs: dict[str, np.ndarray],
    arrivals: np.ndarray,
    timeout_s: float,
) -> tuple[_Responses, float]:
    """Send sample ``i`` at ``arrivals[i]`` (open loop); wait for every response. Returns the
    responses and the start time (monotonic seconds)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    n = arrivals.shape[0]
    out = _Responses(n)
    output = manifest.model.output
    t0 = time.monotonic() + 0.05
    for i in range(n):
        tensors = []
        for name, value in inputs.items():
            sample = value[i : i + 1]
            t = grpcclient.InferInput(name, list(sample.shape), np_to_triton_dtype(sample.dtype))
            t.set_data_from_numpy(sample)
            tensors.append(t)
        delay = t0 + arrivals[i] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client.async_infer(model_name, tensors, callback=partial(out.on_response, i, output), request_id=str(i))
    if not out.all_done.wait(timeout_s):
        raise ApparateError(f"only {out.count} of {n} responses within {timeout_s:.0f} s")
    client.close()
    return out, t0


def server_run(
    mode: str,
    rate: float,
    responses: Any,
    t0: float,
    arrivals: np.ndarray,
    ref: np.ndarray,
    path: str = "server (gRPC)",
) -> Run:
    """One server measurement from ``responses`` (``_Responses`` or ``rest_load.RestResponses``)."""
    ok = np.isfinite(responses.t_done)
    latency = (responses.t_done - (t0 + arrivals)) * 1000.0
    span = (np.nanmax(responses.t_done) - t0) if ok.any() else float("nan")
    return Run(
        mode,
        path,
        rate,
        int(arrivals.shape[0]),
        int(ok.sum()),
        latency_summary(latency[ok]),
        float(ok.sum() / span) if ok.any() else 0.0,
        float(np.mean(responses.pred[ok] == ref[ok])) if ok.any() else None,
        float(responses.early[ok].mean()) if ok.any() else 0.0,
        dict(responses.errors),
    )


def replay_run(mode: str, rate: float, engine: Any, inputs: dict[str, np.ndarray], arrivals: np.ndarray) -> Run:
    from apparate_trt.eval.replay import replay
    from apparate_trt.eval.report import throughput_rps

    result = replay(engine, inputs, arrivals, progress=False)
    done = result.completed
    errors: dict[str, int] = {}
    for message in result.errors.values():
        errors[message.split(";")[0][:40]] = errors.get(message.split(";")[0][:40], 0) + 1
    return Run(
        mode,
        "in-process replay",
        rate,
        result.requests,
        int(done.sum()),
        latency_summary(result.latency_ms[done]),
        float(throughput_rps(result)),
        float(np.mean(result.released_pred[done] == result.final_pred[done])) if done.any() else None,
        float(np.mean(result.exit_site[done] >= 0)) if done.any() else 0.0,
        errors,
    )


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine-dir", type=Path, default=Path("out/cv"), help="compiled engine directory")
    p.add_argument(
        "--data", type=Path, default=Path("data/cv/eval.npz"), help="samples to send (.npz, one array per input)"
    )
    p.add_argument("--quick", action="store_true", help=f"rates {QUICK['rates']}, {QUICK['requests']} requests each")
    p.add_argument("--rates", type=str, default=None, help="comma-separated request rates (rps)")
    p.add_argument("--requests", type=int, default=None, help="requests per rate")
    p.add_argument("--modes", type=str, default="apparate,vanilla")
    p.add_argument("--no-replay", action="store_true", help="skip the in-process replay comparison")
    p.add_argument(
        "--protocol",
        choices=("grpc", "rest"),
        default="grpc",
        help="drive the server over gRPC (tritonclient) or REST (binary tensors, keep-alive connections)",
    )
    p.add_argument("--repeats", type=int, default=1, help="serve every mode and source this many times, in turn")
    p.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also serve each mode from this source tree (e.g. a git worktree of an older commit, with its "
        "built core) on the same arrivals: a before/after comparison in one run",
    )
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--accuracy-constraint", type=float, default=0.01)
    p.add_argument("--queue-size", type=int, default=1024)
    p.add_argument(
        "--threads", type=int, default=None, help="ORT intra-op threads (server and replay; default all cores)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = QUICK if args.quick else FULL
    rates = [float(r) for r in args.rates.split(",")] if args.rates else preset["rates"]
    n = args.requests or preset["requests"]
    manifest = read_manifest(args.engine_dir)
    data = load_inputs(args.data, manifest.model.inputs)
    total = next(iter(data.values())).shape[0]
    # Each rate gets its own slice of the stream (cycling if the data is short).
    order = np.arange(n * len(rates)) % total
    inputs_all = {k: np.ascontiguousarray(v[order]) for k, v in data.items()}
    ref_all = reference_pred(manifest, inputs_all, args.threads)
    runs: list[Run] = []
    print(
        f"bench_server: {manifest.model.name}, rates {rates} rps, {n} requests each, modes {args.modes}",
        file=sys.stderr,
    )
    sources: list[tuple[str, Path | None]] = [("", None)]
    if args.baseline_src is not None:
        sources.append((", baseline", args.baseline_src.resolve()))
    for repeat in range(args.repeats):  # each repeat serves every mode from every source, in turn
        for mode in args.modes.split(","):
            for label, source in sources:
                tag = f"{label}, #{repeat + 1}" if args.repeats > 1 else label
                runs += serve_rates(args, mode, manifest, rates, n, inputs_all, ref_all, tag, source)
        if not args.no_replay:
            from apparate_trt.runtime.api import load

            engine = load(
                args.engine_dir,
                max_batch=args.max_batch,
                max_delay_ms=args.max_delay_ms,
                mode=mode,
                accuracy_constraint=args.accuracy_constraint,
                threads=args.threads,
                queue_size=args.queue_size,
            )
            try:
                for k, rate in enumerate(rates):
                    sl = slice(k * n, (k + 1) * n)
                    runs.append(
                        replay_run(
                            mode,
                            rate,
                            engine,
                            {name: v[sl] for name, v in inputs_all.items()},
                            poisson_arrivals(rate, n, args.seed + k),
                        )
                    )
                    print(runs[-1].row(), file=sys.stderr)
            finally:
                engine.close()
    print(HEADER)
    for run in sorted(runs, key=lambda r: (r.rate, r.mode, r.path)):
        print(run.row())
    if args.baseline_src is not None:
        print("\nThis tree against the baseline, same arrivals (median over repeats; spread: max - min):\n")
        print(baseline_table(runs))
    overhead = overhead_table(runs)
    if overhead:
        print("\nServer overhead over in-process replay (p50 difference, ms):\n")
        print(overhead)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "engine_dir": str(args.engine_dir),
            "model": manifest.model.name,
            "rates": rates,
            "protocol": args.protocol,
            "repeats": args.repeats,
            "baseline_src": None if args.baseline_src is None else str(args.baseline_src),
            "requests_per_rate": n,
            "settings": {
                k: getattr(args, k)
                for k in ("max_batch", "max_delay_ms", "accuracy_constraint", "queue_size", "threads")
            },
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "runs": [run.__dict__ for run in runs],
        }
        args.out.write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def serve_rates(
    args: argparse.Namespace,
    mode: str,
    manifest: Manifest,
    rates: list[float],
    n: int,
    inputs_all: dict[str, np.ndarray],
    ref_all: np.ndarray,
    label: str,
    source: Path | None,
) -> list[Run]:
    """One server process of ``mode`` (from ``source``; None: this tree) driven at each rate."""
    runs = []
    server = ServerProcess(args.engine_dir, mode, args, source=source)
    path = f"server ({'REST' if args.protocol == 'rest' else 'gRPC'}{label})"
    try:
        for k, rate in enumerate(rates):
            sl = slice(k * n, (k + 1) * n)
            inputs = {name: v[sl] for name, v in inputs_all.items()}
            arrivals = poisson_arrivals(rate, n, args.seed + k)
            if args.protocol == "rest":
                responses, t0 = drive_rest(server.http_port, manifest.model.name, inputs, arrivals, timeout_s=300)
            else:
                responses, t0 = drive(server.grpc_port, manifest, manifest.model.name, inputs, arrivals, timeout_s=300)
            runs.append(server_run(mode, rate, responses, t0, arrivals, ref_all[sl], path))
            print(runs[-1].row(), file=sys.stderr)
    finally:
        rc = server.stop()
    if rc != 0:
        print(f"warning: the {mode} server{label} exited with status {rc}", file=sys.stderr)
    return runs


def baseline_table(runs: list[Run]) -> str:
    """Per mode and rate: this tree's and the baseline's p50 and throughput (medians over the
    repeats, with their spread), and this tree's over the baseline's."""
    groups: dict[tuple[str, float, bool], list[Run]] = {}
    for run in runs:
        if run.path.startswith("server"):
            groups.setdefault((run.mode, run.rate, "baseline" in run.path), []).append(run)
    rows = []
    for (mode, rate, is_baseline), mine in sorted(groups.items()):
        theirs = groups.get((mode, rate, True))
        if is_baseline or not theirs:
            continue
        cells = []
        for pick in (lambda r: r.latency_ms["p50"], lambda r: r.throughput_rps):
            a = [v for v in map(pick, mine) if v is not None]
            b = [v for v in map(pick, theirs) if v is not None]
            if not a or not b:
                cells.append("- | - | -")
                continue
            ma, mb = float(np.median(a)), float(np.median(b))
            cells.append(
                f"{ma:.2f} (±{(max(a) - min(a)) / 2:.2f}) | {mb:.2f} (±{(max(b) - min(b)) / 2:.2f}) | {ma / mb:.3f}x"
            )
        paired = [
            f"{a.latency_ms['p50'] - b.latency_ms['p50']:+.2f}"
            for a, b in zip(mine, theirs, strict=False)
            if a.latency_ms["p50"] is not None and b.latency_ms["p50"] is not None
        ]
        rows.append(f"| {mode} | {rate:g} | {len(mine)} | " + " | ".join(cells) + f" | {' / '.join(paired)} |")
    head = (
        "| mode | rate (rps) | repeats | p50 ms | baseline p50 ms | p50 ratio | throughput rps | baseline rps "
        "| throughput ratio | p50 minus baseline's, per repeat (ms) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows)


def overhead_table(runs: list[Run]) -> str:
    """Per mode and rate: server p50 minus replay p50 (ms)."""
    rows = []
    index = {(r.mode, r.path, r.rate): r for r in runs}
    for (mode, path, rate), run in sorted(index.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        other = index.get((mode, "in-process replay", rate))
        if (
            path.startswith("server")
            and other
            and run.latency_ms["p50"] is not None
            and other.latency_ms["p50"] is not None
        ):
            rows.append(
                f"| {mode} | {rate:g} | {run.latency_ms['p50'] - other.latency_ms['p50']:+.2f} | "
                f"{run.latency_ms['p99'] - other.latency_ms['p99']:+.2f} |"
            )
    if not rows:
        return ""
    return "| mode | rate (rps) | p50 overhead ms | p99 overhead ms |\n|---|---|---|---|\n" + "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
