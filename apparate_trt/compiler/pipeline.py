"""``compile_model``: an ONNX classifier and bootstrap data in, an engine directory out.

The stages of DESIGN.md "Offline", each with progress lines through ``log``:

1. check the output directory (before any expensive work) and the backend;
2. ingest the model (validate, shape-infer, prune, sort) and pick its score output;
3. load and validate the bootstrap data;
4. find the candidate ramp sites;
5. split the model into the finest segments and check that the chain reproduces the model;
6. collect pooled site features and the model's predictions in one pass, train every ramp,
   export each as ONNX and check it against numpy;
7. profile the model, every segment and every ramp at batch sizes 1, 2, 4, ... up to max_batch;
8. choose the initial configuration within the budget;
9. write the engine directory (into a temporary sibling, renamed into place at the end, so a
   failed compile never leaves a half-written directory) and print the summary table.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

import apparate_trt
from apparate_trt._optional import is_available
from apparate_trt.backends import BACKENDS as RUNNER_BACKENDS
from apparate_trt.backends import Runner, open_runner
from apparate_trt.backends.trt_layout import TRT_DIR
from apparate_trt.compiler.augment import (
    MAX_BLENDS,
    MAX_COPIES,
    augmented_inputs,
    blended_inputs,
    default_blends,
    default_copies,
    image_input,
    token_copies,
    token_inputs,
)
from apparate_trt.compiler.batch_axes import PROBE_BATCHES, restore_batch_axes
from apparate_trt.compiler.bootstrap import DEFAULT_MAX_SAMPLES, bounded_bootstrap
from apparate_trt.compiler.chain import verify_chain
from apparate_trt.compiler.initial_config import choose_initial
from apparate_trt.compiler.prestages import PreStages, learn_prestages
from apparate_trt.compiler.profiling import ProfileResult, ProfileSettings, batch_sizes_up_to, profile_all
from apparate_trt.compiler.sites import Site, find_sites
from apparate_trt.compiler.training import (
    Features,
    TrainConfig,
    TrainResult,
    bootstrap_split,
    collect_features,
    train_ramps,
)
from apparate_trt.data import load_inputs, num_samples, take
from apparate_trt.defaults import DEFAULT_ACCURACY_CONSTRAINT, DEFAULT_MAX_BATCH, DEFAULT_TARGET_FRACTION
from apparate_trt.engine_dir import (
    BootstrapInfo,
    BootstrapStats,
    InitialConfig,
    Manifest,
    ModelInfo,
    Profiles,
    RampEntry,
    SegmentEntry,
    SiteEntry,
    TensorSpec,
    file_sha256,
    is_engine_dir,
    read_manifest,
    write_bootstrap_stats,
    write_manifest,
)
from apparate_trt.errors import ApparateError
from apparate_trt.graph.ingest import TensorInfo, load_model, model_io, score_output
from apparate_trt.graph.split import Segment, split_model
from apparate_trt.ramps.model import (
    MASKED_KINDS,
    RAMP_FEATURES,
    RAMP_OUTPUT,
    build_ramp_onnx,
    candidate_kinds,
    check_ramp,
    find_mask_input,
)

Log = Callable[[str], None]

BACKENDS = ("auto", *RUNNER_BACKENDS)
MIN_BOOTSTRAP_SAMPLES = 10
CHAIN_CHECK_SAMPLES = 64
MODEL_FILE = "model.onnx"
BOOTSTRAP_FILE = "bootstrap_stats.npz"


# ----- arguments -----------------------------------------------------------------------------------
def check_options(
    budget: float, max_batch: int, threads: int | None, augment: int | None = None, blends: int | None = None
) -> None:
    """Validate the numeric options (ApparateError naming the flag)."""
    if augment is not None and not (isinstance(augment, int) and 0 <= augment <= MAX_COPIES):
        raise ApparateError(f"--augment must be an integer from 0 (no near-copies) to {MAX_COPIES}; got {augment}")
    if blends is not None and not (isinstance(blends, int) and 0 <= blends <= MAX_BLENDS):
        raise ApparateError(f"--blends must be an integer from 0 (no blends) to {MAX_BLENDS}; got {blends}")
    if not (isinstance(budget, (int, float)) and 0.0 < budget < 1.0):
        raise ApparateError(
            f"--budget must be a fraction of the model's latency in (0, 1), e.g. 0.02 for 2%; got {budget}"
        )
    if not (isinstance(max_batch, int) and max_batch >= 1):
        raise ApparateError(f"--max-batch must be an integer >= 1; got {max_batch}")
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise ApparateError(f"--threads must be an integer >= 1 (or omitted for all cores); got {threads}")


def tensorrt_build_problem() -> str | None:
    """Why this machine cannot build TensorRT engines (None when it can): it needs a visible NVIDIA
    GPU, the ``tensorrt`` and cuda-bindings packages, and Polygraphy (the ``tensorrt`` extra)."""
    from apparate_trt.backends.tensorrt import unavailable_reason  # lazy: no CUDA at import

    problem = unavailable_reason()
    if problem is None and not is_available("polygraphy.backend.trt"):
        problem = "the 'polygraphy' package is not installed"
    return problem


def resolve_backend(backend: str) -> str:
    """The backend to profile on (and, for ``tensorrt``, build engines for): ``auto`` picks
    ``tensorrt`` where this machine can build engines, else ``onnxruntime``. ApparateError saying
    what is missing when the named backend cannot run here."""
    if backend not in BACKENDS:
        raise ApparateError(f"--backend must be one of {', '.join(BACKENDS)}; got '{backend}'")
    if backend == "auto":
        return "tensorrt" if tensorrt_build_problem() is None else "onnxruntime"
    if backend == "tensorrt":
        problem = tensorrt_build_problem()
        if problem:
            raise ApparateError(
                f"--backend tensorrt needs an NVIDIA GPU and the 'tensorrt' extra (pip install "
                f"'apparate_trt[tensorrt]'), which this machine lacks ({problem}); use --backend onnxruntime, which "
                f"works everywhere"
            )
    if backend == "onnxruntime-gpu":
        from apparate_trt.backends.ort_device import providers_for

        providers_for("cuda")  # raises saying how to install onnxruntime-gpu
    return backend


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse an output path that is not ours to replace, and check that it can be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ApparateError(f"output path '{out_dir}' is a file; choose a directory for --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not is_engine_dir(out_dir):
            raise ApparateError(
                f"output directory '{out_dir}' exists and is not an engine directory; choose a new --out "
                f"(apparate-compile replaces only engine directories, and only with --force)"
            )
        if not force:
            raise ApparateError(
                f"output directory '{out_dir}' already holds an engine directory; pass --force to replace it"
            )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.probe-")
        os.rmdir(probe)
    except OSError as exc:
        raise ApparateError(
            f"output directory '{out_dir}' cannot be written ({exc.strerror or exc}); choose a writable --out"
        ) from None


# ----- helpers ---------------------------------------------------------------------------------------
def tool_versions() -> dict[str, str | None]:
    """Versions recorded in the manifest (None for tools that are not installed)."""
    import onnxruntime

    def version(module: str) -> str | None:
        if not is_available(module):
            return None
        return getattr(__import__(module), "__version__", None)

    return {
        "apparate_trt": apparate_trt.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": version("torch"),
        "python": platform.python_version(),
        "tensorrt": version("tensorrt") if is_available("tensorrt") else None,
    }


def _spec(info: TensorInfo) -> TensorSpec:
    return TensorSpec(
        info.name, np.dtype(info.dtype).name if info.dtype != "bfloat16" else info.dtype, list(info.shape)
    )


def _renumber(sites: Sequence[Site]) -> list[Site]:
    """Sites with ids 0..n-1 in order (after dropping sites no ramp fits)."""
    return [s if s.id == i else dataclasses.replace(s, id=i) for i, s in enumerate(sites)]


def _fixed_batch(inputs: Sequence[TensorInfo]) -> int | None:
    """The batch size the model's inputs fix, or None if the batch dimension is symbolic."""
    for info in inputs:
        if info.shape and isinstance(info.shape[0], int) and info.shape[0] > 0:
            return info.shape[0]
    return None


