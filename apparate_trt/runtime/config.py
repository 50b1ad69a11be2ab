"""The settings an engine is loaded with, in one checked value (:class:`EngineConfig`).

``apparate-run`` builds one from its flags, :func:`~apparate_trt.runtime.api.load` takes one (or its
fields as keywords), and the server carries one inside its
:class:`~apparate_trt.runtime.server.config.ServingConfig`: every default lives here, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apparate_trt.defaults import (
    DEFAULT_ACCURACY_CONSTRAINT,
    DEFAULT_AUDIT_RATE,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DELAY_MS,
    DEFAULT_QUEUE_SIZE,
    MIN_AUDIT_RATE,
)
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.batching import validate_settings
from apparate_trt.runtime.compaction import check_exit_mode
from apparate_trt.runtime.executor import check_confidence_kind
from apparate_trt.runtime.learning.learner import LearningOptions
from apparate_trt.runtime.serving_backend import CHOICES as BACKEND_CHOICES

MODES = ("apparate", "vanilla")
"""``apparate``: ramps and the adaptive controller; ``vanilla``: the unsplit original model."""


@dataclass(frozen=True)
class EngineConfig:
    """How to serve an engine directory (None means the default; checked when made).

    Attributes:
        max_batch: the largest batch (samples).
        max_delay_ms: the longest a partial batch waits for more samples before it runs (ms).
        accuracy_constraint: the tolerated share (0..1) of results that disagree with the original model.
        mode: ``apparate`` (ramps, adaptive) or ``vanilla`` (the unsplit original model).
        threads: ONNX Runtime intra-op threads per session (None: every core).
        queue_size: the most samples waiting; past it a submission raises OverloadError.
        confidence: ``maxprob`` or ``entropy``.
        controller_options: extra keyword arguments for the controller
            (:class:`~apparate_trt.runtime.control.controller.Controller`).
        timeout_ms: default per-request queueing timeout (ms), None for none.
        overload_fallback: (``apparate`` mode) when a batch is dispatched while at least
            ``max_batch`` more requests wait, run it on the unsplit original model with no ramps:
            under overload every request queues for longer than an exit saves, and the split model
            with ramps drains the queue more slowly. Its results are all final (exact); the
            controller gets no feedback from it. ``stats()["unsplit_batches"]`` counts such
            batches. False: always run the active ramps. None (default): on in release mode, off
            in skip and auto mode, where the split model sheds released rows and drains a backlog at
            least as fast as the unsplit one (``benchmarks/saturation.py``).
        exit_mode: (``apparate`` mode) ``release``: every row runs to the end of the model, so its
            final output labels every ramp (the paper's design); ``skip``: a row a ramp releases
            leaves the batch, except an audit sample (each released row with probability
            ``audit_rate``, every one while the controller's window is thin) and requests
            submitted with ``wait_final=True``; the later segments run on fewer rows. ``auto``:
            each batch runs in skip mode when a request still waits behind it once it is taken
            (``compaction.AUTO_SKIP_QUEUE_DEPTH``), in release mode otherwise; the overload
            fallback is off by default, as in skip mode; ``stats()["skip_mode_batches"]`` counts
            the batches with ramps that ran in skip mode. CPU backends only, as skip. None
            (default): the backend's default (``defaults.default_exit_mode``).
        audit_rate: (skip mode) the steady probability that a released row still runs to the end
            as feedback, in [0.05, 1]; the controller weighs each audited row by ``1 / audit_rate``.
        refits: (``apparate`` mode) True (default): the ramps keep learning from the served
            stream: each active ramp's reservoir of pooled features and final outputs refits its
            head in a niced child process, swapped in only when it releases more on held-out
            samples (:mod:`~apparate_trt.runtime.learning`; needs torch, the ``train`` extra,
            else it says so once and the ramps stay as compiled). False: the ramps stay as compiled.
        learning_options: extra keyword arguments for the ramp learner
            (:class:`~apparate_trt.runtime.learning.learner.LearningOptions`: ``refit_every``,
            ``reservoir_samples``, ``reservoir_bytes``, ``total_bytes``, ``min_gain``).
        backend: what runs the segments and ramps (:mod:`~apparate_trt.runtime.serving_backend`):
            ``onnxruntime`` (CPU), ``onnxruntime-gpu`` (ONNX Runtime's CUDA provider, tensors kept on
            the GPU), ``tensorrt`` (the directory's engines for this GPU, chained on the device), or
            None / ``auto`` (default): TensorRT where the machine and the directory have it, else
            onnxruntime. The GPU backends run release mode only.
    """

    max_batch: int = DEFAULT_MAX_BATCH
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    accuracy_constraint: float = DEFAULT_ACCURACY_CONSTRAINT
    mode: str = "apparate"
    threads: int | None = None
    queue_size: int = DEFAULT_QUEUE_SIZE
    confidence: str = "maxprob"
    controller_options: Mapping[str, Any] | None = None
    timeout_ms: float | None = None
    overload_fallback: bool | None = None
    exit_mode: str | None = None
    audit_rate: float = DEFAULT_AUDIT_RATE
    refits: bool = True
    learning_options: Mapping[str, Any] | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKEND_CHOICES:
            raise ApparateError(f"unknown backend '{self.backend}'; use one of: {', '.join(BACKEND_CHOICES)}")
        if self.mode not in MODES:
            raise ApparateError(f"unknown mode '{self.mode}'; use one of: {', '.join(MODES)}")
        if not 0.0 <= self.accuracy_constraint < 1.0:
            raise ApparateError(f"accuracy constraint must lie in [0, 1), got {self.accuracy_constraint}")
        if self.threads is not None and int(self.threads) < 1:
            raise ApparateError(f"threads must be at least 1 (or None for all cores), got {self.threads}")
        check_confidence_kind(self.confidence)
        validate_settings(self.max_batch, self.max_delay_ms, self.queue_size)
        if int(self.queue_size) < int(self.max_batch):
            raise ApparateError(
                f"queue size {self.queue_size} is below the max batch {self.max_batch}: a full batch could never "
                "wait in the queue; raise queue_size or lower max_batch"
            )
        if self.exit_mode is not None:
            check_exit_mode(self.exit_mode)
        if not MIN_AUDIT_RATE <= self.audit_rate <= 1.0:
            raise ApparateError(
                f"audit rate must be in [{MIN_AUDIT_RATE}, 1] so that feedback never stops, got {self.audit_rate}"
            )
        if self.timeout_ms is not None and not self.timeout_ms > 0:
            raise ApparateError(f"timeout_ms must be > 0 ms (or None for none), got {self.timeout_ms}")
        self.learning()  # checks the learning options

    def learning(self) -> LearningOptions:
        """The ramp learner's options from :attr:`refits` and :attr:`learning_options` (checked)."""
        options = dict(self.learning_options or {})
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(LearningOptions)} - {"refits"})
        if unknown:
            raise ApparateError(
                f"unknown learning option(s) {unknown}; the options are "
                f"{', '.join(f.name for f in dataclasses.fields(LearningOptions) if f.name != 'refits')}"
            )
        options.pop("refits", None)
        return LearningOptions(refits=bool(self.refits), **options)

    def replace(self, **settings: Any) -> EngineConfig:
        """A copy with ``settings`` changed (checked); ApparateError naming an unknown setting."""
        return dataclasses.replace(self, **_known(settings))


def _known(settings: Mapping[str, Any]) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(EngineConfig)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ApparateError(f"unknown engine setting(s) {unknown}; the settings are {', '.join(names)}")
    return dict(settings)
