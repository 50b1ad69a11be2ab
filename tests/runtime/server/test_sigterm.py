"""``apparate-run --engine-dir DIR --serve`` as a subprocess: SIGTERM with requests in flight
answers every accepted request, then the process exits 0."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_helpers import Workload, grpc_inputs, http_inputs, params_of, start_serve_process, stop_process
from tritonclient.utils import InferenceServerException

IN_FLIGHT = 12


def _start(workload: Workload) -> tuple[subprocess.Popen, int, int, list[str]]:
    """Start the server (batches wait up to 60 s for 64 requests, so requests stay queued)."""
    return start_serve_process(
        [
            "--engine-dir",
            str(workload.engine_dir),
            "--serve",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--threads",
            "1",
            "--max-batch",
            "64",
            "--max-delay-ms",
            "60000",
        ]
    )


def _inflight(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("apparate_inflight_requests{"):
                return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no apparate_inflight_requests in /metrics")


def test_sigterm_answers_accepted_requests_then_exits_0(workload: Workload) -> None:
    proc, http_port, grpc_port, lines = _start(workload)
    model_name = workload.manifest.model.name
    out: dict = {}

    def http_one(i: int) -> None:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=60)
        try:
            r = client.infer(
                model_name, http_inputs(workload, i), request_id=str(i), parameters={"apparate_wait_final": True}
            )
            out[i] = r.as_numpy(workload.manifest.model.output)
        except InferenceServerException as exc:
            out[i] = exc

    def grpc_one(i: int) -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            r = client.infer(
                model_name, grpc_inputs(workload, i), request_id=str(i), parameters={"apparate_wait_final": True}
            )
            assert params_of(r)["apparate_is_final"]
            out[i] = r.as_numpy(workload.manifest.model.output)
        except InferenceServerException as exc:
            out[i] = exc

    try:
        threads = [threading.Thread(target=http_one if i % 2 else grpc_one, args=(i,)) for i in range(IN_FLIGHT)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while _inflight(http_port) < IN_FLIGHT:
            assert time.monotonic() < deadline, "requests never all reached the server"
            time.sleep(0.05)
        assert not out, "a request was answered before its batch was due"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        for t in threads:
            t.join(30)
    finally:
        stop_process(proc)
    log = "".join(lines)
    assert rc == 0, log
    assert "stopping" in log, log
    assert sorted(out) == list(range(IN_FLIGHT))
    for i, got in out.items():
        assert not isinstance(got, Exception), (i, got, log)
        np.testing.assert_allclose(got, workload.expected(i), rtol=1e-4, atol=1e-4)
