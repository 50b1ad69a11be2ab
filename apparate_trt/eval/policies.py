"""Baseline exit policies that issue 4 measures Apparate against (DESIGN.md, "Baselines").

Every policy here is *fixed*: it is configured once, before serving, and never adapts. Each one is
a :class:`~apparate_trt.runtime.api.ServingPolicy` for ``load(engine_dir, policy=...)``:

static EE (BranchyNet / DeeBERT style)
    Ramps at every site, always on, thresholds tuned once on the held-out bootstrap statistics
    (``bootstrap_stats.npz``) to meet the accuracy constraint there: :func:`static_shared_policy`
    (one threshold for every ramp, the largest on a grid that meets the constraint) and
    :func:`static_per_ramp_policy` (per-ramp thresholds by the C core's ``search_thresholds``, the
    same greedy hill climb Apparate's controller uses, run once).
patience (PABEE)
    Ramps at every site; an input exits at the first ramp where the last ``t`` ramps (this one
    included) gave the same argmax (``t = 1``: the first ramp always exits; PABEE's "patience" is
    ``t - 1``). ``t`` is the smallest value meeting the constraint on the bootstrap statistics
    (:func:`patience_policy`).
oracle (optimal exiting)
    Every input exits at the earliest site whose ramp agrees with the model's final output, at no
    ramp cost. It needs each input's answer in advance: :func:`stream_oracle` runs all ramps and the
    model over the stream once, offline; :class:`OracleExecutor` then serves the model split at
    every site with NO ramps on the path, and releases each input (identified by its request
    ``tag``, its index in the stream) right after the segment of its oracle site. Its latency is
    measured on the real chain, like every other system's.

Latencies in ms; confidences are max softmax probabilities (the bootstrap statistics' kind).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from apparate_trt import _core
from apparate_trt.backends import open_runner
from apparate_trt.defaults import SEARCH_MIN_STEP
from apparate_trt.engine_dir import Manifest
from apparate_trt.errors import ApparateError
from apparate_trt.latency import LatencyModel
from apparate_trt.runtime.compaction import compact, dynamic_batch_inputs
from apparate_trt.runtime.executor import BatchOutcome, Executor, ReleaseFn, final_predictions, release_final
from apparate_trt.runtime.vanilla import FixedExecutorBase, rampless_outcome

SHARED_GRID = np.unique(np.concatenate([np.round(np.linspace(0.0, 1.0, 201), 6), np.geomspace(1e-6, 0.005, 25)]))
"""Thresholds tried by the shared-threshold grid search: steps of 0.005, plus 25 log-spaced values
from 1e-6 to 0.005 for over-confident ramps (1 - p_max far below 0.005)."""


# ------------------------------------------------------------------------------ pure helpers
@dataclass(frozen=True)
class BootstrapView:
    """Held-out bootstrap statistics laid out per ramp: ``S`` sites, ``N`` samples."""

    confidence: np.ndarray  # float32 [S, N]
    agree: np.ndarray  # uint8 [S, N]
    ramp_pred: np.ndarray  # int32 [S, N]
    final_pred: np.ndarray  # int32 [N]


def bootstrap_view(manifest: Manifest) -> BootstrapView:
    """The engine directory's bootstrap statistics as [sites, samples] arrays."""
    stats = manifest.load_bootstrap_stats()
    conf = np.ascontiguousarray(np.asarray(stats.confidence, dtype=np.float32).T)
    if conf.shape[0] != len(manifest.sites) or conf.shape[1] == 0:
        raise ApparateError(
            f"bootstrap statistics hold {conf.shape[1]} samples for {conf.shape[0]} sites, but the engine has "
            f"{len(manifest.sites)} sites; recompile the engine directory"
        )
    return BootstrapView(
        confidence=conf,
        agree=np.ascontiguousarray(np.asarray(stats.agree, dtype=np.uint8).T),
        ramp_pred=np.ascontiguousarray(np.asarray(stats.ramp_pred, dtype=np.int32).T),
        final_pred=np.asarray(stats.final_pred, dtype=np.int32),
    )


