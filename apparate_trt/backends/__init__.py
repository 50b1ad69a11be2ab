"""Backends behind one seam: :func:`open_runner` picks the runner for a backend name.

``onnxruntime`` (the default, any machine) runs ONNX models on the CPU; ``tensorrt`` runs serialized
TensorRT engines on an NVIDIA GPU and is imported only when asked for, so ``import apparate_trt``
works without TensorRT or CUDA. Both implement :class:`~apparate_trt.backends.base.Runner`.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from apparate_trt.backends.base import IOSpec, Runner, RunnerBase
from apparate_trt.errors import ApparateError

BACKENDS = ("onnxruntime", "tensorrt")
"""Backend names a manifest's ``profiles.backend`` and ``--backend`` may hold."""

DEFAULT_BACKEND = "onnxruntime"

ModelSource = onnx.ModelProto | bytes | str | Path
"""An in-memory ONNX model, its serialized bytes, or a file (an ONNX model or a TensorRT engine)."""


def check_backend(backend: str | None) -> str:
    """``backend`` if it is known (None: the default), else an ApparateError listing the choices."""
    if backend is None:
        return DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ApparateError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
    return backend


def open_runner(
    model: ModelSource, *, backend: str | None = None, threads: int | None = None, name: str = "model"
) -> Runner:
    """Load ``model`` on ``backend`` (None: onnxruntime) and return its runner.

    ``threads`` are ONNX Runtime intra-op threads (None: every core this process may use; ignored by
    TensorRT). ``name`` appears in error messages. Raises ApparateError saying how to fix a model
    that cannot load or a backend that cannot run here.
    """
    backend = check_backend(backend)
    if backend == "tensorrt":
        if isinstance(model, (onnx.ModelProto, bytes)):
            raise ApparateError(
                f"{name}: the TensorRT backend runs engine files; build one with apparate-compile on a GPU"
            )
        from apparate_trt.backends.tensorrt import TrtRunner  # lazy: no CUDA at import

        return TrtRunner(model, name=name)
    from apparate_trt.backends.onnxruntime import OrtRunner

    return OrtRunner(model, threads=threads, name=name)


__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "IOSpec",
    "ModelSource",
    "Runner",
    "RunnerBase",
    "check_backend",
    "open_runner",
]
