"""Helpers of the runtime tests: a compiled engine with eval inputs and the original model's output.

The reference output is the original ``model.onnx`` run directly with ONNX Runtime, never through
the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from apparate_trt.backends import Runner, RunnerBase, open_runner
from apparate_trt.data import take
from apparate_trt.engine_dir import Manifest

THREADS = 1  # shared CI cores: one ORT thread per session


@dataclass
class Compiled:
    """A compiled engine with eval inputs and the original model's outputs on them."""

    engine_dir: Path
    manifest: Manifest
    inputs: dict[str, np.ndarray]  # batch axis first
    reference: np.ndarray  # float32 [n, classes]: model.onnx run directly

    @property
    def n(self) -> int:
        return int(self.reference.shape[0])

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` without its batch axis."""
        return {name: value[i] for name, value in self.inputs.items()}

    def batch(self, count: int, start: int = 0) -> dict[str, np.ndarray]:
        return take(self.inputs, slice(start, start + count))


def reference_logits(manifest: Manifest, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The original model's score output on ``inputs``, run directly with ONNX Runtime."""
    runner = open_runner(manifest.path(manifest.model.file), threads=THREADS)
    return runner.run(inputs, [manifest.model.output])[manifest.model.output]


def reference_ramp_logits(manifest: Manifest, inputs: dict[str, np.ndarray], site: int) -> np.ndarray:
    """A ramp's logits, by chaining the finest segments on disk up to ``site`` and running its ONNX file."""
    env = dict(inputs)
    for seg in manifest.segments:
        env.update(open_runner(manifest.path(seg.file), threads=THREADS).run(env, list(seg.outputs)))
        if seg.ends_at_site == site:
            break
    ramp = manifest.ramps[site]
    return open_runner(manifest.path(ramp.file), threads=THREADS).run(env, [ramp.output])[ramp.output]


def assert_same_output(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal to the original model up to float reassociation (segmenting changes no maths)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.argmax(actual, axis=-1), np.argmax(expected, axis=-1))


class TracingRunner(RunnerBase):
    """A runner that wraps a real one (the backend seam's interface) and calls ``hook(runner, feeds)``
    before every run: how tests see which model ran on which rows without patching a backend class."""

    def __init__(self, inner: Runner, hook: Callable[[Runner, Mapping[str, np.ndarray]], None]) -> None:
        self.inner, self.hook = inner, hook
        self.name, self.inputs, self.outputs = inner.name, inner.inputs, inner.outputs

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        self.hook(self, feeds)
        return self.inner.run(feeds, outputs)

    def close(self) -> None:
        self.inner.close()


def trace_runs(monkeypatch, module: ModuleType, hook: Callable[[Runner, Mapping[str, np.ndarray]], None]) -> None:
    """Make every runner ``module`` opens from now on a :class:`TracingRunner` calling ``hook``."""
    real = module.open_runner
    monkeypatch.setattr(module, "open_runner", lambda *args, **kwargs: TracingRunner(real(*args, **kwargs), hook))


def load_script(path: Path) -> ModuleType:
    """The module of a script that is not in a package (``benchmarks/*.py``), loaded afresh from ``path``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
