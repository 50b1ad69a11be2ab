"""Skip mode served over REST and gRPC (real tritonclient clients, real server on 127.0.0.1): a
skipped request's early answer is its last (stream marks it final), wait-final requests always get
the model's answer, and /metrics counts released, audited and skipped rows."""

from __future__ import annotations

import queue
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from server_helpers import (
    CONSTRAINT,
    Workload,
    grpc_client,
    grpc_inputs,
    http_client,
    http_inputs,
    params_of,
    start_server,
)

from apparate_trt.runtime.server import Server


@pytest.fixture(scope="module")
def skip_server(workload: Workload) -> Iterator[Server]:
    srv = start_server(workload.engine_dir, accuracy_constraint=CONSTRAINT, exit_mode="skip", audit_rate=0.05)
    yield srv
    assert srv.stop(), "the skip-mode server did not drain"


def test_stream_marks_a_skipped_early_answer_final(skip_server, workload: Workload) -> None:
    client = grpc_client(skip_server)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    count = 96
    by_id: dict[str, list] = {str(i): [] for i in range(count)}
    try:
        for i in range(count):
            client.async_stream_infer(skip_server.spec.name, grpc_inputs(workload, i), request_id=str(i))
        finals, deadline = 0, time.monotonic() + 30
        while finals < count and time.monotonic() < deadline:
            result, error = responses.get(timeout=30)
            assert error is None, error
            params = params_of(result)
            by_id[result.get_response().id].append(params)
            finals += bool(params["triton_final_response"])
    finally:
        client.stop_stream()
    assert finals == count and responses.empty()
    skipped = [rid for rid, got in by_id.items() if got[0].get("apparate_skipped")]
    assert skipped, "with a 5% audit rate some released requests leave the batch"
    for rid in skipped:
        (only,) = by_id[rid]
        assert only["triton_final_response"] and not only["apparate_is_final"]
        assert int(only["apparate_exit_site"]) in {s.id for s in workload.manifest.sites}
    for got in by_id.values():
        assert got[-1]["triton_final_response"] and (got[-1]["apparate_is_final"] or got[-1].get("apparate_skipped"))


def test_unary_answers_say_skipped_and_wait_final_is_never_skipped(skip_server, workload: Workload) -> None:
    grpc, http = grpc_client(skip_server), http_client(skip_server)
    out = workload.manifest.model.output
    name = skip_server.spec.name
    seen_skipped = False
    for i in range(40):
        early = grpc.infer(name, grpc_inputs(workload, i))
        params = params_of(early)
        seen_skipped |= bool(params.get("apparate_skipped"))
        if params.get("apparate_skipped"):
            assert not params["apparate_is_final"]
        final = grpc.infer(name, grpc_inputs(workload, i, 2), parameters={"apparate_wait_final": True})
        assert params_of(final) == {"apparate_exit_site": "final,final", "apparate_is_final": True}
        np.testing.assert_allclose(final.as_numpy(out), workload.expected(i, 2), rtol=1e-4, atol=1e-4)
        rest = http.infer(name, http_inputs(workload, i, 1, True), parameters={"apparate_wait_final": True})
        assert rest.get_response()["parameters"]["apparate_is_final"] is True
        np.testing.assert_allclose(rest.as_numpy(out), workload.expected(i), rtol=1e-4, atol=1e-4)
    assert seen_skipped
    with urllib.request.urlopen(f"http://127.0.0.1:{skip_server.http_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(
            (
                "apparate_skipped_rows_total",
                "apparate_released_rows_total",
                "apparate_audit_rate",
                "apparate_compute_saved_seconds_total",
            )
        )
    }
    assert (
        values["apparate_skipped_rows_total"] > 0
        and values["apparate_released_rows_total"] >= values["apparate_skipped_rows_total"]
    )
    assert values["apparate_compute_saved_seconds_total"] > 0 and 0 < values["apparate_audit_rate"] <= 1
