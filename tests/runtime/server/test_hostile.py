"""Hostile and careless clients against a real server on 127.0.0.1: decompression bombs, shapes
that overflow, duplicate inputs, undecodable gRPC messages, raw HTTP abuse, slow and excess
connections, the in-flight limit, TLS and the bearer token.

Each case must get a clear 4xx / non-OK status with a one-line message, never a 5xx, a traceback
or a lost request; the server answers a good request afterwards.
"""

from __future__ import annotations

import datetime
import gzip
import json
import queue
import socket
import ssl
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import (
    Gate,
    Workload,
    grpc_client,
    grpc_inputs,
    infer_path,
    infer_request,
    metric_value,
    post,
    raw_http,
    start_server,
    status_and_json,
    still_serves,
    wait_until,
)
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from apparate_trt.errors import ApparateError
from apparate_trt.runtime.server.encoding import decode_body
from apparate_trt.runtime.server.security import load_security

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def requests_counted(server, protocol: str, code: str) -> int:
    """``apparate_requests_total`` of one protocol and outcome, from ``/metrics``'s text."""
    return int(metric_value(server.metrics.render(), "apparate_requests_total", protocol=protocol, code=code))


def grpc_message(workload: Workload, i: int = 0, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=workload.manifest.model.name, id=request_id)
    for name, value in workload.batch(i).items():
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, "FP32" if value.dtype == np.float32 else "INT64"
        tensor.shape.extend(value.shape)
        request.raw_input_contents.append(value.tobytes())
    return request


