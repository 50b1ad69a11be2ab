"""A simulated CUDA runtime and TensorRT, for running the TensorRT backend's own code on the CPU.

NOT a GPU: it stands in for ``cuda.bindings.runtime`` and ``tensorrt`` with the same call shapes
(``(err, value)`` tuples, name-based engine I/O, ``execute_async_v3``) so that ``TrtRunner``, the
engine builds' bookkeeping, the backend choice and the executor's device-resident chain run end to
end in CI. What it checks is apparate_trt's logic, not NVIDIA's API: device and pinned memory are
real host memory at real addresses (so ``ctypes`` views and copies work), and work queued on a
stream runs only when an event recorded behind it is synchronised or another stream waits for it
(so a host that reads a result too early reads stale bytes, and a ramp not ordered after its
segment reads garbage). An "engine" is a pickled ONNX model with its optimization profile, run by
ONNX Runtime when its stream flushes. ``benchmarks/gpu_check.py`` is the real check on a GPU.
"""

from __future__ import annotations

import ctypes
import itertools
import pickle
import sys
import types
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np
import onnxruntime as ort

SUCCESS = 0
FAILED = 1
VERSION = "10.99.0"
GPU_NAME = b"Simulated GPU\x00"


class Stream:
    """A queue of host closures standing for work on one CUDA stream."""

    ids = itertools.count(1)
    by_id: dict[int, Stream] = {}

    def __init__(self) -> None:
        self.id = next(Stream.ids)
        self.ops: deque[Callable[[], None]] = deque()
        Stream.by_id[self.id] = self

    def __int__(self) -> int:
        return self.id

    def run_until(self, marker: object) -> None:
        while self.ops:
            op = self.ops.popleft()
            if op is marker:
                return
            if callable(op):  # else another event's marker, already passed
                op()


class Event:
    def __init__(self) -> None:
        self.stream: Stream | None = None
        self.marker: object | None = None

    def flush(self) -> None:
        if self.stream is not None and self.marker is not None:
            self.stream.run_until(self.marker)
            self.marker = None


