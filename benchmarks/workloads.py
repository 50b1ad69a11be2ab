"""Workloads, systems and measurements of issue 4's benchmark (``benchmarks/run_workloads.py``).

A *workload* is a stream of samples (an ``.npz`` of one real model's inputs), an arrival process
and the engine directory it is served from (compiled from the model's ``bootstrap.npz``, the
stream's first 10%). A *system* is one way of serving it through the same API and batching:
``vanilla``, ``apparate`` (adaptive controller, default settings) and the fixed baselines of
:mod:`apparate_trt.eval.policies`. Every number comes from real, timed serving on this machine:
latency is first release minus scheduled arrival (``apparate_trt.eval.replay``), throughput at
saturation is the completion rate of a burst of back-to-back full batches.

Latencies in ms, rates and throughput in requests per second (rps).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt.compiler.bootstrap import DEFAULT_MAX_SAMPLES
from apparate_trt.data import load_inputs, take
from apparate_trt.defaults import DEFAULT_AUDIT_RATE, DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY_MS
from apparate_trt.engine_dir import Manifest, file_sha256, read_manifest
from apparate_trt.errors import ApparateError
from apparate_trt.eval import policies
from apparate_trt.eval.arrivals import fixed_arrivals, poisson_arrivals
from apparate_trt.eval.replay import ReplayResult, replay, replay_controller_options
from apparate_trt.eval.report import build_report
from apparate_trt.runtime.api import Engine, load
from apparate_trt.runtime.gc_freeze import freeze_after_load, unfreeze

Log = Callable[[str], None]

SYSTEMS = (
    "vanilla",
    "apparate",
    "apparate-skip",
    "static-shared",
    "static-per-ramp",
    "patience",
    "oracle",
    "oracle-skip",
)
APPARATE_SYSTEMS = ("apparate", "apparate-skip", "apparate-auto", "apparate-no-fallback", "apparate-skip-fallback")
"""The systems served by the adaptive controller (no fixed policy); ``-skip``: exit mode skip,
``-auto``: exit mode auto."""
ABLATIONS = ("apparate-auto", "apparate-no-fallback", "apparate-skip-fallback")
"""Systems run only when named (``--systems``): apparate in exit mode auto, apparate (release)
without its overload fallback, apparate-skip with it (the API's default is the fallback in
release mode only)."""
SKIP_SYSTEMS = ("apparate-skip", "apparate-skip-fallback", "oracle-skip")
"""Systems whose released rows leave the batch (``exit_mode="skip"``)."""


def exit_mode_of(system: str) -> str:
    """The exit mode a system is served in: skip for :data:`SKIP_SYSTEMS`, auto for apparate-auto."""
    return "skip" if system in SKIP_SYSTEMS else "auto" if system == "apparate-auto" else "release"


CONSTRAINT = 0.01
WINDOW = 256
WARM_UP_BATCHES = 3
"""Full batches each engine runs before it is measured."""
MAX_BATCH, MAX_DELAY_MS = (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DELAY_MS,
)  # the API's defaults: the same batching for every system
BURST_MAX = 1000  # below the API's default queue size (1024): a burst is never refused
BURST_S = 1.75
"""About how long (s) one saturation burst lasts at vanilla's capacity: a burst holds
``capacity x BURST_S`` requests (:func:`burst_size`), about 800 on the CV model and 180 on the NLP
model, so that a slow model's bursts do not dominate the run time."""
CAPACITY_PROBE = 200
"""Requests of the first burst that estimates vanilla's capacity, before the bursts are sized."""
BURST_ROUNDS = 5
"""Saturation bursts per system and repeat, in rounds over every system (order rotated per round).
A system's throughput is their median; its ratio to vanilla's is the median of the per-round
ratios (:func:`paired_ratio`): one burst swings by 10-20% on a shared 2-core machine, and bursts
of one round run seconds apart."""


