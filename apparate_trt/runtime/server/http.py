"""The REST listener: the Open Inference Protocol app (:mod:`.rest_app`) on uvicorn with h11.

uvicorn (event-driven, maintained; what KServe and Ray Serve serve REST on) owns the sockets,
keep-alive and TLS; h11 parses HTTP/1.1 strictly (conflicting Content-Length values, a signed or
spaced one, a missing Host, a bad header line: 400). A connection is a few kilobytes on one event
loop, not a thread, so idle and slow connections cost no worker. This module adds what uvicorn
leaves out, in :class:`_Protocol`:

- deadlines: a request's line and headers must arrive within ``HEADER_TIMEOUT_S`` (counted from
  the connection's opening for its first request, from the first byte for later ones) and its
  body within ``BODY_TIMEOUT_S`` after them, or the connection is closed; an idle keep-alive
  connection is closed after ``IDLE_TIMEOUT_S``;
- a connection limit (``max_connections``): one more gets a 503 JSON answer at once and is closed;
- protocol errors as the protocol's JSON error body with h11's status (400, 431, 501), a request
  line over ``MAX_REQUEST_LINE`` bytes as 414, an HTTP/0.9 request line as 400 at once.

Sizes in bytes, times in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

from apparate_trt.errors import ApparateError
from apparate_trt.runtime.server.codec import http_error_body
from apparate_trt.runtime.server.config import MAX_CONNECTIONS
from apparate_trt.runtime.server.encoding import decoded_limit
from apparate_trt.runtime.server.rest_app import RestApp
from apparate_trt.runtime.server.security import Security
from apparate_trt.runtime.server.service import InferenceService

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
"""A request's line and headers must arrive within this (s), or the connection is closed."""
BODY_TIMEOUT_S = 30.0
"""A request's body must arrive within this (s) after its headers, or the connection is closed."""
IDLE_TIMEOUT_S = 120.0
"""A keep-alive connection idle this long after a response (s) is closed."""
MAX_REQUEST_LINE = 16 * 1024
"""The longest request line (bytes); a longer one gets 414."""
MAX_HEADER_BYTES = 64 * 1024
"""The longest request head, line and headers together (bytes); a longer one gets 431."""
REFUSE_LINGER_S = 1.0
"""A connection refused at the limit is closed this long (s) after its 503 is written, so that the
client reads the answer instead of a reset."""
LISTEN_BACKLOG = 1024
"""The listen backlog: a burst of new connections is not dropped."""
STOP_GRACE_S = 5.0
"""At the end of a stop, how long (s) connections with a response under way get to finish it."""


