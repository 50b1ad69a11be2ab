"""The REST front end (KServe v2 / Open Inference Protocol over HTTP/1.1), standard library only.

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata),
``/v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready``, ``.../config``,
``POST .../infer`` (JSON tensors, or the binary tensor extension that tritonclient uses), and
``GET /metrics`` (Prometheus text). One thread per connection (``ThreadingHTTPServer``), keep-alive,
Nagle off. Errors are ``{"error": "..."}`` with 400 (bad request or unknown model), 404 (no such
endpoint), 503 (+ Retry-After) when overloaded or shutting down, 504 past the request timeout, 500
if the engine fails.
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import socket
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
from apparate_trt.runtime.server.service import (
    DeadlineError,
    InferenceService,
    InternalError,
    OverloadedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024 * 1024
"""The largest request body accepted (bytes); larger ones get 413."""
IDLE_TIMEOUT_S = 120.0
"""A keep-alive connection idle this long (seconds) is closed."""
RETRY_AFTER_S = 1
"""Retry-After (seconds) sent with 503 when the queue is full."""
EXTENSIONS = ["binary_tensor_data", "parameters", "model_configuration"]

_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/config|/infer)?/?$")


def server_metadata() -> dict[str, Any]:
    """The server metadata object (``GET /v2``)."""
    return {"name": "apparate_trt", "version": __version__, "extensions": EXTENSIONS}


def error_status(exc: BaseException) -> tuple[int, str]:
    """HTTP status and metrics outcome code for an error raised while serving a request."""
    if isinstance(exc, RequestError):
        return 400, "bad_request"
    if isinstance(exc, OverloadedError):
        return 503, "overloaded"
    if isinstance(exc, UnavailableError):
        return 503, "unavailable"
    if isinstance(exc, DeadlineError):
        return 504, "timeout"
    return 500, "error"


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """The request body after its Content-Encoding (gzip or deflate); RequestError otherwise."""
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error, EOFError) as exc:
        raise RequestError(f"request body is not valid {encoding} data ({exc})") from None
    raise RequestError(f"unsupported Content-Encoding '{encoding}' (use gzip, deflate or none)")


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests; ``self.server.app`` is the :class:`HttpFrontend`."""

    protocol_version = "HTTP/1.1"
    server_version = f"apparate_trt/{__version__}"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.server.app.connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.app.connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)

    # ------------------------------------------------------------------------------ sending
    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
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
        status, _ = error_status(exc)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(exc, OverloadedError) else None
        self._send(status, http_error_body(str(exc)), headers=headers)
        return status

    # ------------------------------------------------------------------------------ routing
    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path in ("/v2/health/live", "/v2/health/live/"):
            self._send(200, b"")
        elif path in ("/v2/health/ready", "/v2/health/ready/"):
            self._send(200 if app.service.ready else 503, b"")
        elif path in ("/v2", "/v2/"):
            self._send_json(200, server_metadata())
        elif path == "/metrics":
            self._send(200, app.service.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
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
            raise _HttpError(400, f"bad Content-Length '{length}'") from None
        if size < 0 or size > MAX_BODY_BYTES:
            raise _HttpError(413, f"request body of {size} bytes is over the limit of {MAX_BODY_BYTES}")
        body = self.rfile.read(size)
        if len(body) != size:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _drain_body(self) -> None:
        """Read and drop an unneeded request body, so that the connection stays usable."""
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = 0
        if 0 < size <= MAX_BODY_BYTES:
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
                    request = parse_http_request(decode_body(body, self.headers.get("Content-Encoding")), _header_length(self.headers))
                    pending = service.submit(request)
                    answer = service.wait(pending, final=request.wait_final)
                    payload, header_length = encode_http_response(service.spec, request, answer)
                except ApparateError as exc:
                    code = error_status(exc)[1]
                    self._send_error(exc)
                else:
                    headers = {"Inference-Header-Content-Length": str(header_length)} if header_length is not None else None
                    ctype = "application/octet-stream" if header_length is not None else "application/json"
                    self._send(200, payload, ctype, headers)
        except _HttpError as exc:
            code = "bad_request"
            self.close_connection = True
            self._send(exc.status, http_error_body(exc.message))
        except UnavailableError as exc:
            code = "unavailable"
            self._send_error(exc)
        except (ConnectionError, TimeoutError, socket.timeout, OSError):
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
        return int(value)
    except ValueError:
        raise RequestError(f"bad Inference-Header-Content-Length '{value}'") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog: a burst of new connections must not be dropped

    def __init__(self, address: tuple[str, int], app: "HttpFrontend") -> None:
        self.app = app
        super().__init__(address, _Handler)


class HttpFrontend:
    """The REST listener: binds at construction, serves on a background thread after :meth:`start`."""

    def __init__(self, service: InferenceService, host: str, port: int) -> None:
        self.service = service
        try:
            self._httpd = _Server((host, port), self)
        except OSError as exc:
            raise ApparateError(f"cannot listen for HTTP on {host}:{port} ({exc.strerror or exc}); choose another --http-port") from None
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="apparate-http", daemon=True)
        self._thread.start()

    def connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def stop_accepting(self) -> None:
        """Stop the accept loop and close the listening socket (open connections keep going)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def close_connections(self) -> None:
        """Shut down the remaining (idle keep-alive) connections, so their threads end."""
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
