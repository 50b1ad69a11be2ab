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

from apparate_trt.errors import ApparateError
from apparate_trt.runtime.gc_freeze import freeze_after_load, unfreeze
from apparate_trt.runtime.server.codec import ModelSpec
from apparate_trt.runtime.server.config import ServingConfig
from apparate_trt.runtime.server.grpc import GrpcFrontend
from apparate_trt.runtime.server.http import HttpFrontend
from apparate_trt.runtime.server.metrics import Metrics, engine_gauges
from apparate_trt.runtime.server.security import Security
from apparate_trt.runtime.server.service import InferenceService

log = logging.getLogger(__name__)

GRPC_STOP_GRACE_S = 1.0
"""Once every accepted request is answered, the gRPC server's grace (seconds) for the calls it is
still refusing with UNAVAILABLE."""


def raise_open_file_limit(want: int = 65536) -> None:
    """Raise this process's soft limit of open files toward ``want`` (at most the hard limit):
    the connection limit and the engine's files must fit under it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit
        pass


class Server:
    """Serves ``engine`` over REST and gRPC as ``config`` says; port 0 picks a free port, None disables.

    The server owns the engine: :meth:`stop` closes it. Ports are bound by :meth:`start`; read the
    actual ones from :attr:`http_port` / :attr:`grpc_port`.

    Args:
        engine: a loaded :class:`~apparate_trt.runtime.api.Engine`.
        config: the server's settings (:class:`~apparate_trt.runtime.server.config.ServingConfig`;
            its ``engine`` part is what the engine was loaded with); None: the defaults.
        settings: fields of ``ServingConfig`` that replace ``config``'s (e.g. ``http_port=0``).
    """

    def __init__(self, engine: Any, config: ServingConfig | None = None, **settings: Any) -> None:
        engine_fields = sorted(set(settings) - set(ServingConfig.server_fields()))
        if engine_fields:
            raise ApparateError(
                f"{engine_fields} are engine settings, and this engine is loaded already; pass them to "
                "load(), or use Server.from_engine_dir / serve"
            )
        config = (config or ServingConfig()).replace(**settings)
        self.config = config
        self.engine = engine
        self.spec = ModelSpec.from_manifest(engine.manifest, config.model_name)
        self.metrics = Metrics(self.spec.name, lambda: engine_gauges(engine))
        self.service = InferenceService(
            engine, self.spec, self.metrics, config.request_timeout_s, engine.max_batch, config.max_inflight
        )
        self.host = config.host
        self.security = config.security or Security()
        self.max_connections = int(config.max_connections)
        self.drain_timeout_s = float(config.drain_timeout_s)
        self._http_port, self._grpc_port = config.http_port, config.grpc_port
        self._http: HttpFrontend | None = None
        self._grpc: GrpcFrontend | None = None
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()

    @classmethod
    def from_engine_dir(cls, engine_dir: str | Path, config: ServingConfig | None = None, **settings: Any) -> Server:
        """Load ``engine_dir`` with ``config.engine`` (:func:`apparate_trt.runtime.api.load`) and
        wrap it (not started); ``settings`` replace fields of ``config`` or of its engine part."""
        from apparate_trt.runtime.api import load

        config = (config or ServingConfig()).replace(**settings)
        engine = load(engine_dir, config.engine)
        try:
            return cls(engine, config)
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
        if self.config.save_ramps is not None:
            self._save_ramps(self.config.save_ramps)
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

    def _save_ramps(self, directory: str) -> None:
        """Write the closed engine's refitted ramps to ``directory`` (a failure is logged: the stop goes on)."""
        try:
            out = self.engine.save_ramps(directory)
        except Exception as exc:  # noqa: BLE001 - the front ends must still close
            log.error("saving the ramps to %s failed: %s", directory, exc)
            return
        learner = getattr(self.engine, "learner", None)
        refitted = sorted(learner.refitted()) if learner is not None else []
        print(
            f"apparate-run: engine directory with the ramps written to {out} (refitted: {refitted})",
            file=sys.stderr,
            flush=True,
        )

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
        for sig in previous:  # starting may install handlers of its own (Ray does): ours win
            signal.signal(sig, on_signal)
        freeze_after_load()  # this process serves: what loading made leaves the GC's full collections
        print(f"apparate-run: {server.describe()}", file=sys.stderr, flush=True)
        if ready_callback is not None:
            ready_callback(server)
        while not stop.wait(0.5):
            pass
        print("apparate-run: stopping: answering accepted requests", file=sys.stderr, flush=True)
        drained = server.stop()
    finally:
        server.stop()
        unfreeze()  # the closed engine goes back to the collector (an embedding process lives on)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if drained else 1


def serve(
    engine_dir: str | Path,
    config: ServingConfig | None = None,
    ready_callback: Callable[[Server], None] | None = None,
    **settings: Any,
) -> int:
    """Serve ``engine_dir`` over the Open Inference Protocol until SIGTERM / SIGINT; the exit status.

    ``config`` (:class:`~apparate_trt.runtime.server.config.ServingConfig`; None: the defaults) and
    ``settings`` (its fields, or its engine's) say how. Ports 0 pick free ones; the ready line on
    stderr names them. Returns 0 once every accepted request was answered, 1 if the drain timed out.
    """
    return run_until_signal(Server.from_engine_dir(engine_dir, config, **settings), ready_callback)
