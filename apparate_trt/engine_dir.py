"""The engine directory: its manifest schema (docs/ENGINE_DIR.md), reading and writing.

``apparate-compile`` writes an engine directory with :func:`write_manifest`; everything that reads
one (the runtime, the API, tests) goes through :func:`read_manifest`, which validates the directory
and returns a :class:`Manifest` whose attributes mirror ``manifest.json``. Latencies are in ms,
shares and fractions in 0..1.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from apparate_trt.errors import ApparateError
from apparate_trt.manifest_schema import MANIFEST_SCHEMA

_VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)(MANIFEST_SCHEMA)
"""Checks a parsed manifest against its schema (built once); an ``integer`` is a JSON number
without a fraction part *written as one* (``10``, not ``10.0``), as the writer writes them."""

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
"""The largest ``manifest.json`` read (bytes, 16 MiB): a real one is a few KiB to a few hundred KiB
(its size grows with sites and profiled batch sizes), so anything larger is corrupt or hostile and is
refused before it is read into memory."""
RAMP_KINDS = (
    "conv_gap_mlp",
    "conv_grid2_mlp",
    "conv_grid4_mlp",
    "conv_gap_linear",
    "conv_grid2_linear",
    "conv_grid4_linear",
    "seq_cls_dense_tanh_linear",
    "seq_mean_dense_tanh_linear",
    "dense_linear",
    "conv_bottleneck_gap_mlp",
    "conv_bottleneck_grid2_mlp",
    "seq_token_mean_mlp",
    "seq_token_avg_mlp",
)
BOOTSTRAP_ARRAYS = ("confidence", "ramp_pred", "final_pred", "agree")

_RECOMPILE = "recompile it with: apparate-compile MODEL.onnx --data BOOTSTRAP.npz --out DIR --force"

Dim = int | str | None


@dataclass
class TensorSpec:
    """A named tensor: ``dtype`` a numpy name (``float32``), ``shape`` ints or symbolic names."""

    name: str
    dtype: str
    shape: list[Dim]


@dataclass
class ModelInfo:
    """The original model: its file in the directory, hash, inputs/outputs and score output."""

    file: str
    name: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output: str
    num_classes: int


@dataclass
class SiteEntry:
    """A candidate ramp site (a cut); ``depth`` is the fraction of model latency before it."""

    id: int
    tensor: str
    side_tensors: list[str]
    shape: list[Dim]
    node_index: int
    depth: float | None = None


@dataclass
class SegmentEntry:
    """One segment of the finest split; ``ends_at_site`` is None for the last segment."""

    file: str
    inputs: list[str]
    outputs: list[str]
    ends_at_site: int | None


@dataclass
class RampEntry:
    """The ramp at one site: its ONNX file, held-out agreement (0..1) and batch-1 cost."""

    site: int
    file: str
    inputs: list[str]
    output: str
    kind: str
    num_classes: int
    agreement: float
    cost_ms: float
    cost_fraction: float
    features: str | None = None
    """The ramp graph's pooled-features output (``features``), which refits learn from; None in
    engine directories compiled before it (their ramps run, but are never refitted)."""
    refit: dict[str, Any] | None = None
    """Where a refitted ramp came from (``apparate-run --save-ramps``): the compiled file it
    replaced, the requests served and samples it learned from, its releasable share and agreement
    on held-out served samples before and after; None for a ramp as compiled."""


@dataclass
class Profiles:
    """Median latencies (ms) per batch size on one backend; ``threads`` are ORT intra-op threads
    of the model and segment sessions, ``ramp_threads`` those of the ramp sessions."""

    backend: str
    threads: int | None
    batch_sizes: list[int]
    model_ms: list[float]
    segments_ms: list[list[float]]
    ramps_ms: list[list[float]]
    ramp_threads: int = 1


@dataclass
class InitialConfig:
    """Active ramps to start with and their thresholds (0.0: never exit)."""

    active_sites: list[int]
    thresholds: list[float]


@dataclass
class BootstrapInfo:
    """Where the held-out bootstrap statistics are and how the bootstrap data was split."""

    file: str
    num_samples: int
    num_train: int
    num_heldout: int
    folds: int = 0
    """>= 2: the statistics are cross-fitted (``folds`` folds: every sample's ramp outputs come from
    a ramp trained without it, and ``num_heldout == num_samples``); 0: one train/held-out split."""


@dataclass
class BootstrapStats:
    """Held-out bootstrap statistics (``N`` samples, ``S`` sites), see docs/ENGINE_DIR.md."""

    confidence: np.ndarray  # float32 [N, S]
    ramp_pred: np.ndarray  # int32 [N, S]
    final_pred: np.ndarray  # int32 [N]
    agree: np.ndarray  # uint8 [N, S]


@dataclass
class Manifest:
    """``manifest.json`` as Python objects; ``root`` is the directory it was read from (or None)."""

    model: ModelInfo
    sites: list[SiteEntry]
    segments: list[SegmentEntry]
    ramps: list[RampEntry]
    profiles: Profiles
    budget: float
    initial_config: InitialConfig
    bootstrap: BootstrapInfo
    tools: dict[str, str | None]
    created: str
    format_version: int = FORMAT_VERSION
    file_sha256: dict[str, str] = field(default_factory=dict)
    """Hex SHA-256 of every file the manifest names, by relative path (written by
    :func:`write_manifest`; checked by :func:`read_manifest`). Empty in directories from before."""
    root: Path | None = field(default=None, compare=False, repr=False)

    # ----- files -------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        """Absolute path of a file named in the manifest (paths there are relative to the dir)."""
        if self.root is None:
            raise ValueError("this manifest was not read from a directory; its paths have no root")
        return self.root / rel

    def referenced_files(self) -> list[str]:
        """Every file the manifest names, relative to the directory."""
        return [rel for _, rel in self.named_files()]

    def named_files(self) -> list[tuple[str, str]]:
        """``(manifest entry, relative path)`` of every file the manifest names."""
        return [
            ("model.file", self.model.file),
            *((f"segments[{i}].file", s.file) for i, s in enumerate(self.segments)),
            *((f"ramps[{i}].file", r.file) for i, r in enumerate(self.ramps)),
            ("bootstrap.file", self.bootstrap.file),
        ]

    def load_bootstrap_stats(self) -> BootstrapStats:
        """The held-out bootstrap statistics (``bootstrap_stats.npz``)."""
        with np.load(self.path(self.bootstrap.file), allow_pickle=False) as npz:
            return BootstrapStats(**{name: npz[name] for name in BOOTSTRAP_ARRAYS})

    # ----- latencies ---------------------------------------------------------------------------
    def model_ms(self, batch_size: int) -> float:
        """The unsplit model's latency (ms) at ``batch_size``, interpolated between profiled sizes."""
        return float(interpolate_ms(self.profiles.batch_sizes, self.profiles.model_ms, batch_size))

    def segment_ms(self, batch_size: int) -> np.ndarray:
        """Latency (ms) of every finest segment at ``batch_size``: float64 [len(segments)]."""
        return np.array([interpolate_ms(self.profiles.batch_sizes, ms, batch_size) for ms in self.profiles.segments_ms])

    def ramp_cost_ms(self, batch_size: int) -> np.ndarray:
        """Latency (ms) each ramp adds at ``batch_size``: float64 [len(ramps)], indexed like ``ramps``."""
        return np.array([interpolate_ms(self.profiles.batch_sizes, ms, batch_size) for ms in self.profiles.ramps_ms])

    def boundary_ms(self, batch_size: int) -> float:
        """Latency (ms) one segment boundary adds at ``batch_size``, ramp aside: the finest split's
        chained segments minus the unsplit model, per boundary (one per site), at least 0.

        On CPU a boundary costs a session call and the layout conversions at its ends; an active
        ramp's site must be a boundary, so its ramp only pays when its exits cover both.
        """
        if not self.sites:
            return 0.0
        extra = float(self.segment_ms(batch_size).sum()) - self.model_ms(batch_size)
        return max(0.0, extra / len(self.sites))

    def site_reached_ms(self, batch_size: int) -> np.ndarray:
        """Latency (ms) from batch start to the end of the segment ending at each site: [len(sites)]."""
        cumulative = np.cumsum(self.segment_ms(batch_size))
        index = {seg.ends_at_site: i for i, seg in enumerate(self.segments)}
        return np.array([cumulative[index[site.id]] for site in self.sites], dtype=np.float64)

    def site_saved_ms(self, batch_size: int) -> np.ndarray:
        """Latency (ms) saved by exiting at each site: model_ms - time to reach it, at least 0."""
        return np.maximum(self.model_ms(batch_size) - self.site_reached_ms(batch_size), 0.0)

    def to_json(self) -> dict[str, Any]:
        """The manifest as the JSON object written to ``manifest.json``."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "root"}
        data = {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in data.items()}
        for key in ("sites", "segments", "ramps"):
            data[key] = [asdict(item) for item in getattr(self, key)]
        ordered = {"format_version": data.pop("format_version")}
        ordered.update(data)
        return ordered


def interpolate_ms(batch_sizes: list[int], values_ms: list[float], batch_size: int) -> float:
    """Latency (ms) at ``batch_size``: linear between profiled sizes, proportional beyond the largest.

    Below the smallest profiled size the smallest size's latency is used (latency does not drop
    below the batch-1 cost).
    """
    sizes = np.asarray(batch_sizes, dtype=np.float64)
    values = np.asarray(values_ms, dtype=np.float64)
    if batch_size > sizes[-1]:
        return float(values[-1] * batch_size / sizes[-1])
    return float(np.interp(batch_size, sizes, values))


# ----- writing -----------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` into ``directory`` (atomically) and return its path. The hash of
    every named file present in ``directory`` is recorded in ``file_sha256``."""
    directory = Path(directory)
    target = directory / MANIFEST_NAME
    manifest.file_sha256 = {
        rel: file_sha256(directory / rel) for rel in manifest.referenced_files() if (directory / rel).is_file()
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest.to_json(), fh, indent=2)
        fh.write("\n")
    os.replace(tmp, target)
    return target


