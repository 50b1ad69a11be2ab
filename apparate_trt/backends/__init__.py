"""Backends behind one seam: :func:`open_runner` picks the runner for a backend name.

``onnxruntime`` (the default, any machine) runs ONNX models on the CPU; ``onnxruntime-gpu`` runs them
on ONNX Runtime's CUDA execution provider with tensors kept on the GPU between segments
(:mod:`~apparate_trt.backends.ort_device`); ``tensorrt`` runs serialized TensorRT engines chained in
device memory (:mod:`~apparate_trt.backends.tensorrt`). The GPU backends are imported only when
asked for, so ``import apparate_trt`` works without TensorRT or CUDA. Every runner implements
:class:`~apparate_trt.backends.base.Runner`; the GPU ones also
:class:`~apparate_trt.backends.base.ChainRunner`.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from apparate_trt.backends.base import ChainRunner, IOSpec, Runner, RunnerBase, Submission
from apparate_trt.errors import ApparateError

BACKENDS = ("onnxruntime", "onnxruntime-gpu", "tensorrt")
"""Backend names a manifest's ``profiles.backend`` and ``--backend`` may hold."""
GPU_BACKENDS = ("onnxruntime-gpu", "tensorrt")

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
    TensorRT). On ``tensorrt``, ``model`` is a serialized engine (a ``.plan`` file or its bytes);
    elsewhere an ONNX model. ``name`` appears in error messages. Raises ApparateError saying how to
    fix a model that cannot load or a backend that cannot run here.
    """
    backend = check_backend(backend)
    if backend == "tensorrt":
        if isinstance(model, onnx.ModelProto):
            raise ApparateError(
                f"{name}: the TensorRT backend runs serialized engines; build them with apparate-compile --backend "
                f"tensorrt on this GPU"
            )
        from apparate_trt.backends.tensorrt import TrtRunner  # lazy: no CUDA at import

        return TrtRunner(model, name=name)
    if backend == "onnxruntime-gpu":
        from apparate_trt.backends.ort_device import OrtDeviceRunner

        return OrtDeviceRunner(model, threads=threads, name=name, device="cuda")
    from apparate_trt.backends.onnxruntime import OrtRunner

    return OrtRunner(model, threads=threads, name=name)


__all__ = [
    "BACKENDS",
    "GPU_BACKENDS",
    "ChainRunner",
    "Submission",
    "DEFAULT_BACKEND",
    "IOSpec",
    "ModelSource",
    "Runner",
    "RunnerBase",
    "check_backend",
    "open_runner",
]
