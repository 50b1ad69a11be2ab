"""The server: one Engine behind a REST and a gRPC front end, with a graceful stop.

``Server`` can be started and stopped in-process (tests, embedding); :func:`serve` loads an engine
directory, serves it and blocks until SIGTERM or SIGINT, then stops accepting, answers every
accepted request and returns 0 (``apparate-run --serve`` calls it).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apparate_trt.defaults import (
    DEFAULT_ACCURACY_CONSTRAINT,
    DEFAULT_AUDIT_RATE,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DELAY_MS,
    DEFAULT_QUEUE_SIZE,
)
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.server.codec import ModelSpec
from apparate_trt.runtime.server.grpc import GrpcFrontend
from apparate_trt.runtime.server.http import MAX_CONNECTIONS, HttpFrontend
from apparate_trt.runtime.server.metrics import Metrics, engine_gauges
from apparate_trt.runtime.server.security import Security
from apparate_trt.runtime.server.service import MAX_INFLIGHT, InferenceService

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0
"""The longest a stop waits (seconds) for accepted requests to be answered."""
GRPC_STOP_GRACE_S = 1.0
"""Once every accepted request is answered, the gRPC server's grace (seconds) for the calls it is
still refusing with UNAVAILABLE."""


def raise_open_file_limit(want: int = 65536) -> None:
    """Raise this process's soft limit of open files toward ``want`` (at most the hard limit):
    the connection limit, the refuser and the engine's files must fit under it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit
        pass


class Server:
    """Serves ``engine`` over REST and gRPC on ``host``; port 0 picks a free port, None disables.

    The server owns the engine: :meth:`stop` closes it. Ports are bound by :meth:`start`; read the
    actual ones from :attr:`http_port` / :attr:`grpc_port`.

    Args:
        engine: a loaded :class:`~apparate_trt.runtime.api.Engine`.
        model_name: the served model's name (default: the manifest's model name).
        request_timeout_s: the longest one request may take, seconds.
        max_batch: the engine's max batch size (shown in the model config; a request's batch may
            not exceed it).
        drain_timeout_s: the longest :meth:`stop` waits for accepted requests, seconds.
        security: TLS and bearer token (:func:`~apparate_trt.runtime.server.security.load_security`);
            None: plain text, no token.
        max_connections: REST connections served at once (one more gets 503).
        max_inflight: requests in flight at once over REST and gRPC (one more gets 503 /
            RESOURCE_EXHAUSTED, counted as overloaded).
    """

    def __init__(
        self,
        engine: Any,
        *,
        model_name: str | None = None,
        host: str = "127.0.0.1",
        http_port: int | None = 8000,
        grpc_port: int | None = 8001,
        request_timeout_s: float = 30.0,
        max_batch: int = DEFAULT_MAX_BATCH,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        security: Security | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        if http_port is None and grpc_port is None:
            raise ApparateError("the server needs at least one of the HTTP and gRPC ports")
        self.engine = engine
        self.spec = ModelSpec.from_manifest(engine.manifest, model_name)
        self.metrics = Metrics(self.spec.name, lambda: engine_gauges(engine))
        self.service = InferenceService(engine, self.spec, self.metrics, request_timeout_s, max_batch, max_inflight)
        self.host = host
        self.security = security or Security()
        self.max_connections = int(max_connections)
        self.drain_timeout_s = float(drain_timeout_s)
        self._http_port, self._grpc_port = http_port, grpc_port
        self._http: HttpFrontend | None = None
        self._grpc: GrpcFrontend | None = None
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()

    @classmethod
    def from_engine_dir(
        cls,
        engine_dir: str | Path,
        *,
        model_name: str | None = None,
        host: str = "127.0.0.1",
        http_port: int | None = 8000,
        grpc_port: int | None = 8001,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
        accuracy_constraint: float = DEFAULT_ACCURACY_CONSTRAINT,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        request_timeout_s: float = 30.0,
        mode: str = "apparate",
        threads: int | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        overload_fallback: bool | None = None,
        exit_mode: str | None = None,
        audit_rate: float = DEFAULT_AUDIT_RATE,
        security: Security | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_inflight: int = MAX_INFLIGHT,
    ) -> Server:
        """Load ``engine_dir`` (see :func:`apparate_trt.runtime.api.load`) and wrap it (not started)."""
        from apparate_trt.runtime.api import load

        engine = load(
            engine_dir,
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            accuracy_constraint=accuracy_constraint,
            mode=mode,
            threads=threads,
            queue_size=queue_size,
            overload_fallback=overload_fallback,
            exit_mode=exit_mode,
            audit_rate=audit_rate,
        )
        try:
            return cls(
                engine,
                model_name=model_name,
                host=host,
                http_port=http_port,
                grpc_port=grpc_port,
                request_timeout_s=request_timeout_s,
                max_batch=max_batch,
                drain_timeout_s=drain_timeout_s,
                security=security,
                max_connections=max_connections,
                max_inflight=max_inflight,
            )
        except BaseException:
            engine.close()
            raise

    # --------------------------------------------------------------------------------- lifecycle
    @property
    def http_port(self) -> int | None:
        """The bound HTTP port (after :meth:`start`), or None if HTTP is off."""
        return self._http.port if self._http is not None else self._http_port

    @property
    def grpc_port(self) -> int | None:
        """The bound gRPC port (after :meth:`start`), or None if gRPC is off."""
        return self._grpc.port if self._grpc is not None else self._grpc_port

    def start(self) -> Server:
        """Bind both ports and start serving; ApparateError if a port is taken (nothing left running)."""
        raise_open_file_limit()
        with self._lock:
            if self._started:
                raise ApparateError("the server was already started; create a new Server")
            self._started = True
        try:
            if self._http_port is not None:
                self._http = HttpFrontend(
                    self.service, self.host, self._http_port, self.max_connections, security=self.security
                )
            if self._grpc_port is not None:
                self._grpc = GrpcFrontend(self.service, self.host, self._grpc_port, self.security)
                self._grpc.start()
            if self._http is not None:
                self._http.start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "serving %s: REST %s:%s, gRPC %s:%s", self.spec.name, self.host, self.http_port, self.host, self.grpc_port
        )
        return self

    def stop(self) -> bool:
        """Stop accepting, answer every accepted request, close the engine; True if all drained.

        Safe to call more than once and from any thread except the front ends' own.
        """
        with self._lock:
            if self._stopped:
                return True
            self._stopped = True
        self.service.start_draining()  # from now on a new request is answered 503 / UNAVAILABLE
        if self._http is not None:
            self._http.stop_accepting()
        try:
            self.engine.close()  # dispatches the queue at once and answers every accepted sample
        except Exception:  # noqa: BLE001 - the front ends must still close
            log.exception("closing the engine failed")
        idle = self.service.wait_idle(self.drain_timeout_s)
        if self._grpc is not None:
            # gRPC keeps taking calls while draining, so that each one not accepted gets UNAVAILABLE
            # from the service instead of a bare CANCELLED from the transport; it stops once idle.
            self._grpc.stop_accepting(GRPC_STOP_GRACE_S)
            self._grpc.close(GRPC_STOP_GRACE_S + 5.0)
        if self._http is not None:
            self._http.close_connections()
        if not idle:
            log.warning("%d request(s) still unanswered after %.0f s", self.service.inflight, self.drain_timeout_s)
        return idle

    def __enter__(self) -> Server:
        return self.start() if not self._started else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        """One line naming the model and where it is served."""
        parts = []
        if self.http_port is not None:
            parts.append(f"REST at {self.host}:{self.http_port}")
        if self.grpc_port is not None:
            parts.append(f"gRPC at {self.host}:{self.grpc_port}")
        mode = getattr(self.engine, "mode", "apparate")
        extras = [x for x, on in (("TLS", self.security.tls), ("bearer token", self.security.token is not None)) if on]
        with_ = f" with {' and '.join(extras)}" if extras else ""
        return (
            f"serving model '{self.spec.name}' ({mode}) over {' and '.join(parts)}{with_}; stop with SIGTERM or Ctrl-C"
        )