class Cudart(types.ModuleType):
    """``cuda.bindings.runtime`` as far as apparate_trt uses it."""

    class cudaError_t:  # noqa: N801 - the real module's names
        cudaSuccess = SUCCESS

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaStreamNonBlocking = 1
    cudaEventDisableTiming = 2

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.memory: dict[int, ctypes.Array] = {}  # live allocations (device and pinned) by address

    def _alloc(self, nbytes: int) -> tuple[int, int]:
        buf = ctypes.create_string_buffer(int(nbytes))
        self.memory[ctypes.addressof(buf)] = buf
        return SUCCESS, ctypes.addressof(buf)

    def _free(self, ptr: int) -> tuple[int]:
        return (SUCCESS,) if self.memory.pop(int(ptr), None) is not None else (FAILED,)

    def cudaGetDeviceCount(self):  # noqa: N802
        return SUCCESS, 1

    def cudaGetErrorName(self, err):  # noqa: N802
        return SUCCESS, b"cudaErrorSimulated"

    def cudaSetDevice(self, device):  # noqa: N802
        return (SUCCESS,)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        return SUCCESS, types.SimpleNamespace(name=GPU_NAME, major=9, minor=0)

    def cudaMalloc(self, nbytes):  # noqa: N802
        return self._alloc(nbytes)

    def cudaMallocHost(self, nbytes):  # noqa: N802
        return self._alloc(nbytes)

    def cudaFree(self, ptr):  # noqa: N802
        return self._free(ptr)

    def cudaFreeHost(self, ptr):  # noqa: N802
        return self._free(ptr)

    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        return SUCCESS, Stream()

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return (SUCCESS,)

    def cudaEventCreateWithFlags(self, flags):  # noqa: N802
        return SUCCESS, Event()

    def cudaEventDestroy(self, event):  # noqa: N802
        return (SUCCESS,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        stream.ops.append(lambda: ctypes.memmove(int(dst), int(src), int(nbytes)))
        return (SUCCESS,)

    def cudaEventRecord(self, event, stream):  # noqa: N802
        event.stream, event.marker = stream, object()
        stream.ops.append(event.marker)
        return (SUCCESS,)

    def cudaStreamWaitEvent(self, stream, event, flags):  # noqa: N802
        waited, marker = event.stream, event.marker  # the event as recorded now, not as re-recorded later
        if waited is not None and marker is not None:
            stream.ops.append(lambda: waited.run_until(marker))
        return (SUCCESS,)

    def cudaEventSynchronize(self, event):  # noqa: N802
        event.flush()
        return (SUCCESS,)


def engine_bytes(model_bytes: bytes, ranges: Mapping[str, object]) -> bytes:
    """A simulated serialized engine: the ONNX model and its profile (``ShapeRange`` per input)."""
    profile = {name: (tuple(r.min), tuple(r.opt), tuple(r.max)) for name, r in ranges.items()}
    return b"SIMTRT" + pickle.dumps((model_bytes, profile))


def _view(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return (
        np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=np.uint8)[
            : int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        ]
        .view(dtype)
        .reshape(shape)
    )


class Engine:
    def __init__(self, model_bytes: bytes, profile: dict) -> None:
        self.session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        self.profile = profile
        self.ins = {a.name: a for a in self.session.get_inputs()}
        self.outs = {a.name: a for a in self.session.get_outputs()}
        self.names = list(self.ins) + list(self.outs)
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.ins else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        arg = self.ins.get(name) or self.outs[name]
        return np.dtype({"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}[arg.type])

    def get_tensor_shape(self, name):
        arg = self.ins.get(name) or self.outs[name]
        return [d if isinstance(d, int) else -1 for d in arg.shape]

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profile[name]]

    def create_execution_context(self):
        return Context(self)


class Context:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self._out_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile[name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(hi) or any(d < a or d > b for d, a, b in zip(shape, lo, hi)):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)

    def _output_shapes(self) -> dict[str, tuple[int, ...]]:
        key = tuple(sorted(self.shapes.items()))
        if key not in self._out_shapes:
            feeds = {n: np.zeros(s, self.engine.get_tensor_dtype(n)) for n, s in self.shapes.items()}
            outs = self.engine.session.run(None, feeds)
            self._out_shapes[key] = {n: tuple(v.shape) for n, v in zip(self.engine.outs, outs)}
        return self._out_shapes[key]

    def get_tensor_shape(self, name):
        return list(self.shapes[name]) if name in self.engine.ins else list(self._output_shapes()[name])

    def execute_async_v3(self, stream_handle):
        engine, shapes = self.engine, dict(self.shapes)
        addresses, out_shapes = dict(self.addresses), self._output_shapes()

        def run() -> None:  # reads the inputs when the stream gets here, not when queued
            feeds = {n: _view(addresses[n], shapes[n], engine.get_tensor_dtype(n)).copy() for n in engine.ins}
            for name, value in zip(engine.outs, engine.session.run(None, feeds)):
                assert value.shape == out_shapes[name]
                _view(addresses[name], value.shape, engine.get_tensor_dtype(name))[...] = value

        Stream.by_id[int(stream_handle)].ops.append(run)
        return True


class TensorIOMode:
    INPUT = 0
    OUTPUT = 1


class Logger:
    WARNING = 2

    def __init__(self, level: int) -> None:
        self.level = level


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes):
        if not data.startswith(b"SIMTRT"):
            return None
        return Engine(*pickle.loads(data[6:]))


def install(monkeypatch) -> Cudart:
    """Make ``tensorrt`` and ``cuda.bindings.runtime`` the simulated ones for one test, engine
    builds produce simulated engines, and the TensorRT runner's shared streams start afresh.
    Returns the simulated runtime (its ``memory`` holds the live allocations)."""
    from apparate_trt.backends import trt_build
    from apparate_trt.backends.tensorrt import Streams

    cudart = Cudart()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    trt.Logger, trt.Runtime, trt.TensorIOMode = Logger, Runtime, TensorIOMode
    trt.nptype = lambda dtype: np.dtype(dtype).type
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    for name, module in {
        "tensorrt": trt,
        "cuda": cuda,
        "cuda.bindings": bindings,
        "cuda.bindings.runtime": cudart,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(Streams, "_instances", {})
    monkeypatch.setattr(
        trt_build,
        "build_engine",
        lambda model, ranges, *, fp16, timing_cache: engine_bytes(
            model if isinstance(model, bytes) else model.SerializeToString(), ranges
        ),
    )
    return cudart
