"""Bad requests, overload, timeouts and disconnects, each against a real server on 127.0.0.1.

Timing never decides a verdict: where a test needs requests to wait, a :class:`Gate` holds the
engine's batches until the test opens it; waits are bounded polls on observable state.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_helpers import (
    Gate,
    Workload,
    grpc_client,
    grpc_inputs,
    http_client,
    http_inputs,
    infer_request,
    metric_value,
    params_of,
    start_server,
    status_and_json,
    wait_until,
)
from tritonclient.utils import InferenceServerException

QUEUE = 4
MAX_BATCH = 2


def post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, Any]:
    """POST ``body``; (status, headers, parsed JSON body)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}", body, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def _infer_path(server, model: str | None = None) -> str:
    return f"/v2/models/{model or server.spec.name}/infer"


# ----------------------------------------------------------------------------------- bad requests
BAD_JSON_CASES = {
    "malformed body": (lambda w: b'{"inputs": [', "not valid JSON"),
    "no inputs": (lambda w: json.dumps({"inputs": []}).encode(), "non-empty 'inputs'"),
    "wrong input name": (lambda w: json.dumps(infer_request(w, name="nope")).encode(), "unknown input 'nope'"),
    "wrong shape": (lambda w: json.dumps(infer_request(w, shape=[1, 7], data=[0.0] * 7)).encode(), "has shape [1, 7]"),
    "wrong datatype": (lambda w: json.dumps(infer_request(w, datatype="FP64")).encode(), "datatype FP64"),
    "unsupported datatype": (lambda w: json.dumps(infer_request(w, datatype="BYTES")).encode(), "not supported"),
    "wrong data count": (lambda w: json.dumps(infer_request(w, data=[0.0, 1.0])).encode(), "needs"),
    "NaN": (
        lambda w: json.dumps(
            infer_request(w, data=[math.nan] * int(np.prod(infer_request(w)["inputs"][0]["shape"])))
        ).encode(),
        "NaN",
    ),
    "unknown output": (
        lambda w: json.dumps({**infer_request(w), "outputs": [{"name": "nope"}]}).encode(),
        "unknown output 'nope'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_CASES))
def test_http_bad_request_is_400(server, workload: Workload, case: str) -> None:
    make_body, message = BAD_JSON_CASES[case]
    if (
        case in ("wrong input name", "NaN", "wrong data count", "wrong shape")
        and workload.manifest.model.inputs[0].dtype != "float32"
    ):
        pytest.skip("float32 first input needed")
    status, _, doc = post(server, _infer_path(server), make_body(workload))
    assert status == 400, (status, doc)
    assert message in doc["error"], doc["error"]
    assert "\n" not in doc["error"]


def test_http_unknown_model_and_version(server, workload: Workload) -> None:
    body = json.dumps(infer_request(workload)).encode()
    status, _, doc = post(server, _infer_path(server, "no_such_model"), body)
    assert status == 400 and "unknown model 'no_such_model'" in doc["error"]
    status, _, doc = post(server, f"/v2/models/{server.spec.name}/versions/7/infer", body)
    assert status == 400 and "unknown version '7'" in doc["error"]


def test_http_binary_nan_and_bad_header(server, workload: Workload) -> None:
    """tritonclient's binary tensors: NaN is caught; a header length past the body is a 400."""
    client = http_client(server)
    x = workload.batch(0)
    name = next(iter(x))
    bad = x[name].astype(np.float32)
    bad.flat[0] = np.nan
    inp = httpclient.InferInput(name, list(bad.shape), "FP32")
    inp.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException) as err:
        client.infer(server.spec.name, [inp])
    assert err.value.status() == "400" and "NaN" in err.value.message()
    status, _, doc = post(server, _infer_path(server), b"{}", {"Inference-Header-Content-Length": "99"})
    assert status == 400 and "Inference-Header-Content-Length" in doc["error"]
    status, _, doc = post(server, _infer_path(server), b"{}", {"Inference-Header-Content-Length": "-5"})
    assert status == 400 and "is negative" in doc["error"]


def test_grpc_bad_requests_are_invalid_argument(server, workload: Workload) -> None:
    client = grpc_client(server)
    x = workload.batch(0)
    name, value = next(iter(x.items()))
    cases = []
    wrong_name = grpcclient.InferInput("nope", list(value.shape), "FP32")
    wrong_name.set_data_from_numpy(value.astype(np.float32))
    cases.append(("unknown input 'nope'", server.spec.name, [wrong_name]))
    wrong_dtype = grpcclient.InferInput(name, list(value.shape), "FP64")
    wrong_dtype.set_data_from_numpy(value.astype(np.float64))
    cases.append(("datatype FP64", server.spec.name, [wrong_dtype]))
    flat = value.reshape(1, -1).astype(value.dtype)
    wrong_shape = grpcclient.InferInput(name, list(flat.shape), "FP32")
    wrong_shape.set_data_from_numpy(flat)
    cases.append(("has shape", server.spec.name, [wrong_shape]))
    nan = value.astype(np.float32).copy()
    nan.flat[-1] = np.nan
    has_nan = grpcclient.InferInput(name, list(nan.shape), "FP32")
    has_nan.set_data_from_numpy(nan)
    cases.append(("NaN", server.spec.name, [has_nan]))
    cases.append(("unknown model", "no_such_model", grpc_inputs(workload, 0)))
    for message, model, inputs in cases:
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, inputs)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT", (message, err.value)
        assert message in err.value.message()
    ok = client.infer(server.spec.name, grpc_inputs(workload, 0), parameters={"apparate_wait_final": True})
    np.testing.assert_allclose(ok.as_numpy(workload.manifest.model.output), workload.expected(0), rtol=1e-4, atol=1e-4)