def run_until_signal(server: Server, ready_callback: Callable[[Server], None] | None = None) -> int:
    """Start ``server``, block until SIGTERM or SIGINT, stop it gracefully; 0 if all drained.

    Must run on the main thread (signal handlers). A second signal during the drain kills the
    process the default way.
    """
    if threading.current_thread() is not threading.main_thread():
        raise ApparateError("serve() must run on the main thread (it waits for SIGTERM / SIGINT)")
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        server.start()
        print(f"apparate-run: {server.describe()}", file=sys.stderr, flush=True)
        if ready_callback is not None:
            ready_callback(server)
        while not stop.wait(0.5):
            pass
        print("apparate-run: stopping: answering accepted requests", file=sys.stderr, flush=True)
        drained = server.stop()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if drained else 1


def serve(
    engine_dir: str | Path,
    *,
    model_name: str | None = None,
    http_port: int | None = 8000,
    grpc_port: int | None = 8001,
    host: str = "127.0.0.1",
    max_batch: int = DEFAULT_MAX_BATCH,
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
    accuracy_constraint: float = DEFAULT_ACCURACY_CONSTRAINT,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    request_timeout_s: float = 30.0,
    mode: str = "apparate",
    threads: int | None = None,
    ready_callback: Callable[[Server], None] | None = None,
    overload_fallback: bool | None = None,
    exit_mode: str | None = None,
    audit_rate: float = DEFAULT_AUDIT_RATE,
    security: Security | None = None,
    max_connections: int = MAX_CONNECTIONS,
    max_inflight: int = MAX_INFLIGHT,
) -> int:
    """Serve ``engine_dir`` over the Open Inference Protocol until SIGTERM / SIGINT; the exit status.

    Ports 0 pick free ones; the ready line on stderr names them. Returns 0 once every accepted
    request was answered, 1 if the drain timed out.
    """
    server = Server.from_engine_dir(
        engine_dir,
        model_name=model_name,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        accuracy_constraint=accuracy_constraint,
        queue_size=queue_size,
        request_timeout_s=request_timeout_s,
        mode=mode,
        threads=threads,
        overload_fallback=overload_fallback,
        exit_mode=exit_mode,
        audit_rate=audit_rate,
        security=security,
        max_connections=max_connections,
        max_inflight=max_inflight,
    )
    return run_until_signal(server, ready_callback)