def json_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    """A whole response (JSON error body, ``Connection: close``) as bytes."""
    body = http_error_body(message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def head_refusal(head: bytes) -> tuple[int, str] | None:
    """(status, reason) when the request head received so far must be refused before h11 parses
    it; None otherwise. Refused: a request line over ``MAX_REQUEST_LINE`` bytes (414); one without
    an HTTP version (HTTP/0.9, which has no status line to answer with: 400 at once); a version
    other than HTTP/1.0 and 1.1 (505; a malformed one is h11's 400); a head over
    ``MAX_HEADER_BYTES`` (431: h11 checks only a head still incomplete, so one that arrives whole
    in one read is checked here)."""
    head = head.lstrip(b"\r\n")
    end = head.find(b"\n")
    line = head if end < 0 else head[:end]
    if len(line) > MAX_REQUEST_LINE:
        return 414, f"the request line is over {MAX_REQUEST_LINE} bytes; send a shorter path"
    words = line.split()
    if end >= 0 and words and len(words) != 3:
        return 400, "the request line must be METHOD PATH HTTP/1.1 (HTTP/0.9 is not supported)"
    if end >= 0 and words and re.fullmatch(rb"HTTP/\d\.\d", words[2]) and words[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        return 505, "this server speaks HTTP/1.0 and HTTP/1.1; send the request as HTTP/1.1"
    blank = head.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
    if (blank < 0 and len(head) > MAX_HEADER_BYTES) or blank + 4 > MAX_HEADER_BYTES:
        return 431, f"the request head is over {MAX_HEADER_BYTES} bytes; send fewer or shorter headers"
    return None


class _Connection(h11.Connection):
    """h11's connection that keeps the last protocol error, for an answer that names it."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


class _BodyFlow(FlowControl):
    """uvicorn's flow control without its pause at every 64 KiB of a request body still arriving.

    uvicorn stops reading a connection once 64 KiB of body wait for the app, and reads on when the
    app asks for more: for a 600 KB tensor that is a pause and a wake of the app per read. The
    infer app reads the whole body at once, up to ``limit_bytes`` (413 over it, before any of it
    is read), so a body still arriving is read on up to that size; past it, and for every other
    pause (a pipelined request waiting behind the answer), uvicorn's flow control holds."""

    def __init__(self, transport: asyncio.Transport, protocol: H11Protocol, limit_bytes: int) -> None:
        super().__init__(transport)
        self._protocol = protocol
        self._limit_bytes = limit_bytes

    def pause_reading(self) -> None:
        cycle = self._protocol.cycle
        if (
            cycle is not None
            and cycle.more_body  # the request's body is still arriving
            and not cycle.response_complete
            and len(cycle.body) <= self._limit_bytes
        ):
            return  # the app reads this body whole: no pause below the cap
        super().pause_reading()


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines, the connection limit and JSON protocol errors.

    ``frontend`` is set on a subclass per listener (:func:`protocol_for`)."""

    frontend: HttpFrontend

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _Connection(h11.SERVER, MAX_HEADER_BYTES)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_body = False
        self._refusing = False

    # ------------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _BodyFlow(transport, self, self.frontend.app.decoded_limit)
        if len(self.connections) > self.frontend.max_connections:
            self._refuse()
            return
        self._arm(self.frontend.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _refuse(self) -> None:
        self._refusing = True
        self.connections.discard(self)
        self.frontend.service.metrics.request_done("http", "overloaded", 0.0)
        limit = self.frontend.max_connections
        self.transport.write(
            json_response(
                503,
                "Service Unavailable",
                f"the server has {limit} connections open, its limit; retry shortly or reuse a connection",
                "Retry-After: 1\r\n",
            )
        )
        self.loop.call_later(REFUSE_LINGER_S, self.transport.close)

    # -------------------------------------------------------------------------- deadlines
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        log.debug("closing a connection whose request did not arrive in time")
        self.transport.close()

    def _follow_state(self) -> None:
        """Re-arm or drop the deadline as the request moves from its head to its body to done."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if not self._in_body:
                self._in_body = True
                self._arm(self.frontend.body_timeout_s)
        elif state is not h11.IDLE:  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more to wait for
            self._disarm()
            self._in_body = False

    # ------------------------------------------------------------------------------ input
    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return
        if self.conn.their_state is h11.IDLE:  # a request head is arriving
            if self._deadline is None:
                self._arm(self.frontend.header_timeout_s)  # a later request's first byte
            limit = MAX_HEADER_BYTES + 8
            refusal = head_refusal(self.conn.trailing_data[0][:limit] + data[:limit])
            if refusal is not None:
                self._answer(*refusal)
                return
        super().data_received(data)
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_state()

    # ----------------------------------------------------------------------------- errors
    def send_400_response(self, msg: str) -> None:
        """h11 refused the request: answer with its status (400, 431 or 501) and reason, close."""
        exc = self.conn.last_error
        status = exc.error_status_hint if exc is not None else 400
        reason = str(exc) if exc is not None and str(exc) else msg
        reason = re.sub(r"bytearray\(b(['\"])(.*)\1\)", r"'\2'", reason)  # h11 quotes lines as bytearray(b'...')
        if status == 431:
            reason = f"the request head is over {MAX_HEADER_BYTES} bytes; send fewer or shorter headers"
        self._answer(status, reason)

    def _answer(self, status: int, reason: str) -> None:
        self._disarm()
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            self.transport.close()  # a response is half written: closing is the only answer left
            return
        phrases = {
            400: "Bad Request",
            414: "URI Too Long",
            431: "Request Header Fields Too Large",
            505: "HTTP Version Not Supported",
        }
        phrase = phrases.get(status, "Not Implemented" if status == 501 else "Error")
        self.transport.write(json_response(status, phrase, f"{status} {phrase}: {reason}"))
        self.frontend.service.metrics.request_done("http", "bad_request", 0.0)
        self.transport.close()


def protocol_for(frontend: HttpFrontend) -> type[_Protocol]:
    """The protocol class of one listener (uvicorn makes each connection's protocol from it)."""
    return type("ApparateH11Protocol", (_Protocol,), {"frontend": frontend})


class HttpFrontend:
    """The REST listener: binds at construction, serves on a background thread after :meth:`start`.

    Args:
        service: where requests go.
        host, port: the address to bind (port 0: a free one; read :attr:`port`).
        max_connections: connections served at once; one more gets 503 and is closed.
        security: TLS and the bearer token.
        header_timeout_s, body_timeout_s: the deadlines of a request's head and body (s).
    """

    def __init__(
        self,
        service: InferenceService,
        host: str,
        port: int,
        max_connections: int = MAX_CONNECTIONS,
        security: Security | None = None,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.security = security or Security()
        self.max_connections = int(max_connections)
        self.header_timeout_s = float(header_timeout_s)
        self.body_timeout_s = float(body_timeout_s)
        self.app = RestApp(service, self.security, decoded_limit(service.spec.max_request_bytes(service.max_batch)))
        self._socket = _bind(host, port)
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            http=protocol_for(self),
            lifespan="off",
            ws="none",
            interface="asgi3",
            access_log=False,
            log_config=None,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=int(IDLE_TIMEOUT_S),
            timeout_graceful_shutdown=int(STOP_GRACE_S),
            backlog=LISTEN_BACKLOG,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )
        config.load()
        config.ssl = self.security.ssl_context() if self.security.tls else None
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        uvicorn_log = logging.getLogger("uvicorn.error")
        if uvicorn_log.level == logging.NOTSET:  # its per-request warnings would flood the log under attack
            uvicorn_log.setLevel(logging.ERROR)

    @property
    def open_connections(self) -> int:
        """Connections being served now (refused ones aside)."""
        return len(self._server.server_state.connections)

    @property
    def requests_in_progress(self) -> int:
        """Requests whose head is read and whose app call has not returned yet."""
        return len(self._server.server_state.tasks)

    def start(self) -> None:
        """Serve on a background thread (its own event loop); returns once the listener accepts."""
        self._thread = threading.Thread(target=self._run, name="apparate-http", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise ApparateError(f"the HTTP server on {self.host}:{self.port} failed to start; see the log above")
            self._thread.join(0.01)

    def _run(self) -> None:
        factory = self._server.config.get_loop_factory()
        loop = factory() if factory is not None else asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._socket]))
        except Exception:  # noqa: BLE001 - logged; start() or the stop sees the thread end
            log.exception("the HTTP server failed")
        finally:
            loop.close()

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections keep going (a new request on one gets 503
        while the service drains)."""
        loop = self._loop
        servers = getattr(self._server, "servers", [])
        if loop is not None and servers:
            done = threading.Event()

            def close() -> None:
                for server in servers:
                    server.close()
                done.set()

            try:
                loop.call_soon_threadsafe(close)
                done.wait(5.0)
            except RuntimeError:  # the loop has ended already
                pass
        elif self._thread is None:
            self._socket.close()

    def close_connections(self, grace_s: float = STOP_GRACE_S) -> None:
        """End the server: idle connections close at once, those answering get up to ``grace_s``."""
        if self._thread is None:
            self._socket.close()
            return
        self._server.config.timeout_graceful_shutdown = int(max(1, grace_s))
        self._server.should_exit = True
        self._thread.join(grace_s + 5.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)


def _bind(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; ApparateError naming the flag when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ApparateError(
            f"cannot listen for HTTP on {host}:{port} ({exc.strerror or exc}); choose another --http-port"
        ) from None
    sock.setblocking(False)
    return sock
