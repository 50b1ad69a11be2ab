"""Workload replay: requests arrive in real time and really run; latencies are measured, not modelled.

``replay(engine, inputs, arrivals)`` submits sample ``i`` of ``inputs`` to a loaded
:class:`~apparate_trt.runtime.api.Engine` at ``arrivals[i]`` seconds after the start (open loop: a
slow engine does not slow the arrivals down), collects every released result (a ramp's early one
and the final one) through ``on_result``, and waits for every final result. Request ``i``'s latency
is its first release time minus its scheduled arrival time, both on the engine's clock
(``time.monotonic``), so any lag of the load generator counts against the system, as it would for a
real client. The engine is not closed: the caller owns it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from apparate_trt.errors import ApparateError
from apparate_trt.progress import Progress
from apparate_trt.runtime.api import Engine, Result
from apparate_trt.runtime.control.records import EVENTS_KEPT, HISTORY_KEPT

ProgressFn = Callable[[str], None]

PROGRESS_INTERVAL_S = 1.0
"""Seconds between two looks at the replay's progress."""


@dataclass
class ReplayResult:
    """What a replay measured, per request in arrival order (``n`` requests).

    Times are ``time.monotonic()`` seconds; latencies are ms. ``released_pred`` / ``final_pred`` /
    ``exit_site`` are -1 where a request failed (or, for ``exit_site``, was released by the final
    output). ``events`` and ``threshold_history`` are the controller's (empty in vanilla mode): its
    newest records, complete unless ``records_dropped`` counts older ones it no longer keeps (load the
    engine with :func:`replay_controller_options` to keep a replay's whole record).
    """

    mode: str
    t_start: float
    t_end: float
    arrivals_s: np.ndarray  # float64 [n]: scheduled arrival, seconds after t_start
    submit_lag_ms: np.ndarray  # float64 [n]: actual submit time minus scheduled arrival
    latency_ms: np.ndarray  # float64 [n]: first release minus scheduled arrival (NaN: failed)
    final_latency_ms: np.ndarray  # float64 [n]: final release minus scheduled arrival (NaN: failed)
    released_pred: np.ndarray  # int32 [n]: argmax of the first released result
    final_pred: np.ndarray  # int32 [n]: the original model's argmax (the final result)
    exit_site: np.ndarray  # int32 [n]: ramp site that released the request, -1 the final output
    t_release: np.ndarray  # float64 [n]: first release time (NaN: failed)
    t_final: np.ndarray  # float64 [n]: final release time (NaN: failed)
    errors: dict[int, str] = field(default_factory=dict)  # request index -> one-line error
    events: list[dict[str, Any]] = field(default_factory=list)
    threshold_history: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    batches: int = 0  # batches the engine ran during the replay
    unsplit_batches: int = 0  # of them, run unsplit by the overload fallback
    skip_mode_batches: int = 0  # of them, run in skip mode with ramps (all of skip's; auto's under a backlog)
    skipped: np.ndarray | None = None  # bool [n]: left the batch at their ramp (skip mode): no final result
    reference_used: bool = False  # final_pred of skipped requests comes from ``reference_pred``
    rows: dict[str, float] = field(default_factory=dict)  # released / audited / skipped rows, compute_saved_ms
    exit_mode: str = "release"
    records_dropped: dict[str, int] = field(default_factory=dict)  # older events / history entries not kept
    learning: dict[str, Any] | None = None  # the ramp learner's figures at the end (``Engine.stats()``)

    @property
    def requests(self) -> int:
        """Requests in the replay (submitted or refused)."""
        return int(self.arrivals_s.shape[0])

    @property
    def completed(self) -> np.ndarray:
        """bool [n]: requests that got their first and last result (the final one, or for a
        skipped request its early one)."""
        return np.isfinite(self.latency_ms) & np.isfinite(self.final_latency_ms)

    @property
    def judged(self) -> np.ndarray:
        """bool [n]: completed requests whose original-model answer is known (``final_pred`` >= 0):
        all of them but skipped ones replayed without ``reference_pred``."""
        return self.completed & (self.final_pred >= 0)