# ------------------------------------------------------------------------------- body decoding
def test_decompression_stops_at_the_limit() -> None:
    bomb = zlib.compress(b"0" * (64 << 20), 9)  # 64 MiB of zeros in about 64 KB
    assert len(bomb) < 100_000
    for encoding, body in (("deflate", bomb), ("gzip", gzip.compress(b"0" * (64 << 20), 9))):
        with pytest.raises(ApparateError, match="decompresses to over 1048576 bytes"):
            decode_body(body, encoding, limit=1 << 20)
    assert decode_body(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip") == b"abcd"  # several gzip members
    for bad, match in (
        (zlib.compress(b"abc")[:-3], "truncated"),
        (b"not deflate", "not valid deflate"),
        (zlib.compress(b"abc") + b"junk", "after the end"),
    ):
        with pytest.raises(ApparateError, match=match):
            decode_body(bad, "deflate")
    with pytest.raises(ApparateError, match="unsupported Content-Encoding 'br'"):
        decode_body(b"x", "br")
    with pytest.raises(ApparateError, match="over 16 gzip members"):  # thousands of empty members: quadratic otherwise
        decode_body(gzip.compress(b"") * 40_000, "gzip")


def test_review_cases_are_400_or_closed(server, workload: Workload) -> None:
    """A timeout parameter too large for a float, a Transfer-Encoding, and a GET with a body."""
    doc = infer_request(workload)
    doc["parameters"] = {"timeout": 10**400}
    status, body = post(server.http_port, infer_path(server), json.dumps(doc).encode())
    assert status == 400 and "timeout" in body["error"]
    got, body = status_and_json(
        raw_http(server.http_port, b"POST /v2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    )
    assert got == 501 and "Transfer-Encoding" in body["error"]
    # a GET's body is never read, so the server closes the connection after answering it
    raw = raw_http(server.http_port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /")
    assert raw.startswith(b"HTTP/1.1 200") and raw.count(b"HTTP/1.") == 1


def test_the_decoded_body_cap_follows_the_model(workload: Workload) -> None:
    """A model with fixed input sizes caps a decoded body at room for its largest request as
    JSON; a dynamic dimension leaves the global cap."""
    from apparate_trt.runtime.server.codec import ModelSpec
    from apparate_trt.runtime.server.encoding import JSON_EXPANSION, MAX_DECODED_BYTES, decoded_limit

    spec = ModelSpec.from_manifest(workload.manifest)
    one = sum(int(np.prod(v.shape[1:])) * v.dtype.itemsize for v in workload.batch(0).values())
    assert spec.max_request_bytes(8) == 8 * one
    assert decoded_limit(spec.max_request_bytes(8)) == JSON_EXPANSION * 8 * one + (1 << 20)
    assert decoded_limit(None) == MAX_DECODED_BYTES and decoded_limit(10**12) == MAX_DECODED_BYTES


def test_decompression_bomb_is_refused(server, workload: Workload) -> None:
    bomb = zlib.compress(b"0" * (1 << 30), 9)  # 1 GiB of zeros, about 1 MB on the wire
    status, doc = post(server.http_port, infer_path(server), bomb, {"Content-Encoding": "deflate"})
    assert status == 400 and "decompresses to over" in doc["error"], doc
    ok = gzip.compress(json.dumps(infer_request(workload, 1)).encode())
    status, doc = post(server.http_port, infer_path(server), ok, {"Content-Encoding": "gzip"})
    assert status == 200, doc


# ------------------------------------------------------------------------------ shapes, names
def test_overflowing_and_oversized_shapes_are_400(server, workload: Workload) -> None:
    name, value = next(iter(workload.batch(0).items()))
    rest = list(value.shape[1:])
    cases = [
        ([10**30, *rest], "has a dimension over"),
        ([2**62, *rest], "has a dimension over"),
        ([2**31 - 1, *rest], "has a batch of"),
        ([9, *rest], "over the model's maximum batch of 8"),
    ]
    for shape, message in cases:
        status, doc = post(
            server.http_port, infer_path(server), json.dumps(infer_request(workload, shape=shape)).encode()
        )
        assert status == 400 and message in doc["error"], (shape, doc)
        header = json.dumps(
            {"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
        ).encode()
        status, doc = post(
            server.http_port,
            infer_path(server),
            header + b"\0" * 16,
            {"Inference-Header-Content-Length": str(len(header))},
        )
        assert status == 400 and message in doc["error"], (shape, doc)
    request = grpc_message(workload)
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([2**62, *rest])
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(INFER)(request.SerializeToString(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has a dimension over" in err.value.details()
    still_serves(server, workload)


def test_tensor_bytes_are_computed_exactly_and_capped() -> None:
    """Without a model to check against, a shape whose product overflows int64 is still refused
    (exact integer arithmetic) before anything is allocated."""
    from apparate_trt.runtime.server.codec import parse_http_request

    for shape in ([2**31 - 1] * 3, [2**20, 2**20], [2**31 - 1, 2**31 - 1, 4]):
        body = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [1.0]}]}).encode()
        with pytest.raises(ApparateError, match="over the limit of"):
            parse_http_request(body)


def test_duplicate_inputs_are_refused(server, workload: Workload) -> None:
    doc = infer_request(workload)
    doc["inputs"].append(dict(doc["inputs"][0]))
    status, body = post(server.http_port, infer_path(server), json.dumps(doc).encode())
    assert status == 400 and "given twice" in body["error"]
    request = grpc_message(workload)
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(INFER)(request.SerializeToString(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "given twice" in err.value.details()


def test_deeply_nested_json_is_400(server) -> None:
    status, doc = post(server.http_port, infer_path(server), b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "not valid JSON" in doc["error"]


# ---------------------------------------------------------------------------------- gRPC bytes
@pytest.mark.parametrize(
    "method",
    ["ModelInfer", "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig"],
)
def test_garbage_to_a_unary_method_is_invalid_argument(server, workload: Workload, method: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(f"/inference.GRPCInferenceService/{method}")(b"\xff\xff\xff\xff garbage", timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot be decoded" in err.value.details()
    assert "\n" not in err.value.details()


def test_stream_answers_an_undecodable_message_and_keeps_serving(server, workload: Workload) -> None:
    good = [grpc_message(workload, i, request_id=f"good{i}") for i in range(5)]
    for g in good:
        g.parameters["apparate_wait_final"].bool_param = True
    messages = [b"\xff\xff\xff\xff garbage", *(g.SerializeToString() for g in good)]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.stream_stream(STREAM)(iter(messages), timeout=60)
        responses = [pb.ModelStreamInferResponse.FromString(raw) for raw in call]
        assert call.code() == grpc.StatusCode.OK
    errors = [r.error_message for r in responses if r.error_message]
    answered = sorted(r.infer_response.id for r in responses if not r.error_message)
    assert len(errors) == 1 and "cannot be decoded" in errors[0]
    assert answered == [f"good{i}" for i in range(5)]


# ------------------------------------------------------------------------------- raw HTTP abuse
@pytest.mark.parametrize(
    "data,status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v2/health/ready\r\n", 400),  # HTTP/0.9: answered at once, with a status line
        (b"GET /\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(120)) + b"\r\n", 431),
        (b"PUT /v2 HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),  # a whole head in one read
        (
            b"GET /v2 HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 8000) for i in range(10))
            + b"\r\n",
            431,
        ),
        (b"GET /v2 HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /v2 HTTP/9.9\r\nHost: x\r\n\r\n", 505),
        (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    ],
)
def test_every_http_error_is_json_with_a_status_line(server, data: bytes, status: int) -> None:
    got, doc = status_and_json(raw_http(server.http_port, data))
    assert got == status and isinstance(doc.get("error"), str) and "\n" not in doc["error"], doc


def test_a_bad_header_line_is_named_without_python_reprs(server) -> None:
    got, doc = status_and_json(raw_http(server.http_port, b"GET /v2 HTTP/1.1\r\nHost: x\r\nbogus\r\n\r\n"))
    assert got == 400 and "illegal header line: 'bogus'" in doc["error"] and "bytearray" not in doc["error"], doc


def test_negative_content_length_on_infer_is_400(server, workload: Workload) -> None:
    raw = raw_http(
        server.http_port, f"POST {infer_path(server)} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".encode()
    )
    status, doc = status_and_json(raw)
    assert status == 400 and "Content-Length" in doc["error"]


# ---------------------------------------------------------------------- connections, in flight
@pytest.fixture()
def bounded_server(workload: Workload):
    srv = start_server(workload.engine_dir, max_connections=2, max_inflight=2, queue_size=16)
    srv._http.header_timeout_s = 3.0  # the header deadline, short for the test
    yield srv
    assert srv.stop()


def test_connection_limit_and_slow_clients(bounded_server, workload: Workload, capfd) -> None:
    srv = bounded_server
    slow = [socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) for _ in range(2)]
    for sock in slow:
        sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nContent-")  # a header that never ends
    wait_until(lambda: srv._http.open_connections == 2, what="two connections held")
    status, doc = status_and_json(raw_http(srv.http_port, b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 503 and "connections open" in doc["error"]
    for sock in slow:  # both are closed once the header deadline has passed
        assert sock.recv(1024) == b""
        sock.close()
    wait_until(lambda: srv._http.open_connections == 0, what="the slow connections to be closed")
    still_serves(srv, workload)
    assert "Traceback" not in capfd.readouterr().err


@pytest.fixture()
def inflight_server(workload: Workload):
    srv = start_server(workload.engine_dir, max_inflight=2, queue_size=16)
    yield srv
    assert srv.stop()


def test_a_refused_connection_still_reads_its_503(bounded_server, workload: Workload) -> None:
    """Past the connection limit, a client that sends a whole request gets the 503, not a reset."""
    srv = bounded_server
    held = [socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) for _ in range(2)]
    for sock in held:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")  # answered; the keep-alive connections stay open
        sock.recv(4096)
    body = json.dumps(infer_request(workload, 0)).encode() * 20  # a body that is still arriving when the 503 is sent
    status, doc = post(srv.http_port, infer_path(srv), body)
    assert status == 503 and "connections open" in doc["error"]
    for sock in held:
        sock.close()


def test_inflight_limit_refuses_with_a_status_and_counts_it(inflight_server, workload: Workload) -> None:
    srv = inflight_server
    gate = Gate(srv.engine)
    done: queue.Queue = queue.Queue()
    try:
        held = [
            threading.Thread(
                target=lambda i=i: done.put(
                    post(srv.http_port, infer_path(srv), json.dumps(infer_request(workload, i)).encode())
                )
            )
            for i in range(2)
        ]
        for t in held:
            t.start()
        wait_until(lambda: srv.service.inflight == 2, what="two requests in flight")
        status, doc = post(srv.http_port, infer_path(srv), json.dumps(infer_request(workload, 2)).encode())
        assert status == 503 and "in flight" in doc["error"]
        with pytest.raises(InferenceServerException) as err:
            grpc_client(srv).infer(srv.spec.name, grpc_inputs(workload, 2))
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "in flight" in err.value.message()
    finally:
        gate.remove()
    for t in held:
        t.join(60)
    assert [done.get()[0] for _ in range(2)] == [200, 200]
    assert requests_counted(srv, "http", "overloaded") == 1 and requests_counted(srv, "grpc", "overloaded") == 1


def test_grpc_calls_during_the_drain_get_unavailable_and_accepted_ones_are_answered(workload: Workload) -> None:
    srv = start_server(workload.engine_dir)
    gate = Gate(srv.engine)
    answers: queue.Queue = queue.Queue()
    accepted = threading.Thread(
        target=lambda: answers.put(grpc_client(srv).infer(srv.spec.name, grpc_inputs(workload, 0)))
    )
    accepted.start()
    wait_until(lambda: srv.service.inflight == 1, what="one accepted request")
    stopper = threading.Thread(target=lambda: answers.put(("drained", srv.stop())))
    stopper.start()
    wait_until(lambda: not srv.service.ready, what="the drain to begin")
    with pytest.raises(InferenceServerException) as err:
        grpc_client(srv).infer(srv.spec.name, grpc_inputs(workload, 1))
    assert err.value.status() == "StatusCode.UNAVAILABLE" and "shutting down" in err.value.message()
    gate.open()
    accepted.join(60)
    stopper.join(60)
    got = [answers.get(timeout=5) for _ in range(2)]
    assert ("drained", True) in got and any(hasattr(g, "as_numpy") for g in got)


# ------------------------------------------------------------------------------ TLS and token
def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_tls_and_bearer_token(workload: Workload, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = start_server(workload.engine_dir, security=load_security(cert, key, token_file))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        body = json.dumps(infer_request(workload, 0)).encode()
        status, doc = post(srv.http_port, infer_path(srv), body, context=ctx)
        assert status == 401 and "bearer token" in doc["error"]
        status, doc = post(srv.http_port, infer_path(srv), body, {"Authorization": "Bearer wrong"}, context=ctx)
        assert status == 401
        status, doc = post(srv.http_port, infer_path(srv), body, {"Authorization": "Bearer s3cret-token"}, context=ctx)
        assert status == 200, doc
        with urllib.request.urlopen(
            f"https://127.0.0.1:{srv.http_port}/v2/health/ready", timeout=30, context=ctx
        ) as resp:
            assert resp.status == 200  # probes stay open
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain text to a TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/v2/health/ready", timeout=10).read()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}", ssl=True, root_certificates=str(cert))
        assert client.is_server_live()
        with pytest.raises(InferenceServerException) as err:
            client.infer(srv.spec.name, grpc_inputs(workload, 0))
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        result = client.infer(srv.spec.name, grpc_inputs(workload, 0), headers={"authorization": "Bearer s3cret-token"})
        assert result.as_numpy(workload.manifest.model.output).shape[0] == 1
    finally:
        assert srv.stop()
    assert (
        requests_counted(srv, "http", "unauthenticated") == 2 and requests_counted(srv, "grpc", "unauthenticated") == 1
    )


def test_bad_security_options_are_clear_errors(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with pytest.raises(ApparateError, match="both --tls-cert and --tls-key"):
        load_security(cert, None)
    with pytest.raises(ApparateError, match="cannot read --tls-key"):
        load_security(cert, tmp_path / "missing.pem")
    with pytest.raises(ApparateError, match="cannot use"):
        load_security(cert, cert)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ApparateError, match="is empty"):
        load_security(token_file=tmp_path / "empty")
