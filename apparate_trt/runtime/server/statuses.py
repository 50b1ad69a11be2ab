"""One table from the kind of a serving error to its HTTP status, gRPC status and metrics outcome.

Both front ends read it (:mod:`.http` the HTTP number, :mod:`.grpc` the gRPC code), so a new error
kind is added here once; ``docs/SERVING.md``'s error table shows the same pairs
(``tests/runtime/server/test_statuses.py`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from apparate_trt.runtime.server.codec import RequestError
from apparate_trt.runtime.server.service import DeadlineError, OverloadedError, UnavailableError


@dataclass(frozen=True)
class ErrorKind:
    """How one kind of error is answered and counted."""

    code: str
    """The ``code`` label of ``apparate_requests_total``."""
    http: int
    """The HTTP status of the REST answer."""
    grpc: str
    """The name of the ``grpc.StatusCode`` of the gRPC answer."""


INTERNAL = ErrorKind("error", 500, "INTERNAL")
"""Anything not in ERROR_KINDS: a bug or an engine failure."""

ERROR_KINDS: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (RequestError, ErrorKind("bad_request", 400, "INVALID_ARGUMENT")),
    (OverloadedError, ErrorKind("overloaded", 503, "RESOURCE_EXHAUSTED")),
    (UnavailableError, ErrorKind("unavailable", 503, "UNAVAILABLE")),
    (DeadlineError, ErrorKind("timeout", 504, "DEADLINE_EXCEEDED")),
)
"""``(exception class, kind)``, most specific first; the first class ``isinstance`` matches wins."""


def error_kind(exc: BaseException) -> ErrorKind:
    """The kind of ``exc``: its HTTP status, gRPC code and metrics outcome (INTERNAL if unknown)."""
    for cls, kind in ERROR_KINDS:
        if isinstance(exc, cls):
            return kind
    return INTERNAL
