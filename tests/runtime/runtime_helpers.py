"""Helpers of the runtime tests: a compiled engine with eval inputs and the original model's output.

The reference output is the original ``model.onnx`` run directly with ONNX Runtime, never through
the code under test.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apparate_trt.data import take
from apparate_trt.engine_dir import Manifest
from apparate_trt.runtime.backends.onnxruntime import OrtRunner

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
    runner = OrtRunner(manifest.path(manifest.model.file), threads=THREADS)
    return runner.run(inputs, [manifest.model.output])[manifest.model.output]


def reference_ramp_logits(manifest: Manifest, inputs: dict[str, np.ndarray], site: int) -> np.ndarray:
    """A ramp's logits, by chaining the finest segments on disk up to ``site`` and running its ONNX file."""
    env = dict(inputs)
    for seg in manifest.segments:
        env.update(OrtRunner(manifest.path(seg.file), threads=THREADS).run(env, list(seg.outputs)))
        if seg.ends_at_site == site:
            break
    ramp = manifest.ramps[site]
    return OrtRunner(manifest.path(ramp.file), threads=THREADS).run(env, [ramp.output])[ramp.output]



def assert_same_output(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal to the original model up to float reassociation (segmenting changes no maths)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.argmax(actual, axis=-1), np.argmax(expected, axis=-1))