def tune_shared_threshold(
    conf: np.ndarray, agree: np.ndarray, saved_ms: np.ndarray, constraint: float, grid: np.ndarray = SHARED_GRID
) -> tuple[float, float, float]:
    """One threshold for every ramp: the grid value saving the most latency with accuracy >=
    ``1 - constraint`` on (``conf``, ``agree``) [r, m]. Returns (threshold, accuracy, saved ms)."""
    best = (0.0, 1.0, 0.0)
    r = conf.shape[0]
    for t in grid:
        acc, saved, _ = _core.evaluate_thresholds(conf, agree, saved_ms, np.full(r, float(t)))
        if acc >= 1.0 - constraint - 1e-12 and saved > best[2]:
            best = (float(t), float(acc), float(saved))
    return best


def tune_per_ramp_thresholds(
    conf: np.ndarray, agree: np.ndarray, saved_ms: np.ndarray, constraint: float
) -> tuple[np.ndarray, float, float]:
    """Per-ramp thresholds by the C core's greedy search, run once. Returns (thresholds, accuracy, saved ms)."""
    thresholds, acc, saved = _core.search_thresholds(conf, agree, saved_ms, constraint, min_step=SEARCH_MIN_STEP)
    return np.asarray(thresholds, dtype=np.float64), float(acc), float(saved)


def patience_exit_index(ramp_pred: np.ndarray, patience: int) -> np.ndarray:
    """Per input, the first ramp index (execution order) at which the last ``patience`` ramps
    agreed, or -1: int32 [n] from ``ramp_pred`` int32 [r, n]."""
    r, n = ramp_pred.shape
    out = np.full(n, -1, dtype=np.int32)
    run = np.zeros(n, dtype=np.int64)
    for i in range(r):
        run = run + 1 if i == 0 else np.where(ramp_pred[i] == ramp_pred[i - 1], run + 1, 1)
        newly = (out < 0) & (run >= patience)
        out[newly] = i
    return out


def patience_accuracy(ramp_pred: np.ndarray, final_pred: np.ndarray, patience: int) -> float:
    """Share of inputs whose patience exit (or final output) agrees with ``final_pred``."""
    index = patience_exit_index(ramp_pred, patience)
    exited = index >= 0
    released = final_pred.copy()
    released[exited] = ramp_pred[index[exited], np.flatnonzero(exited)]
    return float(np.mean(released == final_pred)) if released.size else 1.0


def tune_patience(ramp_pred: np.ndarray, final_pred: np.ndarray, constraint: float) -> tuple[int, float]:
    """The smallest patience ``t`` (1..r) with accuracy >= ``1 - constraint``; ``r + 1`` (never
    exits) when none meets it. Returns (t, accuracy)."""
    r = ramp_pred.shape[0]
    for t in range(1, r + 1):
        acc = patience_accuracy(ramp_pred, final_pred, t)
        if acc >= 1.0 - constraint - 1e-12:
            return t, acc
    return r + 1, 1.0


def oracle_sites(ramp_pred: np.ndarray, final_pred: np.ndarray, sites: Sequence[int]) -> np.ndarray:
    """Per input, the earliest of ``sites`` whose ramp argmax equals the final argmax, or -1.

    ``ramp_pred`` int32 [len(sites), n] in the order of ``sites`` (execution order).
    """
    agree = ramp_pred == final_pred[None, :]
    first = np.argmax(agree, axis=0)
    found = agree.any(axis=0)
    return np.where(found, np.asarray(sites, dtype=np.int32)[first], -1).astype(np.int32)


# ------------------------------------------------------------------------------ offline oracle pass
@dataclass(frozen=True)
class StreamOracle:
    """Every stream sample's oracle site (-1: none agrees, released by the final output) and final
    argmax, indexed by the sample's position in the stream (the request ``tag``)."""

    site: np.ndarray  # int32 [n]
    final_pred: np.ndarray  # int32 [n]
    ramp_pred: np.ndarray  # int32 [S, n]: every ramp's argmax (for the report)