def test_grpc_stream_bad_request_fails_alone(server, workload: Workload) -> None:
    client = grpc_client(server)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        wrong = grpcclient.InferInput("nope", [1], "FP32")
        wrong.set_data_from_numpy(np.zeros(1, np.float32))
        client.async_stream_infer(server.spec.name, [wrong], request_id="bad")
        client.async_stream_infer(
            server.spec.name, grpc_inputs(workload, 1), request_id="good", parameters={"apparate_wait_final": True}
        )
        got = [responses.get(timeout=30) for _ in range(2)]
    finally:
        client.stop_stream()
    errors = [e for r, e in got if e is not None]
    results = [r for r, e in got if r is not None]
    assert len(errors) == 1 and "bad: unknown input 'nope'" in errors[0].message()
    assert len(results) == 1 and results[0].get_response().id == "good"
    assert params_of(results[0])["triton_final_response"] is True


# ------------------------------------------------------------------------------ overload, timeouts
@pytest.fixture(scope="module")
def small_server(workload: Workload):
    """A server with a tiny queue (QUEUE waiting, batches of MAX_BATCH)."""
    srv = start_server(workload.engine_dir, queue_size=QUEUE, max_batch=MAX_BATCH, max_delay_ms=1.0)
    yield srv
    assert srv.stop()


@pytest.fixture
def gate(small_server):
    g = Gate(small_server.engine)
    yield g
    g.remove()


def _http_one(server, workload: Workload, i: int, out: dict) -> None:
    t0 = time.monotonic()
    status, headers, doc = post(
        server, _infer_path(server), json.dumps({**infer_request(workload, i), "id": str(i)}).encode()
    )
    out[("http", i)] = (status, headers, doc, time.monotonic() - t0)


def _grpc_one(server, workload: Workload, i: int, out: dict) -> None:
    client = grpc_client(server)
    t0 = time.monotonic()
    try:
        result = client.infer(server.spec.name, grpc_inputs(workload, i), request_id=str(i))
        out[("grpc", i)] = ("OK", result, None, time.monotonic() - t0)
    except InferenceServerException as exc:
        out[("grpc", i)] = (exc.status(), None, exc.message(), time.monotonic() - t0)


def test_overload_refuses_fast_and_loses_nothing(small_server, gate: Gate, workload: Workload) -> None:
    srv = small_server
    before = srv.engine.stats()
    sent_http, sent_grpc = 24, 8
    out: dict = {}
    threads = [threading.Thread(target=_http_one, args=(srv, workload, i, out)) for i in range(sent_http)]
    threads += [threading.Thread(target=_grpc_one, args=(srv, workload, 100 + i, out)) for i in range(sent_grpc)]
    for t in threads:
        t.start()
    sent = sent_http + sent_grpc

    def accepted() -> int:
        return srv.engine.stats()["requests"] - before["requests"]

    # While the gate holds the engine, only refusals can finish: wait for every request to be
    # either refused (its thread done) or accepted by the engine.
    wait_until(lambda: len(out) + accepted() == sent, what="each request to be refused or queued")
    refused = dict(out)
    assert 0 < len(refused) and accepted() <= QUEUE + MAX_BATCH
    for (protocol, _), (status, headers, detail, _elapsed) in refused.items():
        if protocol == "http":
            assert status == 503 and headers.get("Retry-After") == "1", (status, detail)
            assert "queue full" in detail["error"]
        else:
            assert status == "StatusCode.RESOURCE_EXHAUSTED", (status, detail)
    gate.open()
    for t in threads:
        t.join(60)
    assert len(out) == sent
    served = {k: v for k, v in out.items() if k not in refused}
    assert len(served) == accepted()
    for (protocol, i), (status, result, detail, _) in served.items():
        expected = workload.expected(i)
        if protocol == "http":
            assert status == 200 and detail["id"] == str(i)
            data = detail["outputs"][0]
            got = np.asarray(data["data"], np.float32).reshape(data["shape"])
            final = detail["parameters"]["apparate_is_final"]
        else:
            assert status == "OK"
            got, final = result.as_numpy(workload.manifest.model.output), params_of(result)["apparate_is_final"]
        if final:
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    text = srv.metrics.render()
    overloaded = metric_value(text, "apparate_requests_total", code="overloaded")
    assert overloaded == len(refused)