class _Collector:
    """Thread-safe store of the results the engine releases (called on the engine's thread)."""

    def __init__(self, n: int) -> None:
        self.t_release = np.full(n, np.nan)
        self.t_final = np.full(n, np.nan)
        self.released_pred = np.full(n, -1, dtype=np.int32)
        self.final_pred = np.full(n, -1, dtype=np.int32)
        self.exit_site = np.full(n, -1, dtype=np.int32)
        self.skipped = np.zeros(n, dtype=bool)
        self.finished = 0
        self.lock = threading.Lock()

    def on_result(self, index: int, result: Result) -> None:
        with self.lock:
            if np.isnan(self.t_release[index]):
                self.t_release[index] = result.t_release
                self.released_pred[index] = result.pred
                self.exit_site[index] = -1 if result.exit_site is None else int(result.exit_site)
            if result.is_final:
                self.t_final[index] = result.t_release
                self.final_pred[index] = result.pred
                self.finished += 1
            elif getattr(result, "skipped", False):  # skip mode: its early result is its last
                self.t_final[index] = result.t_release
                self.skipped[index] = True
                self.finished += 1


def replay_controller_options(requests: int) -> dict[str, int]:
    """Controller options (``load(controller_options=...)``) that keep a replay's whole record:
    a server's controller keeps only its newest HISTORY_KEPT observations and EVENTS_KEPT decisions,
    while a replay of ``requests`` requests makes at most one observation per request."""
    return {"history_kept": max(HISTORY_KEPT, int(requests)), "events_kept": max(EVENTS_KEPT, int(requests))}


def replay(
    engine: Engine,
    inputs: Mapping[str, np.ndarray],
    arrivals: np.ndarray,
    progress: bool | ProgressFn = True,
    wait_timeout_s: float = 600.0,
    reference_pred: np.ndarray | None = None,
) -> ReplayResult:
    """Replay ``inputs`` (arrays with the samples on axis 0) against ``engine`` at ``arrivals``.

    ``arrivals`` are seconds from the start (non-decreasing); request ``i`` is sample ``i`` and
    there must be at least as many samples as arrivals. ``progress``: True shows the progress on stderr
    (requests done, current median latency, throughput): a bar on a terminal, else a line per tenth
    of the requests or per 30 s, then one summary line; a callable receives a line about once a
    second instead; False prints nothing. Waits up to ``wait_timeout_s`` seconds after
    the last arrival for the outstanding results. ``reference_pred`` (int [n], optional): the
    original model's argmax for each sample, computed offline; in skip mode it judges the requests
    that left the batch early and so got no final result (without it they are left out of the
    accuracy).
    """
    arrivals = np.asarray(arrivals, dtype=np.float64)
    n = int(arrivals.shape[0])
    _check_inputs(inputs, n)
    collector = _Collector(n)
    errors: dict[int, str] = {}
    reporter = _Progress(collector, n, progress)
    batches_before = _batch_counts(engine)
    rows_before = _row_counts(engine)
    t_start = time.monotonic()
    reporter.start(t_start, arrivals)
    try:
        handles, submit_lag = _submit_all(engine, inputs, t_start + arrivals, collector, errors)
        _wait_for(handles, errors, wait_timeout_s)
    finally:
        reporter.stop()
    t_end = time.monotonic()
    scheduled = t_start + arrivals
    with collector.lock:
        t_release = collector.t_release.copy()
        t_final = collector.t_final.copy()
        released_pred, final_pred = collector.released_pred.copy(), collector.final_pred.copy()
        exit_site = collector.exit_site.copy()
        skipped = collector.skipped.copy()
    for i in errors:
        t_release[i] = t_final[i] = np.nan
    reference_used = False
    if reference_pred is not None and skipped.any():
        reference = np.asarray(reference_pred).reshape(-1)
        if reference.shape[0] < n:
            raise ApparateError(
                f"reference_pred has {reference.shape[0]} entries for {n} requests; give one per request"
            )
        final_pred[skipped] = reference[:n][skipped].astype(np.int32)
        reference_used = True
    sync = getattr(engine, "sync_controller", None)
    if sync is not None:
        sync(wait_timeout_s)  # the controller has taken every batch's feedback: its events are complete
    controller = getattr(engine, "controller", None)
    batches, unsplit, skip_mode = (after - before for after, before in zip(_batch_counts(engine), batches_before))
    return ReplayResult(
        mode=getattr(engine, "mode", "apparate"),
        t_start=t_start,
        t_end=t_end,
        arrivals_s=arrivals,
        submit_lag_ms=submit_lag,
        latency_ms=(t_release - scheduled) * 1000.0,
        final_latency_ms=(t_final - scheduled) * 1000.0,
        released_pred=released_pred,
        final_pred=final_pred,
        exit_site=exit_site,
        t_release=t_release,
        t_final=t_final,
        errors=errors,
        events=[] if controller is None else controller.events,
        threshold_history=[] if controller is None else controller.threshold_history,
        records_dropped=_records_dropped(controller),
        batches=batches,
        unsplit_batches=unsplit,
        skip_mode_batches=skip_mode,
        skipped=skipped,
        reference_used=reference_used,
        rows={k: after - rows_before[k] for k, after in _row_counts(engine).items()},
        exit_mode=str(getattr(engine, "exit_mode", "release")),
        learning=(engine.stats() if hasattr(engine, "stats") else {}).get("learning"),
    )