def serving_batch(batch_sizes: Sequence[int]) -> int:
    """The profiled batch size the initial ramps are chosen at: the largest up to the serving
    default (``DEFAULT_MAX_BATCH``), where a loaded server's batches are. A ramp's cost has a fixed
    part (one more session call) that batch 1 exaggerates: on a fast CPU no ramp fits the 2% budget
    at batch 1 (EfficientNet-Lite0: 2.6-4.4%) although it does at the batches the server runs."""
    fitting = [int(b) for b in batch_sizes if int(b) <= DEFAULT_MAX_BATCH]
    return max(fitting) if fitting else int(min(batch_sizes))


def _depths(segments_ms_b1: Sequence[float], num_sites: int) -> list[float]:
    """Fraction of the chained segments' batch-1 latency spent before each site."""
    total = float(sum(segments_ms_b1)) or 1.0
    cumulative = np.cumsum(segments_ms_b1)
    return [float(cumulative[i] / total) for i in range(num_sites)]


def segment_file(index: int) -> str:
    """Path of segment ``index`` inside the engine directory."""
    return f"segments/seg_{index:03d}.onnx"


def ramp_file(index: int) -> str:
    """Path of ramp ``index`` inside the engine directory."""
    return f"ramps/ramp_{index:03d}.onnx"


