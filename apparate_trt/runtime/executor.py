"""The executor: runs a batch through the segments, evaluates active ramps, releases early results.

A *plan* is the chain of ONNX Runtime sessions for one set of active ramp sites: the model split
only at those sites (``split_model``), so an inactive site costs nothing, plus one ramp session per
active site. Plans are built off the critical path on a background thread when the active set
changes, cached by active set (a revisited set is instant; at most PLANS_KEPT, the unsplit model
always among them), and swapped in between batches. A large model is split in a low-priority child
process (``runtime.split_worker``) so that the split never holds the GIL against the batch thread.
Thresholds change at once.

``run_batch`` keeps an environment of named tensors: each segment reads its inputs from it (side
tensors such as an attention mask flow on to later segments) and adds its outputs. After a segment
that ends at an active site, that site's ramp runs on the site tensor and the C core decides which
not-yet-released inputs exit there; each is released through ``on_release`` at once, before the
next segment runs. The returned :class:`BatchOutcome` is the controller's feedback.

Exit modes (:data:`~apparate_trt.runtime.compaction.EXIT_MODES`): in ``release`` mode the batch
always runs to the end (exits never shrink it), then every input's final output is released. In
``skip`` mode the rows a ramp releases leave the batch, except an audit sample drawn at
``audit_rate`` (and every row whose request waits for the final answer): the later segments and
ramps run on the compacted batch (``runtime.compaction``), a skipped row's early result is its
last, and the outcome weighs each audited row by ``1 / audit_rate`` so that the controller's
feedback stays unbiased.

One executor serves every system: the adaptive controller configures its plan and thresholds;
vanilla is the unsplit plan (never configured: the original model in one session); the fixed
baselines of ``apparate_trt.eval.policies`` are a plan and an :class:`ExitRule` (static
thresholds, PABEE's patience, the oracle, which reads precomputed answers instead of ramps).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from apparate_trt import _core
from apparate_trt.backends import ChainRunner, Runner
from apparate_trt.engine_dir import Manifest
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.compaction import check_exit_mode, compact, draw_audits, dynamic_batch_inputs
from apparate_trt.runtime.serving_backend import ServingBackend
from apparate_trt.runtime.split_worker import IdleGate, should_split_out_of_process, split_out_of_process

log = logging.getLogger(__name__)

CONFIDENCE_KINDS = ("maxprob", "entropy")
PLANS_KEPT = 8
"""Plans (sessions of one active set) cached for a revisit, the unsplit plan among them; past it the
least recently used one is dropped, with its segment files, but never the unsplit, running or
just-built plan, so a server that tries many active sets over its life holds at most
``max(PLANS_KEPT, 3)``."""

ReleaseFn = Callable[..., None]
"""``on_release(index, logits_row, pred, site_id, t_release)``: index in the batch, the released
output row (float32 [classes]), its argmax, the exiting site id (None for the final output) and the
release time (``time.monotonic()`` seconds). In ``skip`` mode a row that leaves the batch at its
ramp is released with ``last=True`` as a keyword: it gets no final output."""


@dataclass
class BatchOutcome:
    """What one batch did: the controller's feedback and the report's raw material.

    ``r`` is the number of ramps that ran (``site_ids``, in execution order), ``n`` the batch size.
    """

    site_ids: np.ndarray  # int32 [r]: active sites that ran, in execution order
    thresholds: np.ndarray  # float64 [r]: thresholds applied (0: probation, never exits)
    confidence: np.ndarray  # float32 [r, n]
    ramp_pred: np.ndarray  # int32 [r, n]
    final_logits: np.ndarray  # float32 [n, classes]
    final_pred: np.ndarray  # int32 [n]
    agree: np.ndarray  # uint8 [r, n]: ramp_pred == final_pred
    exit_site: np.ndarray  # int32 [n]: site that released the input early, -1 none
    segments_ms: np.ndarray  # float64 [r + 1]: wall time of each segment
    ramps_ms: np.ndarray  # float64 [r]: wall time of each ramp (including the exit decision)
    total_ms: float  # wall time of the whole batch
    t_start: float  # time.monotonic() seconds when the batch started
    t_end: float  # time.monotonic() seconds when the final outputs were released
    weights: np.ndarray | None = None
    """float64 [n]: the rows each row's feedback stands for, ``1 / P(it reached the end)``: 1 for a
    row that did not exit, ``1 / audit_rate`` for an audited exit, 0 for a skipped row (it has no
    final output: its ``final_pred`` is -1 and its ``agree`` entries mean nothing). None: all 1."""
    skipped: np.ndarray | None = None  # bool [n]: left the batch at its ramp (skip mode); None: none
    audited: int = 0  # exits that ran on to the end as the audit sample (skip mode)
    rows_run: np.ndarray | None = None  # int64 [r + 1]: rows each segment ran on; None: all n
    compute_saved_ms: float = 0.0
    """Segment time the skipped rows did not cost, from the profile: the sum over segments of the
    profiled latency at the full batch minus that at the rows the segment ran on (ms)."""
    features: dict[int, np.ndarray] | None = None
    """float32 [n, D] per active site: the ramp's pooled features (its graph's ``features``
    output), kept only when :attr:`Executor.keep_features` is set (the ramp learner reads them);
    rows that left the batch before the ramp are zeros. None: not kept."""

    @property
    def skipped_count(self) -> int:
        """Rows that left the batch at their ramp."""
        return 0 if self.skipped is None else int(np.count_nonzero(self.skipped))

    @property
    def batch_size(self) -> int:
        """Inputs in the batch."""
        return int(self.final_pred.shape[0])

    @property
    def active_sites(self) -> list[int]:
        """The active sites that ran, in execution order."""
        return [int(s) for s in self.site_ids]


# ------------------------------------------------------------------------------------------ helpers
class ExitRule(Protocol):
    """Decides, after each active site of a batch, which not-yet-released inputs exit there.

    The executor calls ``begin_batch`` once per batch (``n`` inputs; ``tags``: one per input, or
    None when the caller gave none), then ``decide`` after each active site, in execution order,
    on the rows still in the batch: ``rows`` are their indices in the batch as it began (skip mode
    drops released rows, so a rule that keeps per-input state indexes it by ``rows``).
    """

    runs_ramps: bool
    """True: the site's ramp runs and ``decide`` gets its logits; False: no ramp runs (``logits``
    is None) and an exiting row is released as the one-hot row of its ``pred``."""

    def begin_batch(self, n: int, tags: Sequence[object] | None) -> None: ...

    def decide(
        self, site: int, logits: np.ndarray | None, threshold: float, done: np.ndarray, kind: str, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(conf float32[m], pred int32[m], newly uint8[m])`` for the ``m`` rows and set
        ``done[newly] = 1``."""
        ...