def _records_dropped(controller: Any) -> dict[str, int]:
    """Older decisions and observations the controller no longer keeps (its logs are bounded)."""
    if controller is None:
        return {}
    dropped = {"events": int(controller.events_dropped), "threshold_history": int(controller.history_dropped)}
    return {k: v for k, v in dropped.items() if v}


def _batch_counts(engine: Any) -> tuple[int, int, int]:
    """(batches run, of them unsplit, of them in skip mode) so far, from ``engine.stats()`` (zeros without it)."""
    stats = engine.stats() if hasattr(engine, "stats") else {}
    keys = ("batches", "unsplit_batches", "skip_mode_batches")
    return tuple(int(stats.get(k, 0)) for k in keys)  # type: ignore[return-value]


def offline_predictions(
    manifest: Any, inputs: Mapping[str, np.ndarray], threads: int | None = None, batch_size: int = 8
) -> np.ndarray:
    """The original model's argmax (int32 [n]) on ``inputs``, run unsplit in batches of
    ``batch_size``: the reference that judges skip mode's requests that got no final result."""
    from apparate_trt.backends import open_runner

    runner = open_runner(manifest.path(manifest.model.file), threads=threads, name=f"model ({manifest.model.file})")
    n = int(next(iter(inputs.values())).shape[0]) if inputs else 0
    out = np.full(n, -1, dtype=np.int32)
    for start in range(0, n, max(1, batch_size)):
        feeds = {name: value[start : start + batch_size] for name, value in inputs.items()}
        logits = runner.run(feeds, [manifest.model.output])[manifest.model.output]
        out[start : start + logits.shape[0]] = np.argmax(logits, axis=1)
    return out


ROW_COUNTERS = ("released_rows", "audited_rows", "skipped_rows", "compute_saved_ms")


def _row_counts(engine: Any) -> dict[str, float]:
    """The engine's row counters so far (``stats()``: early releases, audits, skips, compute saved ms)."""
    stats = engine.stats() if hasattr(engine, "stats") else {}
    return {key: float(stats.get(key, 0) or 0) for key in ROW_COUNTERS}


