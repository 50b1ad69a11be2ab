"""Building TensorRT engines from ONNX, through Polygraphy's loaders (lazy imports).

Polygraphy (``polygraphy`` on PyPI, NVIDIA's) does the building: ``NetworkFromOnnxBytes`` parses,
``CreateConfig`` takes the optimization profile, the FP16 flag and the timing cache, and
``EngineBytesFromNetwork`` builds and appends to the cache. This module adds what apparate_trt
needs around it: one profile per engine from :func:`~apparate_trt.backends.trt_layout.profile_ranges`,
the FP16 policy per TensorRT version, the machine's device key, and the whole engine set of a
compiled model written in the :mod:`~apparate_trt.backends.trt_layout` layout.

FP16: TensorRT 10 has a builder flag that lets it pick FP16 kernels (``--fp16``). TensorRT 11 is
strongly typed and has no such flag: its engines compute in the ONNX graph's own types, so
``--fp16`` there is refused with the way to get FP16 (convert the ONNX to mixed precision first,
e.g. with ModelOpt AutoCast, and compile that).

Nothing here has run on a GPU in this repository's CI (it has none); the CPU tests cover the
profiles, the FP16 policy and the messages, and ``benchmarks/gpu_check.py`` runs the rest on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from apparate_trt.backends.base import IOSpec
from apparate_trt.backends.trt_layout import (
    MODEL_ENGINE,
    TIMING_CACHE,
    BuildRecord,
    DeviceKey,
    EngineEntry,
    ShapeRange,
    profile_ranges,
    ramp_engine,
    segment_engine,
    write_build_record,
)
from apparate_trt.errors import ApparateError

Log = Callable[[str], None]

FP16_GONE_MESSAGE = (
    "--fp16 needs a TensorRT with a weak-typing FP16 flag (TensorRT 10); TensorRT {version} builds strongly "
    "typed networks whose precision is the ONNX graph's own: convert the model to mixed precision first (e.g. "
    "ModelOpt AutoCast, keep_io_types=True) and compile that, or drop --fp16 to build in the model's types"
)


def tensorrt_major(version: str) -> int:
    """The major version of a TensorRT version string (``"11.4.0.106"`` -> 11)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ApparateError(f"cannot read the TensorRT version '{version}'") from None


def precision_policy(fp16: bool, tensorrt_version: str) -> tuple[bool, str]:
    """(whether to set the FP16 builder flag, the engines' precision in words) for ``--fp16`` on
    this TensorRT; ApparateError saying what to do when the version has no FP16 flag."""
    major = tensorrt_major(tensorrt_version)
    if not fp16:
        typed = "strongly typed: " if major >= 11 else ""
        return False, f"{typed}the ONNX graph's own types (fp32 for a float model, TF32 matmuls and convolutions)"
    if major >= 11:
        raise ApparateError(FP16_GONE_MESSAGE.format(version=tensorrt_version))
    return True, "fp16 where TensorRT chooses it (weak typing, builder flag FP16), fp32 elsewhere"


def polygraphy_profile(ranges: Mapping[str, ShapeRange]) -> Any:
    """A Polygraphy ``Profile`` holding ``ranges`` (one optimization profile)."""
    from polygraphy.backend.trt import Profile  # noqa: PLC0415 - optional, imported lazily

    profile = Profile()
    for name, r in ranges.items():
        profile.add(name, min=list(r.min), opt=list(r.opt), max=list(r.max))
    return profile


def build_engine(
    model: onnx.ModelProto | bytes, ranges: Mapping[str, ShapeRange], *, fp16: bool, timing_cache: Path | None
) -> bytes:
    """Build one serialized engine from an ONNX model with one optimization profile.

    ``timing_cache``: a file read first (if present) and appended to after the build (None: none).
    Raises ApparateError with TensorRT's reason when the build fails.
    """
    from apparate_trt.backends.tensorrt import require_tensorrt  # noqa: PLC0415

    require_tensorrt("building TensorRT engines")
    from polygraphy.backend.trt import (  # noqa: PLC0415 - optional, imported lazily
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxBytes,
    )

    data = model if isinstance(model, bytes) else model.SerializeToString()
    cache = None if timing_cache is None else Path(timing_cache)
    config = CreateConfig(
        tf32=True,  # TensorRT's own default for float engines (Polygraphy clears it unless asked)
        fp16=True if fp16 else None,
        profiles=[polygraphy_profile(ranges)],
        load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
    )
    loader = EngineBytesFromNetwork(
        NetworkFromOnnxBytes(data), config=config, save_timing_cache=None if cache is None else str(cache)
    )
    try:
        engine = loader()
    except Exception as exc:  # noqa: BLE001 - Polygraphy reports failures as its own exception types
        raise ApparateError(f"TensorRT could not build the engine ({type(exc).__name__}: {exc})") from None
    data = bytes(engine)  # an IHostMemory: it has the buffer protocol, not a length
    if not data:
        raise ApparateError("TensorRT built no engine (see TensorRT's log above)")
    return data