def test_request_timeout(small_server, gate: Gate, workload: Workload) -> None:
    """A request not answered within its timeout gets 504 / DEADLINE_EXCEEDED; others go on."""
    srv = small_server
    with pytest.raises(InferenceServerException) as err:
        http_client(srv).infer(srv.spec.name, http_inputs(workload, 0), timeout=200_000)  # microseconds
    assert err.value.status() == "504" and "timeout" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        grpc_client(srv).infer(srv.spec.name, grpc_inputs(workload, 1), timeout=200_000)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    gate.open()
    ok = grpc_client(srv).infer(srv.spec.name, grpc_inputs(workload, 2), parameters={"apparate_wait_final": True})
    np.testing.assert_allclose(ok.as_numpy(workload.manifest.model.output), workload.expected(2), rtol=1e-4, atol=1e-4)
    wait_until(lambda: srv.service.inflight == 0, what="no request in flight")


def test_client_disconnect_costs_only_its_answer(small_server, gate: Gate, workload: Workload) -> None:
    srv = small_server
    # gRPC: a cancelled call.
    calls = queue.Queue()
    ctx = grpc_client(srv).async_infer(
        srv.spec.name, grpc_inputs(workload, 0), callback=lambda result, error: calls.put(error)
    )
    # REST: a client that sends its request and hangs up.
    body = json.dumps(infer_request(workload, 1)).encode()
    sock = socket.create_connection(("127.0.0.1", srv.http_port), timeout=10)
    sock.sendall(
        f"POST {_infer_path(srv)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        f"{len(body)}\r\n\r\n".encode()
        + body
    )
    wait_until(lambda: srv.service.inflight == 2, what="both requests in flight")
    ctx.cancel()
    sock.close()
    # the cancelled gRPC call is seen by the server while the engine is still held (the handler's
    # wait is cancelled), so it is counted as a disconnect before any answer could race it
    wait_until(
        lambda: metric_value(srv.metrics.render(), "apparate_requests_total", protocol="grpc", code="disconnected") > 0,
        what="the gRPC disconnect to be counted",
    )
    gate.open()
    wait_until(lambda: srv.service.inflight == 0, what="the abandoned requests to be dropped")
    assert "CANCELLED" in str(calls.get(timeout=10))
    ok = grpc_client(srv).infer(srv.spec.name, grpc_inputs(workload, 3), parameters={"apparate_wait_final": True})
    np.testing.assert_allclose(ok.as_numpy(workload.manifest.model.output), workload.expected(3), rtol=1e-4, atol=1e-4)


def test_taken_port_is_a_clear_error(server, workload: Workload) -> None:
    """Binding a port in use fails with a one-line ApparateError (gRPC must not share the port)."""
    from types import SimpleNamespace

    from apparate_trt.errors import ApparateError
    from apparate_trt.runtime.server import Server

    stub = SimpleNamespace(manifest=workload.manifest, close=lambda: None, stats=lambda: {}, max_batch=8)
    with pytest.raises(ApparateError, match="cannot listen for HTTP"):
        Server(stub, http_port=server.http_port, grpc_port=None).start()
    with pytest.raises(ApparateError, match="cannot listen for gRPC"):
        Server(stub, http_port=None, grpc_port=server.grpc_port).start()


def test_stop_with_a_body_still_arriving_answers_503(workload: Workload, caplog: pytest.LogCaptureFixture) -> None:
    """A body still arriving when the stop's grace ends is not accepted yet: its client gets the
    protocol's 503 with Retry-After and a JSON error, not a 500, and no traceback is logged."""
    from apparate_trt.runtime.server.http import STOP_GRACE_S

    srv = start_server(workload.engine_dir, grpc_port=None)
    sock = socket.create_connection(("127.0.0.1", srv.http_port), timeout=STOP_GRACE_S + 20)
    try:
        sock.sendall(
            f"POST {_infer_path(srv)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{".encode()
        )
        wait_until(lambda: srv._http.requests_in_progress == 1, what="the app to wait for the rest of the body")
        with caplog.at_level(logging.ERROR):
            assert srv.stop(), "nothing was accepted, so the drain must succeed"
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    finally:
        sock.close()
    head = reply.partition(b"\r\n\r\n")[0].decode().lower()
    status, doc = status_and_json(reply)
    assert status == 503, reply
    assert "retry-after:" in head and "connection: close" in head, head
    assert "stopped before this request's body arrived" in doc["error"], doc
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text, caplog.text
