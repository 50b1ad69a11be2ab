"""The one table from error kind to HTTP status, gRPC status and metrics outcome, and its docs."""

from __future__ import annotations

from pathlib import Path

import grpc

from apparate_trt.runtime.server.codec import RequestError, UnknownModelError
from apparate_trt.runtime.server.grpc import status_code
from apparate_trt.runtime.server.service import DeadlineError, InternalError, OverloadedError, UnavailableError
from apparate_trt.runtime.server.statuses import ERROR_KINDS, INTERNAL, error_kind

SERVING_MD = Path(__file__).resolve().parents[3] / "docs" / "SERVING.md"


def _error_table_rows() -> list[tuple[str, str]]:
    """``(REST cell, gRPC cell)`` of each row of SERVING.md's "Errors and reliability" table."""
    text = SERVING_MD.read_text().split("## Errors and reliability", 1)[1]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("situation", "---"):
            rows.append((cells[1], cells[2]))
        elif rows and not line.startswith("|"):
            break
    return rows


def test_each_error_kind_maps_to_one_http_and_grpc_status() -> None:
    assert error_kind(UnknownModelError("no such model")).code == "bad_request"  # a subclass: its parent's kind
    assert error_kind(RequestError("bad")).http == 400
    assert error_kind(OverloadedError("full")).http == 503 and error_kind(UnavailableError("bye")).http == 503
    assert error_kind(DeadlineError("late")).grpc == "DEADLINE_EXCEEDED"
    assert error_kind(InternalError("bug")) is INTERNAL and error_kind(ValueError("bug")) is INTERNAL
    assert status_code(OverloadedError("full")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
    assert status_code(UnavailableError("bye")) == (grpc.StatusCode.UNAVAILABLE, "unavailable")
    for _, kind in (*ERROR_KINDS, (Exception, INTERNAL)):
        assert isinstance(getattr(grpc.StatusCode, kind.grpc), grpc.StatusCode), kind


def test_serving_md_shows_every_pair_of_the_table() -> None:
    rows = _error_table_rows()
    assert len(rows) >= len(ERROR_KINDS) + 1
    for _, kind in (*ERROR_KINDS, (Exception, INTERNAL)):
        assert any(
            rest.startswith(str(kind.http)) and grpc_cell.startswith(f"`{kind.grpc}`") for rest, grpc_cell in rows
        ), f"docs/SERVING.md has no error row with REST {kind.http} and gRPC {kind.grpc}"