class ThresholdRule:
    """The default exit rule (DESIGN.md): an input exits at the first active ramp where
    ``1 - confidence < threshold`` (the C core's ``ramp_exits``)."""

    runs_ramps = True

    def begin_batch(self, n: int, tags: Sequence[object] | None) -> None:
        """Stateless: nothing to reset."""

    def decide(
        self, site: int, logits: np.ndarray | None, threshold: float, done: np.ndarray, kind: str, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The C core's decision for one ramp (marks the exiting inputs in ``done``)."""
        return _core.ramp_exits(logits, threshold, done, kind)


def check_confidence_kind(kind: str) -> str:
    """Return ``kind`` if the C core knows it, else raise an ApparateError naming the choices."""
    if kind not in CONFIDENCE_KINDS:
        raise ApparateError(f"unknown confidence '{kind}'; use one of: {', '.join(CONFIDENCE_KINDS)}")
    return kind


def final_predictions(logits: np.ndarray) -> np.ndarray:
    """Argmax per row as int32 [n] (the original model's decision)."""
    return np.argmax(logits, axis=1).astype(np.int32, copy=False)


def release_final(final_logits: np.ndarray, final_pred: np.ndarray, on_release: ReleaseFn) -> float:
    """Release every input's final output through ``on_release`` (site None); return the time."""
    t_release = time.monotonic()
    for i in range(final_logits.shape[0]):
        on_release(i, final_logits[i], int(final_pred[i]), None, t_release)
    return t_release


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _float32_logits(value: np.ndarray, what: str) -> np.ndarray:
    if value.ndim != 2:
        raise ApparateError(
            f"{what} has shape {list(value.shape)}, expected [batch, classes]; recompile the engine directory"
        )
    return np.ascontiguousarray(value, dtype=np.float32)


def _normalise_config(
    manifest: Manifest, active_sites: Sequence[int], thresholds: Sequence[float]
) -> tuple[tuple[int, ...], dict[int, float]]:
    """Validate a config; return the active sites in execution order and threshold per site."""
    sites = [int(s) for s in active_sites]
    values = [float(t) for t in thresholds]
    if len(sites) != len(values):
        raise ApparateError(f"{len(sites)} active sites but {len(values)} thresholds; give one threshold per site")
    if len(set(sites)) != len(sites):
        raise ApparateError(f"active sites {sites} name a site twice")
    known = len(manifest.sites)
    bad = [s for s in sites if not 0 <= s < known]
    if bad:
        raise ApparateError(f"unknown ramp site(s) {bad}; this engine has sites 0..{known - 1}")
    if any(not 0.0 <= t <= 1.0 for t in values):
        raise ApparateError(f"thresholds {values} must lie in [0, 1] (0: never exit)")
    per_site = dict(zip(sites, values))
    return tuple(sorted(sites)), per_site


# -------------------------------------------------------------------------------------------- plans
@dataclass
class _Stage:
    """One segment of a plan, and the site it ends at (None: the model's end)."""

    runner: Runner
    outputs: list[str]
    site: int | None


@dataclass
class _Plan:
    """The sessions for one active set: segments split only at those sites."""

    active: tuple[int, ...]
    stages: list[_Stage]
    batch_names: frozenset[str] = frozenset()
    """Tensors with a batch axis first (model inputs, and segment and ramp inputs whose first axis
    is dynamic): what skip mode's compaction gathers."""
    compactable: bool = False
    """True when every tensor a later segment or ramp reads has the batch axis first, so that rows
    can leave the batch; False keeps every row (skip mode then behaves as release for this plan)."""


def _split_segments(model: onnx.ModelProto, manifest: Manifest, active: tuple[int, ...]) -> list:
    """Segments of ``model`` split at the ``active`` sites only (the compiler's ``split_model``)."""
    from apparate_trt.graph.split import split_model

    return split_model(model, manifest.sites, list(active))


def _plan_folder(active: tuple[int, ...]) -> str:
    """The scratch folder of the segment files of the plan for ``active``."""
    return "sites_" + "_".join(map(str, active))


class _PlanBuilder:
    """Builds and caches plans; builds run on one background thread (off the critical path).

    Ramp sessions are shared by all plans (one per site, created on first use).
    """

    def __init__(self, manifest: Manifest, threads: int | None, backend: ServingBackend | None = None) -> None:
        self.manifest = manifest
        self.threads = threads
        self.backend = backend or ServingBackend()
        self._model: onnx.ModelProto | None = None
        self._plans: OrderedDict[tuple[int, ...], _Plan] = OrderedDict()
        self._ramps: dict[int, Runner] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apparate-plan")
        self._scratch_dir: Path | None = None
        self.running: tuple[int, ...] = ()
        """The active set of the plan the executor runs now (never evicted from the cache)."""
        self.gate = IdleGate()
        """Stops the split worker while a batch runs (the executor calls it around each batch)."""

    def cached(self, active: tuple[int, ...]) -> _Plan | None:
        with self._lock:
            plan = self._plans.get(active)
            if plan is not None:
                self._plans.move_to_end(active)
            return plan

    def ramp(self, site: int) -> Runner:
        with self._lock:
            runner = self._ramps.get(site)
        if runner is None:
            runner = self.backend.open_ramp(self.manifest, site, self.threads)
            with self._lock:
                runner = self._ramps.setdefault(site, runner)
        return runner

    def set_ramp(self, site: int, runner: Runner) -> None:
        """Serve ``site``'s ramp with ``runner`` from now on (every plan shares it); the caller
        swaps it in between batches."""
        with self._lock:
            self._ramps[site] = runner

    def build(self, active: tuple[int, ...], warm_inputs: Mapping[str, np.ndarray] | None = None) -> _Plan:
        """Build (or fetch) the plan for ``active`` on the calling thread.

        With ``warm_inputs`` (a small batch) the new segments run once on it before the plan is
        cached: ONNX Runtime's first-run allocations happen here rather than in a served batch, and
        a segment chain that fails never reaches the critical path. Ramps (shared with the running
        plan) are not run here.
        """
        plan = self.cached(active)
        if plan is not None:
            return plan
        ramps = [self.ramp(site) for site in active]
        stages = self._stages(active)
        plan = _Plan(active, stages, *self._batch_layout(stages, ramps))
        if warm_inputs is not None:
            env = dict(warm_inputs)
            for stage in plan.stages:
                env.update(stage.runner.run(env, stage.outputs))
        with self._lock:
            plan = self._plans.setdefault(active, plan)
            self._plans.move_to_end(active)
            self._evict(keep=active)
            return plan

    def _evict(self, keep: tuple[int, ...]) -> None:
        """Drop the least recently used plans past PLANS_KEPT (with their segment files), never the
        unsplit one (the overload fallback runs it on the critical path), the running one nor ``keep``
        (the one just built)."""
        evictable = [key for key in self._plans if key not in ((), self.running, keep)]
        while len(self._plans) > PLANS_KEPT and evictable:
            active = evictable.pop(0)
            del self._plans[active]
            if self._scratch_dir is not None:  # loaded sessions keep their own copy of the model
                shutil.rmtree(self._scratch_dir / _plan_folder(active), ignore_errors=True)

    def _batch_layout(self, stages: list[_Stage], ramps: list[Runner]) -> tuple[frozenset[str], bool]:
        """The plan's batch-first tensors, and whether rows can leave its batch (see :class:`_Plan`)."""
        batch = {spec.name for spec in self.manifest.model.inputs}
        fixed: set[str] = set()
        for runner in [stage.runner for stage in stages[1:]] + ramps:
            dynamic, other = dynamic_batch_inputs(runner.inputs)
            batch |= dynamic
            fixed |= other
        fixed -= batch
        if fixed and len(stages) > 1:
            log.info("tensors %s have no batch axis first: rows of this plan never leave the batch", sorted(fixed))
        return frozenset(batch), not fixed

    def profiled_stage_ms(self, active: tuple[int, ...], batch_size: int) -> np.ndarray:
        """Profiled latency (ms) of each stage of the plan for ``active`` at ``batch_size`` rows
        (0 rows: 0 ms): the finest segments each stage spans, summed. float64 [len(active) + 1]."""
        if batch_size <= 0:
            return np.zeros(len(active) + 1)
        per_segment = np.asarray(self.manifest.segment_ms(batch_size), dtype=np.float64)
        bounds = [-1, *active, per_segment.shape[0] - 1]
        return np.asarray([per_segment[a + 1 : b + 1].sum() for a, b in zip(bounds[:-1], bounds[1:])])

    def forget(self, active: tuple[int, ...]) -> None:
        """Drop the cached plan for ``active`` (if any); the next :meth:`build` makes it anew."""
        with self._lock:
            self._plans.pop(active, None)

    def build_async(
        self, active: tuple[int, ...], warm_inputs: Mapping[str, np.ndarray] | None = None
    ) -> Future[_Plan]:
        """Build the plan for ``active`` on the background thread (see :meth:`build`)."""
        return self._pool.submit(self.build, active, warm_inputs)

    def _stages(self, active: tuple[int, ...]) -> list[_Stage]:
        m = self.manifest
        if not active:
            return [_Stage(self.backend.open_model(m, self.threads), [m.model.output], None)]
        if list(active) == [s.id for s in m.sites]:  # the finest split is on disk already
            return [
                _Stage(self.backend.open_segment(m, i, self.threads), list(seg.outputs), seg.ends_at_site)
                for i, seg in enumerate(m.segments)
            ]
        folder = _plan_folder(active)
        if should_split_out_of_process(m):
            try:
                files = split_out_of_process(m, active, self._scratch() / _plan_folder(active), gate=self.gate)
                return [
                    _Stage(
                        self.backend.open_merged(
                            f.file, self.threads, f"segment {i} of sites {list(active)}", f"{folder}_segment_{i}"
                        ),
                        f.outputs,
                        f.ends_at_site,
                    )
                    for i, f in enumerate(files)
                ]
            except ApparateError as exc:
                log.warning("%s; splitting in this process instead", exc)
        if self._model is None:
            self._model = onnx.load(str(m.path(m.model.file)))
        segments = _split_segments(self._model, m, active)
        return [
            _Stage(
                self.backend.open_merged(
                    seg.model, self.threads, f"segment {i} of sites {list(active)}", f"{folder}_segment_{i}"
                ),
                list(seg.outputs),
                seg.ends_at_site,
            )
            for i, seg in enumerate(segments)
        ]

    def _scratch(self) -> Path:
        """A private temporary directory for segment files (removed by :meth:`close`)."""
        with self._lock:
            if self._scratch_dir is None:
                self._scratch_dir = Path(tempfile.mkdtemp(prefix="apparate-plans-"))
            return self._scratch_dir

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._scratch_dir is not None:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)  # open sessions keep their own copy


