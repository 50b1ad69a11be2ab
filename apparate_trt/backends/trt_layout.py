"""Where TensorRT engines live in an engine directory, what built them, and what they accept.

Pure Python (no TensorRT, no CUDA): the compiler writes this layout, the runtime reads it, and the
CPU tests check it. A serialized TensorRT engine runs only on the GPU model and TensorRT version
that built it, so engines are kept per *device key* (GPU name, compute capability, TensorRT
version), each in its own folder beside the ONNX files::

    tensorrt/<key folder>/build.json            what was built, for which machine, with which profiles
    tensorrt/<key folder>/model.plan            the unsplit model (vanilla, the overload fallback)
    tensorrt/<key folder>/segments/segment_i.plan   the finest split's segments
    tensorrt/<key folder>/ramps/ramp_i.plan         one per ramp
    tensorrt/<key folder>/timing.cache          TensorRT's tactic timing cache (speeds up rebuilds)
    tensorrt/<key folder>/plans/sites_a_b/...   merged segments built at run time (a moved ramp)

One engine directory may hold engines for several machines (compiled, or extended, on each). Every
engine has one optimization profile: batch 1 to the maximum batch, optimised at the profiled
common batch; the other dimensions are those the bootstrap data had.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from apparate_trt.backends.base import IOSpec
from apparate_trt.errors import ApparateError

TRT_DIR = "tensorrt"
"""The engine directory's folder of TensorRT engines, one subfolder per device key."""
BUILD_RECORD = "build.json"
TIMING_CACHE = "timing.cache"
MODEL_ENGINE = "model.plan"
PLANS_DIR = "plans"
RECORD_VERSION = 1


def segment_engine(i: int) -> str:
    """The engine file of finest segment ``i``, relative to its key folder."""
    return f"segments/segment_{i}.plan"


def ramp_engine(i: int) -> str:
    """The engine file of ramp ``i``, relative to its key folder."""
    return f"ramps/ramp_{i}.plan"


@dataclass(frozen=True)
class DeviceKey:
    """What a serialized engine is tied to: the GPU's name and compute capability (``"9.0"``) and
    the TensorRT version that built it."""

    gpu: str
    compute_capability: str
    tensorrt: str

    @property
    def folder(self) -> str:
        """The key's folder name, e.g. ``nvidia-h200_sm90_trt11.4.0.106``."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        sm = self.compute_capability.replace(".", "")
        return f"{gpu}_sm{sm}_trt{self.tensorrt}"

    def describe(self) -> str:
        """``NVIDIA H200 (compute 9.0, TensorRT 11.4.0.106)``."""
        return f"{self.gpu} (compute {self.compute_capability}, TensorRT {self.tensorrt})"


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimization profile: the smallest, optimal and largest shape it accepts."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_lists(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profile_ranges(
    inputs: Sequence[IOSpec], observed: Mapping[str, Sequence[int]], max_batch: int, opt_batch: int
) -> dict[str, ShapeRange]:
    """The optimization profile of a model (or segment, or ramp) with these ``inputs``.

    A symbolic first axis is the batch: 1 .. ``max_batch``, optimised at ``opt_batch`` (clamped to
    that range). Every other dimension is fixed: the model's own where it fixes one, else the one
    ``observed`` (the tensor's shape on the bootstrap data, any batch size). A fixed first axis is
    a fixed batch: min = opt = max.

    Raises:
        ApparateError: a symbolic dimension other than the batch was never observed, or
            ``max_batch`` < 1.
    """
    if max_batch < 1:
        raise ApparateError(f"the maximum batch must be >= 1 to build TensorRT engines; got {max_batch}")
    opt_batch = int(min(max(opt_batch, 1), max_batch))
    ranges: dict[str, ShapeRange] = {}
    for spec in inputs:
        seen = observed.get(spec.name)
        dims: list[int] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim >= 0:
                dims.append(dim)
            elif axis == 0 and spec.batch_first:
                dims.append(1)  # the batch: its range is set below
            elif seen is not None and axis < len(seen):
                dims.append(int(seen[axis]))
            else:
                raise ApparateError(
                    f"input '{spec.name}' has a dimension {axis} ({dim!r}) that neither the model nor the "
                    f"bootstrap data fixes; export the model with that dimension fixed to build TensorRT engines"
                )
        if spec.batch_first:
            ranges[spec.name] = ShapeRange((1, *dims[1:]), (opt_batch, *dims[1:]), (int(max_batch), *dims[1:]))
        else:
            ranges[spec.name] = ShapeRange(tuple(dims), tuple(dims), tuple(dims))
    return ranges


def buffer_bytes(shape: Sequence[int], dtype: str | np.dtype) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype`` (at least 1, so an empty tensor still has
    an address)."""
    return max(1, int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize)


def plan_buffers(max_shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str]) -> dict[str, int]:
    """Bytes to allocate once per tensor so that every batch the profile allows fits: the tensor
    at its largest shape. ``max_shapes`` and ``dtypes`` are keyed by tensor name."""
    missing = sorted(set(max_shapes) - set(dtypes))
    if missing:
        raise ApparateError(f"no dtype known for tensors {missing}; cannot size their device buffers")
    return {name: buffer_bytes(shape, dtypes[name]) for name, shape in max_shapes.items()}


