"""Helpers of the server tests: eval inputs with the original model's outputs (``model.onnx`` run
directly with ONNX Runtime, never through the code under test), servers on free 127.0.0.1 ports,
a gate that holds the engine's batches, and tensors for the real clients.

Every client here is a real one (tritonclient.http, tritonclient.grpc, urllib, raw sockets) talking
to a real server over loopback. Engines use one ORT thread (shared CI cores).
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from apparate_trt.backends import open_runner
from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import Manifest, read_manifest
from apparate_trt.runtime.api import load
from apparate_trt.runtime.server import Server, ServingConfig

THREADS = 1
CONSTRAINT = 0.05  # accuracy constraint of the shared server: loose enough that ramps do exit


@dataclass
class Workload:
    """Eval samples of an engine and the original model's score output on each."""

    engine_dir: Path
    manifest: Manifest
    inputs: dict[str, np.ndarray]  # batch axis first
    reference: np.ndarray  # [n, classes]

    @property
    def n(self) -> int:
        return int(self.reference.shape[0])

    def batch(self, start: int, count: int = 1) -> dict[str, np.ndarray]:
        """Samples ``start .. start + count - 1`` (cycling), batch axis first."""
        idx = [(start + k) % self.n for k in range(count)]
        return {name: np.ascontiguousarray(value[idx]) for name, value in self.inputs.items()}

    def expected(self, start: int, count: int = 1) -> np.ndarray:
        return self.reference[[(start + k) % self.n for k in range(count)]]


def make_workload(engine: tuple[Path, Path]) -> Workload:
    engine_dir, eval_npz = engine
    manifest = read_manifest(engine_dir)
    inputs = load_inputs(eval_npz, manifest.model.inputs)
    runner = open_runner(manifest.path(manifest.model.file), threads=THREADS)
    reference = runner.run(inputs, [manifest.model.output])[manifest.model.output]
    return Workload(Path(engine_dir), manifest, inputs, np.asarray(reference))


def start_server(engine_dir: Path, **kwargs: Any) -> Server:
    """A started server on free ports around a freshly loaded engine (one ORT thread); ``kwargs``
    are ServingConfig fields or its engine's."""
    config = ServingConfig(http_port=0, grpc_port=0).replace(
        **{"threads": THREADS, "max_batch": 8, "max_delay_ms": 2.0, "queue_size": 256, **kwargs}
    )
    return Server(load(engine_dir, config.engine), config).start()


class Gate:
    """Holds the engine's batches (its executor's run_batch) until opened: deterministic queueing."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.opened = threading.Event()
        self.entered = threading.Event()
        self._inner = engine.executor
        gate = self

        class Gated:
            def __getattr__(self, name: str) -> Any:
                return getattr(gate._inner, name)

            def run_batch(self, inputs: Any, on_release: Any, **kwargs: Any) -> Any:
                gate.entered.set()
                assert gate.opened.wait(30.0), "gate never opened"
                return gate._inner.run_batch(inputs, on_release, **kwargs)

        engine.executor = Gated()

    def open(self) -> None:
        self.opened.set()

    def remove(self) -> None:
        self.opened.set()
        self.engine.executor = self._inner


def http_inputs(workload: Workload, start: int, count: int = 1, binary: bool = True) -> list[httpclient.InferInput]:
    """tritonclient.http tensors of samples ``start ..`` (binary or JSON data)."""
    out = []
    for name, value in workload.batch(start, count).items():
        inp = httpclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        inp.set_data_from_numpy(value, binary_data=binary)
        out.append(inp)
    return out


def grpc_inputs(workload: Workload, start: int, count: int = 1) -> list[grpcclient.InferInput]:
    """tritonclient.grpc tensors of samples ``start ..``."""
    out = []
    for name, value in workload.batch(start, count).items():
        inp = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        inp.set_data_from_numpy(value)
        out.append(inp)
    return out


def grpc_client(server: Server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def http_client(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", connection_timeout=30, network_timeout=60)


def params_of(result: Any) -> dict:
    """A gRPC response's parameters as plain values."""
    return {key: getattr(p, p.WhichOneof("parameter_choice")) for key, p in result.get_response().parameters.items()}


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` every 10 ms; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def metric_value(text: str, sample: str, **labels: str) -> float:
    """The sum of the ``sample`` series (e.g. ``apparate_requests_total``) in a ``/metrics`` text
    whose labels include ``labels``, parsed with ``prometheus_client``'s own parser (0 if none)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


READY_LINE = re.compile(r"REST at [^ ]+:(\d+) and gRPC at [^ ]+:(\d+)")


def start_serve_process(flags: list[str], timeout_s: float = 60.0) -> tuple[subprocess.Popen, int, int, list[str]]:
    """``apparate-run FLAGS`` (a ``--serve`` command) as a subprocess; once its ready line is out:
    the process, its HTTP and gRPC ports, and its stderr lines so far (filled on as it runs)."""
    cmd = [sys.executable, "-c", "from apparate_trt.cli.run import main; raise SystemExit(main())", *flags]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    lines: list[str] = []
    found: list[tuple[int, int]] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            match = READY_LINE.search(line)
            if match:
                found.append((int(match.group(1)), int(match.group(2))))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not found:
        assert proc.poll() is None, "server exited early:\n" + "".join(lines)
        assert time.monotonic() < deadline, "no ready line:\n" + "".join(lines)
        time.sleep(0.05)
    return proc, found[0][0], found[0][1], lines


def stop_process(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs (a test's cleanup)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def scrape(http_port: int) -> str:
    """The ``/metrics`` text of the server on ``http_port`` (127.0.0.1)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as resp:
        return resp.read().decode()


# ------------------------------------------------------------------------ raw HTTP and JSON
def post(
    port: int, path: str, body: bytes, headers: dict | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict]:
    scheme = "https" if context else "http"
    req = urllib.request.Request(
        f"{scheme}://127.0.0.1:{port}{path}", body, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def raw_http(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server writes back before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("HTTP/1."), f"no status line in {raw[:120]!r}"
    return int(status_line.split()[1]), json.loads(body)


def infer_request(workload: Workload, i: int = 0, **first: object) -> dict:
    inputs = []
    for k, (name, value) in enumerate(workload.batch(i).items()):
        entry = {
            "name": name,
            "shape": list(value.shape),
            "datatype": "FP32" if value.dtype == np.float32 else "INT64",
            "data": value.ravel().tolist(),
        }
        if k == 0:
            entry.update(first)
        inputs.append(entry)
    return {"inputs": inputs}


def infer_path(server) -> str:
    return f"/v2/models/{server.spec.name}/infer"


def still_serves(server, workload: Workload) -> None:
    status, doc = post(server.http_port, infer_path(server), json.dumps(infer_request(workload, 3)).encode())
    assert status == 200, doc
