"""TensorRT backend: one engine per segment and ramp, chained in device memory (lazy imports).

``import apparate_trt`` never imports TensorRT or CUDA. :func:`unavailable_reason` says why this
machine cannot use the backend (the ``tensorrt`` package, ``cuda.bindings.runtime`` of cuda-bindings
12.6.1 or later, and a visible NVIDIA GPU); :func:`require_tensorrt` raises a clear
:class:`ApparateError` when it cannot.

:class:`TrtRunner` holds one serialized engine and is a
:class:`~apparate_trt.backends.base.ChainRunner`, after NVIDIA's ``samples/python/common_runtime.py``
(every CUDA call checked, pinned host memory, work queued on streams):

- its device buffers (one per input, for host uploads, and one per output) and pinned host buffers
  (uploads and fetched outputs) are allocated once, at the largest shape its optimization profile
  allows (:func:`~apparate_trt.backends.trt_layout.plan_buffers`), never on the batch path;
- ``submit`` binds an input that is a :class:`DeviceArray` of an earlier engine where it lies (no
  copy), copies host inputs in through pinned memory, runs ``execute_async_v3`` and returns at once:
  kept outputs are :class:`DeviceArray` views of its buffers, fetched ones are copied to pinned
  memory asynchronously and an event marks when they are there;
- ``side=True`` (a ramp) queues the run on the process's side stream after an event recorded on the
  main stream, so a ramp and the next segment run at the same time and the host decides the exits
  while the GPU goes on.

Written on a machine without a GPU or TensorRT: the CPU tests cover the layout, profiles, buffer
planning, backend choice and messages; ``benchmarks/gpu_check.py`` runs this module on a GPU.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt.backends.base import IOSpec, RunnerBase, Submission
from apparate_trt.backends.trt_layout import plan_buffers
from apparate_trt.errors import ApparateError

NEEDS_TENSORRT = (
    "needs an NVIDIA GPU with TensorRT and cuda-bindings: pip install 'apparate_trt[tensorrt]'; or use --backend "
    "onnxruntime"
)


def _import_modules() -> tuple[Any, Any]:
    """(tensorrt, cuda.bindings.runtime); ImportError if either is missing."""
    import tensorrt  # noqa: PLC0415 - optional, imported lazily
    from cuda.bindings import runtime as cudart  # noqa: PLC0415 - the cuda-bindings >= 12.6.1 layout

    return tensorrt, cudart


def _gpu_count(cudart: Any) -> tuple[Any, int]:
    """(CUDA's error code, the number of visible GPUs)."""
    err, count = cudart.cudaGetDeviceCount()
    return err, int(count) if err == cudart.cudaError_t.cudaSuccess else 0


def unavailable_reason() -> str | None:
    """Why the TensorRT backend cannot run here (None when it can)."""
    try:
        _, cudart = _import_modules()
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken CUDA install
        return f"{type(exc).__name__}: {exc}"
    try:
        err, count = _gpu_count(cudart)
        if err != cudart.cudaError_t.cudaSuccess:
            _, name = cudart.cudaGetErrorName(err)
            name = name.decode() if isinstance(name, bytes) else str(name)
            return f"CUDA reports {name} (no GPU, or a driver too old for this cuda-bindings)"
        if count == 0:
            return "no NVIDIA GPU is visible"
    except Exception as exc:  # noqa: BLE001
        return f"CUDA does not initialise ({exc})"
    return None


_LOGGER: Any = None


def _logger(trt: Any) -> Any:
    """The process's one TensorRT logger (TensorRT warns when runtimes get different ones)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


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


@dataclass(frozen=True)
class DeviceArray:
    """A tensor in device memory: ``ptr`` (a CUDA device address), its shape and numpy dtype name.
    A view of a runner's buffer, valid until that runner's next ``submit``."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class Streams:
    """A GPU's two CUDA streams: ``main`` (segments, in order) and ``side`` (ramps). Made once per GPU."""

    _instances: dict[int, Streams] = {}
    _lock = threading.Lock()

    def __init__(self, cudart: Any) -> None:
        flags = cudart.cudaStreamNonBlocking
        self.cudart = cudart
        self.main = cuda_call(cudart, cudart.cudaStreamCreateWithFlags(flags))
        self.side = cuda_call(cudart, cudart.cudaStreamCreateWithFlags(flags))

    @classmethod
    def shared(cls, cudart: Any, device_id: int = 0) -> Streams:
        """The streams of GPU ``device_id`` (the caller has made it current)."""
        with cls._lock:
            if device_id not in cls._instances:
                cls._instances[device_id] = cls(cudart)
            return cls._instances[device_id]


class _Pinned:
    """One pinned host buffer of ``nbytes`` (freed by :meth:`free`)."""

    def __init__(self, cudart: Any, nbytes: int) -> None:
        self.cudart = cudart
        self.ptr = cuda_call(cudart, cudart.cudaMallocHost(nbytes))
        self.raw = np.frombuffer((ctypes.c_byte * nbytes).from_address(self.ptr), dtype=np.uint8)

    def view(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return self.raw[:nbytes].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.cudart.cudaFreeHost(self.ptr)
            self.ptr = 0


class TrtRunner(RunnerBase):
    """One TensorRT engine as a chain runner (see the module doc); ``run`` is ``submit`` + ``wait``."""

    asynchronous = True

    def __init__(self, engine: str | Path | bytes, name: str = "engine", device_id: int = 0) -> None:
        self.trt, self.cudart = require_tensorrt(f"loading {name}")
        self.name = name
        self.device = f"cuda:{device_id}"
        cuda_call(self.cudart, self.cudart.cudaSetDevice(device_id))
        if isinstance(engine, (str, Path)):
            path = Path(engine)
            if not path.is_file():
                raise ApparateError(
                    f"TensorRT engine '{path}' does not exist; rebuild it with apparate-compile --backend tensorrt"
                )
            data = path.read_bytes()
        else:
            data = bytes(engine)
        self._runtime = self.trt.Runtime(_logger(self.trt))
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ApparateError(
                f"TensorRT cannot load {name} (built by another TensorRT version or for another GPU?); rebuild it "
                f"here with apparate-compile --backend tensorrt"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        self.inputs = [self._spec(n) for n in names if is_input[n]]
        self.outputs = [self._spec(n) for n in names if not is_input[n]]
        self._dtypes = {s.name: s.dtype for s in [*self.inputs, *self.outputs]}
        self.streams = Streams.shared(self.cudart, device_id)
        self.max_shapes = self._max_shapes()
        sizes = plan_buffers(self.max_shapes, self._dtypes)
        self._device = {n: cuda_call(self.cudart, self.cudart.cudaMalloc(b)) for n, b in sizes.items()}
        self._pinned = {n: _Pinned(self.cudart, b) for n, b in sizes.items()}
        flags = self.cudart.cudaEventDisableTiming
        self._fetched_event = cuda_call(self.cudart, self.cudart.cudaEventCreateWithFlags(flags))
        self._ready_event = cuda_call(self.cudart, self.cudart.cudaEventCreateWithFlags(flags))

    def _spec(self, name: str) -> IOSpec:
        """A tensor of the engine as an IOSpec (TensorRT's -1 for a dynamic dimension is None)."""
        shape_tensor = getattr(self.engine, "is_shape_inference_io", None)
        if shape_tensor is not None and shape_tensor(name):
            raise ApparateError(
                f"{self.name}: tensor '{name}' is a shape tensor (its values set other shapes), which apparate_trt's "
                f"TensorRT chain does not pass; serve this model with --backend onnxruntime"
            )
        try:
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name))).name
        except TypeError:
            raise ApparateError(
                f"{self.name}: tensor '{name}' has type {self.engine.get_tensor_dtype(name)}, which numpy cannot hold; "
                f"serve this model with --backend onnxruntime"
            ) from None
        shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
        return IOSpec(name, dtype, shape)

    def _max_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's largest shape under optimization profile 0 (inputs from the profile,
        outputs as TensorRT infers them at those inputs)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for spec in self.inputs:
            largest = tuple(int(d) for d in self.engine.get_tensor_profile_shape(spec.name, 0)[2])
            if not self.context.set_input_shape(spec.name, largest):
                raise ApparateError(f"{self.name}: TensorRT rejects input '{spec.name}' at its profile's maximum")
            shapes[spec.name] = largest
        for spec in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise ApparateError(
                    f"{self.name}: output '{spec.name}' has a data-dependent shape {shape}, which apparate_trt's "
                    f"TensorRT chain does not support; serve this model with --backend onnxruntime"
                )
            shapes[spec.name] = shape
        return shapes

    # -------------------------------------------------------------------------------------- running
    def _bind_input(self, name: str, value: Any, stream: Any) -> None:
        if isinstance(value, DeviceArray):
            if value.dtype != self._dtypes[name]:
                raise ApparateError(
                    f"{self.name}: input '{name}' is {value.dtype} on the device, needs {self._dtypes[name]}"
                )
            shape, ptr = value.shape, value.ptr
        else:
            host = np.asarray(value, dtype=self._dtypes[name], order="C")
            shape, ptr = tuple(host.shape), self._device[name]
            self._check_fits(name, shape)
            staged = self._pinned[name].view(shape, self._dtypes[name])
            staged[...] = host
            kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            cuda_call(self.cudart, self.cudart.cudaMemcpyAsync(ptr, self._pinned[name].ptr, host.nbytes, kind, stream))
        self._check_fits(name, shape)
        if not self.context.set_input_shape(name, shape):
            raise ApparateError(f"{self.name}: TensorRT rejects input '{name}' of shape {list(shape)}")
        self.context.set_tensor_address(name, int(ptr))

    def _check_fits(self, name: str, shape: tuple[int, ...]) -> None:
        largest = self.max_shapes[name]
        if len(shape) != len(largest) or any(d > m for d, m in zip(shape, largest)):
            raise ApparateError(
                f"{self.name}: input '{name}' of shape {list(shape)} exceeds the engine's profile (at most "
                f"{list(largest)}); serve with a --max-batch no larger than the one the engines were built for"
            )

    def submit(
        self,
        feeds: Mapping[str, Any],
        keep: Sequence[str] = (),
        fetch: Sequence[str] = (),
        *,
        side: bool = False,
    ) -> Submission:
        """Queue one run (see the module doc); returns at once."""
        cudart = self.cudart
        stream = self.streams.side if side else self.streams.main
        if side:  # after everything queued on the main stream so far (the segment that fed it)
            cuda_call(cudart, cudart.cudaEventRecord(self._ready_event, self.streams.main))
            cuda_call(cudart, cudart.cudaStreamWaitEvent(stream, self._ready_event, 0))
        for name in self.input_names:
            if name not in feeds:
                raise ApparateError(f"{self.name} needs input '{name}', which was not given")
            self._bind_input(name, feeds[name], stream)
        for name in self.output_names:
            self.context.set_tensor_address(name, int(self._device[name]))
        if not self.context.execute_async_v3(int(stream)):
            raise ApparateError(f"TensorRT failed to run {self.name}")
        shapes = {name: tuple(int(d) for d in self.context.get_tensor_shape(name)) for name in [*keep, *fetch]}
        kept = {name: DeviceArray(int(self._device[name]), shapes[name], self._dtypes[name]) for name in keep}
        views: dict[str, np.ndarray] = {}
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in fetch:
            views[name] = self._pinned[name].view(shapes[name], self._dtypes[name])
            cuda_call(
                cudart,
                cudart.cudaMemcpyAsync(self._pinned[name].ptr, self._device[name], views[name].nbytes, kind, stream),
            )
        cuda_call(cudart, cudart.cudaEventRecord(self._fetched_event, stream))
        event = self._fetched_event

        def wait() -> dict[str, np.ndarray]:
            cuda_call(cudart, cudart.cudaEventSynchronize(event))
            return {name: view.copy() for name, view in views.items()}

        return Submission(kept, wait)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run once on the main stream and wait; returns copies of the outputs."""
        return self.submit(feeds, fetch=list(outputs or self.output_names)).wait()

    def close(self) -> None:
        """Free the device and pinned buffers and the events (the shared streams stay)."""
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for ptr in getattr(self, "_device", {}).values():
            cudart.cudaFree(ptr)
        for pinned in getattr(self, "_pinned", {}).values():
            pinned.free()
        for event in (getattr(self, "_fetched_event", None), getattr(self, "_ready_event", None)):
            if event is not None:
                cudart.cudaEventDestroy(event)
        self._device, self._pinned = {}, {}
        self._fetched_event = self._ready_event = None
