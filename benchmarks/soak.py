"""Soak: a long stream through ``apparate-run --serve`` shows flat memory and constant-time ``/metrics``.

The server runs in a subprocess (the real CLI, free 127.0.0.1 ports); ``--clients`` threads send
gRPC unary infers back to back (closed loop) over ``--phases`` equal phases of ``--requests``
requests in all. After each phase the script reads the server's resident memory
(``/proc/PID/status`` VmRSS) and times ``--scrapes`` scrapes of ``/metrics`` (median ms), and reads
the batches the engine ran from ``/metrics`` itself: with a batch per observation, the controller's
history fills its bound (HISTORY_KEPT observations) during the run, after which nothing it keeps
may grow.

Prints one row per phase and, from the same run, the memory growth after the first phase (MiB, and
MiB per 10,000 requests) and the ratio of the last phase's ``/metrics`` median to the first's.
``--out FILE`` writes the rows as JSON.

    python benchmarks/soak.py --engine-dir out/cv --data data/cv/eval.npz [--requests 20000] [--quick]

Memory in MiB (2^20 bytes), times in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from bench_server import ServerProcess

from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import read_manifest
from apparate_trt.runtime.control.records import HISTORY_KEPT

QUICK = {"requests": 1200, "phases": 4}


@dataclass
class Phase:
    """The server after one phase of the stream."""

    phase: int
    requests: int  # answered so far, in all
    batches: int  # the engine's batches so far (apparate_batches_total)
    rss_mib: float
    metrics_ms: float  # median wall time of one /metrics scrape
    metrics_bytes: int
    errors: int  # failed infers so far


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (MiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def scrape(port: int, times: int) -> tuple[float, int, str]:
    """``times`` scrapes of /metrics: (median ms, size of the last in bytes, its text)."""
    took, text = [], ""
    for _ in range(times):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            text = response.read().decode()
        took.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(took), len(text.encode()), text


def batches_run(text: str) -> int:
    """``apparate_batches_total`` from a /metrics text (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "apparate_batches_total":
                return int(sample.value)
    return 0


def send(grpc_port: int, inputs: dict[str, np.ndarray], count: int, clients: int, start: int) -> int:
    """``count`` infers over ``clients`` closed-loop threads, samples cycling from ``start``; the errors."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    n = int(next(iter(inputs.values())).shape[0])
    errors = [0] * clients
    next_index = iter(range(start, start + count))
    lock = threading.Lock()

    def worker(k: int) -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                tensors = []
                for name, array in inputs.items():
                    sample = array[i % n : i % n + 1]
                    tensor = grpcclient.InferInput(name, list(sample.shape), np_to_triton_dtype(sample.dtype))
                    tensor.set_data_from_numpy(np.ascontiguousarray(sample))
                    tensors.append(tensor)
                try:
                    client.infer(MODEL_NAME[0], tensors, client_timeout=60)
                except Exception:  # noqa: BLE001 - counted: the soak reports failures, it does not stop
                    errors[k] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(errors)


MODEL_NAME = [""]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine-dir", type=Path, default=Path("out/cv"), help="compiled engine directory (default out/cv)")
    p.add_argument(
        "--data", type=Path, default=Path("data/cv/eval.npz"), help="samples to send (default data/cv/eval.npz)"
    )
    p.add_argument("--requests", type=int, default=20000, help="requests in all (default 20000)")
    p.add_argument("--phases", type=int, default=10, help="equal phases, one measurement after each (default 10)")
    p.add_argument("--clients", type=int, default=4, help="closed-loop client threads (default 4)")
    p.add_argument("--scrapes", type=int, default=20, help="/metrics scrapes timed per phase (default 20)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['requests']} requests in {QUICK['phases']} phases")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the server (default 1)")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.phases = QUICK["requests"], QUICK["phases"]
    if args.requests < args.phases or args.phases < 2:
        p.error("give at least 2 phases and at least one request per phase")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = read_manifest(args.engine_dir)
    MODEL_NAME[0] = manifest.model.name
    inputs = load_inputs(args.data, manifest.model.inputs)
    server_args = argparse.Namespace(
        max_batch=8, max_delay_ms=2.0, accuracy_constraint=0.01, queue_size=1024, threads=args.threads
    )
    server = ServerProcess(args.engine_dir, "apparate", server_args)
    rows: list[Phase] = []
    t0 = time.perf_counter()
    try:
        per_phase, errors = args.requests // args.phases, 0
        print(
            f"soak: {manifest.model.name}, {args.requests} requests, {args.clients} clients, server pid "
            f"{server.proc.pid}"
        )
        print("| phase | requests | batches | RSS MiB | /metrics p50 ms | /metrics bytes | errors |")
        print("|---|---|---|---|---|---|---|")
        for phase in range(args.phases):
            errors += send(server.grpc_port, inputs, per_phase, args.clients, phase * per_phase)
            ms, size, text = scrape(server.http_port, args.scrapes)
            row = Phase(
                phase + 1, (phase + 1) * per_phase, batches_run(text), rss_mib(server.proc.pid), ms, size, errors
            )
            rows.append(row)
            print(
                f"| {row.phase} | {row.requests} | {row.batches} | {row.rss_mib:.1f} | {row.metrics_ms:.2f} | "
                f"{row.metrics_bytes} | {row.errors} |",
                flush=True,
            )
    finally:
        status = server.stop()
    first, last = rows[0], rows[-1]
    growth = last.rss_mib - first.rss_mib
    per_10k = growth / max(1, last.requests - first.requests) * 10000
    print(
        f"memory after phase 1: {first.rss_mib:.1f} MiB; at the end: {last.rss_mib:.1f} MiB "
        f"(growth {growth:+.1f} MiB, {per_10k:+.2f} MiB per 10,000 requests)"
    )
    full = next((r for r in rows if r.batches >= HISTORY_KEPT), None)
    if full is not None and full is not last:
        print(
            f"after the controller's history filled (phase {full.phase}, {full.batches} batches): "
            f"{full.rss_mib:.1f} MiB -> {last.rss_mib:.1f} MiB ({last.rss_mib - full.rss_mib:+.1f} MiB over "
            f"{last.requests - full.requests} requests)"
        )
    print(
        f"/metrics median: {first.metrics_ms:.2f} ms after phase 1, {last.metrics_ms:.2f} ms at the end "
        f"({last.metrics_ms / first.metrics_ms:.2f}x); the controller's history bound is {HISTORY_KEPT} "
        f"observations, and {last.batches} batches ran"
    )
    print(f"{last.errors} failed requests; server exit status {status}; {time.perf_counter() - t0:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": [asdict(r) for r in rows], "server_exit": status}, indent=2))
        print(f"written: {args.out}")
    return 0 if last.errors == 0 and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