@dataclass
class EngineEntry:
    """One built engine: its file (relative to the key folder), the ONNX it came from (relative to
    the engine directory) and its optimization profile per input."""

    file: str
    onnx: str
    shapes: dict[str, dict[str, list[int]]]
    site: int | None = None  # a ramp's site; None for the model and segments


@dataclass
class BuildRecord:
    """``build.json``: which machine the engines are for and how they were built."""

    key: DeviceKey
    max_batch: int
    opt_batch: int
    fp16: bool
    precision: str
    """What precision the engines compute in, in words (``fp32: the ONNX's own types``)."""
    model: EngineEntry
    segments: list[EngineEntry]
    ramps: list[EngineEntry]
    timing_cache: str = TIMING_CACHE
    built: str = ""
    build_s: float = 0.0
    version: int = RECORD_VERSION
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        data["key"] = asdict(self.key)
        return data

    @classmethod
    def from_json(cls, data: Mapping, where: str) -> BuildRecord:
        """Parse ``build.json``; ApparateError naming ``where`` if it is not a build record."""
        try:
            if int(data["version"]) != RECORD_VERSION:
                raise ApparateError(
                    f"{where} is a version {data['version']} build record; this apparate_trt reads version "
                    f"{RECORD_VERSION}: rebuild the engines with apparate-compile --backend tensorrt"
                )
            return cls(
                key=DeviceKey(**data["key"]),
                max_batch=int(data["max_batch"]),
                opt_batch=int(data["opt_batch"]),
                fp16=bool(data["fp16"]),
                precision=str(data["precision"]),
                model=EngineEntry(**data["model"]),
                segments=[EngineEntry(**e) for e in data["segments"]],
                ramps=[EngineEntry(**e) for e in data["ramps"]],
                timing_cache=str(data.get("timing_cache", TIMING_CACHE)),
                built=str(data.get("built", "")),
                build_s=float(data.get("build_s", 0.0)),
                notes=list(data.get("notes", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApparateError(
                f"{where} is not a valid TensorRT build record ({type(exc).__name__}: {exc}); rebuild the "
                f"engines with apparate-compile --backend tensorrt"
            ) from None


def write_build_record(folder: Path, record: BuildRecord) -> Path:
    """Write ``record`` as ``folder/build.json``; returns its path."""
    path = Path(folder) / BUILD_RECORD
    path.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    return path


def read_build_record(folder: Path) -> BuildRecord:
    """Read ``folder/build.json`` (ApparateError if missing or corrupt)."""
    path = Path(folder) / BUILD_RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ApparateError(
            f"{path} is missing: the TensorRT folder is incomplete; rebuild it with apparate-compile --backend tensorrt"
        ) from None
    except (OSError, ValueError) as exc:
        raise ApparateError(
            f"{path} cannot be read ({exc}); rebuild it with apparate-compile --backend tensorrt"
        ) from None
    if not isinstance(data, dict):
        raise ApparateError(f"{path} is not a JSON object; rebuild it with apparate-compile --backend tensorrt")
    return BuildRecord.from_json(data, str(path))


def built_keys(engine_dir: Path) -> dict[str, BuildRecord | ApparateError]:
    """Every key folder under ``engine_dir/tensorrt`` and its build record (or why it is unreadable)."""
    root = Path(engine_dir) / TRT_DIR
    found: dict[str, BuildRecord | ApparateError] = {}
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            found[folder.name] = read_build_record(folder)
        except ApparateError as exc:
            found[folder.name] = exc
    return found


def select_engines(engine_dir: Path, machine: DeviceKey) -> tuple[Path, BuildRecord]:
    """The key folder and build record of the engines built for ``machine``, with every file present.

    Raises:
        ApparateError: there are no TensorRT engines, none for this machine (the message lists
            what there is and how to build for this one), or one of the engines is missing.
    """
    engine_dir = Path(engine_dir)
    how = (
        "build them here with apparate-compile --backend tensorrt (or serve the ONNX segments with "
        "--backend onnxruntime)"
    )
    found = built_keys(engine_dir)
    if not found:
        raise ApparateError(f"engine directory '{engine_dir}' has no TensorRT engines; {how}")
    folder = engine_dir / TRT_DIR / machine.folder
    record = found.get(machine.folder)
    if record is None:
        others = "; ".join(r.key.describe() if isinstance(r, BuildRecord) else name for name, r in found.items())
        raise ApparateError(
            f"engine directory '{engine_dir}' has TensorRT engines for {others}, not for this machine, "
            f"{machine.describe()}: an engine runs only on the GPU model and TensorRT version that built it; {how}"
        )
    if isinstance(record, ApparateError):
        raise record
    if record.key != machine:
        raise ApparateError(
            f"{folder / BUILD_RECORD} says its engines are for {record.key.describe()}, not this machine's "
            f"{machine.describe()}; {how}"
        )
    for entry in [record.model, *record.segments, *record.ramps]:
        if not (folder / entry.file).is_file():
            raise ApparateError(f"TensorRT engine '{folder / entry.file}' is missing; {how}")
    return folder, record
