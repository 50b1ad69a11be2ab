"""The REST front end (KServe v2 / Open Inference Protocol over HTTP/1.1), standard library only.

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata),
``/v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready``, ``.../config``,
``POST .../infer`` (JSON tensors, or the binary tensor extension that tritonclient uses), and
``GET /metrics`` (Prometheus text). One thread per connection (``ThreadingHTTPServer``), keep-alive,
Nagle off. Errors are ``{"error": "..."}`` with 400 (bad request or unknown model), 401 (missing
or wrong bearer token, when one is set), 404 (no such endpoint), 413 (body over the limit), 503
(+ Retry-After) when overloaded, over the connection limit or shutting down, 504 past the request
timeout, 500 if the engine fails; the standard library's own errors (bad request line, 414, 431,
501) are JSON too.

Bounds: at most ``MAX_CONNECTIONS`` connections served at once; from a request's first byte its
line, headers and body must arrive within ``READ_TIMEOUT_S``; bodies of at most ``MAX_BODY_BYTES``
as sent and ``MAX_DECODED_BYTES`` after gzip / deflate (streamed, stopped at the cap). Optional
TLS and bearer token: :mod:`apparate_trt.runtime.server.security`.
"""

from __future__ import annotations

import json
import logging
import re
import selectors
import socket
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apparate_trt import __version__
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.server.codec import (
    RequestError,
    encode_http_response,
    http_error_body,
    parse_http_request,
)
from apparate_trt.runtime.server.config import MAX_CONNECTIONS
from apparate_trt.runtime.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from apparate_trt.runtime.server.security import OPEN_HTTP_PATHS, Security
from apparate_trt.runtime.server.service import (
    InferenceService,
    InternalError,
    OverloadedError,
    UnavailableError,
)
from apparate_trt.runtime.server.statuses import error_kind

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024 * 1024
"""The largest request body accepted (bytes, as sent); larger ones get 413."""
MAX_DECODED_BYTES = MAX_BODY_BYTES
"""The largest request body after its Content-Encoding is undone (bytes); past it, 400. A model
whose inputs have fixed sizes gets a tighter cap (:func:`decoded_limit`)."""
JSON_EXPANSION = 16
"""A tensor as JSON text takes up to about this many times its binary size (an FP16 value such as
``-6.103515625e-05, `` is 18 characters for 2 bytes): the body-size cap leaves that much room."""
DRAIN_LIMIT_BYTES = 1 << 20
"""An unneeded request body (404, 401) up to this size is read and dropped; a larger one closes
the connection."""
MAX_GZIP_MEMBERS = 16
"""Gzip members one body may hold (clients send one; thousands of empty ones would make the
decompression quadratic)."""
IDLE_TIMEOUT_S = 120.0
"""A keep-alive connection idle this long (seconds) is closed."""
READ_TIMEOUT_S = 30.0
"""From a request's first byte, its line, headers and body must arrive within this (seconds), or
the connection is closed (a slow client cannot hold a thread)."""
MAX_REFUSING = 1024
"""Connections past the limit being answered 503 at once (one thread, non-blocking sockets); past
this many as well, a connection is just closed."""
REFUSE_DRAIN_S = 1.0
"""How long (seconds) a refused connection's remaining request is read and dropped."""
RETRY_AFTER_S = 1
"""Retry-After (seconds) sent with 503 when the queue is full."""
EXTENSIONS = ["binary_tensor_data", "parameters", "model_configuration"]

_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/config|/infer)?/?$"
)


def decoded_limit(max_request_bytes: int | None) -> int:
    """The decoded-body cap for a model whose largest valid request holds ``max_request_bytes``
    of tensors (None: unbounded by the model): room for it as JSON, at most ``MAX_DECODED_BYTES``."""
    if max_request_bytes is None:
        return MAX_DECODED_BYTES
    return min(MAX_DECODED_BYTES, JSON_EXPANSION * max_request_bytes + (1 << 20))


def server_metadata() -> dict[str, Any]:
    """The server metadata object (``GET /v2``)."""
    return {"name": "apparate_trt", "version": __version__, "extensions": EXTENSIONS}


