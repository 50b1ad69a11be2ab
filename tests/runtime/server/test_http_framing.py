"""HTTP framing on the REST server (uvicorn + h11), as an attacker sends it over raw sockets:
request smuggling (conflicting or malformed Content-Length, chunked beside a Content-Length) is
400 with one response and a closed connection, and a body that does not arrive is closed at the
body deadline. Slow headers: tests/benchmarks/test_slow_clients.py."""

from __future__ import annotations

import json
import socket
import time

import pytest
from server_helpers import (
    Workload,
    infer_path,
    infer_request,
    raw_http,
    start_server,
    status_and_json,
    still_serves,
)


def _smuggle(server, framing: str, body: bytes) -> bytes:
    """A POST with ``framing`` headers and ``body``, then a second request on the same connection."""
    head = f"POST {infer_path(server)} HTTP/1.1\r\nHost: x\r\n{framing}\r\n".encode()
    return head + body + b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "framing,body,says",
    [
        ("Content-Length: 2\r\nContent-Length: 40\r\n", b"{}", "Content-Length"),
        ("Content-Length: +2\r\n", b"{}", "Content-Length"),
        ("Content-Length: 2 2\r\n", b"{}", "Content-Length"),
        ("Content-Length: 0x2\r\n", b"{}", "Content-Length"),
        ("Content-Length: 7\r\nTransfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding"),
        ("Transfer-Encoding: chunked\r\nContent-Length: 7\r\n", b"2\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding"),
    ],
)
def test_smuggling_is_one_400_and_a_closed_connection(server, framing: str, body: bytes, says: str) -> None:
    t0 = time.monotonic()
    raw = raw_http(server.http_port, _smuggle(server, framing, body), timeout=10.0)
    assert time.monotonic() - t0 < 5.0, "the server kept the connection open"  # raw_http reads to the close
    assert raw.count(b"HTTP/1.1 ") == 1, raw
    status, doc = status_and_json(raw)
    assert status == 400 and says in doc["error"] and "\n" not in doc["error"], doc
    assert b"connection: close" in raw.lower()


def test_a_good_request_still_keeps_its_connection(server, workload: Workload) -> None:
    """Two requests on one connection get two answers: the framing checks refuse only bad framing."""
    body = json.dumps(infer_request(workload, 0)).encode()
    one = f"POST {infer_path(server)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(one + one)
        seen = b""
        while seen.count(b"HTTP/1.1 200") < 2:
            chunk = sock.recv(65536)
            assert chunk, seen[:200]
            seen += chunk


@pytest.fixture()
def deadline_server(workload: Workload):
    srv = start_server(workload.engine_dir, queue_size=64)
    srv._http.body_timeout_s = 1.0  # short for the test; read as each body starts
    yield srv
    assert srv.stop()


def test_a_slow_body_is_closed_at_the_body_deadline(deadline_server, workload: Workload) -> None:
    srv = deadline_server
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as sock:
        sock.sendall(f"POST {infer_path(srv)} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
        t0 = time.monotonic()
        assert sock.recv(1024) == b""
        assert 0.5 < time.monotonic() - t0 < 5.0
    still_serves(srv, workload)
