"""Slow connections against the REST server: do normal clients still get served?

``--slow`` connections each send a request line, then one header byte every ``--every-s`` seconds
(a slowloris attack), and are held open. While they are held, ``--normal`` requests (one REST
infer each, the binary tensor extension, a fresh connection each, one after another) are timed.
Then the script waits for the server to close the slow connections and reports when it did,
counted from each one's opening: the header deadline.

    python benchmarks/slow_clients.py --engine-dir out/bench/cv --data data/cv/eval.npz \
        [--slow 600] [--every-s 5] [--normal 40] [--baseline-src /tmp/old-checkout] [--out FILE]

``--baseline-src`` runs the same attack on a server from another source tree (e.g. a git worktree of
an older commit), in the same run. Latencies in ms, times in seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import ServerProcess  # noqa: E402
from rest_load import infer_request  # noqa: E402

from apparate_trt.data import load_inputs  # noqa: E402
from apparate_trt.engine_dir import read_manifest  # noqa: E402


class SlowClients:
    """``count`` connections that send a request line, then one header byte every ``every_s``;
    each one's close by the server is recorded (monotonic s)."""

    def __init__(self, port: int, count: int, every_s: float) -> None:
        self.socks: list[socket.socket] = []
        self.opened: list[float] = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sock.setblocking(False)
            self.socks.append(sock)
            self.opened.append(time.monotonic())
        self.closed_at: dict[int, float] = {}
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, name="slow-clients", daemon=True)
        self._thread.start()

    def _drip(self) -> None:
        while not self._stop.wait(min(self.every_s, 0.25)):
            due = time.monotonic()
            for i, sock in enumerate(self.socks):
                if i not in self.closed_at and not self._alive(sock, send=(due - self.opened[i]) % self.every_s < 0.25):
                    self.closed_at[i] = time.monotonic()

    @staticmethod
    def _alive(sock: socket.socket, send: bool) -> bool:
        """False once the server has closed ``sock`` (EOF, a reset, or an answer then EOF)."""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return False
        except BlockingIOError:
            pass
        except OSError:
            return False
        if send:
            try:
                sock.send(b"a")
            except BlockingIOError:
                pass
            except OSError:
                return False
        return True

    def close_times_s(self) -> list[float]:
        """Seconds from each closed connection's opening to its close."""
        return [t - self.opened[i] for i, t in sorted(self.closed_at.items())]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def one_request(port: int, request: bytes, timeout_s: float) -> tuple[int | None, float]:
    """One infer on a fresh connection: (HTTP status or None if none came, seconds)."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                head += chunk
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else None
    except OSError:
        status = None
    return status, time.monotonic() - t0


def measure(
    port: int, request: bytes, slow: int, every_s: float, normal: int, close_wait_s: float, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Hold ``slow`` slow connections, time ``normal`` requests, wait up to ``close_wait_s`` for the
    server to close the slow ones; the figures as a dict."""
    attack = SlowClients(port, slow, every_s)
    try:
        time.sleep(0.5)
        results = [one_request(port, request, timeout_s) for _ in range(normal)]
        latencies = [seconds for status, seconds in results if status == 200]
        deadline = time.monotonic() + close_wait_s
        while len(attack.closed_at) < slow and time.monotonic() < deadline:
            time.sleep(0.1)
        closed = attack.close_times_s()
    finally:
        attack.close()
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "slow_connections": slow,
        "byte_every_s": every_s,
        "normal_requests": normal,
        "served": len(latencies),
        "statuses": statuses,
        "served_p50_ms": float(np.percentile(latencies, 50) * 1000) if latencies else None,
        "served_p95_ms": float(np.percentile(latencies, 95) * 1000) if latencies else None,
        "slow_closed": len(closed),
        "slow_closed_after_s": {
            "min": float(min(closed)) if closed else None,
            "median": float(np.median(closed)) if closed else None,
            "max": float(max(closed)) if closed else None,
        },
    }


def row(label: str, m: dict[str, Any]) -> str:
    after = m["slow_closed_after_s"]
    p95 = "-" if m["served_p95_ms"] is None else f"{m['served_p95_ms']:.1f}"
    closed = "-" if after["median"] is None else f"{after['min']:.1f} / {after['median']:.1f} / {after['max']:.1f}"
    return (
        f"| {label} | {m['slow_connections']} | {m['served']}/{m['normal_requests']} | {p95} | "
        f"{m['slow_closed']}/{m['slow_connections']} | {closed} | {m['statuses']} |"
    )


HEADER = (
    "| server | slow connections | normal requests served | p95 ms | slow ones closed | closed after s "
    "(min / median / max) | statuses |\n|---|---|---|---|---|---|---|"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", type=Path, default=Path("out/bench/cv"), help="compiled engine directory")
    p.add_argument("--data", type=Path, default=Path("data/cv/eval.npz"), help="inputs (.npz) for the normal requests")
    p.add_argument("--slow", type=int, default=600, help="slow connections held (default 600)")
    p.add_argument("--every-s", type=float, default=5.0, help="seconds between a slow connection's bytes (default 5)")
    p.add_argument("--normal", type=int, default=40, help="normal requests timed while they are held (default 40)")
    p.add_argument("--close-wait-s", type=float, default=40.0, help="how long to wait for the slow ones to close")
    p.add_argument("--baseline-src", type=Path, default=None, help="also attack a server from this source tree")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the server")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.slow + 256)), hard))
    manifest = read_manifest(args.engine_dir)
    inputs = load_inputs(args.data, manifest.model.inputs)
    request = infer_request(manifest.model.name, {k: v[:1] for k, v in inputs.items()}, 0)
    server_args = argparse.Namespace(
        max_batch=8, max_delay_ms=5.0, accuracy_constraint=0.01, queue_size=1024, threads=args.threads
    )
    sources: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.baseline_src is not None:
        sources.append((f"baseline ({args.baseline_src})", args.baseline_src.resolve()))
    results = {}
    for label, source in sources:
        server = ServerProcess(args.engine_dir, "vanilla", server_args, source=source)
        try:
            results[label] = measure(server.http_port, request, args.slow, args.every_s, args.normal, args.close_wait_s)
        finally:
            server.stop()
        print(row(label, results[label]), file=sys.stderr)
    print(HEADER)
    for label, m in results.items():
        print(row(label, m))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"engine_dir": str(args.engine_dir), "runs": results}, indent=2))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