def decode_body(body: bytes, encoding: str | None, limit: int = MAX_DECODED_BYTES) -> bytes:
    """The request body after its Content-Encoding (gzip or deflate); RequestError otherwise.

    Decompression is streamed and stops as soon as the output passes ``limit`` bytes, so a small
    compressed body cannot expand into a large allocation (a decompression bomb)."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(f"unsupported Content-Encoding '{encoding}' (use gzip, deflate or none)")
    try:
        return _inflate(body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS, limit, encoding)
    except zlib.error as exc:
        raise RequestError(f"request body is not valid {encoding} data ({exc})") from None


def _inflate(data: bytes, wbits: int, limit: int, encoding: str) -> bytes:
    """Decompress ``data`` (gzip members one after another, or one zlib stream) into at most
    ``limit`` bytes; RequestError past it or on a truncated stream."""
    out = bytearray()
    rest = data
    members = 0
    while rest:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise RequestError(f"request body has over {MAX_GZIP_MEMBERS} gzip members; send one gzip stream")
        stream = zlib.decompressobj(wbits)
        pending = rest
        while pending:
            out += stream.decompress(pending, limit + 1 - len(out))
            _check_decoded_size(out, limit)
            pending = stream.unconsumed_tail
            if stream.eof:
                break
        out += stream.flush()
        _check_decoded_size(out, limit)
        if not stream.eof:
            raise RequestError(f"request body is not valid {encoding} data (the stream is truncated)")
        rest = stream.unused_data
        if rest and encoding != "gzip":
            raise RequestError(f"request body has {len(rest)} bytes after the end of its {encoding} stream")
    return out  # bytearray: every reader takes it as bytes, without a second copy


def _check_decoded_size(out: bytearray, limit: int) -> None:
    if len(out) > limit:
        raise RequestError(f"request body decompresses to over {limit} bytes, the limit; send less data per request")


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests; ``self.server.app`` is the :class:`HttpFrontend`."""

    protocol_version = "HTTP/1.1"
    server_version = f"apparate_trt/{__version__}"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True
    server: _Server

    reading_since: float | None = None  # monotonic s: a request is being read since (None: idle or answering)
    busy = False  # a request has arrived on this connection and is not answered yet

    def setup(self) -> None:
        ctx = self.server.app.ssl_context
        if ctx is not None:  # the TLS handshake runs here, on this connection's thread, under the read deadline
            raw = self.request
            self.reading_since = time.monotonic()
            self.server.app.connection_opened(raw, self)
            try:
                raw.settimeout(self.server.app.read_timeout_s)
                self.request = ctx.wrap_socket(raw, server_side=True)
            finally:
                self.server.app.connection_closed(raw)
                self.reading_since = None
        super().setup()
        self.server.app.connection_opened(self.connection, self)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.app.connection_closed(self.connection)
        if self.server.app.ssl_context is not None:  # the wrapped socket is not the one the server closes
            try:
                self.connection.close()
            except OSError:
                pass

    def handle_one_request(self) -> None:
        """Wait (up to the idle timeout) for a request's first byte, then read it under the
        read deadline that the front end's reaper enforces."""
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except (OSError, ValueError):
            self.close_connection = True
            return
        self.reading_since = time.monotonic()
        self.busy = True
        try:
            super().handle_one_request()
        finally:
            self.reading_since = None
            self.busy = False

    def parse_request(self) -> bool:
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        if len(line.split()) == 2:  # "GET /path": HTTP/0.9, no status line, no headers
            self.command, self.request_version, self.requestline = None, "HTTP/1.0", line
            self.send_error(400, "HTTP/0.9 requests are not supported", "send HTTP/1.0 or HTTP/1.1")
            return False
        ok = super().parse_request()
        if not ok:
            return ok
        if self.headers.get("Transfer-Encoding"):
            self.send_error(501, "Transfer-Encoding is not supported", "send the body with a Content-Length")
            return False
        if self.command != "POST":
            if self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # its body is never read: the connection cannot be reused
            self.reading_since = None  # nothing more to read: answering is not bounded by the deadline
        return ok

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error the standard library raises (400, 414, 431, 501, ...) as a JSON body with a
        status line, then close the connection."""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # always write a status line
        short = self.responses.get(code, ("error",))[0]
        self.close_connection = True
        try:
            self.send_response(code, message)
            body = http_error_body(f"{code} {message or short}" + (f": {explain}" if explain else ""))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)

    # ------------------------------------------------------------------------------ sending
    def _send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if not self.server.app.service.ready:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode())

    def _send_error(self, exc: BaseException) -> int:
        status = error_kind(exc).http
        retry = isinstance(exc, (OverloadedError, UnavailableError))
        headers = {"Retry-After": str(RETRY_AFTER_S)} if retry else None
        self._send(status, http_error_body(str(exc)), headers=headers)
        return status

    # ------------------------------------------------------------------------------ routing
    def _authorized(self, path: str) -> bool:
        """True if the request may go on; otherwise 401 was sent (the token is missing or wrong)."""
        security = self.server.app.security
        if (
            security.token is None
            or path.rstrip("/") in OPEN_HTTP_PATHS
            or security.authorized(self.headers.get("Authorization"))
        ):
            return True
        self._drain_body()
        self.close_connection = True
        self._send(
            401,
            http_error_body("missing or wrong bearer token; send the header 'Authorization: Bearer TOKEN'"),
            headers={"WWW-Authenticate": 'Bearer realm="apparate_trt"'},
        )
        self.server.app.service.metrics.request_done("http", "unauthenticated", 0.0)
        return False

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if not self._authorized(path):
            return
        if path in ("/v2/health/live", "/v2/health/live/"):
            self._send(200, b"")
        elif path in ("/v2/health/ready", "/v2/health/ready/"):
            self._send(200 if app.service.ready else 503, b"")
        elif path in ("/v2", "/v2/"):
            self._send_json(200, server_metadata())
        elif path == "/metrics":
            self._send(200, app.service.metrics.render().encode(), METRICS_CONTENT_TYPE)
        else:
            match = _MODEL_PATH.match(path)
            if match is None or match.group("action") == "/infer":
                self._not_found(path)
                return
            self._model_get(match.group("name"), match.group("version") or "", match.group("action"))

    do_HEAD = do_GET

    def _not_found(self, path: str) -> None:
        self._drain_body()
        self._send(404, http_error_body(f"no endpoint {self.command} {path}; see docs/SERVING.md"))

    def _model_get(self, name: str, version: str, action: str | None) -> None:
        service = self.server.app.service
        try:
            service.check_model(name, version)
        except RequestError as exc:
            if action == "/ready":
                self._send(400, http_error_body(str(exc)))
            else:
                self._send_error(exc)
            return
        if action == "/ready":
            self._send(200 if service.ready else 503, b"")
        elif action == "/config":
            self._send_json(200, service.spec.config(service.max_batch))
        else:
            self._send_json(200, service.spec.metadata())

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if not self._authorized(path):
            return
        match = _MODEL_PATH.match(path)
        if match is None or match.group("action") != "/infer":
            self._not_found(path)
            return
        self._infer(match.group("name"), match.group("version") or "")

    # -------------------------------------------------------------------------------- infer
    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise _HttpError(411, "an infer request needs a Content-Length header")
        try:
            size = int(length)
        except ValueError:
            raise _HttpError(400, f"bad Content-Length '{length}'; it must be a number of bytes") from None
        if size < 0:
            raise _HttpError(400, f"bad Content-Length {size}; it must be a number of bytes, 0 or more")
        limit = self.server.app.decoded_limit
        if size > limit:
            raise _HttpError(
                413,
                f"request body of {size} bytes is over the limit of {limit} for this model; send less data per request",
            )
        body = self.rfile.read(size)
        if len(body) != size:
            raise ConnectionError("client closed the connection mid-body")
        self.reading_since = None
        return body

    def _drain_body(self) -> None:
        """Read and drop a small unneeded POST body (under the read deadline), so that the
        connection stays usable; a GET's body, or a large one, closes the connection instead."""
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = -1
        if self.command == "POST" and 0 < size <= DRAIN_LIMIT_BYTES:
            self.rfile.read(size)
        elif size:
            self.close_connection = True

    def _infer(self, name: str, version: str) -> None:
        app = self.server.app
        service = app.service
        t0 = time.monotonic()
        code = "ok"
        try:
            body = self._read_body()
            with service.tracked():
                try:
                    service.check_model(name, version)
                    body = decode_body(body, self.headers.get("Content-Encoding"), app.decoded_limit)
                    request = parse_http_request(body, _header_length(self.headers), service.spec, service.max_batch)
                    pending = service.submit(request)
                    answer = service.wait(pending, final=request.wait_final)
                    payload, header_length = encode_http_response(service.spec, request, answer)
                except ApparateError as exc:
                    code = error_kind(exc).code
                    self._send_error(exc)
                else:
                    headers = (
                        {"Inference-Header-Content-Length": str(header_length)} if header_length is not None else None
                    )
                    ctype = "application/octet-stream" if header_length is not None else "application/json"
                    self._send(200, payload, ctype, headers)
        except _HttpError as exc:
            code = "bad_request"
            self.close_connection = True
            self._send(exc.status, http_error_body(exc.message))
        except (UnavailableError, OverloadedError) as exc:  # refused before it was accepted
            code = error_kind(exc).code
            self._send_error(exc)
        except (ConnectionError, TimeoutError, OSError):
            code = "disconnected"
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug must cost one request, not the server
            log.exception("infer request failed")
            code = "error"
            try:
                self._send_error(InternalError(f"internal server error: {exc}"))
            except OSError:
                self.close_connection = True
        finally:
            service.metrics.request_done("http", code, time.monotonic() - t0)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _header_length(headers: Any) -> int | None:
    value = headers.get("Inference-Header-Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise RequestError(f"bad Inference-Header-Content-Length '{value}'") from None
    if length < 0:
        raise RequestError(f"Inference-Header-Content-Length {length} is negative; send the JSON header's byte size")
    return length


class _Refuser:
    """One thread that answers connections past the limit: it writes the 503, then reads and drops
    what the client still sends (up to ``REFUSE_DRAIN_S``), so that the client reads the answer
    instead of a reset, and closes. At most ``MAX_REFUSING`` at once."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def refuse(self, sock: socket.socket, answer: bytes) -> bool:
        """Take ``sock`` over; False (nothing done) when ``MAX_REFUSING`` are already in hand."""
        with self._lock:
            if len(self._selector.get_map()) >= MAX_REFUSING:
                return False
            try:
                sock.setblocking(False)
                sock.send(answer)  # a few hundred bytes: the socket's send buffer takes them at once
                sock.shutdown(socket.SHUT_WR)
                self._selector.register(sock, selectors.EVENT_READ, time.monotonic() + REFUSE_DRAIN_S)
            except (OSError, ValueError):
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="apparate-http-refuser", daemon=True)
                self._thread.start()
        return True

    def _run(self) -> None:
        while True:
            try:
                self._serve_once()
            except Exception:  # noqa: BLE001 - the refuser must outlive any one socket's failure
                log.debug("refuser: a socket failed", exc_info=True)

    def _serve_once(self) -> None:
        """One select round: drain readable refused sockets, close finished or expired ones."""
        events = self._selector.select(0.05)
        with self._lock:
            now = time.monotonic()
            ready = {key.fileobj for key, _ in events}
            for key in list(self._selector.get_map().values()):
                sock = key.fileobj
                done = now > key.data
                if sock in ready and not done:
                    try:
                        done = not sock.recv(65536)  # type: ignore[union-attr]
                    except BlockingIOError:
                        pass
                    except OSError:
                        done = True
                if done:
                    self._selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]


def _shutdown_raw(conn: socket.socket) -> None:
    """Shut a connection down from another thread: on the plain socket (an SSLSocket's own
    shutdown would tear its TLS state from under the thread using it)."""
    try:
        socket.socket.shutdown(conn, socket.SHUT_RDWR)
    except (OSError, ValueError, TypeError):
        pass


def plain_503(message: str) -> bytes:
    """A whole 503 response (JSON error body, Retry-After, Connection: close) as bytes."""
    body = http_error_body(message)
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog: a burst of new connections must not be dropped

    def __init__(self, address: tuple[str, int], app: HttpFrontend, max_connections: int) -> None:
        self.app = app
        self.max_connections = int(max_connections)
        self._open = 0
        self._open_lock = threading.Lock()
        self.refuser = _Refuser()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, up to ``max_connections``; past it, 503 and close at once."""
        with self._open_lock:
            busy = self._open >= self.max_connections
            if not busy:
                self._open += 1
        if busy:
            self.app.service.metrics.request_done("http", "overloaded", 0.0)
            message = (
                f"the server has {self.max_connections} connections open, its limit; retry shortly or reuse "
                f"a connection"
            )
            if self.app.ssl_context is not None or not self.refuser.refuse(request, plain_503(message)):
                self.shutdown_request(request)  # over TLS, or past MAX_REFUSING: the refusal is the closed connection
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # e.g. no thread could be started: free the slot, close the socket
            with self._open_lock:
                self._open -= 1
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is not an error worth a traceback; anything else is logged."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)):
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.exception("HTTP connection from %s failed", client_address)


class HttpFrontend:
    """The REST listener: binds at construction, serves on a background thread after :meth:`start`."""

    def __init__(
        self,
        service: InferenceService,
        host: str,
        port: int,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout_s: float = READ_TIMEOUT_S,
        security: Security | None = None,
    ) -> None:
        self.service = service
        self.security = security or Security()
        self.ssl_context = self.security.ssl_context() if self.security.tls else None
        self.decoded_limit = decoded_limit(service.spec.max_request_bytes(service.max_batch))
        try:
            self._httpd = _Server((host, port), self, max_connections)
        except OSError as exc:
            raise ApparateError(
                f"cannot listen for HTTP on {host}:{port} ({exc.strerror or exc}); choose another --http-port"
            ) from None
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self.read_timeout_s = float(read_timeout_s)
        self._thread: threading.Thread | None = None
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()
        self._connections: dict[socket.socket, _Handler] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Serve on a background thread, with a reaper thread enforcing the read deadline."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="apparate-http", daemon=True
        )
        self._thread.start()
        self._reaper = threading.Thread(target=self._reap_slow_readers, name="apparate-http-reaper", daemon=True)
        self._reaper.start()

    def connection_opened(self, conn: socket.socket, handler: _Handler) -> None:
        with self._lock:
            self._connections[conn] = handler

    def connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.pop(conn, None)

    def _reap_slow_readers(self) -> None:
        """Close every connection whose request has been arriving for over ``read_timeout_s``."""
        tick = min(1.0, self.read_timeout_s / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                slow = [
                    c
                    for c, h in self._connections.items()
                    if h.reading_since is not None and now - h.reading_since > self.read_timeout_s
                ]
            for conn in slow:
                log.debug("closing a connection whose request took over %.0f s to arrive", self.read_timeout_s)
                _shutdown_raw(conn)

    def stop_accepting(self) -> None:
        """Stop the accept loop and close the listening socket (open connections keep going)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._stop.set()
        self._refuse_backlog()
        self._httpd.server_close()

    def _refuse_backlog(self) -> None:
        """Answer 503 to the connections the kernel accepted that the server has not taken yet,
        so that closing the listening socket does not reset them."""
        listener = self._httpd.socket
        try:
            listener.setblocking(False)
        except OSError:
            return
        answer = plain_503("the server is shutting down and accepts no new requests; retry on another replica")
        for _ in range(MAX_REFUSING):  # bounded: a connection flood cannot hold the shutdown
            try:
                conn, _ = listener.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                return
            self.service.metrics.request_done("http", "unavailable", 0.0)
            if self.ssl_context is not None or not self._httpd.refuser.refuse(conn, answer):
                conn.close()

    def close_connections(self, grace_s: float = 5.0) -> None:
        """Shut down the remaining connections, so their threads end: first let those with a
        request under way answer it (up to ``grace_s``; at shutdown it is a 503), then the idle ones."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with self._lock:
                if not any(h.busy for h in self._connections.values()):
                    break
            time.sleep(0.01)
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            _shutdown_raw(conn)