@dataclass(frozen=True)
class Workload:
    """One benchmark workload: ``model`` (``cv`` or ``nlp``) names the data and engine directory."""

    name: str
    model: str
    stream: str  # file name of the served stream in the model's data directory
    arrivals: str  # ``fixed`` or ``poisson``
    rate_fraction: float  # of vanilla's measured capacity
    description: str
    max_stream_s: float = 30.0
    """Serve at most this many seconds of the stream's arrivals (0: the whole stream)."""
    repeats: int = 2
    """Repeats of every system in a full run."""

    def stream_path(self, data_root: Path) -> Path:
        """The stream's ``.npz``."""
        return data_root / self.model / self.stream


WORKLOADS = (
    Workload(
        "cv-fixed",
        "cv",
        "eval.npz",
        "fixed",
        0.5,
        "EfficientNet-Lite0 / Fashion-MNIST test images, fixed-rate arrivals (a camera feed) at half of vanilla's "
        "capacity",
    ),
    Workload(
        "cv-poisson",
        "cv",
        "eval.npz",
        "poisson",
        0.5,
        "EfficientNet-Lite0 / Fashion-MNIST test images, Poisson arrivals at half of vanilla's capacity",
    ),
    Workload(
        "nlp-poisson",
        "nlp",
        "eval.npz",
        "poisson",
        0.5,
        "MiniLM / Rotten Tomatoes held-out snippets, Poisson arrivals at half of vanilla's capacity",
    ),
    Workload(
        "drift",
        "cv",
        "drift.npz",
        "poisson",
        0.5,
        "CV drift stream (normal, class mix change, degraded images, normal again), Poisson at half of vanilla's "
        "capacity",
        max_stream_s=0.0,
        repeats=1,
    ),  # served whole, so that every phase is seen; once, to bound the run time
)