@dataclass(frozen=True)
class StreamRamps:
    """Every ramp's output on every sample of a stream, next to the model's final argmax."""

    ramp_pred: np.ndarray  # int32 [S, n]: each site's ramp argmax
    confidence: np.ndarray  # float64 [S, n]: each site's ramp max softmax probability
    final_pred: np.ndarray  # int32 [n]


def stream_ramps(
    manifest: Manifest, inputs: Mapping[str, np.ndarray], batch_size: int = 64, threads: int | None = None
) -> StreamRamps:
    """Run the finest segment chain and every ramp over ``inputs`` once (offline, not timed).

    Confidences are computed in float64 from the ramps' logits: a float32 softmax saturates at 1
    for over-confident ramps, which would tie inputs that a threshold can tell apart."""
    segments = [
        (open_runner(manifest.path(s.file), threads=threads, name=f"segment {s.file}"), list(s.outputs), s.ends_at_site)
        for s in manifest.segments
    ]
    ramps = {
        r.site: (open_runner(manifest.path(r.file), threads=threads, name=f"ramp {r.file}"), r.output)
        for r in manifest.ramps
    }
    n = int(next(iter(inputs.values())).shape[0])
    ramp_pred = np.zeros((len(manifest.sites), n), dtype=np.int32)
    confidence = np.zeros((len(manifest.sites), n), dtype=np.float64)
    final_pred = np.zeros(n, dtype=np.int32)
    for lo in range(0, n, batch_size):
        env: dict[str, np.ndarray] = {name: np.ascontiguousarray(a[lo : lo + batch_size]) for name, a in inputs.items()}
        for runner, outputs, site in segments:
            env.update(runner.run(env, outputs))
            if site is not None:
                ramp, out = ramps[site]
                z = np.asarray(ramp.run(env, [out])[out], dtype=np.float64)
                z -= z.max(axis=1, keepdims=True)
                ramp_pred[site, lo : lo + batch_size] = np.argmax(z, axis=1)
                confidence[site, lo : lo + batch_size] = 1.0 / np.exp(z).sum(axis=1)
        final_pred[lo : lo + batch_size] = final_predictions(np.asarray(env[manifest.model.output]))
    return StreamRamps(ramp_pred, confidence, final_pred)


def stream_oracle(
    manifest: Manifest, inputs: Mapping[str, np.ndarray], batch_size: int = 64, threads: int | None = None
) -> StreamOracle:
    """Every sample's oracle site, from one offline pass of :func:`stream_ramps`."""
    ramps = stream_ramps(manifest, inputs, batch_size, threads)
    sites = [s.id for s in manifest.sites]
    return StreamOracle(oracle_sites(ramps.ramp_pred, ramps.final_pred, sites), ramps.final_pred, ramps.ramp_pred)


