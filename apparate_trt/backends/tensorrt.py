"""TensorRT backend: one engine per segment and ramp, through cuda-bindings (lazy imports).

``import apparate_trt`` never imports TensorRT or CUDA. :func:`is_available` says whether this
machine can use the backend (the ``tensorrt`` package, ``cuda.bindings.runtime`` and a visible
NVIDIA GPU); :func:`require_tensorrt` raises a clear :class:`ApparateError` when it cannot.

:class:`TrtRunner` mirrors :class:`~apparate_trt.backends.onnxruntime.OrtRunner` for one
serialized engine (TensorRT 10 name-based I/O, ``execute_async_v3``), modelled on NVIDIA's
``samples/python/common_runtime.py``: every CUDA call is checked, host buffers are pinned, work is
queued on a stream. UNTESTED: it was written on a machine without a GPU or TensorRT; no test in
this repository runs it. The side-stream ramp scheme of DESIGN.md (ramps on a second stream after an
event, logits copied to pinned memory) is not implemented yet: the executor runs on ONNX Runtime.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt.backends.base import IOSpec, RunnerBase
from apparate_trt.errors import ApparateError

NEEDS_TENSORRT = "needs an NVIDIA GPU with TensorRT: pip install 'apparate_trt[tensorrt]'; use --backend onnxruntime"


def _import_modules() -> tuple[Any, Any]:
    """(tensorrt, cuda.bindings.runtime); ImportError if either is missing."""
    import tensorrt  # noqa: PLC0415 - optional, imported lazily
    from cuda.bindings import runtime as cudart  # noqa: PLC0415

    return tensorrt, cudart


def _gpu_count(cudart: Any) -> int:
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if err == cudart.cudaError_t.cudaSuccess else 0


def unavailable_reason() -> str | None:
    """Why the TensorRT backend cannot run here (None when it can)."""
    try:
        _, cudart = _import_modules()
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken CUDA install
        return f"{type(exc).__name__}: {exc}"
    try:
        if _gpu_count(cudart) == 0:
            return "no NVIDIA GPU is visible"
    except Exception as exc:  # noqa: BLE001
        return f"CUDA does not initialise ({exc})"
    return None


def is_available() -> bool:
    """True if tensorrt and cuda-bindings import and a GPU is visible."""
    return unavailable_reason() is None


def require_tensorrt(purpose: str = "the TensorRT backend") -> tuple[Any, Any]:
    """Return (tensorrt, cudart) or raise ApparateError saying how to fix it."""
    reason = unavailable_reason()
    if reason is not None:
        raise ApparateError(f"{purpose} {NEEDS_TENSORRT} ({reason})")
    return _import_modules()


def cuda_call(cudart: Any, result: Any) -> Any:
    """Check a cuda-bindings return tuple ``(err, *values)``; return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise ApparateError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class TrtRunner(RunnerBase):
    """One TensorRT engine: ``run({name: array}) -> {name: array}`` (UNTESTED, see module doc).

    Inputs are copied host-to-device, the engine runs on this runner's stream, outputs come back
    through pinned host buffers; ``run`` synchronises the stream before returning. Device and pinned
    buffers are reallocated when a batch needs more room than the last one.
    """

    def __init__(self, engine_file: str | Path, name: str = "engine") -> None:
        self.trt, self.cudart = require_tensorrt(f"loading {name}")
        self.name = name
        path = Path(engine_file)
        if not path.is_file():
            raise ApparateError(f"TensorRT engine '{path}' does not exist; recompile on this GPU with apparate-compile")
        logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ApparateError(
                f"TensorRT cannot load {path} (built by another TensorRT version or GPU?); recompile it here"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        self.inputs = [self._spec(n) for n in names if is_input[n]]
        self.outputs = [self._spec(n) for n in names if not is_input[n]]
        self.stream = cuda_call(self.cudart, self.cudart.cudaStreamCreate())
        self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._pinned: dict[str, tuple[int, np.ndarray]] = {}  # name -> (host pointer, view)

    def _spec(self, name: str) -> IOSpec:
        """A tensor of the engine as an IOSpec (TensorRT's -1 for a dynamic dimension is None)."""
        dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name))).name
        shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
        return IOSpec(name, dtype, shape)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._device.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_call(self.cudart, self.cudart.cudaFree(ptr))
            ptr = cuda_call(self.cudart, self.cudart.cudaMalloc(nbytes))
            self._device[name] = (ptr, nbytes)
        return ptr

    def _pinned_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr, view = self._pinned.get(name, (0, np.zeros(0, np.uint8)))
        if view.nbytes < nbytes:
            if ptr:
                cuda_call(self.cudart, self.cudart.cudaFreeHost(ptr))
            ptr = cuda_call(self.cudart, self.cudart.cudaMallocHost(nbytes))
            raw = (ctypes.c_byte * nbytes).from_address(ptr)
            view = np.frombuffer(raw, dtype=np.uint8)
            self._pinned[name] = (ptr, view)
        return view[:nbytes].view(dtype).reshape(shape)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run once on this runner's stream and wait for it; returns copies of the outputs."""
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            if name not in feeds:
                raise ApparateError(f"{self.name} needs input '{name}', which was not given")
            host = np.asarray(feeds[name], dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)), order="C")
            ptr = self._device_buffer(name, host.nbytes)
            self.context.set_input_shape(name, host.shape)
            cuda_call(self.cudart, self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        pinned: dict[str, np.ndarray] = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            pinned[name] = self._pinned_buffer(name, shape, dtype)
            self.context.set_tensor_address(name, self._device_buffer(name, pinned[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise ApparateError(f"TensorRT failed to run {self.name}")
        wanted = outputs or self.output_names
        for name in wanted:
            host = pinned[name]
            ptr = self._device[name][0]
            cuda_call(self.cudart, self.cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self.stream))
        cuda_call(self.cudart, self.cudart.cudaStreamSynchronize(self.stream))
        return {name: pinned[name].copy() for name in wanted}

    def close(self) -> None:
        """Free device and pinned buffers and the stream."""
        for ptr, _ in self._device.values():
            self.cudart.cudaFree(ptr)
        for ptr, _ in self._pinned.values():
            self.cudart.cudaFreeHost(ptr)
        self._device.clear()
        self._pinned.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
