"""Fault run: `apparate-run --serve` under bursts past capacity, SIGTERM under mixed load, and
hostile requests; for each case: sent, answered OK, refused (by status), lost, and the server's
peak RSS.

A request is *lost* when the client gets no HTTP status / gRPC status that the server documents
for it (a reset connection mid-request, a bare CANCELLED, UNKNOWN, INTERNAL, a 5xx other than
503, or no answer at all). A connection refused after the listener closed (SIGTERM) is a clear
refusal, not a loss. Peak RSS is the server process's high-water mark (``VmHWM``) after the case.

    python benchmarks/fault_run.py --engine-dir out/bench/cv --data data/cv/eval.npz \
        [--out benchmarks/results/faults.json] [--quick]

Prints a Markdown table; the exit status is 1 when any request was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from bench_server import ServerProcess
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import np_to_triton_dtype

from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import read_manifest

OK_REFUSALS_HTTP = {400, 401, 404, 413, 503, 504}
OK_REFUSALS_GRPC = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED"}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Tally:
    """Outcomes of one case: ``ok``, refusals by status, ``lost``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outcomes: Counter = Counter()
        self.lock = threading.Lock()

    def add(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def lost(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k.startswith("lost"))

    def row(self, rss_mb: float) -> dict[str, Any]:
        refused = {k: n for k, n in self.outcomes.items() if k not in ("ok",) and not k.startswith("lost")}
        return {
            "case": self.name,
            "sent": self.sent,
            "ok": self.outcomes.get("ok", 0),
            "refused": refused,
            "lost": self.lost,
            "lost_detail": {k: n for k, n in self.outcomes.items() if k.startswith("lost")},
            "peak_rss_mb": round(rss_mb, 1),
        }


# ------------------------------------------------------------------------------------- clients
class Client:
    """REST and gRPC requests of the eval samples against one server process."""

    def __init__(self, server: ServerProcess, name: str, inputs: dict[str, np.ndarray]) -> None:
        self.server, self.name, self.inputs = server, name, inputs
        self.n = len(next(iter(inputs.values())))

    def json_body(self, i: int) -> bytes:
        entries = [
            {
                "name": k,
                "shape": [1, *v.shape[1:]],
                "datatype": np_to_triton_dtype(v.dtype),
                "data": v[i % self.n].ravel().tolist(),
            }
            for k, v in self.inputs.items()
        ]
        return json.dumps({"inputs": entries}).encode()

    def grpc_request(self, i: int) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=self.name, id=str(i))
        for k, v in self.inputs.items():
            t = request.inputs.add()
            t.name, t.datatype = k, np_to_triton_dtype(v.dtype)
            t.shape.extend([1, *v.shape[1:]])
            request.raw_input_contents.append(np.ascontiguousarray(v[i % self.n : i % self.n + 1]).tobytes())
        return request

    def post(self, body: bytes, headers: dict[str, str] | None = None, timeout: float = 120.0) -> str:
        """One REST infer: ``ok``, ``http <status>`` or ``lost: ...``."""
        url = f"http://127.0.0.1:{self.server.http_port}/v2/models/{self.name}/infer"
        req = urllib.request.Request(url, body, {"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read()
                return "ok"
        except urllib.error.HTTPError as err:
            err.read()
            return f"http {err.code}" if err.code in OK_REFUSALS_HTTP else f"lost: http {err.code}"
        except urllib.error.URLError as err:
            if isinstance(err.reason, ConnectionRefusedError):
                return "connection refused"
            return f"lost: {type(err.reason).__name__}"
        except (TimeoutError, ConnectionError, OSError) as exc:
            return f"lost: {type(exc).__name__}"


async def tally_call(call: Any, raw: bytes, tally: Tally, timeout_s: float) -> None:
    """One unary call; its outcome in ``tally`` (a failure to connect is a clear refusal)."""
    try:
        await call(raw, timeout=timeout_s)
        tally.add("ok")
    except grpc.aio.AioRpcError as err:
        name = err.code().name
        if name == "UNAVAILABLE" and "connect" in (err.details() or "").lower():
            tally.add("connection refused")
        else:
            tally.add(f"grpc {name}" if name in OK_REFUSALS_GRPC else f"lost: grpc {name}")


async def grpc_burst(port: int, requests: list[bytes], tally: Tally, method: str = "ModelInfer") -> None:
    """Send every request at once on one channel; tally each call's status."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 30)]
    ) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        await asyncio.gather(*(tally_call(call, r, tally, 120.0) for r in requests))


# --------------------------------------------------------------------------------------- cases
def case_rest_burst(client: Client, count: int) -> Tally:
    tally = Tally(f"REST burst: {count} concurrent requests")
    bodies = [client.json_body(i) for i in range(count)]
    with ThreadPoolExecutor(max_workers=min(count, 400)) as pool:
        for outcome in pool.map(client.post, bodies):
            tally.add(outcome)
    return tally


def case_grpc_burst(client: Client, count: int) -> Tally:
    tally = Tally(f"gRPC burst: {count} concurrent unary calls on one channel")
    asyncio.run(
        grpc_burst(client.server.grpc_port, [client.grpc_request(i).SerializeToString() for i in range(count)], tally)
    )
    return tally


def case_hostile(client: Client) -> list[Tally]:
    name, value = next(iter(client.inputs.items()))
    rest = list(value.shape[1:])
    tallies = []

    def one(label: str, outcome: str) -> None:
        t = Tally(label)
        t.add(outcome)
        tallies.append(t)

    one(
        "deflate bomb: 1 GiB of zeros in ~1 MB",
        client.post(zlib.compress(b"0" * (1 << 30), 9), {"Content-Encoding": "deflate"}),
    )
    huge = json.loads(client.json_body(0))
    huge["inputs"][0]["shape"] = [10**30, *rest]
    one("JSON shape [10**30, ...]", client.post(json.dumps(huge).encode()))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": [2**62, *rest],
                    "datatype": np_to_triton_dtype(value.dtype),
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    one(
        "binary shape [2**62, ...]",
        client.post(header + b"\0" * 16, {"Inference-Header-Content-Length": str(len(header))}),
    )
    dup = json.loads(client.json_body(0))
    dup["inputs"].append(dup["inputs"][0])
    one("duplicate input names (REST)", client.post(json.dumps(dup).encode()))
    big = client.grpc_request(0)
    del big.inputs[0].shape[:]
    big.inputs[0].shape.extend([2**62, *rest])
    t = Tally("gRPC shape [2**62, ...]")
    asyncio.run(grpc_burst(client.server.grpc_port, [big.SerializeToString()], t))
    tallies.append(t)
    t = Tally("gRPC garbage to ModelInfer")
    asyncio.run(grpc_burst(client.server.grpc_port, [b"\xff\xff\xff\xff garbage"], t))
    tallies.append(t)
    tallies.append(case_stream_garbage(client))
    tallies.append(case_slow_clients(client, 300))
    return tallies


def case_stream_garbage(client: Client) -> Tally:
    """One undecodable message then five good ones on a stream: each gets its answer."""
    tally = Tally("stream: 1 undecodable + 5 good messages")
    good = []
    for i in range(5):
        r = client.grpc_request(i)
        r.parameters["apparate_wait_final"].bool_param = True
        good.append(r.SerializeToString())
    with grpc.insecure_channel(f"127.0.0.1:{client.server.grpc_port}") as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(
            iter([b"\xff garbage", *good]), timeout=120
        )
        answers = [pb.ModelStreamInferResponse.FromString(raw) for raw in call]
        for a in answers:
            tally.add("stream error response" if a.error_message else "ok")
        if call.code() != grpc.StatusCode.OK:
            tally.add(f"lost: stream ended {call.code().name}")
    for _ in range(6 - len(answers)):
        tally.add("lost: no answer")
    return tally


def case_slow_clients(client: Client, count: int) -> Tally:
    """``count`` connections that send half a header and stall: refused past the connection
    limit, closed by the header deadline; then a good request."""
    tally = Tally(f"{count} slow connections (half a header each), then a good request")
    socks = []
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", client.server.http_port), timeout=60)
            s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nContent-")
            socks.append(s)
        except OSError:
            tally.add("lost: connect failed")
    for s in socks:
        try:
            data = s.recv(4096)
            tally.add(
                "http 503"
                if data.startswith(b"HTTP/1.1 503")
                else ("closed by the header deadline" if not data else "lost: other answer")
            )
        except (TimeoutError, ConnectionResetError) as exc:
            tally.add(f"lost: {type(exc).__name__}")
        finally:
            s.close()
    tally.add(client.post(client.json_body(0)))
    return tally


def case_sigterm(server: ServerProcess, client: Client, duration_s: float) -> tuple[Tally, int]:
    """Mixed REST + gRPC load; SIGTERM halfway. Every request must be answered or refused."""
    tally = Tally("SIGTERM under mixed REST + gRPC load")
    stop = threading.Event()

    def rest_loop(k: int) -> None:
        i = k
        while not stop.is_set():
            tally.add(client.post(client.json_body(i), timeout=90))
            i += 16

    async def grpc_loop() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        pending: set = set()
        i = 0
        while not stop.is_set():
            task = asyncio.ensure_future(tally_call(call, client.grpc_request(i).SerializeToString(), tally, 90.0))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
            await asyncio.sleep(0.004)
        await asyncio.gather(*pending)
        await channel.close()

    threads = [threading.Thread(target=rest_loop, args=(k,)) for k in range(8)]
    grpc_thread = threading.Thread(target=lambda: asyncio.run(grpc_loop()))
    for t in [*threads, grpc_thread]:
        t.start()
    time.sleep(duration_s / 2)
    status = server.stop()
    time.sleep(0.5)
    stop.set()
    for t in [*threads, grpc_thread]:
        t.join(120)
    return tally, status


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", type=Path, default=Path("out/bench/cv"))
    p.add_argument("--data", type=Path, default=Path("data/cv/eval.npz"))
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="smaller bursts (REST 200, gRPC 600)")
    p.add_argument("--threads", type=int, default=None, help="ORT threads of the server (default: all cores)")
    args = p.parse_args(argv)
    args.max_batch, args.max_delay_ms, args.accuracy_constraint, args.queue_size = 8, 5.0, 0.01, 256
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = read_manifest(args.engine_dir)
    inputs = load_inputs(args.data, manifest.model.inputs)
    inputs = {k: v[:256] for k, v in inputs.items()}
    rows = []
    t0 = time.monotonic()
    server = ServerProcess(args.engine_dir, "apparate", args)
    try:
        client = Client(server, manifest.model.name, inputs)
        rows.append(Tally("idle server after start").row(peak_rss_mb(server.proc.pid)))
        for tally in (
            case_rest_burst(client, 200 if args.quick else 600),
            case_grpc_burst(client, 600 if args.quick else 3000),
        ):
            rows.append(tally.row(peak_rss_mb(server.proc.pid)))
            print(f"  {tally.name}: {dict(tally.outcomes)}", file=sys.stderr, flush=True)
        for tally in case_hostile(client):
            rows.append(tally.row(peak_rss_mb(server.proc.pid)))
            print(f"  {tally.name}: {dict(tally.outcomes)}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    second = ServerProcess(args.engine_dir, "apparate", args)
    client = Client(second, manifest.model.name, inputs)
    pid = second.proc.pid
    rss = [0.0]
    sampler_stop = threading.Event()

    def sample() -> None:  # /proc vanishes with the process: keep the last reading
        while not sampler_stop.wait(0.05):
            try:
                rss[0] = max(rss[0], peak_rss_mb(pid))
            except OSError:
                return

    threading.Thread(target=sample, daemon=True).start()
    tally, status = case_sigterm(second, client, 4.0)
    sampler_stop.set()
    row = tally.row(rss[0])
    row["server_exit_status"] = status
    rows.append(row)
    print(f"  {tally.name}: {dict(tally.outcomes)}; server exit {status}", file=sys.stderr, flush=True)
    print(table(rows))
    lost = sum(r["lost"] for r in rows)
    print(f"\nlost: {lost} of {sum(r['sent'] for r in rows)} requests; run took {time.monotonic() - t0:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"command": "python benchmarks/fault_run.py" + (" --quick" if args.quick else ""), "rows": rows},
                indent=2,
            )
            + "\n"
        )
    return 1 if lost else 0


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | sent | answered OK | refused (status: count) | lost | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        refused = ", ".join(f"{k}: {n}" for k, n in sorted(r["refused"].items())) or "-"
        lost = str(r["lost"]) + (
            f" ({', '.join(f'{k}: {n}' for k, n in r['lost_detail'].items())})" if r["lost"] else ""
        )
        lines.append(f"| {r['case']} | {r['sent']} | {r['ok']} | {refused} | {lost} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
