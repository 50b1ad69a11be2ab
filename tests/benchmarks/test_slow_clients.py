"""``benchmarks/slow_clients.py``'s measurement on a real in-process server (the tiny ResNet engine),
scaled down: 300 slow connections and a 2 s header deadline. Normal clients are served while they
are held, and the server closes each of them at the header deadline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from runtime_helpers import load_script

from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import read_manifest
from apparate_trt.runtime.server import Server

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "slow_clients.py"
DEADLINE_S = 2.0


def test_slow_connections_are_closed_at_the_deadline_and_normal_clients_are_served(tiny_resnet_engine) -> None:
    slow_clients = load_script(SCRIPT)  # it puts benchmarks/ on sys.path
    from rest_load import infer_request

    engine_dir, eval_npz = tiny_resnet_engine
    manifest = read_manifest(engine_dir)
    inputs = load_inputs(eval_npz, manifest.model.inputs)
    request = infer_request(manifest.model.name, {k: v[:1] for k, v in inputs.items()}, 0)
    with Server.from_engine_dir(engine_dir, http_port=0, grpc_port=None, threads=1) as server:
        server._http.header_timeout_s = DEADLINE_S  # read as each connection opens
        got = slow_clients.measure(server.http_port, request, slow=300, every_s=0.5, normal=20, close_wait_s=15.0)
        assert got["served"] == 20 and got["statuses"] == {"200": 20}, got
        assert got["served_p95_ms"] < 1000.0, got
        assert got["slow_closed"] == 300, got
        after = got["slow_closed_after_s"]
        assert DEADLINE_S - 0.3 <= after["min"] and after["max"] < DEADLINE_S + 3.0, after
        status, _ = slow_clients.one_request(server.http_port, request, 10.0)
        assert status == 200
    assert np.isfinite(got["served_p50_ms"])