def _submit_all(
    engine: Engine, inputs: Mapping[str, np.ndarray], due: np.ndarray, collector: _Collector, errors: dict[int, str]
) -> tuple[list[Any], np.ndarray]:
    """Submit sample ``i`` at monotonic time ``due[i]`` (open loop); return the handles (None where
    refused, with the one-line reason in ``errors``) and each submission's lag (ms) behind ``due``."""
    handles: list[Any] = [None] * due.shape[0]
    lag_ms = np.full(due.shape[0], np.nan)
    for i, when in enumerate(due):
        delay = when - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sample = {name: array[i] for name, array in inputs.items()}
        lag_ms[i] = (time.monotonic() - when) * 1000.0
        try:
            handles[i] = engine.submit(sample, on_result=partial(collector.on_result, i))
        except ApparateError as exc:  # refused (queue full) or invalid: this request fails alone
            errors[i] = str(exc).splitlines()[0]
    return handles, lag_ms


def _check_inputs(inputs: Mapping[str, np.ndarray], n: int) -> None:
    if not inputs:
        raise ApparateError("no input arrays to replay; pass the evaluation data's arrays")
    counts = {name: int(np.shape(a)[0]) for name, a in inputs.items()}
    if min(counts.values()) < n:
        raise ApparateError(f"{n} arrivals but only {min(counts.values())} samples; pass fewer arrivals or more data")


def _wait_for(handles: list[Any], errors: dict[int, str], timeout_s: float) -> None:
    """Wait for every submitted request's final result; record failures by request index."""
    deadline = time.monotonic() + timeout_s
    for i, handle in enumerate(handles):
        if handle is None:
            continue
        try:
            handle.final.result(max(0.0, deadline - time.monotonic()))
        except ApparateError as exc:
            errors[i] = str(exc).splitlines()[0]
        except TimeoutError:
            errors[i] = f"no final result within {timeout_s:.0f} s of the last arrival"
        except Exception as exc:  # noqa: BLE001 - any other failure of one request
            errors[i] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class _Progress:
    """Replay progress on a daemon thread: ``done/total``, p50 latency and throughput.

    ``progress=True``: an :class:`~apparate_trt.progress.Progress` on stderr (a bar on a terminal,
    else a line per tenth of the requests or per 30 s), then one ``replay finished`` line. A
    callable gets a line about once a second instead.
    """

    def __init__(self, collector: _Collector, total: int, progress: bool | ProgressFn) -> None:
        self.collector = collector
        self.total = total
        self.emit: ProgressFn | None = None if isinstance(progress, bool) else progress
        self._show = progress is True
        self._shown: Progress | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t_start = 0.0
        self._scheduled = np.zeros(total)

    def start(self, t_start: float, arrivals_s: np.ndarray) -> None:
        self._t_start = t_start
        self._scheduled = t_start + arrivals_s
        if self._show:
            self._shown = Progress("replay", self.total, "req")
        if self._shown is not None or self.emit is not None:
            self._thread = threading.Thread(target=self._run, name="apparate-replay-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._shown is not None:
            self._shown.close(self.line(final=True))
        elif self.emit is not None:
            self.emit(self.line(final=True))

    def figures(self) -> tuple[int, str, float, float]:
        """Requests done, the p50 latency so far (text), the throughput so far (req/s) and the
        seconds since the start."""
        c = self.collector
        with c.lock:
            done = c.finished
            latency_ms = (c.t_release - self._scheduled) * 1000.0
        latency_ms = latency_ms[np.isfinite(latency_ms)]
        elapsed = max(time.monotonic() - self._t_start, 1e-9)
        p50 = f"{np.median(latency_ms):.2f} ms" if latency_ms.size else "-"
        return done, p50, done / elapsed, elapsed

    def line(self, final: bool = False) -> str:
        done, p50, throughput, elapsed = self.figures()
        state = "finished" if final else "running"
        return (
            f"replay {state}: {done}/{self.total} requests done, p50 latency {p50}, throughput "
            f"{throughput:.1f} req/s, {elapsed:.1f} s"
        )

    def _run(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            if self._shown is not None:
                done, p50, throughput, _ = self.figures()
                self._shown.update(done, f"p50 {p50}, {throughput:.1f} req/s")
            elif self.emit is not None:
                self.emit(self.line())
