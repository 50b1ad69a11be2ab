"""The vanilla baseline: the original model, unsplit, with no ramps, behind the executor interface.

``mode="vanilla"`` serves ``model.onnx`` of the engine directory through the same batching and
API, so that latency and throughput are compared on equal terms. Every result is final.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from apparate_trt.backends import open_runner
from apparate_trt.engine_dir import Manifest
from apparate_trt.runtime.executor import BatchOutcome, ReleaseFn, final_predictions, release_final


def rampless_outcome(
    logits: np.ndarray, pred: np.ndarray, exit_site: np.ndarray, segments_ms: np.ndarray, t_start: float, t_end: float
) -> BatchOutcome:
    """The BatchOutcome of a batch that ran no ramps (no feedback rows): final ``logits`` [n,
    classes] and ``pred`` [n], ``exit_site`` [n] (-1: released by the final output), segment
    wall times in ms, and the batch's start and end (``time.monotonic()`` seconds)."""
    n = logits.shape[0]
    return BatchOutcome(
        site_ids=np.zeros(0, dtype=np.int32),
        thresholds=np.zeros(0, dtype=np.float64),
        confidence=np.zeros((0, n), dtype=np.float32),
        ramp_pred=np.zeros((0, n), dtype=np.int32),
        final_logits=logits,
        final_pred=pred,
        agree=np.zeros((0, n), dtype=np.uint8),
        exit_site=exit_site,
        segments_ms=segments_ms,
        ramps_ms=np.zeros(0, dtype=np.float64),
        total_ms=(t_end - t_start) * 1000.0,
        t_start=t_start,
        t_end=t_end,
    )


class FixedExecutorBase:
    """The configuration side of an executor that runs no adaptive ramps (vanilla, the oracle):
    ``configure`` is accepted and ignored, nothing is ever pending, no ramps, nothing to stop."""

    def configure(self, active_sites: Sequence[int], thresholds: Sequence[float], *, wait: bool = False) -> None:
        """No adaptive ramps: the configuration is ignored."""

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Nothing is ever pending."""

    @property
    def active_sites(self) -> list[int]:
        """Always empty."""
        return []

    @property
    def thresholds(self) -> dict[int, float]:
        """Always empty."""
        return {}

    def close(self) -> None:
        """Nothing to stop."""


class VanillaExecutor(FixedExecutorBase):
    """Runs the unsplit original model; ``configure`` is accepted and ignored (no ramps).

    Args:
        manifest: the engine directory's manifest.
        threads: ONNX Runtime intra-op threads (None: every core).
    """

    def __init__(self, manifest: Manifest, threads: int | None = None) -> None:
        self.manifest = manifest
        self._runner = open_runner(
            manifest.path(manifest.model.file), threads=threads, name=f"model ({manifest.model.file})"
        )

    def run_batch(self, inputs: Mapping[str, np.ndarray], on_release: ReleaseFn) -> BatchOutcome:
        """Run the batch through the original model and release every final result."""
        t_start = time.monotonic()
        output = self.manifest.model.output
        logits = np.ascontiguousarray(self._runner.run(inputs, [output])[output], dtype=np.float32)
        t_model = time.monotonic()
        pred = final_predictions(logits)
        t_end = release_final(logits, pred, on_release)
        no_exits = np.full(logits.shape[0], -1, dtype=np.int32)
        return rampless_outcome(logits, pred, no_exits, np.array([(t_model - t_start) * 1000.0]), t_start, t_end)
