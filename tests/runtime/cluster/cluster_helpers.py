"""Helpers of the replica tests (imported by name: ``conftest`` is ambiguous beside the server
tests' own): the replica count and the replicated service's settings."""

from __future__ import annotations

from server_helpers import THREADS

from apparate_trt.runtime.server import ServingConfig

CONSTRAINT = 0.05  # as the single-process server tests: loose enough that ramps do exit
REPLICAS = 2


def serving_config(**settings) -> ServingConfig:
    """The replicated service's settings: free ports, one thread per replica, short batches."""
    return ServingConfig(http_port=0, grpc_port=0).replace(
        **{"threads": THREADS, "max_batch": 8, "max_delay_ms": 2.0, "queue_size": 256, **settings}
    )