def machine_key(device: int = 0) -> DeviceKey:
    """The device key of GPU ``device`` with the installed TensorRT (needs both)."""
    from apparate_trt.backends.tensorrt import cuda_call, require_tensorrt  # noqa: PLC0415

    trt, cudart = require_tensorrt("building TensorRT engines")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return DeviceKey(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}", trt.__version__)


def observed_shapes(models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray], threads: int = 1) -> dict:
    """Every tensor's shape when ``models`` (the segments, in order) run chained on ``feeds`` with
    ONNX Runtime: the concrete dimensions the engines' profiles take. {name: tuple}."""
    from apparate_trt.backends import open_runner  # noqa: PLC0415 - backends/__init__ imports us lazily

    env: dict[str, np.ndarray] = dict(feeds)
    for i, m in enumerate(models):
        with open_runner(m, threads=threads, name=f"segment {i}") as runner:
            env.update(runner.run(env))
    return {name: tuple(np.shape(v)) for name, v in env.items()}


def onnx_inputs(model: onnx.ModelProto) -> list[IOSpec]:
    """The graph inputs of ``model`` (initializers excluded) as IOSpecs."""
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tensor = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "float32"
        specs.append(IOSpec(vi.name, dtype, dims))
    return specs


def build_engine_set(
    folder: Path,
    key: DeviceKey,
    *,
    model: onnx.ModelProto,
    segments: Sequence[onnx.ModelProto],
    ramps: Sequence[onnx.ModelProto],
    ramp_sites: Sequence[int],
    onnx_files: Mapping[str, str],
    observed: Mapping[str, Sequence[int]],
    max_batch: int,
    opt_batch: int,
    fp16: bool = False,
    log: Log = print,
) -> BuildRecord:
    """Build the model's, every segment's and every ramp's engine into ``folder`` (a key folder,
    created) with a shared timing cache, and write ``build.json``; returns the record.

    ``onnx_files`` maps ``"model"``, ``"segment i"`` and ``"ramp i"`` to the ONNX file each engine
    comes from (relative to the engine directory, recorded); ``observed`` is
    :func:`observed_shapes` on the bootstrap data. Progress goes to ``log``, one line per engine.
    """
    use_fp16, precision = precision_policy(fp16, key.tensorrt)
    folder = Path(folder)
    (folder / "segments").mkdir(parents=True, exist_ok=True)
    (folder / "ramps").mkdir(parents=True, exist_ok=True)
    cache = folder / TIMING_CACHE
    jobs: list[tuple[str, str, onnx.ModelProto, int | None]] = [("model", MODEL_ENGINE, model, None)]
    jobs += [(f"segment {i}", segment_engine(i), m, None) for i, m in enumerate(segments)]
    jobs += [(f"ramp {i}", ramp_engine(i), m, int(s)) for i, (m, s) in enumerate(zip(ramps, ramp_sites))]
    entries: list[EngineEntry] = []
    start = time.perf_counter()
    for n, (what, file, m, site) in enumerate(jobs, 1):
        t0 = time.perf_counter()
        ranges = profile_ranges(onnx_inputs(m), observed, max_batch, opt_batch)
        try:
            engine = build_engine(m, ranges, fp16=use_fp16, timing_cache=cache)
        except ApparateError as exc:
            raise ApparateError(f"building the TensorRT engine of {what}: {exc}") from None
        (folder / file).write_bytes(engine)
        entries.append(EngineEntry(file, onnx_files[what], {k: r.as_lists() for k, r in ranges.items()}, site))
        log(
            f"  engine {n}/{len(jobs)}: {what} -> {file} ({len(engine) / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)"
        )
    record = BuildRecord(
        key=key,
        max_batch=int(max_batch),
        opt_batch=int(min(max(opt_batch, 1), max_batch)),
        fp16=use_fp16,
        precision=precision,
        model=entries[0],
        segments=entries[1 : 1 + len(segments)],
        ramps=entries[1 + len(segments) :],
        built=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_s=round(time.perf_counter() - start, 3),
    )
    write_build_record(folder, record)
    return record