# ------------------------------------------------------------------------------ engines
def compiler_fingerprint() -> str:
    """SHA-256 over the compiler's source files: an engine compiled by other compiler code is stale."""
    import apparate_trt.compiler as compiler

    digest = hashlib.sha256()
    for path in sorted(Path(compiler.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _fingerprint_file(engine_dir: Path) -> Path:
    return engine_dir.with_name(engine_dir.name + ".compiler-sha256")


def cached_engine_ok(engine_dir: Path, model: Path, bootstrap_samples: int) -> bool:
    """True when ``engine_dir`` is a valid engine directory compiled from ``model`` (same SHA-256)
    with ``bootstrap_samples`` bootstrap samples by this compiler code (:func:`compiler_fingerprint`,
    kept beside the directory)."""
    try:
        manifest = read_manifest(engine_dir)
        fingerprint = _fingerprint_file(engine_dir).read_text().strip()
    except (ApparateError, OSError):
        return False
    return (
        manifest.model.sha256 == file_sha256(model)
        and manifest.bootstrap.num_samples == bootstrap_samples
        and fingerprint == compiler_fingerprint()
    )


def ensure_engine(data_dir: Path, engine_dir: Path, threads: int | None, log: Log) -> Manifest:
    """The engine directory for ``data_dir`` (``model.onnx`` + ``history.npz``, the model's unlabeled
    history of inputs, or ``bootstrap.npz`` where there is none): reused from ``engine_dir`` when it
    matches, else compiled there with ``compile_model`` (max batch 8)."""
    model, bootstrap = data_dir / "model.onnx", data_dir / "history.npz"
    if not bootstrap.is_file():
        bootstrap = data_dir / "bootstrap.npz"
    for path in (model, bootstrap):
        if not path.is_file():
            raise ApparateError(f"'{path}' is missing; build the data with `python scripts/build_real_models.py`")
    with np.load(bootstrap) as npz:
        samples = min(DEFAULT_MAX_SAMPLES, int(next(iter(npz.values())).shape[0]))
    if cached_engine_ok(engine_dir, model, samples):
        log(f"  engine {engine_dir}: cached (same model and bootstrap size)")
        return read_manifest(engine_dir)
    from apparate_trt.compiler.pipeline import compile_model

    t0 = time.perf_counter()
    log(f"  compiling {model} with {bootstrap} into {engine_dir} ...")
    compile_model(model, bootstrap, engine_dir, max_batch=MAX_BATCH, threads=threads, force=True, log=lambda line: None)
    _fingerprint_file(engine_dir).write_text(compiler_fingerprint() + "\n")
    log(f"  compiled in {time.perf_counter() - t0:.0f} s")
    return read_manifest(engine_dir)


# ------------------------------------------------------------------------------ systems
class StreamTagger:
    """Engine proxy for :func:`replay`: the ``k``-th submitted request gets ``tag=offset + k``
    (its index in the stream; replay submits in stream order from one thread)."""

    def __init__(self, engine: Engine, offset: int = 0) -> None:
        self.engine = engine
        self.mode = engine.mode
        self.exit_mode = engine.exit_mode
        self.controller = engine.controller
        self._next = offset

    def sync_controller(self, timeout_s: float | None = None) -> bool:
        """``Engine.sync_controller``."""
        return self.engine.sync_controller(timeout_s)

    def stats(self) -> dict[str, Any]:
        """``Engine.stats`` (replay counts the batches, and the unsplit ones, from it)."""
        return self.engine.stats()

    def submit(self, inputs: Mapping[str, Any], on_result: Any = None, **kwargs: Any) -> Any:
        """``Engine.submit`` with the next stream index as the tag."""
        tag = self._next
        self._next += 1
        return self.engine.submit(inputs, on_result, tag=tag, **kwargs)


@dataclass
class SystemFactory:
    """Builds each system's engine for one engine directory and one stream (policies tuned once)."""

    engine_dir: Path
    manifest: Manifest
    threads: int | None
    max_delay_ms: float = MAX_DELAY_MS
    """The dynamic batcher's max queueing delay (ms), the same for every system."""
    oracle: policies.StreamOracle | None = None
    _policies: dict[str, Any] = field(default_factory=dict)

    def policy(self, system: str) -> Any:
        """The fixed policy of ``system`` (None for vanilla and apparate)."""
        if system == "vanilla" or system in APPARATE_SYSTEMS:
            return None
        if system in ("oracle", "oracle-skip"):
            if self.oracle is None:
                raise ApparateError("the oracle needs the stream's offline pass first (SystemFactory.oracle)")
            return policies.OraclePolicy(
                self.oracle, name=system, exit_mode="skip" if system in SKIP_SYSTEMS else "release"
            )
        if system not in self._policies:
            build = {
                "static-shared": lambda: policies.static_shared_policy(self.manifest, CONSTRAINT),
                "static-per-ramp": lambda: policies.static_per_ramp_policy(self.manifest, CONSTRAINT),
                "patience": lambda: policies.patience_policy(self.manifest, CONSTRAINT),
            }.get(system)
            if build is None:
                raise ApparateError(f"unknown system '{system}'; use one of: {', '.join(SYSTEMS + ABLATIONS)}")
            self._policies[system] = build()
        return self._policies[system]

    def describe(self, system: str) -> dict[str, Any]:
        """The fixed configuration of ``system`` (tuned values) for the report."""
        policy = self.policy(system)
        if isinstance(policy, policies.FixedThresholdPolicy):
            return {
                "sites": policy.sites,
                "thresholds": policy.thresholds,
                "bootstrap_accuracy": policy.bootstrap_accuracy,
            }
        if isinstance(policy, policies.PatiencePolicy):
            return {"sites": policy.sites, "patience": policy.patience, "bootstrap_accuracy": policy.bootstrap_accuracy}
        if system in APPARATE_SYSTEMS:
            return {
                "initial_sites": list(self.manifest.initial_config.active_sites),
                "budget": self.manifest.budget,
                "overload_fallback": _fallback(system),
                "exit_mode": exit_mode_of(system),
                **({"audit_rate": DEFAULT_AUDIT_RATE} if exit_mode_of(system) != "release" else {}),
            }
        return {}

    def load(self, system: str, requests: int | None = None) -> Engine:
        """A started engine serving ``system`` with the shared batching settings (the overload
        fallback only for ``apparate`` and ``apparate-skip``: the baselines never have it); its
        controller keeps the threshold history of ``requests`` batches (default: the controller's
        bound), so a stream of that many requests has a complete one."""
        mode = "vanilla" if system == "vanilla" else "apparate"
        adaptive = system in APPARATE_SYSTEMS
        return load(
            self.engine_dir,
            max_batch=MAX_BATCH,
            max_delay_ms=self.max_delay_ms,
            accuracy_constraint=CONSTRAINT,
            mode=mode,
            threads=self.threads,
            policy=self.policy(system),
            overload_fallback=adaptive and _fallback(system),
            exit_mode=exit_mode_of(system),
            controller_options=replay_controller_options(requests) if adaptive and requests else None,
            # systems are served interleaved, and a refit's child process of one engine would run
            # during another's chunks; ramps that keep learning are measured alone (refit_stream.py)
            refits=False,
        )


def _fallback(system: str) -> bool:
    """Whether an adaptive system runs the overload fallback: apparate yes, apparate-skip no (the
    API's defaults per exit mode), and the ablations the other way round."""
    return system in ("apparate", "apparate-skip-fallback")


# ------------------------------------------------------------------------------ measurements
def warm_up(engine: Engine, inputs: Mapping[str, np.ndarray], batches: int = WARM_UP_BATCHES) -> None:
    """Run ``batches`` full batches of ``inputs`` (untagged) so first-run allocations are done."""
    n = int(next(iter(inputs.values())).shape[0])
    count = min(n, batches * MAX_BATCH)
    handles = [engine.submit({k: v[i] for k, v in inputs.items()}) for i in range(count)]
    for handle in handles:
        handle.final.result(120.0)


def burst_size(capacity_rps: float, seconds: float = BURST_S) -> int:
    """Requests in a saturation burst that lasts about ``seconds`` at ``capacity_rps``, at least
    four full batches and at most :data:`BURST_MAX`."""
    return int(np.clip(round(capacity_rps * seconds), 4 * MAX_BATCH, BURST_MAX))


def burst_throughput(engine: Engine, inputs: Mapping[str, np.ndarray], count: int) -> float:
    """Completion rate (rps) of ``count`` requests submitted at once: back-to-back full batches."""
    count = min(count, BURST_MAX, int(next(iter(inputs.values())).shape[0]))
    result = replay(StreamTagger(engine), take(dict(inputs), slice(0, count)), np.zeros(count), progress=False)
    done = result.completed
    if not done.any():
        raise ApparateError("no request of the throughput burst completed; see the errors above")
    return float(done.sum() / (np.nanmax(result.t_final[done]) - result.t_start))


def interleaved_bursts(
    engines: Mapping[str, Engine],
    systems: list[str],
    inputs: Mapping[str, np.ndarray],
    burst: int,
    rounds: int,
    first: int = 0,
) -> dict[str, list[float]]:
    """``rounds`` rounds of one :func:`burst_throughput` of ``burst`` requests per system, the
    order rotated per round (round ``k`` starts at ``rotated(systems, first + k)``); each system's
    rates (rps) in round order."""
    rates: dict[str, list[float]] = {s: [] for s in systems}
    for k in range(rounds):
        for system in rotated(systems, first + k):
            rates[system].append(burst_throughput(engines[system], inputs, burst))
    return rates


def paired_ratio(rates: Sequence[float], base_rates: Sequence[float]) -> float | None:
    """Median over rounds of ``rates[k] / base_rates[k]`` (bursts of round ``k`` ran seconds
    apart, so a change in the machine's load cancels); None without a usable pair."""
    pairs = [a / b for a, b in zip(rates, base_rates) if np.isfinite(a) and np.isfinite(b) and b > 0]
    return float(np.median(pairs)) if pairs else None


def make_arrivals(kind: str, rate: float, n: int, seed: int) -> np.ndarray:
    """Arrival times (s) of ``n`` requests: ``fixed`` or ``poisson`` at ``rate`` rps."""
    if kind == "fixed":
        return fixed_arrivals(rate, n)
    if kind == "poisson":
        return poisson_arrivals(rate, n, seed)
    raise ApparateError(f"unknown arrival kind '{kind}'; use fixed or poisson")


@dataclass
class RunRecord:
    """One system served once on one workload: the report plus raw per-request arrays."""

    system: str
    repeat: int
    report: dict[str, Any]
    latency_ms: np.ndarray
    arrivals_s: np.ndarray
    throughput_rps: float  # saturation: median of the bursts, rps
    wall_s: float  # seconds spent serving the stream (sum over chunks)
    burst_rps: list[float] = field(default_factory=list)  # each round's burst, rps, round order


def merge_results(parts: list[ReplayResult]) -> ReplayResult:
    """One :class:`ReplayResult` from consecutive chunk replays of one engine (arrival order).

    ``arrivals_s`` become seconds since the first chunk's start, the clock of the controller's
    events and history (the gaps while other systems served their chunks included).
    """
    first, last = parts[0], parts[-1]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    errors: dict[int, str] = {}
    offset = 0
    for part in parts:
        errors.update({offset + i: e for i, e in part.errors.items()})
        offset += part.requests
    return ReplayResult(
        mode=first.mode,
        t_start=first.t_start,
        t_end=last.t_end,
        arrivals_s=np.concatenate([p.t_start + p.arrivals_s for p in parts]) - first.t_start,
        submit_lag_ms=cat("submit_lag_ms"),
        latency_ms=cat("latency_ms"),
        final_latency_ms=cat("final_latency_ms"),
        released_pred=cat("released_pred"),
        final_pred=cat("final_pred"),
        exit_site=cat("exit_site"),
        t_release=cat("t_release"),
        t_final=cat("t_final"),
        errors=errors,
        events=list(last.events),
        threshold_history=list(last.threshold_history),
        batches=sum(p.batches for p in parts),
        unsplit_batches=sum(p.unsplit_batches for p in parts),
        skip_mode_batches=sum(p.skip_mode_batches for p in parts),
        skipped=np.concatenate([p.skipped if p.skipped is not None else np.zeros(p.requests, bool) for p in parts]),
        reference_used=any(p.reference_used for p in parts),
        rows={k: float(sum(p.rows.get(k, 0.0) for p in parts)) for k in first.rows},
        exit_mode=first.exit_mode,
    )


def rotated(systems: list[str], k: int) -> list[str]:
    """``systems`` rotated left by ``k`` (who goes first changes every chunk and repeat)."""
    k %= len(systems)
    return systems[k:] + systems[:k]


def serve_interleaved(
    factory: SystemFactory,
    systems: list[str],
    inputs: Mapping[str, np.ndarray],
    arrivals: np.ndarray,
    warm_inputs: Mapping[str, np.ndarray],
    burst: int,
    repeat: int,
    chunk: int,
    log: Log,
) -> list[RunRecord]:
    """Serve the stream through every system, interleaved chunk by chunk.

    All systems are loaded and warmed up; then for each chunk of ``chunk`` consecutive requests,
    every system (in an order rotated per chunk) replays that chunk at its arrival times. Each
    engine keeps its state between its chunks (Apparate's controller sees the whole stream in
    order), and systems compared on one chunk ran seconds apart, so a change in the machine's load
    hits them alike. Each chunk starts with an empty queue. Then each system's saturation
    throughput is measured: :data:`BURST_ROUNDS` rounds of one burst of ``burst`` requests per
    system (order rotated per round), the median per system. Then the engines are closed.
    """
    n = int(arrivals.shape[0])
    engines = {}
    try:
        for system in systems:
            engines[system] = factory.load(system, requests=n + WARM_UP_BATCHES * MAX_BATCH)
            warm_up(engines[system], warm_inputs)
        freeze_after_load()  # as apparate-run does once loaded: full GC collections skip the engines
        parts: dict[str, list[ReplayResult]] = {s: [] for s in systems}
        spans: dict[str, float] = {s: 0.0 for s in systems}
        starts = list(range(0, n, chunk))
        t0 = time.perf_counter()
        for k, lo in enumerate(starts):
            hi = min(n, lo + chunk)
            sub = {name: a[lo:hi] for name, a in inputs.items()}
            times = arrivals[lo:hi] - arrivals[lo]
            for system in rotated(systems, repeat + k):
                reference = (
                    None if factory.oracle is None else factory.oracle.final_pred[lo:hi]
                )  # judges skipped requests
                part = replay(
                    StreamTagger(engines[system], offset=lo), sub, times, progress=False, reference_pred=reference
                )
                parts[system].append(part)
                spans[system] += part.t_end - part.t_start
            p50 = "  ".join(f"{s} {np.nanmedian(parts[s][-1].latency_ms):.1f}" for s in systems)
            log(
                f"    chunk {k + 1}/{len(starts)} ({time.perf_counter() - t0:.0f} s, load "
                f"{os.getloadavg()[0]:.1f}) p50 ms: {p50}"
            )
        bursts = interleaved_bursts(engines, systems, inputs, burst, BURST_ROUNDS if burst > 0 else 0, first=repeat)
        throughput = {s: float(np.median(r)) if r else float("nan") for s, r in bursts.items()}
        if burst > 0:
            log(
                "    saturation rps per burst: "
                + "  ".join(f"{s} {'/'.join(f'{r:.0f}' for r in bursts[s])}" for s in systems)
            )
    finally:
        for engine in engines.values():
            engine.close()
        unfreeze()  # the closed engines go back to the collector (they hold reference cycles)
    records = []
    for system in systems:
        merged = merge_results(parts[system])
        report = build_report(merged, CONSTRAINT, WINDOW)
        report["mode"] = system
        report["throughput_rps"] = float(merged.completed.sum() / spans[system]) if spans[system] > 0 else None
        done = merged.completed
        records.append(
            RunRecord(
                system,
                repeat,
                report,
                merged.latency_ms[done],
                merged.arrivals_s[done],
                throughput[system],
                spans[system],
                bursts[system],
            )
        )
    return records


def load_stream(path: Path, manifest: Manifest, limit: int | None) -> dict[str, np.ndarray]:
    """The stream's inputs (first ``limit`` samples when given), validated against the model."""
    inputs = load_inputs(path, manifest.model.inputs)
    return take(inputs, slice(0, limit)) if limit else inputs


def drift_phases(meta_path: Path, served: int) -> list[dict[str, Any]]:
    """The drift stream's phases (``name``, ``start``, ``end`` in stream indices) within ``served``."""
    if not meta_path.is_file():
        return []
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return [
        {"name": p["name"], "start": int(p["start"]), "end": min(int(p["end"]), served)}
        for p in meta.get("phases", [])
        if int(p["start"]) < served
    ]


def windows_after_changes(n_windows: int, phases: list[dict[str, Any]], window: int = WINDOW) -> np.ndarray:
    """bool [n_windows]: windows NOT touched by a phase change, i.e. excluding each window that
    holds a change and the one after it (the window that sees the change)."""
    keep = np.ones(n_windows, dtype=bool)
    for phase in phases[1:]:
        k = phase["start"] // window
        keep[k : k + 2] = False
    return keep


def write_figures(
    figures: Mapping[str, Any],
    out: Path | None,
    plot_path: Path | None,
    plot: Callable[[Mapping[str, Any], Path], None],
) -> None:
    """Write ``figures`` as JSON to ``out`` and ``plot(figures, plot_path)``, each if given, saying so."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=1))
        print(f"wrote {out}")
    if plot_path:
        plot(figures, plot_path)
        print(f"wrote {plot_path}")
