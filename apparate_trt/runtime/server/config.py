"""The settings of one server, in one checked value (:class:`ServingConfig`), carried from
``apparate-run --serve`` through :func:`~apparate_trt.runtime.server.serve` and the engine's
:func:`~apparate_trt.runtime.api.load` to the front ends."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from apparate_trt.defaults import DEFAULT_MAX_CONNECTIONS
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.config import EngineConfig
from apparate_trt.runtime.server.security import Security

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_REQUEST_TIMEOUT_S = 30.0
"""The longest one request may take, seconds (a client may ask for less)."""
DRAIN_TIMEOUT_S = 60.0
"""The longest a stop waits (seconds) for accepted requests to be answered."""
MAX_CONNECTIONS = DEFAULT_MAX_CONNECTIONS
"""Default limit of REST connections open at once (one more gets 503; see apparate_trt.defaults)."""
MAX_INFLIGHT = 1024
"""Default limit of requests in flight at once, over every front end."""


@dataclass(frozen=True)
class ServingConfig:
    """How to serve (None means the default; checked when made).

    Attributes:
        engine: the engine's settings (:class:`~apparate_trt.runtime.config.EngineConfig`).
        model_name: the served model's name (None: the manifest's model name).
        host: the address both ports bind.
        http_port, grpc_port: the REST and gRPC ports; 0 picks a free one, None turns it off.
        request_timeout_s: the longest one request may take, seconds.
        drain_timeout_s: the longest a stop waits for accepted requests, seconds.
        max_connections: REST connections served at once (one more gets 503).
        max_inflight: requests in flight at once over REST and gRPC (one more gets 503 /
            RESOURCE_EXHAUSTED, counted as overloaded).
        security: TLS and bearer token (:func:`~apparate_trt.runtime.server.security.load_security`);
            None: plain text, no token.
        save_ramps: a directory (new or empty) that the stop writes an engine directory with the
            refitted ramps to (``Engine.save_ramps``); None: nothing is saved.
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    model_name: str | None = None
    host: str = "127.0.0.1"
    http_port: int | None = DEFAULT_HTTP_PORT
    grpc_port: int | None = DEFAULT_GRPC_PORT
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_inflight: int = MAX_INFLIGHT
    security: Security | None = None
    save_ramps: str | None = None

    def __post_init__(self) -> None:
        if self.http_port is None and self.grpc_port is None:
            raise ApparateError("the server needs at least one of the HTTP and gRPC ports")
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= int(port) <= 65535:
                raise ApparateError(f"{name.replace('_', ' ')} must be in 0..65535 (0: any free port), got {port}")
        if not self.request_timeout_s > 0:
            raise ApparateError(f"request timeout must be > 0 s, got {self.request_timeout_s}")
        if not self.drain_timeout_s >= 0:
            raise ApparateError(f"drain timeout must be >= 0 s, got {self.drain_timeout_s}")
        if int(self.max_connections) < 1:
            raise ApparateError(f"the connection limit must be at least 1, got {self.max_connections}")
        if int(self.max_inflight) < 1:
            raise ApparateError(f"the in-flight request limit must be at least 1, got {self.max_inflight}")

    @staticmethod
    def server_fields() -> list[str]:
        """The names of the server's own settings (the others are the engine's)."""
        return [f.name for f in dataclasses.fields(ServingConfig) if f.name != "engine"]

    def replace(self, **settings: Any) -> ServingConfig:
        """A copy with ``settings`` changed (checked): server fields, or engine fields that go to
        :attr:`engine`; ApparateError naming an unknown setting."""
        own = {*self.server_fields(), "engine"}
        mine = {k: v for k, v in settings.items() if k in own}
        engine = {k: v for k, v in settings.items() if k not in own}
        if engine:
            mine["engine"] = mine.get("engine", self.engine).replace(**engine)
        return dataclasses.replace(self, **mine) if mine else self