def _write_engine_dir(
    out_dir: Path,
    manifest: Manifest,
    model: onnx.ModelProto,
    segment_models: Sequence[onnx.ModelProto],
    ramp_models: Sequence[onnx.ModelProto],
    stats: BootstrapStats,
    engines: Path | None = None,
) -> None:
    """Write everything into a temporary sibling of ``out_dir``, check it reads back, then move it
    into place (replacing an old engine directory), so that a failure never leaves half a directory.
    ``engines``: a key folder of built TensorRT engines, moved to ``tensorrt/<its name>/``."""
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        (tmp / "segments").mkdir()
        (tmp / "ramps").mkdir()
        onnx.save(model, str(tmp / manifest.model.file))
        for entry, m in [*zip(manifest.segments, segment_models), *zip(manifest.ramps, ramp_models)]:
            onnx.save(m, str(tmp / entry.file))
        write_bootstrap_stats(tmp / manifest.bootstrap.file, stats)
        if engines is not None:
            (tmp / TRT_DIR).mkdir()
            shutil.move(str(engines), str(tmp / TRT_DIR / engines.name))
        write_manifest(tmp, manifest)
        read_manifest(tmp)  # what we wrote must read back
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _usable_sites(
    model: onnx.ModelProto, mask: TensorInfo | None, log: Log, probed: frozenset[str] = frozenset()
) -> tuple[list[Site], list[list[str]]]:
    """The sites some ramp fits (ids renumbered 0..n-1) and each one's candidate ramp kinds."""
    found = find_sites(model)
    options = [candidate_kinds(s.shape, mask.name if mask else None) for s in found]
    sites = _renumber([s for s, kinds in zip(found, options) if kinds])
    candidates = [kinds for kinds in options if kinds]
    if len(sites) < len(found):
        log(f"  dropped {len(found) - len(sites)} sites whose tensor has rank < 2 (no ramp fits)")
    if not sites:
        log(
            "warning: no usable ramp site found (no cut where a single activation, plus side tensors, is live); "
            "the engine directory will have zero ramps and run the model unsplit"
        )
    for s, kinds in zip(sites, candidates):
        side = f" (+ side tensors {', '.join(s.side_tensors)})" if s.side_tensors else ""
        how = "probed" if s.tensor in probed else "shape inference"
        log(f"  site {s.id}: {s.tensor} {list(s.shape)} -> {' or '.join(kinds)}{side} (batch axis: {how})")
    return sites, candidates