def write_bootstrap_stats(path: str | Path, stats: BootstrapStats) -> None:
    """Write the held-out bootstrap statistics as ``.npz`` with the dtypes of docs/ENGINE_DIR.md."""
    np.savez(
        path,
        confidence=np.asarray(stats.confidence, dtype=np.float32),
        ramp_pred=np.asarray(stats.ramp_pred, dtype=np.int32),
        final_pred=np.asarray(stats.final_pred, dtype=np.int32),
        agree=np.asarray(stats.agree, dtype=np.uint8),
    )


# ----- reading -----------------------------------------------------------------------------------
def is_engine_dir(directory: str | Path) -> bool:
    """True if ``directory`` holds a ``manifest.json`` (whatever its state)."""
    return (Path(directory) / MANIFEST_NAME).is_file()


def read_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Read and validate the engine directory's manifest; ApparateError says what is wrong.

    Every path the manifest names must lie inside the directory (no absolute paths, no ``..``,
    no symbolic link out of it). With ``verify`` (the default) every file is checked at once, so a
    damaged directory fails here and not when a site is first activated: each file against its
    hash in ``file_sha256`` (the model's copy too; ``model.sha256`` is the source file's hash), and
    in a directory written before those hashes each ONNX file is parsed."""
    directory = Path(directory)
    if not directory.exists():
        raise ApparateError(
            f"engine directory '{directory}' does not exist; create it with: apparate-compile MODEL.onnx --data "
            f"BOOTSTRAP.npz --out {directory}"
        )
    if not directory.is_dir():
        raise ApparateError(
            f"'{directory}' is a file, not an engine directory; pass the directory written by apparate-compile --out"
        )
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ApparateError(
            f"'{directory}' is not an engine directory (it has no {MANIFEST_NAME}); pass the directory written by "
            f"apparate-compile --out, or {_RECOMPILE}"
        )
    data = _load_json(manifest_path)
    _check_version(data, manifest_path)
    manifest = _parse(data, manifest_path)
    manifest.root = directory.resolve()
    _check_consistency(manifest, manifest_path)
    _check_paths_inside(manifest, manifest.root, manifest_path)
    _check_files(manifest, directory)
    if verify:
        _check_hashes(manifest, manifest.root)
    return manifest


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)  # never more than the cap, whatever the file's size
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ApparateError(
                f"{path} is over {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB, the limit for a manifest (a real one is "
                f"a few KiB); the engine directory is corrupt, {_RECOMPILE}"
            )
        data = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise ApparateError(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); the engine directory is corrupt, {_RECOMPILE}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ApparateError(f"cannot read {path} ({exc}); check its permissions, or {_RECOMPILE}") from None
    if not isinstance(data, dict):
        raise ApparateError(
            f"{path} holds a JSON {type(data).__name__}, not an object; the engine directory is corrupt, {_RECOMPILE}"
        )
    return data


def _check_version(data: dict[str, Any], path: Path) -> None:
    version = data.get("format_version")
    if version is None:
        raise ApparateError(f"{path} has no 'format_version'; the engine directory is corrupt, {_RECOMPILE}")
    if version != FORMAT_VERSION:
        raise ApparateError(
            f"{path} has format_version {version!r}, but this version of apparate_trt reads only "
            f"format_version {FORMAT_VERSION}; recompile with this version of apparate-compile"
        )


def _schema_error(data: dict[str, Any]) -> str | None:
    """The JSON path and message of the manifest's first departure from MANIFEST_SCHEMA, or None."""
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(data))
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    if error.validator == "required":  # name the missing key itself, not its parent
        missing = next((k for k in error.validator_value if k not in error.instance), "")
        where = f"{where}.{missing}" if where else missing
        return f"'{where}' is missing"
    return f"'{where}' is bad ({error.message})"


