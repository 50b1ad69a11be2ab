"""Fixtures of the server tests: a served tiny ResNet engine on free 127.0.0.1 ports, its eval
inputs and the original model's outputs on them (``model.onnx`` run directly with ONNX Runtime).

Every client here is a real one (tritonclient.http, tritonclient.grpc, urllib, raw sockets) talking
to a real server over loopback. Engines use one ORT thread (shared CI cores).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import Manifest, read_manifest
from apparate_trt.runtime.api import load
from apparate_trt.runtime.backends.onnxruntime import OrtRunner
from apparate_trt.runtime.server import Server

THREADS = 1
CONSTRAINT = 0.05  # accuracy constraint of the shared server: loose enough that ramps do exit


@dataclass
class Workload:
    """Eval samples of an engine and the original model's score output on each."""

    engine_dir: Path
    manifest: Manifest
    inputs: dict[str, np.ndarray]  # batch axis first
    reference: np.ndarray  # [n, classes]

    @property
    def n(self) -> int:
        return int(self.reference.shape[0])

    def batch(self, start: int, count: int = 1) -> dict[str, np.ndarray]:
        """Samples ``start .. start + count - 1`` (cycling), batch axis first."""
        idx = [(start + k) % self.n for k in range(count)]
        return {name: np.ascontiguousarray(value[idx]) for name, value in self.inputs.items()}

    def expected(self, start: int, count: int = 1) -> np.ndarray:
        return self.reference[[(start + k) % self.n for k in range(count)]]


def make_workload(engine: tuple[Path, Path]) -> Workload:
    engine_dir, eval_npz = engine
    manifest = read_manifest(engine_dir)
    inputs = load_inputs(eval_npz, manifest.model.inputs)
    runner = OrtRunner(manifest.path(manifest.model.file), threads=THREADS)
    reference = runner.run(inputs, [manifest.model.output])[manifest.model.output]
    return Workload(Path(engine_dir), manifest, inputs, np.asarray(reference))


@pytest.fixture(scope="session")
def workload(tiny_resnet_engine) -> Workload:
    return make_workload(tiny_resnet_engine)


def start_server(engine_dir: Path, **kwargs: Any) -> Server:
    """A started server on free ports around a freshly loaded engine (one ORT thread)."""
    server_kw = {k: kwargs.pop(k) for k in ("request_timeout_s", "model_name", "drain_timeout_s") if k in kwargs}
    load_kw = {"threads": THREADS, "max_batch": 8, "max_delay_ms": 2.0, "queue_size": 256, **kwargs}
    engine = load(engine_dir, **load_kw)
    return Server(engine, http_port=0, grpc_port=0, max_batch=load_kw["max_batch"], **server_kw).start()


@pytest.fixture(scope="session")
def server(workload: Workload) -> Iterator[Server]:
    """The shared server (accuracy constraint CONSTRAINT); stopped at the end of the session."""
    srv = start_server(workload.engine_dir, accuracy_constraint=CONSTRAINT)
    yield srv
    assert srv.stop(), "the shared server did not drain"


class Gate:
    """Holds the engine's batches (its executor's run_batch) until opened: deterministic queueing."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.opened = threading.Event()
        self.entered = threading.Event()
        self._inner = engine.executor
        gate = self

        class Gated:
            def __getattr__(self, name: str) -> Any:
                return getattr(gate._inner, name)

            def run_batch(self, inputs: Any, on_release: Any) -> Any:
                gate.entered.set()
                assert gate.opened.wait(30.0), "gate never opened"
                return gate._inner.run_batch(inputs, on_release)

        engine.executor = Gated()

    def open(self) -> None:
        self.opened.set()

    def remove(self) -> None:
        self.opened.set()
        self.engine.executor = self._inner
