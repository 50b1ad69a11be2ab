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
    model over the stream once, offline; the executor then serves the model split at every site
    with NO ramps on the path (:class:`OracleRule`), and releases each input (identified by its
    request ``tag``, its index in the stream) right after the segment of its oracle site. Its
    latency is measured on the real chain, like every other system's.

Each policy names its active sites, thresholds, exit rule and exit mode; ``load`` serves it on the
same :class:`~apparate_trt.runtime.executor.Executor` as Apparate, without a controller.

Latencies in ms; confidences are max softmax probabilities (the bootstrap statistics' kind).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from apparate_trt import _core
from apparate_trt.backends import open_runner
from apparate_trt.defaults import SEARCH_MIN_STEP
from apparate_trt.engine_dir import Manifest
from apparate_trt.errors import ApparateError
from apparate_trt.latency import LatencyModel
from apparate_trt.runtime.executor import final_predictions

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
    """PABEE's exit rule for :class:`~apparate_trt.runtime.executor.Executor`: exit once ``patience``
    consecutive active ramps (this one included) gave the same argmax. Thresholds are ignored."""

    runs_ramps = True

    def __init__(self, patience: int) -> None:
        if int(patience) < 1:
            raise ApparateError(f"patience must be at least 1 ramp, got {patience}")
        self.patience = int(patience)
        self._prev = np.zeros(0, dtype=np.int32)
        self._run = np.zeros(0, dtype=np.int64)

    def begin_batch(self, n: int, tags: Sequence[object] | None) -> None:
        """Forget the previous batch's predictions."""
        self._prev = np.full(n, -1, dtype=np.int32)  # no class is -1: the first ramp starts a run of 1
        self._run = np.zeros(n, dtype=np.int64)

    def decide(
        self, site: int, logits: np.ndarray | None, threshold: float, done: np.ndarray, kind: str, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count agreeing consecutive ramps; inputs reaching ``patience`` exit (``done`` is updated)."""
        conf, pred = _core.confidence(logits, kind)
        run = np.where(pred == self._prev[rows], self._run[rows] + 1, 1)
        self._run[rows], self._prev[rows] = run, pred
        newly = ((run >= self.patience) & (done == 0)).astype(np.uint8)
        done[newly.astype(bool)] = 1
        return conf, pred, newly


class OracleRule:
    """The oracle's exit rule for :class:`~apparate_trt.runtime.executor.Executor`: no ramp runs; each tagged
    input (its tag is its index in the stream) exits right after the segment of its oracle site,
    released as the one-hot row of the model's own answer. Untagged inputs, and inputs no ramp
    agrees on, reach the end."""

    runs_ramps = False

    def __init__(self, oracle: StreamOracle) -> None:
        self.oracle = oracle
        self._site = np.zeros(0, dtype=np.int32)
        self._pred = np.zeros(0, dtype=np.int32)

    def begin_batch(self, n: int, tags: Sequence[object] | None) -> None:
        """Look up each tagged input's oracle site and answer (ApparateError for a tag outside the stream)."""
        self._site = np.full(n, -1, dtype=np.int32)
        self._pred = np.zeros(n, dtype=np.int32)
        stream = self.oracle.site.shape[0]
        for i, tag in enumerate(tags or ()):
            if tag is None:
                continue
            k = int(tag)  # type: ignore[call-overload]
            if not 0 <= k < stream:
                raise ApparateError(
                    f"oracle tag {k} is outside the stream (0..{stream - 1}); tag requests with their stream index"
                )
            self._site[i], self._pred[i] = self.oracle.site[k], self.oracle.final_pred[k]

    def decide(
        self, site: int, logits: np.ndarray | None, threshold: float, done: np.ndarray, kind: str, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows whose oracle site is ``site`` exit (confidence 1), with the model's answer."""
        newly = ((self._site[rows] == site) & (done == 0)).astype(np.uint8)
        done[newly.astype(bool)] = 1
        return newly.astype(np.float32), self._pred[rows].copy(), newly


# ------------------------------------------------------------------------------ policies
@dataclass
class FixedThresholdPolicy:
    """Ramps at ``sites`` with fixed ``thresholds`` (no controller): the static EE baselines."""

    name: str
    sites: list[int]
    thresholds: list[float]
    bootstrap_accuracy: float = 1.0
    exit_mode: str = "release"
    audit_rate: float = 1.0

    def exit_rule(self) -> None:
        """None: the executor's threshold rule."""
        return None


@dataclass
class PatiencePolicy:
    """Ramps at ``sites``, PABEE's patience rule with ``patience`` (no controller)."""

    name: str
    sites: list[int]
    patience: int
    bootstrap_accuracy: float = 1.0
    exit_mode: str = "release"
    audit_rate: float = 1.0

    @property
    def thresholds(self) -> list[float]:
        """Unused by the patience rule (0 per site)."""
        return [0.0] * len(self.sites)

    def exit_rule(self) -> PatienceRule:
        """A fresh :class:`PatienceRule`."""
        return PatienceRule(self.patience)


@dataclass
class OraclePolicy:
    """Serves ``oracle`` (from :func:`stream_oracle`) on the model split at every site, no ramps
    (:class:`OracleRule`).

    ``exit_mode="skip"``: the skip oracle, whose rows leave the batch at their oracle site (no
    audits: the oracle needs no feedback), the limit of skip mode."""

    oracle: StreamOracle
    name: str = "oracle"
    exit_mode: str = "release"
    audit_rate: float = 0.0

    @property
    def sites(self) -> list[int]:
        """Every site: the engine's finest segments."""
        return list(range(int(self.oracle.ramp_pred.shape[0])))

    @property
    def thresholds(self) -> list[float]:
        """Unused by the oracle rule (0 per site)."""
        return [0.0] * len(self.sites)

    def exit_rule(self) -> OracleRule:
        """A fresh :class:`OracleRule` on this oracle."""
        return OracleRule(self.oracle)


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