def _split_and_check(
    model: onnx.ModelProto, sites: Sequence[Site], data: dict[str, np.ndarray], score_name: str, log: Log
) -> list[Segment]:
    """The finest split, checked on the first bootstrap samples to reproduce the model."""
    segments = split_model(model, sites, [s.id for s in sites])
    check = verify_chain(model, segments, take(data, slice(0, CHAIN_CHECK_SAMPLES)), score_name)
    if not check.argmax_equal:  # verify_chain raises on a real mismatch; this guards its contract
        raise ApparateError(
            f"the chained segments do not reproduce the model (argmax differs, max abs difference "
            f"{check.max_abs_diff:.3g}); "
            "the model may be non-deterministic or use an unsupported construct; please report it with the model"
        )
    log(f"  chained segments equal the model: all argmaxes equal, max abs difference {check.max_abs_diff:.3g}")
    return segments


# ----- the pipeline ----------------------------------------------------------------------------------
def compile_model(
    model_path: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    budget: float = 0.02,
    max_batch: int = 16,
    backend: str = "auto",
    seed: int = 0,
    output: str | None = None,
    force: bool = False,
    threads: int | None = None,
    log: Log = print,
    train_config: TrainConfig | None = None,
    profile_settings: ProfileSettings | None = None,
    augment: int | None = None,
    blends: int | None = None,
    fp16: bool = False,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> Manifest:
    """Compile ``model_path`` with bootstrap data ``data_path`` into the engine directory ``out_dir``.

    ``budget`` is the ramp budget as a fraction of the model's latency; ``threads`` the ORT intra-op
    threads (None: all cores); ``augment`` the near-copies of each train sample that the ramps also
    train on (``compiler.augment``; None: the ``train_config``'s setting, whose None means every copy
    for a single-image-input or token-sequence model and none otherwise); ``blends`` the blends of
    each train image with another one that they train on too (None: the ``train_config``'s setting,
    whose None means ``augment.DEFAULT_BLENDS`` for a single-image-input model and none otherwise).
    ``backend``: ``auto`` (TensorRT where this machine can build engines, else onnxruntime),
    ``onnxruntime``, ``onnxruntime-gpu`` or ``tensorrt`` (then the model, every segment and every
    ramp get an engine for this GPU under ``tensorrt/<key>/``, and the profile is measured on them);
    ``fp16``: let TensorRT 10 pick FP16 kernels (refused on TensorRT 11, see ``trt_build``);
    ``max_samples``: the bootstrap rows used at most (a seeded subsample above it, ``compiler.bootstrap``).
    Returns the manifest as read back from the written directory.
    """
    t0 = time.perf_counter()
    model_path, data_path, out_dir = Path(model_path), Path(data_path), Path(out_dir)
    check_options(budget, max_batch, threads, augment, blends)
    if not (isinstance(max_samples, int) and max_samples >= MIN_BOOTSTRAP_SAMPLES):
        raise ApparateError(f"--max-samples must be an integer >= {MIN_BOOTSTRAP_SAMPLES}; got {max_samples}")
    backend = resolve_backend(backend)
    if fp16 and backend != "tensorrt":
        raise ApparateError(
            f"--fp16 applies to TensorRT engines only; add --backend tensorrt (the backend is {backend})"
        )
    prepare_out_dir(out_dir, force)
    train_config = dataclasses.replace(train_config or TrainConfig(), seed=seed)
    if augment is not None:
        train_config = dataclasses.replace(train_config, augment_copies=augment)
    if blends is not None:
        train_config = dataclasses.replace(train_config, blend_copies=blends)
    profile_settings = profile_settings or ProfileSettings()

    log(f"[1/8] ingest {model_path}")
    model = load_model(model_path)
    inputs_info, outputs_info = model_io(model)
    score_name, num_classes = score_output(model, output)
    log(
        f"  {len(model.graph.node)} nodes; inputs: {', '.join(f'{i.name} {list(i.shape)}' for i in inputs_info)}; "
        f"score output '{score_name}' with {num_classes} classes"
    )

    log(f"[2/8] load bootstrap data {data_path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_inputs(data_path, inputs_info, min_samples=MIN_BOOTSTRAP_SAMPLES, what="bootstrap data")
    for w in caught:
        log(f"warning: {w.message}")
    log(f"  {num_samples(data)} samples")
    scratch = tempfile.TemporaryDirectory(prefix="apparate-compile-")
    try:
        return _compile_loaded(
            model,
            model_path,
            out_dir,
            inputs_info,
            outputs_info,
            score_name,
            num_classes,
            bounded_bootstrap(data, max_samples, seed, Path(scratch.name), log),
            budget,
            max_batch,
            backend,
            threads,
            fp16,
            train_config,
            profile_settings,
            log,
            t0,
        )
    finally:
        scratch.cleanup()


def _compile_loaded(
    model: onnx.ModelProto,
    model_path: Path,
    out_dir: Path,
    inputs_info: Sequence[TensorInfo],
    outputs_info: Sequence[TensorInfo],
    score_name: str,
    num_classes: int,
    data: dict[str, np.ndarray],
    budget: float,
    max_batch: int,
    backend: str,
    threads: int | None,
    fp16: bool,
    train_config: TrainConfig,
    profile_settings: ProfileSettings,
    log: Log,
    t0: float,
) -> Manifest:
    """Steps 3-8 of :func:`compile_model` on the loaded model and bootstrap rows."""
    n = num_samples(data)

    log("[3/8] find ramp sites")
    mask = find_mask_input(inputs_info)
    probed = restore_batch_axes(model, take(data, slice(0, max(PROBE_BATCHES))), threads)
    if probed:
        log(
            f"  batch axis of {len(probed)} tensors established by running the model at batch sizes "
            f"{' and '.join(map(str, PROBE_BATCHES))} (ONNX shape inference had lost it)"
        )
    sites, candidates = _usable_sites(model, mask, log, frozenset(probed))

    log(f"[4/8] split into {len(sites) + 1} segments and check the chain")
    segments = _split_and_check(model, sites, data, score_name, log)

    log(f"[5/8] train {len(sites)} ramps")
    trained, ramp_models = _train_ramps(
        model,
        inputs_info,
        sites,
        candidates,
        mask,
        data,
        score_name,
        _fixed_batch(inputs_info) or 64,
        train_config,
        threads,
        log,
    )

    fixed = _fixed_batch(inputs_info)
    batch_sizes = [fixed] if fixed else batch_sizes_up_to(max_batch)
    if fixed and fixed != max_batch:
        log(f"warning: the model's batch dimension is fixed at {fixed}; profiling only that batch size")
    ramp_inputs = [[i.name for i in m.graph.input] for m in ramp_models]
    engines = None
    if backend == "tensorrt":
        engines = _build_trt_engines(
            model, segments, ramp_models, sites, data, max(batch_sizes), serving_batch(batch_sizes), fp16, log
        )
    log(f"[6/8] profile on {backend} at batch sizes {batch_sizes}")
    prof = profile_all(
        model,
        [s.model for s in segments],
        ramp_models,
        ramp_inputs,
        data,
        batch_sizes,
        threads=threads,
        settings=profile_settings,
        log=log,
        open_model=_trt_opener(engines) if engines is not None else _onnx_opener(backend),
    )

    log("[7/8] choose the initial configuration")
    manifest = _assemble_manifest(
        model_path,
        inputs_info,
        outputs_info,
        score_name,
        num_classes,
        sites,
        ramp_inputs,
        segments,
        trained,
        prof,
        budget,
        backend,
        n,
    )
    b = serving_batch(batch_sizes)
    choice = choose_initial(
        trained.stats.confidence,
        trained.stats.agree,
        manifest.site_saved_ms(b),
        manifest.ramp_cost_ms(b),
        manifest.model_ms(b),
        budget,
        constraint=DEFAULT_TARGET_FRACTION * DEFAULT_ACCURACY_CONSTRAINT,
        boundary_ms=manifest.boundary_ms(b),
    )
    manifest.initial_config = InitialConfig(choice.active_sites, choice.thresholds)
    expected = (
        "" if choice.expected_saving_ms is None else f"; expected saving {choice.expected_saving_ms:.3f} ms per input"
    )
    log(
        f"  at batch {b} (the serving default's): latest useful site: {choice.latest_useful}; budget "
        f"{choice.budget_ms:.3f} ms; a segment boundary costs {manifest.boundary_ms(b):.3f} ms; active sites: "
        f"{choice.active_sites or 'none'}{expected}"
    )

    log(f"[8/8] write {out_dir}")
    _write_engine_dir(out_dir, manifest, model, [s.model for s in segments], ramp_models, trained.stats, engines)
    result = read_manifest(out_dir)
    log(summary_table(result, time.perf_counter() - t0))
    return result


def _build_trt_engines(
    model: onnx.ModelProto,
    segments: Sequence[Segment],
    ramp_models: Sequence[onnx.ModelProto],
    sites: Sequence[Site],
    data: dict[str, np.ndarray],
    max_batch: int,
    opt_batch: int,
    fp16: bool,
    log: Log,
) -> Path:
    """Build this GPU's engines of the model, segments and ramps into a scratch key folder (moved
    into the engine directory when it is written); returns the folder."""
    from apparate_trt.backends.trt_build import build_engine_set, machine_key, observed_shapes

    key = machine_key()
    count = 1 + len(segments) + len(ramp_models)
    log(f"[5b/8] build {count} TensorRT engines for {key.describe()} (batch 1..{max_batch}, opt {opt_batch})")
    observed = observed_shapes([s.model for s in segments], take(data, slice(0, 1)))
    files = {"model": MODEL_FILE}
    files.update({f"segment {i}": segment_file(i) for i in range(len(segments))})
    files.update({f"ramp {i}": ramp_file(i) for i in range(len(ramp_models))})
    folder = Path(tempfile.mkdtemp(prefix="apparate-trt-build-")) / key.folder
    build_engine_set(
        folder,
        key,
        model=model,
        segments=[s.model for s in segments],
        ramps=ramp_models,
        ramp_sites=[s.id for s in sites],
        onnx_files=files,
        observed=observed,
        max_batch=max_batch,
        opt_batch=opt_batch,
        fp16=fp16,
        log=log,
    )
    return folder


def _trt_opener(folder: Path) -> Callable[[str, int, onnx.ModelProto, int | None], Runner]:
    """Opens the profiler's runners on the engines built into ``folder``."""
    from apparate_trt.backends.trt_layout import MODEL_ENGINE, ramp_engine, segment_engine

    def open_model(kind: str, index: int, model: onnx.ModelProto, threads: int | None) -> Runner:
        file = {"model": MODEL_ENGINE, "segment": segment_engine(index), "ramp": ramp_engine(index)}[kind]
        return open_runner(folder / file, backend="tensorrt", name=f"{kind} {index}")

    return open_model


def _onnx_opener(backend: str) -> Callable[[str, int, onnx.ModelProto, int | None], Runner]:
    """Opens the profiler's runners on ONNX Runtime (CPU, or CUDA for ``onnxruntime-gpu``)."""

    def open_model(kind: str, index: int, model: onnx.ModelProto, threads: int | None) -> Runner:
        return open_runner(model, backend=backend, threads=threads, name=f"{kind} {index}")

    return open_model


def _train_ramps(
    model: onnx.ModelProto,
    inputs_info: Sequence[TensorInfo],
    sites: Sequence[Site],
    candidates: Sequence[list[str]],
    mask: TensorInfo | None,
    data: dict[str, np.ndarray],
    score_name: str,
    batch_size: int,
    config: TrainConfig,
    threads: int | None,
    log: Log,
) -> tuple[TrainResult, list[onnx.ModelProto]]:
    """Learn the per-position stages, collect features, train every ramp, export each as ONNX and
    check it against numpy."""
    passes = {"mask": mask.name if mask else None, "batch_size": batch_size, "threads": threads, "log": log}
    stages = learn_prestages(
        model, sites, candidates, data, score_name, seed=config.seed, config=config.prestage, **passes
    )
    features = collect_features(model, sites, candidates, data, score_name, prestages=stages, **passes)
    extra = _copies_features(
        model, inputs_info, sites, candidates, mask, data, score_name, batch_size, config, threads, log, stages
    )
    # one torch thread: the heads are tiny, and extra (spin-waiting) threads only slow them down
    trained = train_ramps(features, config, extra=extra, threads=1, log=log)
    ramp_models = []
    for site, ramp, example in zip(sites, trained.ramps, features.examples):
        masked = ramp.kind in MASKED_KINDS
        onnx_ramp = build_ramp_onnx(site, ramp.kind, ramp.weights, mask if masked else None)
        check_ramp(onnx_ramp, ramp.kind, ramp.weights, example, features.mask_example if masked else None, threads=1)
        ramp_models.append(onnx_ramp)
    return trained, ramp_models


NO_COPIES_FROM = 4000
"""From this many bootstrap samples on, no near-copies or blends are made unless asked for
(``--augment``, ``--blends``): they stand in for real samples where there are few, and with many
they only multiply the compile's time and memory."""


def _copies_features(
    model: onnx.ModelProto,
    inputs_info: Sequence[TensorInfo],
    sites: Sequence[Site],
    candidates: Sequence[list[str]],
    mask: TensorInfo | None,
    data: dict[str, np.ndarray],
    score_name: str,
    batch_size: int,
    config: TrainConfig,
    threads: int | None,
    log: Log,
    stages: PreStages | None = None,
) -> Features | None:
    """Features of near-copies and blends of the train samples (``compiler.augment``), or None when there are none."""
    spec = image_input(inputs_info)
    edited = token_inputs(inputs_info, mask)
    large = num_samples(data) >= NO_COPIES_FROM
    copies = (
        (0 if large else default_copies(inputs_info, mask)) if config.augment_copies is None else config.augment_copies
    )
    blends = (0 if large else default_blends(inputs_info)) if config.blend_copies is None else config.blend_copies
    if spec is None:
        if config.blend_copies:
            log(
                f"  --blends {config.blend_copies} ignored: only a model whose one input is a float image [N, C, "
                f"H, W] gets blends"
            )
        blends = 0
    if copies == 0 and blends == 0:
        return None
    if spec is None and edited is None:
        log(
            "  no near-copies: the model's input is neither a single float image [N, C, H, W] nor token sequences "
            "with an attention mask"
        )
        return None
    train_idx, _ = bootstrap_split(num_samples(data), config)
    train = take(data, train_idx)
    if spec is not None:
        inputs, names = augmented_inputs(train, spec, copies)
    else:
        inputs, names = token_copies(train, edited, mask, copies, seed=config.seed)
    source = np.tile(train_idx, copies)
    partner = source
    if blends:
        mixed, partner_pos = blended_inputs(train, spec, blends, seed=config.seed)
        inputs = {spec.name: np.concatenate([inputs[spec.name], mixed[spec.name]])}
        source = np.concatenate([source, np.tile(train_idx, blends)])
        partner = np.concatenate([partner, train_idx[partner_pos]])
        names.append(f"{blends} blends with another sample")
    log(f"  near-copies of {train_idx.size} samples to train on too: {', '.join(names)}")
    extra = collect_features(
        model,
        sites,
        candidates,
        inputs,
        score_name,
        mask=mask.name if mask else None,
        batch_size=batch_size,
        threads=threads,
        example_rows=0,
        prestages=stages,
        log=log,
    )
    extra.source = source
    extra.partner = partner if blends else None
    return extra


def _assemble_manifest(
    model_path: Path,
    inputs_info: Sequence[TensorInfo],
    outputs_info: Sequence[TensorInfo],
    score_name: str,
    num_classes: int,
    sites: Sequence[Site],
    ramp_inputs: Sequence[list[str]],
    segments: Sequence[Segment],
    trained: TrainResult,
    prof: ProfileResult,
    budget: float,
    backend: str,
    num_samples: int,
) -> Manifest:
    """The manifest of everything computed (the initial configuration is filled in later)."""
    model_b1 = prof.model_ms[0]
    depths = _depths([row[0] for row in prof.segments_ms], len(sites))
    return Manifest(
        model=ModelInfo(
            file=MODEL_FILE,
            name=model_path.stem,
            sha256=file_sha256(model_path),
            inputs=[_spec(i) for i in inputs_info],
            outputs=[_spec(o) for o in outputs_info],
            output=score_name,
            num_classes=num_classes,
        ),
        sites=[
            SiteEntry(
                s.id,
                s.tensor,
                list(s.side_tensors),
                [d if isinstance(d, (int, str)) else None for d in s.shape],
                int(s.node_index),
                depth,
            )
            for s, depth in zip(sites, depths)
        ],
        segments=[
            SegmentEntry(segment_file(i), list(seg.inputs), list(seg.outputs), seg.ends_at_site)
            for i, seg in enumerate(segments)
        ],
        ramps=[
            RampEntry(
                site=s.id,
                file=ramp_file(i),
                inputs=list(names),
                output=RAMP_OUTPUT,
                kind=r.kind,
                num_classes=num_classes,
                agreement=r.agreement,
                cost_ms=prof.ramps_ms[i][0],
                cost_fraction=prof.ramps_ms[i][0] / model_b1,
                features=RAMP_FEATURES,
            )
            for i, (s, names, r) in enumerate(zip(sites, ramp_inputs, trained.ramps))
        ],
        profiles=Profiles(
            backend, prof.threads, prof.batch_sizes, prof.model_ms, prof.segments_ms, prof.ramps_ms, prof.ramp_threads
        ),
        budget=float(budget),
        initial_config=InitialConfig([], []),
        bootstrap=BootstrapInfo(
            BOOTSTRAP_FILE,
            num_samples,
            int(trained.train_index.size),
            int(trained.heldout_index.size),
            folds=trained.folds,
        ),
        tools=tool_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def summary_table(m: Manifest, compile_s: float) -> str:
    """The final compile summary: per site its ramp's agreement and cost, segment latencies, totals."""
    b = m.profiles.batch_sizes[0]
    seg_ms = m.segment_ms(b)
    model_ms = m.model_ms(b)
    active = set(m.initial_config.active_sites)
    width = max([22, *(len(s.tensor) for s in m.sites)])
    lines = [
        f"summary for {m.model.name} ({m.model.num_classes} classes) on {m.profiles.backend}, latencies at batch {b}:",
        f"{'site':>4}  {'tensor':<{width}}  {'shape':<18}  {'depth':>5}  {'ramp kind':<26}  "
        f"{'agree':>6}  {'cost ms':>8}  {'cost %':>6}  {'segment ms':>10}  active",
    ]
    for s, r in zip(m.sites, m.ramps):
        shape = "[" + ",".join(str(d) for d in s.shape) + "]"
        lines.append(
            f"{s.id:>4}  {s.tensor:<{width}}  {shape:<18}  {s.depth or 0:>5.2f}  {r.kind:<26}  "
            f"{r.agreement:>6.3f}  {r.cost_ms:>8.3f}  {100 * r.cost_fraction:>5.2f}%  {seg_ms[s.id]:>10.3f}  "
            f"{'*' if s.id in active else ''}"
        )
    lines.append(
        f"{'tail':>4}  {'(to the model outputs)':<{width}}  {'':<18}  {1.0:>5.2f}  {'':<26}  "
        f"{'':>6}  {'':>8}  {'':>6}  {seg_ms[-1]:>10.3f}"
    )
    lines.append(
        f"model {model_ms:.3f} ms (segments chained {seg_ms.sum():.3f} ms); budget {100 * m.budget:.1f}% = "
        f"{m.budget * model_ms:.3f} ms; "
        f"{len(m.sites)} sites; initial active sites: {', '.join(map(str, sorted(active))) or 'none'}"
    )
    if m.bootstrap.folds >= 2:
        lines.append(
            f"bootstrap: {m.bootstrap.num_samples} samples, {m.bootstrap.folds}-fold cross-fitted (every sample's "
            "statistics from a ramp trained without it; the exported ramps trained on all)"
        )
    else:
        lines.append(
            f"bootstrap: {m.bootstrap.num_samples} samples ({m.bootstrap.num_train} train, "
            f"{m.bootstrap.num_heldout} held out)"
        )
    lines.append(f"compile time: {compile_s:.1f} s")
    return "\n".join(lines)