# ------------------------------------------------------------------------------ exit rules
class PatienceRule:
    """PABEE's exit rule for :class:`Executor`: exit once ``patience`` consecutive active ramps
    (this one included) gave the same argmax. Thresholds are ignored."""

    def __init__(self, patience: int) -> None:
        if int(patience) < 1:
            raise ApparateError(f"patience must be at least 1 ramp, got {patience}")
        self.patience = int(patience)
        self._prev: np.ndarray | None = None
        self._run = np.zeros(0, dtype=np.int64)

    def begin_batch(self, n: int, tags: Sequence[object] | None) -> None:
        """Forget the previous batch's predictions."""
        self._prev = None
        self._run = np.zeros(n, dtype=np.int64)

    def decide(
        self, site: int, logits: np.ndarray, threshold: float, done: np.ndarray, kind: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count agreeing consecutive ramps; inputs reaching ``patience`` exit (``done`` is updated)."""
        conf, pred = _core.confidence(logits, kind)
        self._run = self._run + 1 if self._prev is None else np.where(pred == self._prev, self._run + 1, 1)
        self._prev = pred
        newly = ((self._run >= self.patience) & (done == 0)).astype(np.uint8)
        done[newly.astype(bool)] = 1
        return conf, pred, newly


# ------------------------------------------------------------------------------ policies
@dataclass
class FixedThresholdPolicy:
    """Ramps at ``sites`` with fixed ``thresholds`` (no controller): the static EE baselines."""

    name: str
    sites: list[int]
    thresholds: list[float]
    bootstrap_accuracy: float = 1.0

    def build_executor(self, manifest: Manifest, threads: int | None, confidence: str) -> Executor:
        """An :class:`Executor` configured once (plan built before serving)."""
        executor = Executor(manifest, threads, confidence)
        executor.configure(self.sites, self.thresholds, wait=True)
        return executor


@dataclass
class PatiencePolicy:
    """Ramps at ``sites``, PABEE's patience rule with ``patience`` (no controller)."""

    name: str
    sites: list[int]
    patience: int
    bootstrap_accuracy: float = 1.0

    def build_executor(self, manifest: Manifest, threads: int | None, confidence: str) -> Executor:
        """An :class:`Executor` with :class:`PatienceRule`, every ramp active."""
        executor = Executor(manifest, threads, confidence, exit_rule=PatienceRule(self.patience))
        executor.configure(self.sites, [0.0] * len(self.sites), wait=True)
        return executor


@dataclass
class OraclePolicy:
    """Serves ``oracle`` (from :func:`stream_oracle`) on the model split at every site, no ramps.

    ``exit_mode="skip"``: the skip oracle, whose rows leave the batch at their oracle site (no
    audits: the oracle needs no feedback), the limit of skip mode."""

    oracle: StreamOracle
    name: str = "oracle"
    exit_mode: str = "release"

    def build_executor(self, manifest: Manifest, threads: int | None, confidence: str) -> OracleExecutor:
        """An :class:`OracleExecutor` (``confidence`` is unused: no ramps run)."""
        return OracleExecutor(manifest, self.oracle, threads, skip=self.exit_mode == "skip")


def _all_sites(manifest: Manifest) -> list[int]:
    if not manifest.sites:
        raise ApparateError(
            "this engine has no ramp sites, so early-exit baselines cannot run; compile a model with usable cuts"
        )
    return [s.id for s in manifest.sites]


def _tuning_batch(manifest: Manifest, batch_size: int | None) -> int:
    return int(batch_size or manifest.profiles.batch_sizes[0])


def static_shared_policy(
    manifest: Manifest, constraint: float = 0.01, batch_size: int | None = None
) -> FixedThresholdPolicy:
    """Static EE with one shared threshold, grid-searched on the bootstrap statistics."""
    sites = _all_sites(manifest)
    view = bootstrap_view(manifest)
    saved = LatencyModel(manifest).exit_saved_ms(sites, _tuning_batch(manifest, batch_size))
    t, acc, _ = tune_shared_threshold(view.confidence, view.agree, saved, constraint)
    return FixedThresholdPolicy("static-shared", sites, [t] * len(sites), acc)


def static_per_ramp_policy(
    manifest: Manifest, constraint: float = 0.01, batch_size: int | None = None
) -> FixedThresholdPolicy:
    """Static EE with per-ramp thresholds, searched once on the bootstrap statistics."""
    sites = _all_sites(manifest)
    view = bootstrap_view(manifest)
    saved = LatencyModel(manifest).exit_saved_ms(sites, _tuning_batch(manifest, batch_size))
    thresholds, acc, _ = tune_per_ramp_thresholds(view.confidence, view.agree, saved, constraint)
    return FixedThresholdPolicy("static-per-ramp", sites, [float(t) for t in thresholds], acc)


def patience_policy(manifest: Manifest, constraint: float = 0.01) -> PatiencePolicy:
    """PABEE with the smallest patience meeting the constraint on the bootstrap statistics."""
    sites = _all_sites(manifest)
    view = bootstrap_view(manifest)
    t, acc = tune_patience(view.ramp_pred, view.final_pred, constraint)
    return PatiencePolicy("patience", sites, t, acc)


# ------------------------------------------------------------------------------ oracle executor
class OracleExecutor(FixedExecutorBase):
    """The model split at every site (the engine's finest segments), no ramps; each tagged input is
    released right after the segment of its oracle site with its precomputed final argmax (a one-hot
    row). Untagged inputs, and inputs no ramp agrees on, are released by the final output.
    ``skip=True``: a released row leaves the batch at once (its early result is its last)."""

    accepts_tags = True

    def __init__(
        self, manifest: Manifest, oracle: StreamOracle, threads: int | None = None, skip: bool = False
    ) -> None:
        self.manifest = manifest
        self.oracle = oracle
        self.skip = bool(skip)
        self._stages = [
            (
                open_runner(manifest.path(s.file), threads=threads, name=f"segment {s.file}"),
                list(s.outputs),
                s.ends_at_site,
            )
            for s in manifest.segments
        ]
        self._rows = np.eye(manifest.model.num_classes, dtype=np.float32)
        batch = {spec.name for spec in manifest.model.inputs}
        for runner, _, _ in self._stages:
            batch |= dynamic_batch_inputs(runner.inputs)[0]
        self._batch_names = batch

    def _targets(self, n: int, tags: Sequence[object] | None) -> tuple[np.ndarray, np.ndarray]:
        site = np.full(n, -1, dtype=np.int32)
        pred = np.full(n, -1, dtype=np.int32)
        if tags is not None:
            for i, tag in enumerate(tags):
                if tag is not None:
                    k = int(tag)  # type: ignore[call-overload]
                    if not 0 <= k < self.oracle.site.shape[0]:
                        raise ApparateError(
                            f"oracle tag {k} is outside the stream (0..{self.oracle.site.shape[0] - 1}); tag requests with their stream index"
                        )
                    site[i], pred[i] = self.oracle.site[k], self.oracle.final_pred[k]
        return site, pred

    def run_batch(
        self, inputs: Mapping[str, np.ndarray], on_release: ReleaseFn, tags: Sequence[object] | None = None
    ) -> BatchOutcome:
        """Run the finest segments; release each input after its oracle site's segment."""
        t_start = time.monotonic()
        n = int(next(iter(inputs.values())).shape[0])
        target, pred = self._targets(n, tags)
        env: dict[str, np.ndarray] = dict(inputs)
        segments_ms = np.zeros(len(self._stages), dtype=np.float64)
        alive = np.arange(n)  # original indices of the rows still in the batch
        for k, (runner, outputs, site) in enumerate(self._stages):
            if alive.size == 0:
                break
            t0 = time.perf_counter()
            env.update(runner.run(env, outputs))
            segments_ms[k] = (time.perf_counter() - t0) * 1000.0
            if site is None:
                continue
            leaving = target[alive] == site
            exiting = alive[leaving]
            if exiting.size:
                t_release = time.monotonic()
                for i in exiting:
                    if self.skip:
                        on_release(int(i), self._rows[pred[i]], int(pred[i]), site, t_release, last=True)
                    else:
                        on_release(int(i), self._rows[pred[i]], int(pred[i]), site, t_release)
                if self.skip:
                    kept = np.flatnonzero(~leaving)
                    env = compact(env, kept, self._batch_names, alive.size)
                    alive = alive[kept]
        if not self.skip:
            logits = np.ascontiguousarray(env[self.manifest.model.output], dtype=np.float32)
            final = final_predictions(logits)
            t_end = release_final(logits, final, on_release)
            return rampless_outcome(logits, final, target, segments_ms, t_start, t_end)
        logits = np.zeros((n, self.manifest.model.num_classes), dtype=np.float32)
        final = np.full(n, -1, dtype=np.int32)
        t_end = time.monotonic()
        if alive.size:
            logits[alive] = np.ascontiguousarray(env[self.manifest.model.output], dtype=np.float32)
            final[alive] = final_predictions(logits[alive])
            for i in alive:
                on_release(int(i), logits[i], int(final[i]), None, t_end)
        outcome = rampless_outcome(logits, final, target, segments_ms, t_start, t_end)
        outcome.skipped = np.isin(np.arange(n), alive, invert=True)
        return outcome
