"""Which backend serves an engine directory, and how its segments and ramps open on it.

:func:`choose_backend` turns ``--backend`` (``auto``, ``onnxruntime``, ``onnxruntime-gpu``,
``tensorrt``) into a :class:`ServingBackend`; the executor's plan builder opens every runner through
it, so the executor never names a backend. ``auto`` picks ``tensorrt`` when this machine has a GPU,
TensorRT, and engines built for it in the directory (``tensorrt/<key>/``), else ``onnxruntime``.

On ``tensorrt`` the unsplit model, the finest segments and the ramps load from the prebuilt
engines; a plan the controller moves to (a merged segment) is split from the ONNX model as on the
CPU and its engines are built then, on the plan builder's background thread (off the batch path),
with the optimization profiles recorded for the same tensors at compile time, into
``tensorrt/<key>/plans/`` when the directory is writable (reused by the next run) or a scratch
folder. A refitted ramp's engine is built the same way on the refit worker's thread.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from apparate_trt.backends import BACKENDS, GPU_BACKENDS, Runner, open_runner
from apparate_trt.backends.trt_layout import PLANS_DIR, TIMING_CACHE, BuildRecord, ShapeRange, select_engines
from apparate_trt.engine_dir import Manifest
from apparate_trt.errors import ApparateError

log = logging.getLogger(__name__)

CHOICES = ("auto", *BACKENDS)


@dataclass
class ServingBackend:
    """A backend ready to open an engine directory's runners.

    ``name``: one of :data:`~apparate_trt.backends.BACKENDS`. ``device`` (``onnxruntime-gpu`` only):
    ``cuda``, or ``cpu`` to run the same device-chained path on the CPU (the tests do). ``overlap``:
    whether the executor decides a ramp's exits while the next segment runs (None: when the runners
    are asynchronous, i.e. on TensorRT). ``engines``/``record``: the key folder and build record of
    the TensorRT engines for this machine.
    """

    name: str = "onnxruntime"
    device: str = "cuda"
    overlap: bool | None = None
    engines: Path | None = None
    record: BuildRecord | None = None
    _scratch: Path | None = field(default=None, repr=False)

    @property
    def chained(self) -> bool:
        """True when segment outputs stay on the device (the GPU backends): release mode only."""
        return self.name in GPU_BACKENDS

    def describe(self) -> str:
        if self.name == "tensorrt" and self.record is not None:
            return f"tensorrt ({self.record.key.describe()}, {self.record.precision})"
        if self.name == "onnxruntime-gpu":
            return f"onnxruntime-gpu ({self.device})"
        return self.name

    # ------------------------------------------------------------------------------------ opening
    def _open_onnx(self, model: onnx.ModelProto | str | Path, threads: int | None, name: str) -> Runner:
        if self.name == "onnxruntime-gpu":
            from apparate_trt.backends.ort_device import OrtDeviceRunner

            return OrtDeviceRunner(model, threads=threads, name=name, device=self.device)
        return open_runner(model, backend="onnxruntime", threads=threads, name=name)

    def open_model(self, manifest: Manifest, threads: int | None) -> Runner:
        """The unsplit model (vanilla, the overload fallback)."""
        name = f"model ({manifest.model.file})"
        if self.name == "tensorrt":
            return self._open_engine(self.record.model.file, name)
        return self._open_onnx(manifest.path(manifest.model.file), threads, name)

    def open_segment(self, manifest: Manifest, index: int, threads: int | None) -> Runner:
        """Finest segment ``index``."""
        seg = manifest.segments[index]
        if self.name == "tensorrt":
            return self._open_engine(self.record.segments[index].file, f"segment {seg.file}")
        return self._open_onnx(manifest.path(seg.file), threads, f"segment {seg.file}")

    def open_ramp(self, manifest: Manifest, site: int, threads: int | None, file: str | Path | None = None) -> Runner:
        """The ramp of ``site``: the compiled one, or the ONNX graph ``file`` (a refitted head; on
        TensorRT its engine is built now, on the calling thread)."""
        entry = manifest.ramps[site]
        if file is None:
            name = f"ramp {site} ({entry.file})"
            if self.name == "tensorrt":
                return self._open_engine(self.record.ramps[site].file, name)
            return self._open_onnx(manifest.path(entry.file), threads, name)
        name = f"ramp {site} ({Path(file).name})"
        if self.name == "tensorrt":
            return self._built_engine(onnx.load(str(file)), name, f"ramp_{site}")
        return self._open_onnx(Path(file), threads, name)

    def open_merged(self, model: onnx.ModelProto | str | Path, threads: int | None, name: str, key: str) -> Runner:
        """A segment of a plan the compiler did not write (``key`` names it for the engine cache)."""
        if self.name == "tensorrt":
            proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
            return self._built_engine(proto, name, key)
        return self._open_onnx(model, threads, name)

    def _open_engine(self, file: str, name: str) -> Runner:
        return open_runner(self.engines / file, backend="tensorrt", name=name)

    def recorded_ranges(self) -> dict[str, ShapeRange]:
        """The compile-time optimization profile of every tensor an engine took as input."""
        ranges: dict[str, ShapeRange] = {}
        for entry in [self.record.model, *self.record.segments, *self.record.ramps]:
            for tensor, r in entry.shapes.items():
                ranges[tensor] = ShapeRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"]))
        return ranges

    def _built_engine(self, model: onnx.ModelProto, name: str, key: str) -> Runner:
        """Build (or reuse from the cache) the engine of an ONNX graph the compiler did not build."""
        from apparate_trt.backends.trt_build import build_engine, onnx_inputs

        data = model.SerializeToString()
        digest = hashlib.sha256(data).hexdigest()[:16]
        folder = self._plans_folder()
        path = folder / f"{key}-{digest}.plan"
        if not path.is_file():
            known = self.recorded_ranges()
            specs = onnx_inputs(model)
            missing = [s.name for s in specs if s.name not in known]
            if missing:
                raise ApparateError(f"{name}: no optimization profile was recorded for inputs {missing}; recompile")
            ranges = {s.name: known[s.name] for s in specs}
            engine = build_engine(data, ranges, fp16=self.record.fp16, timing_cache=self.engines / TIMING_CACHE)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(engine)
            tmp.replace(path)
            log.info("built the TensorRT engine of %s (%s)", name, path)
        return open_runner(path, backend="tensorrt", name=name)

    def _plans_folder(self) -> Path:
        """``tensorrt/<key>/plans`` if it can be written, else a scratch folder."""
        folder = self.engines / PLANS_DIR
        try:
            folder.mkdir(exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-")
            probe.close()
            return folder
        except OSError:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="apparate-trt-plans-"))
            return self._scratch


def choose_backend(manifest: Manifest, requested: str | None = None) -> ServingBackend:
    """The backend to serve ``manifest`` on (``requested``: see the module doc; None means ``auto``).

    Raises:
        ApparateError: an unknown name, or a backend this machine or directory cannot serve (the
            message says why and what to use instead).
    """
    requested = "auto" if requested is None else requested
    if requested not in CHOICES:
        raise ApparateError(f"--backend must be one of {', '.join(CHOICES)}; got '{requested}'")
    if requested == "onnxruntime":
        return ServingBackend("onnxruntime")
    if requested == "onnxruntime-gpu":
        from apparate_trt.backends.ort_device import providers_for

        providers_for("cuda")  # raises saying how to install onnxruntime-gpu
        return ServingBackend("onnxruntime-gpu", device="cuda")
    if manifest.root is None:
        if requested == "tensorrt":
            raise ApparateError("the TensorRT backend needs a manifest read from an engine directory")
        return ServingBackend("onnxruntime")
    from apparate_trt.backends.tensorrt import unavailable_reason

    if requested == "auto":
        from apparate_trt.backends.trt_layout import built_keys

        if not built_keys(manifest.root) or unavailable_reason() is not None:
            return ServingBackend("onnxruntime")
        try:
            return _tensorrt_backend(manifest)
        except ApparateError as exc:
            log.warning("%s; serving on onnxruntime", exc)
            return ServingBackend("onnxruntime")
    return _tensorrt_backend(manifest)


def _tensorrt_backend(manifest: Manifest) -> ServingBackend:
    from apparate_trt.backends.tensorrt import require_tensorrt
    from apparate_trt.backends.trt_build import machine_key

    require_tensorrt("serving on the tensorrt backend")

    folder, record = select_engines(manifest.root, machine_key())
    if len(record.segments) != len(manifest.segments) or len(record.ramps) != len(manifest.ramps):
        raise ApparateError(
            f"{folder} holds engines for {len(record.segments)} segments and {len(record.ramps)} ramps but the "
            f"manifest has {len(manifest.segments)} and {len(manifest.ramps)}; rebuild them with apparate-compile "
            f"--backend tensorrt"
        )
    return ServingBackend("tensorrt", engines=folder, record=record)
