"""The Open Inference Protocol (KServe v2) over REST, as an ASGI application.

The HTTP server (:mod:`.http`: uvicorn on h11) frames requests, parses headers and keeps
connections; this app routes them. Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``,
``/v2`` (server metadata), ``/v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready``,
``.../config``, ``POST .../infer`` (JSON tensors, or the binary tensor extension that tritonclient
uses) and ``GET /metrics`` (Prometheus text); HEAD wherever GET is. Errors are ``{"error": "..."}``
with 400 (bad request or unknown model), 401 (missing or wrong bearer token, when one is set),
404 (no such endpoint), 411 (an infer without Content-Length), 413 (body over the limit), 431 (over
``MAX_HEADERS`` header fields), 501 (another method, or Transfer-Encoding), 503 (+ Retry-After)
when overloaded or shutting down, 504 past the request timeout, 500 if the engine fails.

The engine's results arrive on its own threads; an infer awaits them without holding the event
loop (:meth:`~.service.InferenceService.wait_async`). Bodies over ``OFFLOAD_BYTES`` are decoded
and parsed on a worker thread, so that one large request does not stall every connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from apparate_trt import __version__
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.server.codec import (
    InferRequest,
    RequestError,
    encode_http_response,
    http_error_body,
    parse_http_request,
)
from apparate_trt.runtime.server.encoding import decode_body
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

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

EXTENSIONS = ["binary_tensor_data", "parameters", "model_configuration"]
MAX_HEADERS = 100
"""Header fields one request may carry; more get 431."""
DRAIN_LIMIT_BYTES = 1 << 20
"""An unneeded request body (404, 401) up to this size is read and dropped by the server; a
larger one closes the connection."""
OFFLOAD_BYTES = 1 << 20
"""A request body larger than this (bytes) is decoded and parsed on a worker thread."""
RETRY_AFTER_S = 1
"""Retry-After (seconds) sent with 503."""
SERVER_HEADER = f"apparate_trt/{__version__}".encode()

_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/config|/infer)?/?$"
)


def server_metadata() -> dict[str, Any]:
    """The server metadata object (``GET /v2``)."""
    return {"name": "apparate_trt", "version": __version__, "extensions": EXTENSIONS}


class HttpError(Exception):
    """A request refused before the protocol layer: its HTTP status and message; the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` value (None if absent); RequestError if malformed."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise RequestError(f"bad Inference-Header-Content-Length '{value}'") from None
    if length < 0:
        raise RequestError(f"Inference-Header-Content-Length {length} is negative; send the JSON header's byte size")
    return length


def check_framing(headers: dict[str, str]) -> None:
    """HttpError for the framing the server tolerates and this app refuses: any Transfer-Encoding
    (501), and with a Content-Length beside it (a smuggling attempt, RFC 9112 section 6.3) 400.
    The server has checked Content-Length already: one value, digits only."""
    if "transfer-encoding" in headers:
        if "content-length" in headers:
            raise HttpError(
                400, "a request with both Transfer-Encoding and Content-Length is invalid (RFC 9112 section 6.3)"
            )
        raise HttpError(501, "Transfer-Encoding is not supported; send the body with a Content-Length")


def body_size(headers: dict[str, str], limit: int) -> int:
    """The infer body's size from its headers (bytes); HttpError when it is missing (411) or over
    ``limit`` (413)."""
    length = headers.get("content-length")
    if length is None:
        raise HttpError(411, "an infer request needs a Content-Length header")
    size = int(length)
    if size > limit:
        raise HttpError(
            413, f"request body of {size} bytes is over the limit of {limit} for this model; send less data per request"
        )
    return size


def header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case names to values (latin-1); the first of repeated names wins."""
    out: dict[str, str] = {}
    for name, value in raw:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def read_body(receive: Receive, size: int) -> bytes:
    """The whole request body (``size`` bytes as framed); ConnectionError if the client left.
    A body that arrives in one message is not copied."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client closed the connection mid-body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(body) != size:
        raise ConnectionError(f"the body ended after {len(body)} of {size} bytes")
    return body


class RestApp:
    """The ASGI app of one :class:`~.service.InferenceService`.

    Args:
        service: where requests go.
        security: the bearer token (TLS is the server's).
        decoded_limit: the largest body accepted, as sent and after its Content-Encoding (bytes).
    """

    def __init__(self, service: InferenceService, security: Security, decoded_limit: int) -> None:
        self.service = service
        self.security = security
        self.decoded_limit = int(decoded_limit)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        reply = Reply(send, scope["method"] == "HEAD", self.service)
        raw_headers = scope["headers"]
        if len(raw_headers) > MAX_HEADERS:
            await reply.error(431, f"431 the request has {len(raw_headers)} header fields, over {MAX_HEADERS}", True)
            return
        headers = header_dict(raw_headers)
        try:
            check_framing(headers)
        except HttpError as exc:
            await reply.error(exc.status, f"{exc.status} {exc.message}", True)
            self.service.metrics.request_done("http", "bad_request", 0.0)
            return
        method, path = scope["method"], scope["path"]
        if method not in ("GET", "HEAD", "POST"):
            await reply.error(501, f"501 method {method} is not supported; use GET, HEAD or POST", True)
            return
        if not await self._authorized(reply, path, headers):
            return
        if method == "POST":
            match = _MODEL_PATH.match(path)
            if match is None or match.group("action") != "/infer":
                await self._not_found(reply, method, path, headers)
                return
            await self._infer(reply, headers, receive, match.group("name"), match.group("version") or "")
        else:
            await self._get(reply, method, path, headers)

    # ------------------------------------------------------------------------------ routing
    async def _authorized(self, reply: Reply, path: str, headers: dict[str, str]) -> bool:
        """True if the request may go on; otherwise 401 was sent (the token is missing or wrong)."""
        security = self.security
        if (
            security.token is None
            or path.rstrip("/") in OPEN_HTTP_PATHS
            or security.authorized(headers.get("authorization"))
        ):
            return True
        await reply.send(
            401,
            http_error_body("missing or wrong bearer token; send the header 'Authorization: Bearer TOKEN'"),
            extra=[(b"WWW-Authenticate", b'Bearer realm="apparate_trt"')],
            close=True,
        )
        self.service.metrics.request_done("http", "unauthenticated", 0.0)
        return False

    async def _not_found(self, reply: Reply, method: str, path: str, headers: dict[str, str]) -> None:
        try:
            size = int(headers.get("content-length") or 0)
        except ValueError:
            size = -1
        close = not 0 <= size <= DRAIN_LIMIT_BYTES
        await reply.send(404, http_error_body(f"no endpoint {method} {path}; see docs/SERVING.md"), close=close)

    async def _get(self, reply: Reply, method: str, path: str, headers: dict[str, str]) -> None:
        service = self.service
        close = headers.get("content-length", "0") != "0"  # a body this app does not read
        if path in ("/v2/health/live", "/v2/health/live/"):
            await reply.send(200, b"", close=close)
        elif path in ("/v2/health/ready", "/v2/health/ready/"):
            await reply.send(200 if service.ready else 503, b"", close=close)
        elif path in ("/v2", "/v2/"):
            await reply.json(200, server_metadata(), close=close)
        elif path == "/metrics":
            # the engine's numbers may take blocking calls (a replicated engine asks its replicas)
            text = await asyncio.get_running_loop().run_in_executor(None, service.metrics.render)
            await reply.send(200, text.encode(), METRICS_CONTENT_TYPE.encode(), close=close)
        else:
            match = _MODEL_PATH.match(path)
            if match is None or match.group("action") == "/infer":
                await self._not_found(reply, method, path, headers)
                return
            await self._model_get(reply, match.group("name"), match.group("version") or "", match.group("action"))

    async def _model_get(self, reply: Reply, name: str, version: str, action: str | None) -> None:
        service = self.service
        try:
            service.check_model(name, version)
        except RequestError as exc:
            await reply.send(400, http_error_body(str(exc)))
            return
        if action == "/ready":
            await reply.send(200 if service.ready else 503, b"")
        elif action == "/config":
            await reply.json(200, service.spec.config(service.max_batch))
        else:
            await reply.json(200, service.spec.metadata())

    # -------------------------------------------------------------------------------- infer
    async def _infer(self, reply: Reply, headers: dict[str, str], receive: Receive, name: str, version: str) -> None:
        service = self.service
        t0 = time.monotonic()
        code = "ok"
        try:
            try:
                body = await read_body(receive, body_size(headers, self.decoded_limit))
            except asyncio.CancelledError:  # the stop's grace ended while this body was still arriving
                stopping = UnavailableError(
                    "the server stopped before this request's body arrived; retry it once the server is back"
                )
                code = error_kind(stopping).code
                await reply.exception(stopping)
                return
            with service.tracked():
                try:
                    service.check_model(name, version)
                    request = await self._parse(body, headers)
                    pending = service.submit(request)
                    answer = await service.wait_async(pending, final=request.wait_final)
                    payload, json_length = encode_http_response(service.spec, request, answer)
                except ApparateError as exc:
                    code = error_kind(exc).code
                    await reply.exception(exc)
                else:
                    if json_length is None:
                        await reply.send(200, payload)
                    else:
                        extra = [(b"Inference-Header-Content-Length", str(json_length).encode())]
                        await reply.send(200, payload, b"application/octet-stream", extra)
        except HttpError as exc:
            code = "bad_request"
            await reply.send(exc.status, http_error_body(exc.message), close=True)
        except (UnavailableError, OverloadedError) as exc:  # refused before it was accepted
            code = error_kind(exc).code
            await reply.exception(exc)
        except (ConnectionError, OSError):
            code = "disconnected"
        except Exception as exc:  # noqa: BLE001 - a bug must cost one request, not the server
            log.exception("infer request failed")
            code = "error"
            await reply.exception(InternalError(f"internal server error: {exc}"))
        finally:
            service.metrics.request_done("http", code, time.monotonic() - t0)

    async def _parse(self, body: bytes, headers: dict[str, str]) -> InferRequest:
        """The checked request from its body (decoded, then parsed), on a worker thread if large."""
        service = self.service
        encoding = headers.get("content-encoding")
        length = header_length(headers.get("inference-header-content-length"))

        def parse() -> InferRequest:
            decoded = decode_body(body, encoding, self.decoded_limit)
            return parse_http_request(decoded, length, service.spec, service.max_batch)

        if len(body) <= OFFLOAD_BYTES:
            return parse()
        return await asyncio.get_running_loop().run_in_executor(None, parse)


class Reply:
    """Sends one response; ``Connection: close`` when asked to, or once the service is draining."""

    def __init__(self, send: Send, head: bool, service: InferenceService) -> None:
        self._send = send
        self._head = head
        self._service = service
        self.status: int | None = None

    async def send(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        extra: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
    ) -> None:
        if self.status is not None:
            return  # answered already (e.g. a failure while sending)
        self.status = status
        headers = [
            (b"Server", SERVER_HEADER),
            (b"Content-Type", content_type),
            (b"Content-Length", str(len(body)).encode()),
            *(extra or []),
        ]
        if close or not self._service.ready:
            headers.append((b"Connection", b"close"))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": b"" if self._head else bytes(body)})

    async def json(self, status: int, doc: Any, close: bool = False) -> None:
        await self.send(status, json.dumps(doc).encode(), close=close)

    async def error(self, status: int, message: str, close: bool = False) -> None:
        await self.send(status, http_error_body(message), close=close)

    async def exception(self, exc: BaseException) -> None:
        """The protocol's answer to a serving error (its status from :mod:`.statuses`)."""
        retry = isinstance(exc, (OverloadedError, UnavailableError))
        extra = [(b"Retry-After", str(RETRY_AFTER_S).encode())] if retry else None
        await self.send(error_kind(exc).http, http_error_body(str(exc)), extra=extra)