def _tensor(obj: dict[str, Any]) -> TensorSpec:
    return TensorSpec(obj["name"], obj["dtype"], list(obj["shape"]))


def _parse(data: dict[str, Any], path: Path) -> Manifest:
    unknown = sorted(set(data) - set(MANIFEST_SCHEMA["properties"]))
    if unknown:
        names = ", ".join(repr(k if len(k) <= 40 else k[:37] + "...") for k in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ApparateError(
            f"{path} has unknown top-level key(s) {names}{more}; the engine directory is corrupt or from "
            f"another tool, {_RECOMPILE}"
        )
    problem = _schema_error(data)
    if problem is not None:
        raise ApparateError(f"{path}: {problem}; the engine directory is corrupt or from another tool, {_RECOMPILE}")
    model, profiles, initial, boot = data["model"], data["profiles"], data["initial_config"], data["bootstrap"]
    return Manifest(
        format_version=data["format_version"],
        model=ModelInfo(
            file=model["file"],
            name=model["name"],
            sha256=model["sha256"],
            inputs=[_tensor(t) for t in model["inputs"]],
            outputs=[_tensor(t) for t in model["outputs"]],
            output=model["output"],
            num_classes=model["num_classes"],
        ),
        sites=[
            SiteEntry(s["id"], s["tensor"], list(s["side_tensors"]), list(s["shape"]), s["node_index"], s["depth"])
            for s in data["sites"]
        ],
        segments=[
            SegmentEntry(s["file"], list(s["inputs"]), list(s["outputs"]), s["ends_at_site"]) for s in data["segments"]
        ],
        ramps=[
            RampEntry(
                site=r["site"],
                file=r["file"],
                inputs=list(r["inputs"]),
                output=r["output"],
                kind=r["kind"],
                num_classes=r["num_classes"],
                agreement=float(r["agreement"]),
                cost_ms=float(r["cost_ms"]),
                cost_fraction=float(r["cost_fraction"]),
                features=r.get("features"),
                refit=r.get("refit"),
            )
            for r in data["ramps"]
        ],
        profiles=Profiles(
            backend=profiles["backend"],
            threads=profiles["threads"],
            batch_sizes=[int(b) for b in profiles["batch_sizes"]],
            model_ms=[float(v) for v in profiles["model_ms"]],
            segments_ms=[[float(v) for v in row] for row in profiles["segments_ms"]],
            ramps_ms=[[float(v) for v in row] for row in profiles["ramps_ms"]],
            ramp_threads=int(profiles.get("ramp_threads", 1)),
        ),
        budget=float(data["budget"]),
        initial_config=InitialConfig(
            active_sites=[int(s) for s in initial["active_sites"]],
            thresholds=[float(t) for t in initial["thresholds"]],
        ),
        bootstrap=BootstrapInfo(
            file=boot["file"],
            num_samples=boot["num_samples"],
            num_train=boot["num_train"],
            num_heldout=boot["num_heldout"],
            folds=int(boot.get("folds", 0)),
        ),
        tools=dict(data["tools"]),
        created=data["created"],
        file_sha256={str(k): str(v) for k, v in data.get("file_sha256", {}).items()},
    )


def _check_consistency(m: Manifest, path: Path) -> None:
    """Cross-field checks: counts and ids agree, so that the runtime can index without surprises."""
    problems: list[str] = []
    n_sites, n_batches = len(m.sites), len(m.profiles.batch_sizes)
    if [s.id for s in m.sites] != list(range(n_sites)):
        problems.append("site ids are not 0..n-1 in order")
    if len(m.segments) != n_sites + 1:
        problems.append(f"{len(m.segments)} segments for {n_sites} sites (expected {n_sites + 1})")
    elif [s.ends_at_site for s in m.segments] != [*range(n_sites), None]:
        problems.append("segments do not end at sites 0..n-1 and then the model's end")
    if [r.site for r in m.ramps] != list(range(n_sites)):
        problems.append(f"ramps are not one per site in order ({len(m.ramps)} ramps, {n_sites} sites)")
    if any(r.kind not in RAMP_KINDS for r in m.ramps):
        problems.append(f"a ramp kind is not one of {', '.join(RAMP_KINDS)}")
    if n_batches == 0 or m.profiles.batch_sizes != sorted(set(m.profiles.batch_sizes)):
        problems.append("profiles.batch_sizes is empty or not increasing")
    if len(m.profiles.model_ms) != n_batches:
        problems.append("profiles.model_ms does not have one entry per batch size")
    for key, rows, count in (
        ("segments_ms", m.profiles.segments_ms, len(m.segments)),
        ("ramps_ms", m.profiles.ramps_ms, len(m.ramps)),
    ):
        if len(rows) != count or any(len(row) != n_batches for row in rows):
            problems.append(f"profiles.{key} is not one list per {key[:-4]} with one entry per batch size")
    if any(not 0 <= s < n_sites for s in m.initial_config.active_sites):
        problems.append("initial_config.active_sites names an unknown site")
    if len(m.initial_config.thresholds) != len(m.initial_config.active_sites):
        problems.append("initial_config.thresholds does not match active_sites")
    if m.model.output not in [t.name for t in m.model.outputs]:
        problems.append(f"model.output '{m.model.output}' is not one of model.outputs")
    else:
        classes = next(t for t in m.model.outputs if t.name == m.model.output).shape[-1:]
        if m.model.num_classes < 1 or (classes and isinstance(classes[0], int) and classes[0] != m.model.num_classes):
            problems.append(
                f"model.num_classes {m.model.num_classes} is not the score output's class axis "
                f"{classes[0] if classes else '?'}"
            )
    if any(r.num_classes != m.model.num_classes for r in m.ramps):
        problems.append("a ramp's num_classes differs from the model's")
    if any(
        v < 0 or v != v for v in [*m.profiles.model_ms, *sum(m.profiles.segments_ms, []), *sum(m.profiles.ramps_ms, [])]
    ):
        problems.append("a profiled latency is negative or NaN")
    if problems:
        raise ApparateError(f"{path} is inconsistent: {'; '.join(problems)}; {_RECOMPILE}")


def _check_paths_inside(m: Manifest, root: Path, path: Path) -> None:
    """ApparateError naming the first manifest entry whose path leaves the directory."""
    for entry, rel in m.named_files():
        if not rel or "\0" in rel or Path(rel).is_absolute():
            target = None
        else:
            target = (root / rel).resolve()
        if target is None or (target != root and root not in target.parents):
            raise ApparateError(
                f"{path}: {entry} '{rel}' is outside the engine directory; every file it names must be "
                f"a relative path inside it. The directory is corrupt or not to be trusted, {_RECOMPILE}"
            )


def _check_hashes(m: Manifest, root: Path) -> None:
    """ApparateError naming the first file whose content is not what the manifest recorded."""
    expected = m.file_sha256
    for entry, rel in m.named_files():
        want = expected.get(rel)
        if expected and want is None:
            raise ApparateError(
                f"engine directory '{root}': {rel} ({entry}) has no SHA-256 in {MANIFEST_NAME}'s file_sha256; "
                f"the manifest was edited, {_RECOMPILE}"
            )
        if want is not None:
            if file_sha256(root / rel) != want:
                raise ApparateError(
                    f"engine directory '{root}': {rel} ({entry}) does not match its SHA-256 in {MANIFEST_NAME}; "
                    f"the file was changed or damaged, {_RECOMPILE}"
                )
        elif rel.endswith(".onnx"):
            _check_onnx_parses(root / rel, entry)


def _check_onnx_parses(path: Path, entry: str) -> None:
    import onnx

    try:
        onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds on damaged bytes
        raise ApparateError(
            f"engine directory file {path} ({entry}) is not a valid ONNX model ({type(exc).__name__}); "
            f"the file was changed or damaged, {_RECOMPILE}"
        ) from None


def _check_files(m: Manifest, directory: Path) -> None:
    missing = [rel for rel in m.referenced_files() if not (directory / rel).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ApparateError(
            f"engine directory '{directory}' is missing {missing[0]}{more} (named in {MANIFEST_NAME}); {_RECOMPILE}"
        )
