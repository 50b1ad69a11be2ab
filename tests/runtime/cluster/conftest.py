"""Fixtures of the replica tests: the tiny ResNet engine's eval workload and a service of two
Ray Serve replicas on a real local Ray instance (127.0.0.1), shared by this folder's tests.

Ray and Ray Serve are the 'cluster' extra; without it these tests are skipped with the reason."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))  # server_helpers.py

from cluster_helpers import CONSTRAINT, REPLICAS, serving_config  # noqa: E402
from server_helpers import THREADS, Workload, make_workload  # noqa: E402

pytest.importorskip("ray.serve", reason="the replica tests need Ray Serve: pip install 'apparate_trt[cluster]'")

from apparate_trt.runtime.cluster import ClusterConfig, ReplicatedServer  # noqa: E402


@pytest.fixture(scope="session")
def workload(tiny_resnet_engine) -> Workload:
    return make_workload(tiny_resnet_engine)


@pytest.fixture(scope="module")
def replicated(workload: Workload) -> Iterator[ReplicatedServer]:
    """Two replicas of the tiny engine behind the server's front ends; drained at the module's end."""
    srv = ReplicatedServer(
        workload.engine_dir,
        serving_config(accuracy_constraint=CONSTRAINT),
        ClusterConfig(replicas=REPLICAS, threads=THREADS),
    ).start()
    yield srv
    assert srv.stop(), "the replicated service did not drain"
