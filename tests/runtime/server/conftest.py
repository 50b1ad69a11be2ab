"""Fixtures of the server tests: the tiny ResNet engine's eval workload and a shared server on free
127.0.0.1 ports (helpers in server_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_helpers import CONSTRAINT, Workload, make_workload, start_server

from apparate_trt.runtime.server import Server


@pytest.fixture(scope="session")
def workload(tiny_resnet_engine) -> Workload:
    return make_workload(tiny_resnet_engine)


@pytest.fixture(scope="session")
def server(workload: Workload) -> Iterator[Server]:
    """The shared server (accuracy constraint CONSTRAINT); stopped at the end of the session."""
    srv = start_server(workload.engine_dir, accuracy_constraint=CONSTRAINT)
    yield srv
    assert srv.stop(), "the shared server did not drain"
