"""Property-based fuzzing (hypothesis) of the REST server's HTTP layer over raw sockets: request
lines, header names and values (Content-Length, Transfer-Encoding, encodings, upgrades, ...) and
byte-level mutations of the request head. Every request that is complete as sent gets an answer
within seconds, never a 5xx but 501 or 505 (a method, Transfer-Encoding or
HTTP version this server does not support), and every 4xx carries a one-line JSON error; the server still answers
health checks afterwards."""

from __future__ import annotations

import json
import socket

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import Workload, infer_path, still_serves

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
METHODS = ["POST", "POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "get", "X" * 40]
VERSIONS = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", "HTTP/9.9", "http/1.1", ""]
HEADER_NAMES = [
    "Content-Length",
    "Transfer-Encoding",
    "Content-Encoding",
    "Inference-Header-Content-Length",
    "Authorization",
    "Connection",
    "Expect",
    "Host",
    "Upgrade",
    "Content-Type",
]
HEADER_VALUES = [
    "0",
    "2",
    "-1",
    "+2",
    "2, 2",
    "2 2",
    "0x2",
    "99999999999999999999",
    "chunked",
    "gzip, chunked",
    "gzip",
    "deflate",
    "close",
    "keep-alive",
    "100-continue",
    "websocket",
    "h2c",
    "Bearer x",
    "",
    " ",
]
TOKEN = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10)


@st.composite
def raw_request(draw, infer: str) -> bytes:
    """A request line, headers and a small body, then byte mutations of the head."""
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from([infer, "/v2", "/v2/health/ready", "/metrics", "*", "http://x/v2", "/%00", "/v2/"]))
    version = draw(st.sampled_from(VERSIONS))
    headers = [("Host", "x")] if draw(st.integers(0, 5)) else []
    name = st.one_of(st.sampled_from(HEADER_NAMES), TOKEN)
    value = st.one_of(st.sampled_from(HEADER_VALUES), TOKEN)
    headers += draw(st.lists(st.tuples(name, value), max_size=5))
    body = draw(st.sampled_from([b"", b"{}", b'{"inputs": []}', b"2\r\n{}\r\n0\r\n\r\n", b"\x00\xff" * 8]))
    if draw(st.booleans()):
        headers.append(("Content-Length", str(len(body))))
    line = f"{method} {target} {version}".rstrip()
    head = bytearray((line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)).encode("latin-1", "replace"))
    for _ in range(draw(st.integers(0, 3))):  # mutate the head, never its closing blank line
        pos = draw(st.integers(0, len(head)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 58, 0x7F, 0xFF, ord("a"), ord("1")]))
        if op == "insert":
            head.insert(pos, byte)
        elif pos < len(head):
            if op == "replace":
                head[pos] = byte
            else:
                del head[pos]
    return bytes(head) + b"\r\n" + body


def complete_as_sent(data: bytes) -> bool:
    """False when a strict parser would wait for more bytes (the server rightly waits too)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return True
    except h11.RemoteProtocolError:
        return True


def read_response(sock: socket.socket, head_request: bool) -> tuple[int, dict[str, str], bytes] | None:
    """The first final response on ``sock`` (1xx skipped; no body after a HEAD), or None if the
    server closed first."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status >= 200:
            break
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    size = 0 if head_request else int(headers.get("content-length", "0"))
    while len(data) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return status, headers, data[:size]


def test_raw_http_heads_never_fail_the_server(server, workload: Workload) -> None:
    seen: dict[str, int] = {}

    @FUZZ
    @given(raw_request(infer_path(server)))
    def check(data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
            sock.sendall(data)
            if not complete_as_sent(data):
                seen["incomplete"] = seen.get("incomplete", 0) + 1
                return
            got = read_response(sock, head_request=data.startswith(b"HEAD "))
        if got is None:
            seen["closed"] = seen.get("closed", 0) + 1
            return
        status, headers, body = got
        seen[str(status)] = seen.get(str(status), 0) + 1
        # 501: an unsupported method or Transfer-Encoding; 505: an HTTP version other than 1.0 and 1.1
        assert status < 500 or status in (501, 505), (status, body[:300], data[:300])
        if status >= 400 and body:
            message = json.loads(body)["error"]
            assert isinstance(message, str) and "\n" not in message, message

    check()
    assert {"400", "404", "200"} <= set(seen), seen  # the parser's and the router's refusals, and answers
    assert "closed" not in seen, seen  # a complete request always gets an answer
    still_serves(server, workload)
    assert server.service.inflight == 0