# ----------------------------------------------------------------------------------------- executor
class Executor:
    """Runs batches through the segments of the active sites and releases early results.

    Args:
        manifest: the engine directory's manifest (``read_manifest``).
        threads: ONNX Runtime intra-op threads per session (None: every core).
        confidence: ``maxprob`` (max softmax probability) or ``entropy``.
        exit_rule: decides the exits after each ramp (default :class:`ThresholdRule`; e.g. the
            patience rule of ``apparate_trt.eval.policies``).
        exit_mode: ``release`` (every row runs to the end), ``skip`` (released rows leave the
            batch but for an audit sample drawn at :attr:`audit_rate`) or ``auto`` (each batch's
            caller says which, :meth:`run_batch`'s ``skip``; release when it does not).
        audit_seed: seed of the audit draws (None: fresh entropy).

    The initial plan has no active ramps (the unsplit model: vanilla) until :meth:`configure` is
    called. One thread runs batches; :meth:`configure` may be called from any thread.
    """

    def __init__(
        self,
        manifest: Manifest,
        threads: int | None = None,
        confidence: str = "maxprob",
        exit_rule: ExitRule | None = None,
        *,
        exit_mode: str = "release",
        audit_seed: int | None = None,
        backend: ServingBackend | None = None,
    ) -> None:
        self.manifest = manifest
        self.confidence = check_confidence_kind(confidence)
        self.exit_mode = check_exit_mode(exit_mode)
        backend = backend or ServingBackend()
        self.backend = backend
        """What runs the segments and ramps (:class:`~apparate_trt.runtime.serving_backend.ServingBackend`)."""
        if backend.chained and self.exit_mode != "release":
            raise ApparateError(
                f"exit mode '{self.exit_mode}' compacts batches on the host, which the {backend.name} backend's "
                f"device-resident chain does not do: use exit mode 'release' (--exit-mode release; every row runs "
                f"on), or --backend onnxruntime"
            )
        self.exit_rule: ExitRule = exit_rule or ThresholdRule()
        self._one_hot = np.eye(manifest.model.num_classes, dtype=np.float32)
        self.audit_rate = 1.0
        """Probability (0, 1] that a row a ramp releases runs on to the end in skip mode (the
        controller sets it, :meth:`set_audit_rate`)."""
        self._rng = np.random.default_rng(audit_seed)
        self._builder = _PlanBuilder(manifest, threads, backend)
        self._plan = self._builder.build(())
        self.build_gate = self._builder.gate
        """The :class:`~apparate_trt.runtime.split_worker.IdleGate` that stops a plan build's split
        worker while a batch runs; ``build_gate.enabled = False`` lets builds run beside batches."""
        self._thresholds: dict[int, float] = {}
        self._wanted: tuple[int, ...] = ()
        self._pending: Future[_Plan] | None = None
        self._warm_inputs: dict[str, np.ndarray] | None = None  # one sample of the latest batch
        self._lock = threading.Lock()
        self.keep_features = False
        """True: each outcome carries the active ramps' pooled features (``BatchOutcome.features``)
        where the ramp graphs export them; the ramp learner sets it."""
        self._new_ramps: dict[int, Runner] = {}  # swapped in before the next batch
        self._features: dict[int, np.ndarray] = {}  # the running batch's, site -> [n, D]

    # ------------------------------------------------------------------------------- configuration
    def configure(self, active_sites: Sequence[int], thresholds: Sequence[float], *, wait: bool = False) -> None:
        """Set the active sites and their thresholds (0: probation, runs but never exits).

        Thresholds apply from the next batch. A new active set whose plan is cached is swapped in
        before the next batch; otherwise its plan is built on a background thread and swapped in
        before the first batch after it is ready (``wait=True``: build it now, on this thread).
        Until then the current plan runs, and its ramps that left the active set never exit.
        """
        active, per_site = _normalise_config(self.manifest, active_sites, thresholds)
        with self._lock:
            self._thresholds = per_site
            if active == self._wanted:
                return
            self._wanted = active
            if active == self._plan.active:  # back to the running plan: nothing to build
                self._pending = None
                return
            if wait:
                self._pending = None
                plan = self._builder.build(active, self._warm_inputs)
            else:
                plan = self._builder.cached(active)
                if plan is None:
                    self._pending = self._builder.build_async(active, self._warm_inputs)
                    return
            self._pending = None
            self._set_plan(plan)

    def replace_ramp(self, site: int, file: str | Path) -> None:
        """Serve ``site``'s ramp from the ONNX graph ``file`` (same inputs and outputs as the
        compiled one: a refitted head) from the next batch on, in every plan. The session opens
        on the calling thread; a batch running meanwhile finishes with the old ramp.

        Raises:
            ApparateError: ``site`` is unknown or ``file`` does not open.
        """
        if not 0 <= int(site) < len(self.manifest.ramps):
            raise ApparateError(f"unknown ramp site {site}; this engine has sites 0..{len(self.manifest.ramps) - 1}")
        runner = self._builder.backend.open_ramp(self.manifest, int(site), self._builder.threads, file=Path(file))
        with self._lock:
            self._new_ramps[int(site)] = runner

    def _swap_ramps(self) -> None:
        """Put ramps replaced since the last batch in service (the batch thread, between batches)."""
        with self._lock:
            new, self._new_ramps = self._new_ramps, {}
        for site, runner in new.items():
            self._builder.set_ramp(site, runner)

    def set_audit_rate(self, rate: float) -> None:
        """Set the probability (0 <= rate <= 1) with which a released row is audited in skip mode;
        applies from the next batch. 0: never (a fixed policy that needs no feedback, such as the
        oracle; the controller keeps it at least ``MIN_AUDIT_RATE``)."""
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ApparateError(f"audit rate must be in [0, 1], got {rate}")
        self.audit_rate = rate

    def rebuild_plan(self, active_sites: Sequence[int]) -> None:
        """Build the plan for ``active_sites`` anew on the calling thread, as a ramp move would
        (split worker, warm-up on the latest batch's sample), replacing a cached one; the running
        plan and the configuration are unchanged. For benchmarks of what a build costs the batches
        served meanwhile."""
        active, _ = _normalise_config(self.manifest, active_sites, [0.0] * len(active_sites))
        self._builder.forget(active)
        self._builder.build(active, self._warm_inputs)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the last configured active set's plan is built (or failed, which is logged
        and keeps the running plan) and swap it in; for tests and warm-up."""
        with self._lock:
            pending = self._pending
        if pending is not None:
            wait_futures([pending], timeout_s)
            self._swap_if_ready()

    def _swap_if_ready(self) -> _Plan:
        """The plan to run now: the pending one if its build finished (errors are logged)."""
        with self._lock:
            pending = self._pending
            if pending is not None and pending.done():
                self._pending = None
                try:
                    plan = pending.result()
                except Exception as exc:  # noqa: BLE001 - keep serving with the old plan
                    log.error(
                        "building segments for active sites %s failed (%s); keeping sites %s",
                        self._wanted,
                        exc,
                        self._plan.active,
                    )
                    self._wanted = self._plan.active
                else:
                    if plan.active == self._wanted:
                        self._set_plan(plan)
            return self._plan

    def _set_plan(self, plan: _Plan) -> None:
        """Run ``plan`` from the next batch (the caller holds the lock); the cache keeps it."""
        self._plan = plan
        self._builder.running = plan.active

    @property
    def active_sites(self) -> list[int]:
        """The sites whose ramps run now (the last configured set once its plan is in)."""
        return list(self._plan.active)

    @property
    def thresholds(self) -> dict[int, float]:
        """Threshold per configured active site."""
        return dict(self._thresholds)

    @property
    def ready(self) -> bool:
        """True when the running plan is the one for the last configured active set."""
        return self._plan.active == self._wanted

    # ----------------------------------------------------------------------------------- execution
    def run_batch(
        self,
        inputs: Mapping[str, np.ndarray],
        on_release: ReleaseFn,
        tags: Sequence[object] | None = None,
        *,
        unsplit: bool = False,
        wait_final: Sequence[bool] | np.ndarray | None = None,
        skip: bool | None = None,
    ) -> BatchOutcome:
        """Run one batch (arrays with the batch axis first) and release results as they are decided.

        ``on_release`` is called on this thread for each early exit as soon as its ramp decides
        (site id given), then for every input still in the batch with the final output (site
        None). ``tags`` (one per input, optional) are handed to the exit rule's ``begin_batch``.
        ``unsplit=True`` runs the original model in one piece with no ramps (the engine's overload
        fallback): every result is final and the outcome has no ramp feedback. ``wait_final`` (bool
        per input, skip mode): rows whose request waits for the final answer, never skipped.
        ``skip`` (exit mode ``auto`` only; None: release): whether this batch runs in skip mode.
        """
        skipping = self.exit_mode == "skip" or (self.exit_mode == "auto" and bool(skip))
        self._builder.gate.batch_started()
        try:
            return self._run_plan(inputs, on_release, tags, unsplit, wait_final, skipping)
        finally:
            self._builder.gate.batch_finished()

    def _run_plan(
        self,
        inputs: Mapping[str, np.ndarray],
        on_release: ReleaseFn,
        tags: Sequence[object] | None,
        unsplit: bool,
        wait_final: Sequence[bool] | np.ndarray | None = None,
        skip_mode: bool = False,
    ) -> BatchOutcome:
        t_start = time.monotonic()
        if self._new_ramps:
            self._swap_ramps()
        plan = self._builder.build(()) if unsplit else self._swap_if_ready()
        if self._builder.backend.chained:
            return self._run_chained(plan, inputs, on_release, tags, t_start)
        self._features = {}
        thresholds = self._thresholds
        n = _batch_size(inputs)
        self.exit_rule.begin_batch(n, tags)
        self._warm_inputs = {name: value[:1] for name, value in inputs.items()}
        r = len(plan.active)
        env: dict[str, np.ndarray] = dict(inputs)
        done = np.zeros(n, dtype=np.uint8)
        exit_site = np.full(n, -1, dtype=np.int32)
        conf = np.zeros((r, n), dtype=np.float32)
        ramp_pred = np.zeros((r, n), dtype=np.int32)
        applied = np.zeros(r, dtype=np.float64)
        segments_ms = np.zeros(r + 1, dtype=np.float64)
        ramps_ms = np.zeros(r, dtype=np.float64)
        skipping = skip_mode and plan.compactable and r > 0
        rows = _Rows(n, r, self.audit_rate, _wait_final_mask(wait_final, n)) if skipping else None
        ramp_index = 0
        for stage_index, stage in enumerate(plan.stages):
            if rows is not None:
                rows.run[stage_index] = rows.alive.size
                if rows.alive.size == 0:
                    continue  # every row left the batch: the later segments have nothing to run
            t0 = time.perf_counter()
            env.update(stage.runner.run(env, stage.outputs))
            segments_ms[stage_index] = _ms_since(t0)
            if stage.site is None:
                continue
            t0 = time.perf_counter()
            threshold = thresholds.get(stage.site, 0.0)
            applied[ramp_index] = threshold
            if rows is None:
                self._run_ramp(
                    stage.site, threshold, env, done, conf[ramp_index], ramp_pred[ramp_index], exit_site, on_release
                )
            else:
                env = self._run_ramp_skipping(
                    stage.site,
                    threshold,
                    env,
                    done,
                    conf[ramp_index],
                    ramp_pred[ramp_index],
                    exit_site,
                    on_release,
                    rows,
                    plan.batch_names,
                )
            ramps_ms[ramp_index] = _ms_since(t0)
            ramp_index += 1
        if rows is None:
            final_logits = _float32_logits(
                env[self.manifest.model.output], f"model output '{self.manifest.model.output}'"
            )
            final_pred = final_predictions(final_logits)
            t_end = release_final(final_logits, final_pred, on_release)
            extra: dict = {}
        else:
            final_logits, final_pred, t_end = self._release_alive(env, rows, on_release, n)
            extra = dict(
                weights=rows.weights,
                skipped=rows.skipped,
                audited=rows.audited,
                rows_run=rows.run,
                compute_saved_ms=self._compute_saved_ms(plan.active, n, rows.run),
            )
        return self._outcome(
            plan,
            applied,
            conf,
            ramp_pred,
            final_logits,
            final_pred,
            exit_site,
            segments_ms,
            ramps_ms,
            t_start,
            t_end,
            **extra,
        )

    def _run_chained(
        self,
        plan: _Plan,
        inputs: Mapping[str, np.ndarray],
        on_release: ReleaseFn,
        tags: Sequence[object] | None,
        t_start: float,
    ) -> BatchOutcome:
        """Release mode on a device-resident chain (the GPU backends' :class:`ChainRunner`s).

        Segment outputs stay on the device and feed the next segment; each active ramp runs on the
        side stream and only its logits come to the host. With overlap (asynchronous runners) the
        next segment is queued before the host waits for a ramp's logits, so the exits of ramp k
        are decided and released while segment k + 1 runs. Stage wall times are not measured here
        (the GPU runs ahead of the host): they are NaN, and the controller uses the profile.
        """
        self._features = {}
        thresholds = self._thresholds
        n = _batch_size(inputs)
        self.exit_rule.begin_batch(n, tags)
        self._warm_inputs = {name: value[:1] for name, value in inputs.items()}
        r = len(plan.active)
        final = self.manifest.model.output
        runners = [stage.runner for stage in plan.stages] + [self._builder.ramp(site) for site in plan.active]
        for runner in runners:
            if not isinstance(runner, ChainRunner):
                raise ApparateError(f"{runner.name} cannot keep its tensors on the device (not a chain runner)")
        overlap = self._builder.backend.overlap
        if overlap is None:
            overlap = any(runner.asynchronous for runner in runners)
        env: dict = dict(inputs)
        done = np.zeros(n, dtype=np.uint8)
        exit_site = np.full(n, -1, dtype=np.int32)
        conf = np.zeros((r, n), dtype=np.float32)
        ramp_pred = np.zeros((r, n), dtype=np.int32)
        applied = np.zeros(r, dtype=np.float64)
        segments_ms = np.full(r + 1, np.nan) if overlap else np.zeros(r + 1)
        ramps_ms = np.full(r, np.nan) if overlap else np.zeros(r)
        pending: list[tuple[int, int, object]] = []  # (ramp index, site, submission)

        def decide(ramp_index: int, site: int, submission: object) -> None:
            t0 = time.perf_counter()
            threshold = thresholds.get(site, 0.0)
            applied[ramp_index] = threshold
            values = None if submission is None else submission.wait()
            self._run_ramp(
                site, threshold, env, done, conf[ramp_index], ramp_pred[ramp_index], exit_site, on_release, values
            )
            if not overlap:
                ramps_ms[ramp_index] = _ms_since(t0)

        last = None
        ramp_index = 0
        for stage_index, stage in enumerate(plan.stages):
            t0 = time.perf_counter()
            is_last = stage_index == len(plan.stages) - 1
            fetch = [final] if is_last else []
            keep = [name for name in stage.outputs if name not in fetch]
            last = stage.runner.submit(env, keep=keep, fetch=fetch)
            env.update(last.kept)
            if not overlap:
                segments_ms[stage_index] = _ms_since(t0)
            while pending:  # the previous ramp's exits, decided while this segment runs
                decide(*pending.pop())
            if stage.site is None:
                continue
            submission = None
            if self.exit_rule.runs_ramps:
                ramp = self._builder.ramp(stage.site)
                submission = ramp.submit(env, fetch=self._ramp_outputs(stage.site), side=True)
            if overlap:
                pending.append((ramp_index, stage.site, submission))
            else:
                decide(ramp_index, stage.site, submission)
            ramp_index += 1
        while pending:
            decide(*pending.pop())
        final_logits = _float32_logits(last.wait()[final], f"model output '{final}'")
        final_pred = final_predictions(final_logits)
        t_end = release_final(final_logits, final_pred, on_release)
        return self._outcome(
            plan, applied, conf, ramp_pred, final_logits, final_pred, exit_site, segments_ms, ramps_ms, t_start, t_end
        )

    def _outcome(
        self,
        plan: _Plan,
        applied: np.ndarray,
        conf: np.ndarray,
        ramp_pred: np.ndarray,
        final_logits: np.ndarray,
        final_pred: np.ndarray,
        exit_site: np.ndarray,
        segments_ms: np.ndarray,
        ramps_ms: np.ndarray,
        t_start: float,
        t_end: float,
        **extra: object,
    ) -> BatchOutcome:
        """The batch's :class:`BatchOutcome` (with the kept ramp features, which it takes over)."""
        if self.keep_features and self._features:
            extra["features"], self._features = self._features, {}
        return BatchOutcome(
            site_ids=np.asarray(plan.active, dtype=np.int32),
            thresholds=applied,
            confidence=conf,
            ramp_pred=ramp_pred,
            final_logits=final_logits,
            final_pred=final_pred,
            agree=(ramp_pred == final_pred[None, :]).astype(np.uint8),
            exit_site=exit_site,
            segments_ms=segments_ms,
            ramps_ms=ramps_ms,
            total_ms=(t_end - t_start) * 1000.0,
            t_start=t_start,
            t_end=t_end,
            **extra,
        )

    def _release_alive(
        self, env: Mapping[str, np.ndarray], rows: _Rows, on_release: ReleaseFn, n: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Release the final output of the rows still in the batch; return the batch's final
        logits (zeros for skipped rows), predictions (-1 for them) and the release time."""
        classes = self.manifest.model.num_classes
        final_logits = np.zeros((n, classes), dtype=np.float32)
        final_pred = np.full(n, -1, dtype=np.int32)
        t_release = time.monotonic()
        if rows.alive.size:
            name = self.manifest.model.output
            logits = _float32_logits(env[name], f"model output '{name}'")
            final_logits = np.zeros((n, logits.shape[1]), dtype=np.float32)
            final_logits[rows.alive] = logits
            final_pred[rows.alive] = final_predictions(logits)
            for i in rows.alive:
                on_release(int(i), final_logits[i], int(final_pred[i]), None, t_release)
        return final_logits, final_pred, t_release

    def _compute_saved_ms(self, active: tuple[int, ...], n: int, rows_run: np.ndarray) -> float:
        """Profiled segment time the skipped rows did not cost (ms), see BatchOutcome."""
        full = self._builder.profiled_stage_ms(active, n)
        ran = [self._builder.profiled_stage_ms(active, int(k))[i] for i, k in enumerate(rows_run)]
        return float(max(0.0, full.sum() - float(np.sum(ran))))

    def _ramp_outputs(self, site: int) -> list[str]:
        """The ramp outputs a batch needs: the logits, and the pooled features for the learner."""
        entry = self.manifest.ramps[site]
        wanted = [entry.output]
        if self.keep_features and entry.features:
            wanted.append(entry.features)
        return wanted

    def _ramp_logits(
        self,
        site: int,
        env: Mapping[str, np.ndarray],
        rows: np.ndarray | None = None,
        n: int = 0,
        values: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """The ramp of ``site`` run on the environment (or its outputs ``values``, already run on
        the device): float32 logits [rows, classes]; None when the exit rule runs no ramps. With
        :attr:`keep_features` the ramp's pooled features are kept for the outcome, scattered to
        batch rows ``rows`` of ``n`` (None: every row)."""
        if not self.exit_rule.runs_ramps:
            return None
        entry = self.manifest.ramps[site]
        wanted = self._ramp_outputs(site)
        if values is None:
            values = self._builder.ramp(site).run(env, wanted)
        if len(wanted) > 1 and entry.features in values:
            self._keep_features(site, values[entry.features], rows, n)
        return _float32_logits(values[entry.output], f"ramp {site} output '{entry.output}'")

    def _keep_features(self, site: int, value: np.ndarray, rows: np.ndarray | None, n: int) -> None:
        """Record a ramp's pooled features [rows, D] as the batch's [n, D] (zeros for rows gone)."""
        value = np.asarray(value, dtype=np.float32)
        if value.ndim != 2:
            return  # not [rows, D]: nothing the learner can use
        if rows is None:
            self._features[site] = np.array(value)
            return
        full = np.zeros((n, value.shape[1]), dtype=np.float32)
        full[rows] = value
        self._features[site] = full

    def _run_ramp_skipping(
        self,
        site: int,
        threshold: float,
        env: dict[str, np.ndarray],
        done: np.ndarray,
        conf_out: np.ndarray,
        pred_out: np.ndarray,
        exit_site: np.ndarray,
        on_release: ReleaseFn,
        rows: _Rows,
        batch_names: frozenset[str],
    ) -> dict[str, np.ndarray]:
        """:meth:`_run_ramp` on the rows still in the batch, then the skip: each newly exiting row
        runs on only if audited; the others are released as their last result and leave the
        batch. Returns the (compacted) environment."""
        alive = rows.alive
        logits = self._ramp_logits(site, env, alive, rows.weights.shape[0])
        sub_done = done[alive]
        c, pred, newly = self.exit_rule.decide(site, logits, threshold, sub_done, self.confidence, alive)
        done[alive] = sub_done
        conf_out[alive] = c
        pred_out[alive] = pred
        positions = np.flatnonzero(newly)
        if positions.size == 0:
            return env
        exiting = alive[positions]
        exit_site[exiting] = site
        audited = draw_audits(self._rng, exiting, rows.wait_final, rows.rate)
        rows.mark(exiting, audited)
        released = self._released_rows(logits, pred)
        t_release = time.monotonic()
        for pos, i, keep in zip(positions, exiting, audited):
            if keep:
                on_release(int(i), released[pos], int(pred[pos]), site, t_release)
            else:
                on_release(int(i), released[pos], int(pred[pos]), site, t_release, last=True)
        if audited.all():
            return env
        stay = np.ones(alive.size, dtype=bool)
        stay[positions[~audited]] = False
        kept = np.flatnonzero(stay)
        rows.alive = alive[kept]
        return compact(env, kept, set(batch_names), alive.size)

    def _run_ramp(
        self,
        site: int,
        threshold: float,
        env: dict[str, np.ndarray],
        done: np.ndarray,
        conf_out: np.ndarray,
        pred_out: np.ndarray,
        exit_site: np.ndarray,
        on_release: ReleaseFn,
        values: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Run one ramp (or take its device-run outputs ``values``), decide its exits (marking
        ``done``) and release each exiting input."""
        logits = self._ramp_logits(site, env, values=values)
        conf, pred, newly = self.exit_rule.decide(site, logits, threshold, done, self.confidence, self._all_rows(done))
        conf_out[:] = conf
        pred_out[:] = pred
        exiting = np.flatnonzero(newly)
        if exiting.size == 0:
            return
        exit_site[exiting] = site
        released = self._released_rows(logits, pred)
        t_release = time.monotonic()
        for i in exiting:
            on_release(int(i), released[i], int(pred[i]), site, t_release)

    def _released_rows(self, logits: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
        """The output rows an exit releases: the ramp's logits, or one-hot rows of ``pred`` when
        the exit rule runs no ramps."""
        return logits if logits is not None else self._one_hot[np.clip(pred, 0, self._one_hot.shape[0] - 1)]

    @staticmethod
    def _all_rows(done: np.ndarray) -> np.ndarray:
        return np.arange(done.shape[0])

    def close(self) -> None:
        """Stop the background builder (sessions are freed with the executor)."""
        self._builder.close()


class _Rows:
    """Skip mode's book of one batch: which rows are still in it, and what each row's feedback weighs."""

    def __init__(self, n: int, ramps: int, rate: float, wait_final: np.ndarray) -> None:
        self.alive = np.arange(n)
        """Original batch indices of the rows still in the batch, ascending."""
        self.rate = float(rate)
        self.wait_final = wait_final
        self.weights = np.ones(n, dtype=np.float64)
        self.skipped = np.zeros(n, dtype=bool)
        self.audited = 0
        self.run = np.zeros(ramps + 1, dtype=np.int64)
        """Rows each segment ran on."""

    def mark(self, exiting: np.ndarray, audited: np.ndarray) -> None:
        """Record the fate of rows that exit at a ramp: skipped ones weigh 0, audited ones 1 / rate
        (a wait-final row was kept for sure: it weighs 1)."""
        sampled = exiting[audited & ~self.wait_final[exiting]]
        if sampled.size:  # none at rate 0
            self.weights[sampled] = 1.0 / self.rate
        self.weights[exiting[~audited]] = 0.0
        self.skipped[exiting[~audited]] = True
        self.audited += int(sampled.size)


def _wait_final_mask(wait_final: Sequence[bool] | np.ndarray | None, n: int) -> np.ndarray:
    if wait_final is None:
        return np.zeros(n, dtype=bool)
    mask = np.asarray(wait_final, dtype=bool)
    if mask.shape != (n,):
        raise ApparateError(f"wait_final has {mask.size} entries for a batch of {n}; give one per input")
    return mask


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    sizes = {int(np.shape(v)[0]) for v in inputs.values()}
    if len(sizes) != 1:
        raise ApparateError(
            f"batch inputs disagree on the batch size ({sorted(sizes)}); stack the same samples in every input"
        )
    (n,) = sizes
    if n < 1:
        raise ApparateError("empty batch: give at least one sample")
    return n
