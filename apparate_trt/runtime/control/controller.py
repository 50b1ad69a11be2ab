"""The control plane: per-ramp thresholds (fast loop) and ramp placement (slow loop).

The executor hands every finished batch to :meth:`Controller.observe` as a ``BatchOutcome``: for
each input and each active ramp, the ramp's confidence and whether its argmax agreed with the
model's final output. That free feedback goes into a sliding window (the C core's
``FeedbackWindow``) and drives, per DESIGN.md ("Online"):

Initial configuration
    The active sites come from the manifest's ``initial_config`` (chosen by the compiler within the
    budget). Thresholds: with ``initial_thresholds="bootstrap"`` (the default) the window is seeded
    with the held-out bootstrap statistics (``bootstrap_stats.npz``; the bootstrap data is the start
    of the same stream, and the ramps never trained on the held-out part) and the thresholds are
    tuned on them at once, so that savings start with the first request. Live feedback then pushes
    the bootstrap samples out of the window. With ``"never"`` (the paper's start, also used when the
    bootstrap statistics are missing or the confidence is not ``maxprob``, which they were measured
    with) every ramp starts at threshold 0 (never exit) until the first tune on live feedback.

Threshold tuning (fast loop, accuracy first)
    ``search_thresholds`` (greedy hill climb in C) on the window, maximising the latency saved per
    input (ms) subject to the window's accuracy. Two corrections make the served requests, not
    just the window, meet the constraint:

    - the target is ``target_fraction * accuracy_constraint`` (default 0.3 of it): windows of 256
      served requests stay within 1% in 95% of cases only if the true disagreement rate is about
      0.3% (Poisson noise);
    - the hill climb stops just before the window's next wrong exit, so on new requests its
      thresholds make about one more wrong exit per ramp than it saw (the winner's curse): that
      excess, ``ramps / samples``, is taken off the target (:func:`search_constraint`), and a tune
      waits for ``ramps / target`` samples (capped at the window, :meth:`Controller.samples_to_tune`).
      In skip mode the window sees only audited exits, so the excess is ``1 / audit rate`` times
      larger (``benchmarks/skip_discount.py``: on the synthetic stream at a 25% audit rate, the
      realised disagreement is 0.40% without that factor and 0.27% with it, against 0.3%).

    Measured on a synthetic stationary stream (tests/runtime/control/test_controller.py), the realised
    disagreement then matches the target; without the correction it was 1.6 to 3.5 times it.
    A tune runs on the first feedback, after every ramp change or emergency cut, when the window's
    accuracy with the current thresholds breaks ``1 - accuracy_constraint``, and every
    ``tune_every_batches`` batches.

Emergency cut
    Every observation, over the most recent ``emergency_window`` samples: a ramp whose wrong exits there
    reach :func:`emergency_limit` (a count that a ramp spending the whole error budget reaches with
    probability below 1e-3; 7 of 128 samples at a 1% constraint) gets threshold 0 at once. The
    window is then cleared, since its older feedback describes a workload that is gone, and a tune
    follows once enough fresh samples arrived.

Ramp adjustment (slow loop, latency first)
    Every ``adjust_every_batches`` batches, and at least
    ``window_size`` samples after the last adjustment or ramp change (small batches must not make it
    hasty), when no tune is pending and no ramp is in probation: each active ramp's utility over the
    window with the current thresholds, via ``ramp_utility``: ``exit share * ms saved relative to
    the next exit point - pass share * ramp cost ms``, where a ramp's cost is the ramp itself plus
    the segment boundary its site needs (``Manifest.boundary_ms``: on CPU a boundary can cost more
    than the ramp, and an exit has to pay for both). Ramps with negative utility (or no exits) are
    removed, and each one's freed budget probes a site deeper: halfway between it and the next
    active ramp (or the latest useful site). When every ramp pays off, spare budget probes a site
    earlier: halfway between the start and the earliest active ramp. Where the budget cannot afford
    the halfway site, the nearest free site that it affords is probed instead. With no active ramp
    (the engine then serves the unsplit model, at vanilla's cost) a round needs only
    ``adjust_every_batches`` batches, not a window of samples, so the slow loop never ends with
    nothing to try: it probes again within that many batches. When no ramp pays (a removal leaves
    none active, an ``idle`` event) the wait doubles with each probe in a row that fails, up to
    ``2 ** defaults.PROBE_BACKOFF_DOUBLINGS`` times (:meth:`Controller.idle_wait_batches`), and a
    probe out of that wait that fails returns to it rather than chaining deeper: on a model whose
    ramps never pay, the probes' split chain runs on about 8% of batches once backed off, the rest
    at vanilla's cost. A change of the stream's final outputs since the engine went idle (predicted
    classes' shares or mean top probability, :mod:`~apparate_trt.runtime.control.shift`) ends the
    wait at once, and a round in which every active ramp pays starts the backoff over. A removed site is not probed
    again for ``probe_cooldown`` adjustment rounds. Sites past the latest useful site (where the
    latency after the site does not exceed the ramp's and boundary's cost) are never used. The
    budget is checked in latency: the sum of the active ramps' profiled costs (ramps alone, as the
    compiler's budget) at the current batch size stays within ``manifest.budget`` times the model's
    latency (with ``defaults.BUDGET_SLACK`` of margin for the profile's noise). A new ramp starts
    in probation (threshold 0, never exits) and gets its threshold at the
    next tune that has enough samples holding it; meanwhile the other ramps are re-tuned at once on
    the samples that hold them (a ramp in probation changes no exit, so that search is exact).

Skip mode (``exit_mode="skip"``)
    The executor drops released rows from the batch but for an audit sample; an audited row
    carries the weight ``1 / audit_rate`` and a skipped one never reaches the window. Every sum
    over the window (accuracy, the threshold search, exit and pass shares of the ramp utility) is
    weighted (``_core`` takes the weights), so the estimates stay unbiased. :attr:`Controller.audit_rate`
    is ``audit_rate`` (default 0.25, at least ``MIN_AUDIT_RATE``), raised to 1 (every exit runs on)
    while the window holds too few samples with every active ramp to tune on: at the start
    without bootstrap statistics, after an emergency cleared the window, and while a new ramp is
    in probation (no sample holds it yet). The window stores ``window_size / audit_rate`` samples
    (:func:`skip_window_size`). An exit then also saves compute: the row leaves the later segments, which
    the rest of the batch and the queue behind it gain (:meth:`LatencyModel.row_saved_ms`), so
    the saving per exit the search and the utility use adds ``(1 - audit_rate)`` times that. The
    emergency check counts the audited wrong exits against what a ramp spending the whole error
    budget would show at the realised audit share.

Latencies (saved per exit, ramp costs) are the running chain's measured wall times once the
active set has run a few batches (:meth:`Controller.chain_ms`), else the profile at the current
batch size; a boundary's cost and the budget check for a new ramp always use the profile (the
chain cannot time a boundary apart from its segments, and a new ramp has not run yet).

Every decision is an event ``{t, kind, reason, ...}`` (kinds: ``initial``, ``tune``,
``emergency``, ``remove_ramp``, ``add_ramp``, ``idle``, ``audit``, ``refit``: a ramp's head refitted on served
samples, :mod:`apparate_trt.runtime.learning`, swapped in or rejected), and every observation (one batch, or the several
that queued while the engine's control thread was busy: :meth:`Controller.observe_batches`)
appends to the threshold history
``{t, active_sites, thresholds, window_accuracy, window_samples, audit_rate}``. Times ``t`` are in
seconds of ``clock`` (``time.monotonic`` by default, the executor's clock).

Bounded state
    Nothing grows with the server's age: the window holds ``window_size`` samples (the C core's
    ring buffer), the decision log the newest ``events_kept`` events (default EVENTS_KEPT) and the
    history the newest ``history_kept`` observations (default HISTORY_KEPT), both
    :class:`~apparate_trt.runtime.control.records.RingLog`; measured chain timings are kept for the
    TIMED_SETS_KEPT most recently run active sets; the removed-site cooldowns are one entry per site.
    ``/metrics`` reads only the newest observation (:attr:`Controller.last_observation`).

The pure parts live beside this state machine: the window statistics in
:mod:`~apparate_trt.runtime.control.statistics`, the placement rules in
:mod:`~apparate_trt.runtime.control.placement`, the option checks in
:mod:`~apparate_trt.runtime.control.options`, the latency model in :mod:`apparate_trt.latency`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from apparate_trt import _core
from apparate_trt.defaults import (
    BUDGET_SLACK,
    DEFAULT_ACCURACY_CONSTRAINT,
    DEFAULT_AUDIT_RATE,
    DEFAULT_TARGET_FRACTION,
    MIN_AUDIT_RATE,
    PROBE_BACKOFF_DOUBLINGS,
    SEARCH_MIN_STEP,
)
from apparate_trt.engine_dir import BootstrapStats, Manifest
from apparate_trt.errors import ApparateError
from apparate_trt.latency import LatencyModel, saved_next_ms, sum_after
from apparate_trt.runtime.compaction import check_exit_mode, compacts
from apparate_trt.runtime.control.options import check_options
from apparate_trt.runtime.control.placement import deeper_probes, earlier_probes, with_site
from apparate_trt.runtime.control.records import EVENTS_KEPT, HISTORY_KEPT, RingLog, plain
from apparate_trt.runtime.control.shift import StreamShift
from apparate_trt.runtime.control.statistics import (
    emergency_limit,
    emergency_samples,
    samples_to_tune,
    search_constraint,
    skip_window_size,
)

Config = tuple[list[int], list[float]]
"""``(active site ids in execution order, threshold per active site)``."""

MIN_TIMED_BATCHES = 8
"""Batches an active set must have run before its measured timings replace the profile."""
TIMED_SETS_KEPT = 32
"""Active sets whose measured chain timings are kept (the least recently run is dropped)."""
BATCH_SIZE_SMOOTHING = 0.1
"""Weight of the newest batch in the running batch size used to read the profile."""


class Feedback(Protocol):
    """What the controller reads from a batch (``apparate_trt.runtime.executor.BatchOutcome``)."""

    site_ids: np.ndarray  # int32 [r]: active sites that ran, in execution order
    confidence: np.ndarray  # float32 [r, n]
    agree: np.ndarray  # uint8 [r, n]: ramp argmax == final argmax
    exit_site: np.ndarray  # int32 [n]: site that released the input early, -1 none
    # optional (skip mode): weights float64 [n], 1 / P(row reached the end), 0 for a skipped row


@dataclass
class _Tuned:
    thresholds: np.ndarray
    accuracy: float
    saved_ms: float
    samples: int


class Controller:
    """Adapts thresholds and active ramps from each batch's feedback (see the module docstring).

    Args:
        manifest: the engine directory's manifest (profiles, budget, initial config, bootstrap).
        accuracy_constraint: allowed share (0..1) of released results that disagree with the
            original model over a window.
        window_size: feedback window capacity, in samples (inputs); skip mode stores
            ``window_size / audit_rate`` (:func:`skip_window_size`).
        tune_every_batches: periodic re-tune interval, in batches.
        adjust_every_batches: ramp adjustment interval, in batches.
        emergency_window: most recent samples checked each batch for a ramp turning inaccurate.
        confidence: the executor's confidence kind (``maxprob`` or ``entropy``).
        clock: seconds, the same clock as the executor's timestamps.
        target_fraction: the tune aims at ``target_fraction * accuracy_constraint`` (0 < f <= 1).
        min_tune_samples: fewest window samples (holding every active ramp) a tune uses.
        initial_thresholds: ``bootstrap`` (tune on the bootstrap statistics at start) or ``never``.
        probe_cooldown: adjustment rounds during which a removed site is not probed again.
        bootstrap: bootstrap statistics to use instead of the engine directory's file.
        exit_mode: the executor's exit mode, ``release``, ``skip`` (see "Skip mode") or ``auto``
            (skip mode per batch under a backlog: weighed as skip mode, its skip gain scaled by
            the running share of batches that ran in it, :attr:`skip_share`; its window holds skip
            mode's ``window_size / audit_rate`` samples even while its batches run in release
            mode, so it reacts to a change more slowly than release mode).
        audit_rate: skip mode's steady audit probability (``MIN_AUDIT_RATE`` to 1).
        events_kept: decisions kept in :attr:`events` (the newest; default EVENTS_KEPT).
        history_kept: observations kept in :attr:`threshold_history` (the newest; default
            HISTORY_KEPT). A replay that wants its whole run passes its request count.
    """

    def __init__(
        self,
        manifest: Manifest,
        accuracy_constraint: float = DEFAULT_ACCURACY_CONSTRAINT,
        window_size: int = 1024,
        tune_every_batches: int = 16,
        adjust_every_batches: int = 32,
        emergency_window: int = 128,
        confidence: str = "maxprob",
        clock: Callable[[], float] = time.monotonic,
        *,
        target_fraction: float = DEFAULT_TARGET_FRACTION,
        min_tune_samples: int = 128,
        initial_thresholds: str = "bootstrap",
        probe_cooldown: int = 4,
        bootstrap: BootstrapStats | None = None,
        exit_mode: str = "release",
        audit_rate: float = DEFAULT_AUDIT_RATE,
        events_kept: int | None = None,
        history_kept: int | None = None,
    ) -> None:
        self.exit_mode = check_exit_mode(exit_mode)
        if not MIN_AUDIT_RATE <= float(audit_rate) <= 1.0:
            raise ApparateError(
                f"audit rate must be in [{MIN_AUDIT_RATE}, 1] so that feedback never stops, got {audit_rate}"
            )
        self.steady_audit_rate = float(audit_rate)
        self.skip_share = 1.0 if self.exit_mode == "skip" else 0.0
        """Running share (0..1) of the batches that ran in skip mode: 1 in skip mode, 0 in release
        mode; in ``auto`` mode it follows the load (the skip gain in :meth:`chain_ms` is scaled by it)."""
        check_options(
            accuracy_constraint,
            window_size,
            tune_every_batches,
            adjust_every_batches,
            emergency_window,
            target_fraction,
            min_tune_samples,
            initial_thresholds,
            probe_cooldown,
        )
        self.manifest = manifest
        self.latency = LatencyModel(manifest)
        self.constraint = float(accuracy_constraint)
        self.target_constraint = float(target_fraction) * self.constraint
        self.window_size = (
            int(window_size) if exit_mode == "release" else skip_window_size(int(window_size), float(audit_rate))
        )
        self.tune_every = int(tune_every_batches)
        self.adjust_every = int(adjust_every_batches)
        self.emergency_window = int(emergency_window)
        self.confidence = confidence
        self.min_tune_samples = min(int(min_tune_samples), self.window_size)
        self.probe_cooldown = int(probe_cooldown)
        self.clock = clock
        self.num_sites = len(manifest.sites)
        self.window = _core.FeedbackWindow(self.window_size, max(1, self.num_sites))
        self.batch_size = 1.0
        self.batches = 0
        self._last_tune_batch = 0
        self._last_adjust_batch = 0
        self._samples_since_adjust = 0
        self._partial_for: tuple[int, ...] | None = None
        self._timings: OrderedDict[tuple[int, ...], tuple[np.ndarray, int]] = OrderedDict()
        self._adjust_rounds = 0
        self._tuned_live = False
        self._pending_tune: str | None = "first feedback"
        self._probation: set[int] = set()
        self._blocked_until: dict[int, int] = {}
        self._idle_failures = 0
        self._shift = StreamShift()
        self._events = RingLog(EVENTS_KEPT if events_kept is None else events_kept)
        self._history = RingLog(HISTORY_KEPT if history_kept is None else history_kept)
        self._active, self._thresholds = self._start(initial_thresholds, bootstrap)
        self._audit_rate = self._audit_choice()[0]

    @property
    def audit_rate(self) -> float:
        """Probability (0, 1] that a released row runs on to the end (skip mode; 1 in release mode)."""
        return self._audit_rate

    def _audit_choice(self) -> tuple[float, str]:
        """The audit rate the state calls for (see "Skip mode"), and why."""
        if not compacts(self.exit_mode):
            return 1.0, "release mode"
        if self._active and self.window.count(np.asarray(self._active, np.int32)) < self.samples_to_tune(
            len(self._active)
        ):
            why = f"sites {sorted(self._probation)} in probation" if self._probation else "the window is thin"
            return 1.0, f"{why}: too few samples with every active ramp to tune on"
        return self.steady_audit_rate, "steady: the window holds enough samples to tune on"

    def _update_audit_rate(self, t: float) -> None:
        rate, why = self._audit_choice()
        if rate != self._audit_rate:
            self._event(
                t,
                "audit",
                f"audit rate {self._audit_rate:.3g} -> {rate:.3g}: {why}",
                old_rate=self._audit_rate,
                rate=rate,
            )
            self._audit_rate = rate

    # --------------------------------------------------------------------------- public API
    def initial_config(self) -> Config:
        """The configuration to serve the first batch with: ``(active sites, thresholds)``."""
        return self.config

    @property
    def config(self) -> Config:
        """The current ``(active sites in execution order, thresholds)``."""
        return list(self._active), [float(t) for t in self._thresholds]

    @property
    def events(self) -> list[dict[str, Any]]:
        """The kept decisions (the newest ``events_kept``), oldest first: ``{t, kind, reason, ...}``
        (copies; :attr:`events_dropped` says how many older ones are gone)."""
        return self._events.snapshot()

    @property
    def events_dropped(self) -> int:
        """Decisions made but no longer kept in :attr:`events` (0 while the log is complete)."""
        return self._events.dropped

    @property
    def threshold_history(self) -> list[dict[str, Any]]:
        """The kept observations (the newest ``history_kept``), oldest first: ``{t, active_sites,
        thresholds, window_accuracy, window_samples, audit_rate}`` (copies; :attr:`history_dropped`
        says how many older ones are gone)."""
        return self._history.snapshot()

    @property
    def history_dropped(self) -> int:
        """Observations recorded but no longer kept in :attr:`threshold_history`."""
        return self._history.dropped

    @property
    def last_observation(self) -> dict[str, Any] | None:
        """The newest entry of :attr:`threshold_history` (a copy), or None before the first
        feedback; O(1), for ``/metrics``."""
        return self._history.latest()

    def observe(self, outcome: Feedback, t: float | None = None) -> Config | None:
        """Take one batch's feedback; return the new configuration if it changed, else None.

        ``t`` is the time of the feedback in seconds of ``clock`` (default: now).
        """
        return self.observe_batches([outcome], t)

    def observe_batches(self, outcomes: Sequence[Feedback], t: float | None = None) -> Config | None:
        """Take the feedback of several batches (oldest first) and decide once, as after the last
        of them; return the new configuration if it changed, else None. The engine's control loop
        (:mod:`~apparate_trt.runtime.control.loop`) hands over everything that finished since its last call.

        Feedback from ramps that are no longer active (batches that ran before the last change)
        is kept in the window like any other: it is what those ramps said about real inputs.
        """
        t = self.clock() if t is None else float(t)
        before = self.config
        for outcome in outcomes:
            self._push(outcome)
            self.batches += 1
        window = None
        if not self._emergency(t):
            window = self._window_accuracy()
            self._maybe_tune(t, window)
            self._maybe_adjust(t)
        self._update_audit_rate(t)
        after = self.config
        changed = after != before
        self._record_history(t, window if window is not None and not changed else self._window_accuracy())
        return after if changed else None

    # --------------------------------------------------------------------------- start
    def _start(self, mode: str, bootstrap: BootstrapStats | None) -> tuple[list[int], np.ndarray]:
        initial = self.manifest.initial_config
        active = sorted(int(s) for s in initial.active_sites if 0 <= int(s) < self.num_sites)
        thresholds = np.zeros(len(active), dtype=np.float64)
        self._active, self._thresholds = active, thresholds
        t = self.clock()
        stats, why_not = self._bootstrap_for_start(mode, bootstrap)
        if stats is None:
            self._event(
                t, "initial", f"sites from the manifest; thresholds 0 (never exit) until the first tune: {why_not}"
            )
            return active, thresholds
        self._seed_window(stats)
        refitted = self._forget_refitted(active)
        if refitted:
            return active, self._start_refitted(t, active, refitted)
        tuned = self._search(active)
        if tuned is None:
            self._event(
                t,
                "initial",
                f"sites from the manifest; thresholds 0 (never exit) until the first tune: {len(self.window)} held-out "
                f"bootstrap samples are too few to tune {len(active)} ramps on (needs "
                f"{self.samples_to_tune(len(active))})",
            )
            return active, thresholds
        self._event(
            t,
            "initial",
            f"sites from the manifest; thresholds tuned on {tuned.samples} held-out bootstrap samples",
            thresholds=[float(x) for x in tuned.thresholds],
            window_accuracy=tuned.accuracy,
            saved_ms=tuned.saved_ms,
        )
        return active, tuned.thresholds

    def _forget_refitted(self, active: Sequence[int]) -> list[int]:
        """Active sites whose ramp was refitted since compile time (``RampEntry.refit``): the
        bootstrap statistics describe the compiled head, so the window forgets them and the
        ramps start in probation."""
        refitted = [s for s in active if self.manifest.ramps[s].refit]
        for site in refitted:
            self.window.remove_site(site)
        self._probation.update(refitted)
        return refitted

    def _start_refitted(self, t: float, active: list[int], refitted: list[int]) -> np.ndarray:
        """Thresholds at the start when some active ramps were refitted: the others tuned on the
        bootstrap statistics, the refitted ones 0 (probation) until live feedback holds them."""
        established = [s for s in active if s not in refitted]
        tuned = self._search(established) if established else None
        per_site = {} if tuned is None else dict(zip(established, tuned.thresholds))
        thresholds = np.asarray([per_site.get(s, 0.0) for s in active], dtype=np.float64)
        self._partial_for = tuple(active) if tuned is not None else None
        self._event(
            t,
            "initial",
            f"sites from the manifest; refitted ramps {refitted} in probation (threshold 0) until live feedback "
            + (
                f"holds them; sites {established} tuned on {tuned.samples} held-out bootstrap samples"
                if tuned
                else "holds them"
            ),
            thresholds=[float(x) for x in thresholds],
        )
        return thresholds

    # --------------------------------------------------------------------------- refits
    @property
    def probation(self) -> frozenset[int]:
        """Active sites whose ramps run at threshold 0 (never exit) until a tune holds them."""
        return frozenset(self._probation)

    def ramp_refitted(self, t: float | None, site: int, figures: dict[str, Any]) -> Config | None:
        """A refitted head serves ``site`` from the next batch: its old feedback is forgotten, it
        goes into probation (threshold 0) until a tune on the new head's feedback, and the other
        ramps are re-tuned at once; ``figures`` (the refit's before/after quality, samples, times)
        go into a ``refit`` event. Returns the new configuration if it changed."""
        t = self.clock() if t is None else float(t)
        before = self.config
        site = int(site)
        self.window.remove_site(site)
        if site in self._active:
            self._thresholds[self._active.index(site)] = 0.0
            self._probation.add(site)
            self._pending_tune = f"after a refit of ramp {site}"
            self._partial_for = None
        self._event(t, "refit", self._refit_reason(site, figures, accepted=True), site=site, accepted=True, **figures)
        self._update_audit_rate(t)
        after = self.config
        return after if after != before else None

    def refit_rejected(self, t: float | None, site: int, figures: dict[str, Any]) -> None:
        """Record a refit of ``site`` that was not swapped in (the new head did not release more on
        held-out samples, or the refit failed): a ``refit`` event only."""
        t = self.clock() if t is None else float(t)
        self._event(
            t,
            "refit",
            self._refit_reason(int(site), figures, accepted=False),
            site=int(site),
            accepted=False,
            **figures,
        )

    @staticmethod
    def _refit_reason(site: int, figures: dict[str, Any], accepted: bool) -> str:
        if "error" in figures:
            return f"ramp {site}: refit failed ({figures['error']}); the ramp stays as it is"
        before, after = figures.get("before") or {}, figures.get("after") or {}
        share = (
            f"releasable share {before.get('share', 0.0):.3f} -> {after.get('share', 0.0):.3f}, agreement "
            f"{before.get('agreement', 0.0):.3f} -> {after.get('agreement', 0.0):.3f} on "
            f"{figures.get('heldout_samples', 0)} held-out samples"
        )
        if accepted:
            return f"ramp {site}: refitted head swapped in ({share}); in probation (threshold 0) until the next tune"
        return f"ramp {site}: refitted head rejected ({share}); the ramp stays as it is"

    def _bootstrap_for_start(self, mode: str, given: BootstrapStats | None) -> tuple[BootstrapStats | None, str]:
        """The bootstrap statistics to seed the window with, or (None, why not)."""
        if mode == "never":
            return None, "initial_thresholds='never'"
        if self.confidence != "maxprob":
            return None, f"the bootstrap statistics hold maxprob confidences, not {self.confidence}"
        if given is not None:
            return given, ""
        if self.manifest.root is None:
            return None, "the manifest has no engine directory to read bootstrap statistics from"
        try:
            return self.manifest.load_bootstrap_stats(), ""
        except (OSError, KeyError, ValueError) as exc:
            return None, f"bootstrap statistics unreadable ({exc})"

    def _seed_window(self, stats: BootstrapStats) -> None:
        conf = np.ascontiguousarray(np.asarray(stats.confidence, dtype=np.float32).T)
        agree = np.ascontiguousarray(np.asarray(stats.agree, dtype=np.uint8).T)
        if conf.shape[0] != self.num_sites or conf.shape[1] == 0:
            return
        conf = np.nan_to_num(np.clip(conf, 0.0, 1.0), nan=0.0)
        self.window.push(np.arange(self.num_sites, dtype=np.int32), conf, agree)

    # --------------------------------------------------------------------------- feedback
    def _push(self, outcome: Feedback) -> None:
        sites = np.ascontiguousarray(outcome.site_ids, dtype=np.int32)
        conf = np.ascontiguousarray(outcome.confidence, dtype=np.float32)
        agree = np.ascontiguousarray(outcome.agree, dtype=np.uint8)
        n = int(np.shape(outcome.exit_site)[0]) if conf.shape[0] == 0 else int(conf.shape[1])
        if n == 0:
            return
        self._samples_since_adjust += n
        self._measure(outcome, sites)
        if self.exit_mode == "auto" and sites.size:  # a batch with ramps: did it run in skip mode?
            compacted = float(getattr(outcome, "skipped", None) is not None)
            self.skip_share += BATCH_SIZE_SMOOTHING * (compacted - self.skip_share)
        final_pred = getattr(outcome, "final_pred", None)
        if final_pred is not None:
            self._shift.add(final_pred, getattr(outcome, "final_logits", None))
        self.batch_size += BATCH_SIZE_SMOOTHING * (n - self.batch_size) if self.batches else (n - self.batch_size)
        if sites.size == 0:
            self.window.push(sites, np.zeros((0, n), np.float32), np.zeros((0, n), np.uint8))
            return
        conf = np.nan_to_num(np.clip(conf, 0.0, 1.0), nan=0.0)
        weights = getattr(outcome, "weights", None)
        if weights is None:
            self.window.push(sites, conf, agree)
            return
        weights = np.asarray(weights, dtype=np.float64)
        kept = np.flatnonzero(weights > 0)  # a skipped row has no final output: no feedback
        if kept.size:
            self.window.push(
                sites,
                np.ascontiguousarray(conf[:, kept]),
                np.ascontiguousarray(agree[:, kept]),
                np.ascontiguousarray(weights[kept]),
            )

    def _measure(self, outcome: Feedback, sites: np.ndarray) -> None:
        """Running means of the chain's measured stage and ramp wall times (ms) per active set."""
        stages = getattr(outcome, "segments_ms", None)
        ramps = getattr(outcome, "ramps_ms", None)
        r = sites.shape[0]
        if stages is None or ramps is None or np.shape(ramps) != (r,) or np.shape(stages) != (r + 1,):
            return
        sample = np.concatenate([np.asarray(stages, np.float64), np.asarray(ramps, np.float64)])
        if not np.all(np.isfinite(sample)) or np.any(sample < 0):
            return
        key = tuple(sites.tolist())
        old = self._timings.pop(key, None)
        self._timings[key] = (
            (sample, 1) if old is None else (old[0] + BATCH_SIZE_SMOOTHING * (sample - old[0]), old[1] + 1)
        )
        while len(self._timings) > TIMED_SETS_KEPT:
            self._timings.popitem(last=False)  # the least recently run active set

    def chain_ms(self, sites: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(saved_ms [r], cost_ms [r])`` of the active ramps ``sites`` (execution order).

        ``saved_ms[i]``: latency saved by releasing at ramp i (the stages and ramps after it);
        ``cost_ms[i]``: the latency ramp i adds to every input that reaches it: the ramp itself
        plus the segment boundary its site needs (the profile's :meth:`LatencyModel.boundary_ms`;
        the chain cannot time a boundary apart from its stages). Measured in the running chain
        (running means of the executor's wall times) once MIN_TIMED_BATCHES batches ran with
        exactly these sites, so that the session calls, exit decisions and releases are counted
        and a stale profile does not mislead; until then from the profile at the current batch
        size.
        """
        r = len(sites)
        boundary = self.latency.boundary_ms(self.batch_size)
        skip_gain = (
            self.skip_share * (1.0 - self.steady_audit_rate) * self.latency.row_saved_ms(sites, self.batch_size)
            if compacts(self.exit_mode)
            else 0.0
        )
        timed = self._timings.get(tuple(sites))
        if timed is None or timed[1] < MIN_TIMED_BATCHES:
            saved = self.latency.exit_saved_ms(sites, self.batch_size)
            return saved + skip_gain, self.latency.ramp_costs_ms(sites, self.batch_size) + boundary
        stages, ramps = timed[0][: r + 1], timed[0][r + 1 :]
        after_stage = sum_after(stages)[:r]  # stages after ramp i's stage
        return after_stage + sum_after(ramps) + skip_gain, ramps + boundary

    def _window_arrays(
        self, sites: Sequence[int], last: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(conf [r, m], agree [r, m], weights float64 [m])`` of the window's samples holding ``sites``."""
        ids = np.asarray(sites, dtype=np.int32)
        if last is None:
            return (*self.window.gather(ids), self.window.gather_weights(ids))
        return (*self.window.gather(ids, last), self.window.gather_weights(ids, last))

    def _window_accuracy(self) -> tuple[float, int]:
        """Accuracy (fraction, weighted) of the current thresholds on the window, and the samples used."""
        if not self._active:
            return 1.0, len(self.window)
        conf, agree, weights = self._window_arrays(self._active)
        saved, _ = self.chain_ms(self._active)
        accuracy, _, _ = _core.evaluate_thresholds(conf, agree, saved, self._thresholds, weights=weights)
        return float(accuracy), int(conf.shape[1])

    # --------------------------------------------------------------------------- emergency
    def _emergency(self, t: float) -> bool:
        """Cut (threshold 0) every ramp whose recent exits turned inaccurate; True if any was cut."""
        if not self._active or not np.any(self._thresholds > 0):
            return False
        conf, agree, weights = self._window_arrays(self._active, self.emergency_window)
        m = conf.shape[1]
        if m == 0:
            return False
        exits = _core.exit_decisions(conf, self._thresholds)
        limit = emergency_limit(self.constraint, emergency_samples(exits, weights))
        cut = []
        for i, site in enumerate(self._active):
            exiting = exits == i
            wrong = int(np.count_nonzero(exiting & (agree[i] == 0)))
            if self._thresholds[i] > 0 and wrong >= limit:
                cut.append((i, site, wrong, int(np.count_nonzero(exiting))))
        if not cut:
            return False
        for i, site, wrong, exited in cut:
            self._event(
                t,
                "emergency",
                f"ramp {site}: {wrong} of its {exited} exits in the last {m} samples disagree with the "
                f"final output (limit {limit}); threshold {self._thresholds[i]:.4f} -> 0, window cleared",
                site=site,
                wrong_exits=wrong,
                exits=exited,
                samples=m,
                old_threshold=float(self._thresholds[i]),
            )
            self._thresholds[i] = 0.0
        self.window.clear()
        self._pending_tune = "after an emergency cut"
        return True

    # --------------------------------------------------------------------------- tuning
    def _maybe_tune(self, t: float, window: tuple[float, int]) -> None:
        reason = self._tune_reason(*window)
        if reason is None:
            return
        if not self._active:  # nothing to tune; the slow loop may probe a ramp
            self._pending_tune = None
            self._tuned_live = True
            self._last_tune_batch = self.batches
            return
        tuned = self._search(self._active)
        if tuned is None:
            self._pending_tune = self._pending_tune or reason
            self._tune_established(t, reason)
            return
        old = self._thresholds
        self._thresholds = tuned.thresholds
        self._pending_tune = None
        if self._probation or not self._tuned_live:  # judge ramps after a full period of live thresholds
            self._reset_adjust_clock()
        self._probation.clear()
        self._partial_for = None
        self._tuned_live = True
        self._last_tune_batch = self.batches
        self._event(
            t,
            "tune",
            reason,
            active_sites=list(self._active),
            old_thresholds=[float(x) for x in old],
            thresholds=[float(x) for x in tuned.thresholds],
            window_accuracy=tuned.accuracy,
            samples=tuned.samples,
            saved_ms=tuned.saved_ms,
        )

    def _tune_established(self, t: float, reason: str) -> None:
        """Tune the ramps out of probation while those in probation gather feedback (once per set).

        A ramp in probation never exits, so the others' thresholds can be searched exactly on the
        (plentiful) samples that hold them alone; the full tune follows when the new ramps have
        enough samples. Without this, a removal would leave later ramps with thresholds tuned for
        inputs that the removed ramp used to take.
        """
        established = [s for s in self._active if s not in self._probation]
        if not self._probation or not established or self._partial_for == tuple(self._active):
            return
        tuned = self._search(established)
        if tuned is None:
            return
        per_site = dict(zip(established, tuned.thresholds))
        old = self._thresholds
        self._thresholds = np.asarray([per_site.get(s, 0.0) for s in self._active], dtype=np.float64)
        self._partial_for = tuple(self._active)
        self._last_tune_batch = self.batches
        self._event(
            t,
            "tune",
            f"{reason}: sites {established} (sites {sorted(self._probation)} stay in probation until they have "
            f"feedback)",
            active_sites=list(self._active),
            old_thresholds=[float(x) for x in old],
            thresholds=[float(x) for x in self._thresholds],
            window_accuracy=tuned.accuracy,
            samples=tuned.samples,
            saved_ms=tuned.saved_ms,
        )

    def _reset_adjust_clock(self) -> None:
        self._last_adjust_batch = self.batches
        self._samples_since_adjust = 0

    def _tune_reason(self, accuracy: float, samples: int) -> str | None:
        """Why a tune is due now (given the window's accuracy with the current thresholds), or None."""
        if self._pending_tune is not None:
            return self._pending_tune
        if samples >= self.min_tune_samples and accuracy < 1.0 - self.constraint - 1e-12:
            return f"window accuracy {accuracy:.4f} broke the constraint (>= {1.0 - self.constraint:.4f})"
        if self.batches - self._last_tune_batch >= self.tune_every:
            return f"periodic (every {self.tune_every} batches)"
        return None

    def samples_to_tune(self, ramps: int) -> int:
        """Fewest window samples (holding every active ramp) a tune of ``ramps`` ramps waits for
        (:func:`~apparate_trt.runtime.control.statistics.samples_to_tune`)."""
        return samples_to_tune(ramps, self.target_constraint, self.min_tune_samples, self.window_size)

    def _search(self, sites: Sequence[int]) -> _Tuned | None:
        """Thresholds for ``sites`` from the window, or None when it holds too few samples."""
        if not sites:
            return _Tuned(np.zeros(0), 1.0, 0.0, len(self.window))
        conf, agree, weights = self._window_arrays(sites)
        m = conf.shape[1]
        if m < self.samples_to_tune(len(sites)):
            return None
        saved, _ = self.chain_ms(sites)
        thresholds, accuracy, saved_mean = _core.search_thresholds(
            conf,
            agree,
            saved,
            search_constraint(
                self.target_constraint, len(sites), float(weights.sum()), float(weights.max(initial=1.0))
            ),
            min_step=SEARCH_MIN_STEP,
            weights=weights,
        )
        return _Tuned(np.asarray(thresholds, dtype=np.float64).copy(), float(accuracy), float(saved_mean), int(m))

    # --------------------------------------------------------------------------- ramp adjustment
    def _maybe_adjust(self, t: float) -> None:
        if self.batches - self._last_adjust_batch < self.adjust_every:
            return
        # With no active ramp there is nothing to judge: probe again after adjust_every batches (the
        # cooldown), not after a full window of samples (that wait, with a halfway site the budget
        # could not afford, left an engine with no ramp after a drift for good, issue 32).
        if self._active and self._samples_since_adjust < self.window_size:
            return
        idle_reason = self._idle_probe_reason() if not self._active else None
        if not self._active and idle_reason is None:
            return
        if self._pending_tune is not None or self._probation or not self._tuned_live:
            return
        utility = self._utilities()
        if utility is None:
            return
        self._reset_adjust_clock()
        self._adjust_rounds += 1
        values, exits, samples = utility
        useless = [(s, float(u), int(e)) for s, u, e in zip(self._active, values, exits) if u < 0 or e == 0]
        if useless:
            self._remove_and_probe_deeper(t, useless, samples)
            return
        if self._active:  # every ramp pays: the backoff of an idle engine starts over
            self._idle_failures = 0
            self._shift.clear()
        self._probe_earlier(t, values, idle_reason)

    def idle_wait_batches(self) -> int:
        """Batches an engine with no active ramp (serving the unsplit model) waits before it probes:
        ``adjust_every`` doubled for each probe in a row that ended with no ramp paying, at most
        ``2 ** PROBE_BACKOFF_DOUBLINGS`` times, so that on a model whose ramps never pay the probes'
        split chain costs a small share of the batches."""
        return self.adjust_every * 2 ** min(self._idle_failures, PROBE_BACKOFF_DOUBLINGS)

    def _idle_probe_reason(self) -> str | None:
        """Why an engine with no active ramp probes now, or None while it waits."""
        waited = self.batches - self._last_adjust_batch
        shifted = self._shift.changed() if self._idle_failures else None
        if shifted is not None:
            self._idle_failures = 0
            self._shift.clear()
            return f"the stream changed after {waited} idle batches ({shifted})"
        wait = self.idle_wait_batches()
        if waited < wait:
            return None
        return f"no active ramp for {waited} batches (backoff {wait})"

    def _utilities(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(utility ms per input, exits) per active ramp over the window, and the samples used."""
        active = self._active
        if not active:
            return np.zeros(0), np.zeros(0, np.int64), len(self.window)
        conf, agree, weights = self._window_arrays(active)
        m = conf.shape[1]
        if m < self.min_tune_samples:
            return None
        saved, costs = self.chain_ms(active)
        _, _, counts = _core.evaluate_thresholds(conf, agree, saved, self._thresholds, weights=weights)
        total = float(weights.sum())
        exits = np.asarray(counts, dtype=np.float64)[: len(active)]
        passes = np.maximum(total - np.cumsum(exits), 0.0)
        values = _core.ramp_utility_weighted(exits, passes, total, saved_next_ms(saved), costs)
        return np.asarray(values, dtype=np.float64), np.rint(exits).astype(np.int64), m

    def _blocked(self) -> set[int]:
        return {s for s, until in self._blocked_until.items() if until > self._adjust_rounds}

    def _fits_budget(self, sites: Sequence[int]) -> bool:
        return (
            float(self.latency.ramp_costs_ms(sites, self.batch_size).sum())
            <= self.latency.budget_ms(self.batch_size) * (1.0 + BUDGET_SLACK) + 1e-12
        )

    def _remove_and_probe_deeper(self, t: float, useless: list[tuple[int, float, int]], samples: int) -> None:
        removed = [s for s, _, _ in useless]
        keep = [i for i, s in enumerate(self._active) if s not in removed]
        self._active = [self._active[i] for i in keep]
        self._thresholds = self._thresholds[keep].copy()
        for site, value, exited in useless:
            self._blocked_until[site] = self._adjust_rounds + self.probe_cooldown
            self._event(
                t,
                "remove_ramp",
                f"ramp {site}: utility {value:.4f} ms per input over {samples} samples "
                f"({exited} exits){' is negative' if value < 0 else ', nothing exits'}",
                site=site,
                utility_ms=value,
                exits=exited,
                samples=samples,
                active_sites=list(self._active),
            )
        latest = self.latency.latest_useful_site(self.batch_size)
        # A probe out of an idle backoff that fails returns to idle (one probe per wait), not down a
        # chain of deeper probes that would each cost a window of split batches.
        for site in removed if not self._idle_failures else []:
            probe = self._affordable(deeper_probes(site, self._active, latest, self._blocked()))
            if probe is not None:
                self._add_ramp(t, probe, f"freed budget of ramp {site} probes a deeper site")
        self._pending_tune = "after a ramp change"
        if not self._active:
            self._idle_failures += 1
            self._shift.mark()
            self._event(
                t,
                "idle",
                f"no ramp pays: serving the unsplit model; next probe in {self.idle_wait_batches()} batches "
                "or when the stream changes",
                wait_batches=self.idle_wait_batches(),
                failures=self._idle_failures,
            )

    def _probe_earlier(self, t: float, values: np.ndarray, idle_reason: str | None = None) -> None:
        latest = self.latency.latest_useful_site(self.batch_size)
        probe = self._affordable(earlier_probes(self._active, latest, self._blocked()))
        if probe is None:
            return
        why = "every ramp pays off" if self._active else (idle_reason or "no active ramp")
        self._add_ramp(
            t, probe, f"{why} (utility ms {[round(float(v), 4) for v in values]}); spare budget probes an earlier site"
        )
        self._pending_tune = "after a ramp change"

    def _affordable(self, probes: Sequence[int]) -> int | None:
        """The first of ``probes`` (best first) that the budget affords beside the active ramps, or None."""
        return next((p for p in probes if self._fits_budget([*self._active, p])), None)

    def _add_ramp(self, t: float, site: int, reason: str) -> None:
        sites, thresholds = with_site(self._active, self._thresholds, site)
        self._active = sites
        self._thresholds = np.asarray(thresholds, dtype=np.float64)
        self._probation.add(site)
        used = float(self.latency.ramp_costs_ms(sites, self.batch_size).sum())
        self._event(
            t,
            "add_ramp",
            f"{reason}; in probation (threshold 0) until the next tune",
            site=site,
            active_sites=list(sites),
            cost_ms=used,
            budget_ms=self.latency.budget_ms(self.batch_size),
        )

    # --------------------------------------------------------------------------- records
    def _event(self, t: float, kind: str, reason: str, **details: Any) -> None:
        event = {"t": float(t), "kind": kind, "reason": reason, "batch": self.batches}
        event.update({k: plain(v) for k, v in details.items()})
        self._events.append(event)

    def _record_history(self, t: float, window: tuple[float, int]) -> None:
        accuracy, samples = window
        entry = {
            "t": float(t),
            "active_sites": list(self._active),
            "thresholds": [float(x) for x in self._thresholds],
            "window_accuracy": accuracy,
            "window_samples": samples,
            "audit_rate": self._audit_rate,
        }
        self._history.append(entry)
