"""The embedding API: load an engine directory, submit single samples, receive results as they happen.

```python
engine = load("out/", max_batch=8, max_delay_ms=5.0, accuracy_constraint=0.01)
handle = engine.submit({"input": x}, on_result=print)   # x: ONE sample, no batch axis
early = handle.early.result()    # first released result (a ramp's, or the final one)
final = handle.final.result()    # the original model's output for x
engine.close()                   # answers every accepted request, then returns
```

Requests are validated one by one in ``submit`` (a bad request raises there and affects nothing
else), batched dynamically (:mod:`~apparate_trt.runtime.batching`) and run by the executor. After
each batch the controller sees the batch's feedback and may change the active ramps and thresholds.
Times are ``time.monotonic()`` seconds; latencies are ms.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from apparate_trt.defaults import (
    default_exit_mode,
)
from apparate_trt.engine_dir import Manifest, TensorSpec, read_manifest
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.batching import (
    BatcherClosedError,
    DynamicBatcher,
    OverloadError,
    RequestTimeoutError,
)
from apparate_trt.runtime.compaction import check_exit_mode, compacts, skips_batch
from apparate_trt.runtime.config import EngineConfig
from apparate_trt.runtime.control.controller import Controller
from apparate_trt.runtime.control.loop import ControlLoop
from apparate_trt.runtime.executor import BatchOutcome, Executor, ExitRule
from apparate_trt.runtime.learning.learner import FinishedRefit, RampLearner
from apparate_trt.runtime.serving_backend import choose_backend

log = logging.getLogger(__name__)


__all__ = [
    "BatcherClosedError",
    "Engine",
    "EngineConfig",
    "ServingPolicy",
    "OverloadError",
    "RequestHandle",
    "RequestTimeoutError",
    "Result",
    "load",
]


class ServingPolicy(Protocol):
    """A fixed exit policy for :func:`load` (no controller): what the one :class:`Executor` serves
    with. Its active sites and thresholds never change at run time."""

    name: str
    """The engine's ``mode`` (e.g. ``static-shared``, ``oracle``)."""
    sites: Sequence[int]
    """Active sites."""
    thresholds: Sequence[float]
    """One per active site (0: never exits; ignored by rules that use no thresholds)."""
    exit_mode: str
    """``release`` or ``skip``."""
    audit_rate: float
    """Skip mode: probability in [0, 1] that a released row still runs on (0: no audits)."""

    def exit_rule(self) -> ExitRule | None:
        """The exit rule (None: the threshold rule)."""
        ...


@dataclass(frozen=True)
class Result:
    """One released result of one request.

    ``output`` is the released score row (float32 [classes]): the ramp's logits for an early
    result, the original model's output for the final one. ``exit_site`` is the ramp site that
    released this result, None for the final output. ``skipped`` (skip mode): the request left the
    batch at that ramp, so this early result is its last; ``is_final`` stays False (it is the
    ramp's answer, not the model's) and the handle's ``final`` resolves with it too. Times are
    ``time.monotonic()`` seconds.
    """

    request_id: int
    output: np.ndarray
    pred: int
    exit_site: int | None
    is_final: bool
    t_arrival: float
    t_release: float
    skipped: bool = False

    @property
    def is_last(self) -> bool:
        """True for the request's last result: the final one, or a skipped request's early one."""
        return self.is_final or self.skipped

    @property
    def latency_ms(self) -> float:
        """Release time minus arrival time, in ms."""
        return (self.t_release - self.t_arrival) * 1000.0


@dataclass
class RequestHandle:
    """A submitted request: ``early`` resolves with the first released :class:`Result` (the final
    one when no ramp exits), ``final`` with the final one. Both get the exception if it fails.
    Cancelling ``final`` before the request runs drops it from its batch (a client went away)."""

    request_id: int
    t_arrival: float
    early: Future = field(default_factory=Future)
    final: Future = field(default_factory=Future)

    def result(self, timeout_s: float | None = None) -> Result:
        """The final result (blocks up to ``timeout_s`` seconds)."""
        return self.final.result(timeout_s)


@dataclass
class _Request:
    handle: RequestHandle
    inputs: dict[str, np.ndarray]
    on_result: Callable[[Result], None] | None
    tag: Any = None
    wait_final: bool = False

    @property
    def shape_key(self) -> tuple[tuple[int, ...], ...]:
        return tuple(a.shape for a in self.inputs.values())


# ------------------------------------------------------------------------------------- validation
def _cast(name: str, value: np.ndarray, target: np.dtype) -> np.ndarray:
    """``value`` as ``target``: safe casts, float or int to float, and int to int when the values fit."""
    if value.dtype == target:
        return value
    if np.can_cast(value.dtype, target, casting="safe"):
        return value.astype(target)
    src, dst = value.dtype.kind, target.kind
    if src in "fiub" and dst == "f":
        return value.astype(target)
    if src in "iu" and dst in "iu":
        info = np.iinfo(target)
        if value.size == 0 or (value.min() >= info.min and value.max() <= info.max):
            return value.astype(target)
        raise ApparateError(f"input '{name}' holds values outside the range of {target}, which the model takes")
    raise ApparateError(
        f"input '{name}' has dtype {value.dtype}, but the model takes {target}; convert it with .astype(np.{target})"
    )


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], symbols: dict[str, int], sample: bool) -> None:
    """One sample's ``shape`` against the spec without its batch axis; symbolic dims must agree.
    ``sample``: the caller gave one sample (the hint then says to leave the batch axis out)."""
    expected = spec.shape[1:]
    shown = [d if isinstance(d, int) else str(d) for d in expected]
    where = "has shape" if sample else "has samples of shape"
    if len(shape) != len(expected):
        hint = " (give ONE sample, without the batch axis)" if sample and len(shape) == len(expected) + 1 else ""
        raise ApparateError(f"input '{spec.name}' {where} {list(shape)}, expected {shown}{hint}")
    for axis, (dim, size) in enumerate(zip(expected, shape)):
        if isinstance(dim, int) and dim > 0:
            if size != dim:
                raise ApparateError(
                    f"input '{spec.name}' {where} {list(shape)}, expected {shown} (axis {axis} must be {dim})"
                )
        elif size < 1:
            raise ApparateError(f"input '{spec.name}' has an empty axis {axis} (sample shape {list(shape)})")
        elif isinstance(dim, str) and dim:
            seen = symbols.setdefault(dim, size)
            if seen != size:
                raise ApparateError(
                    f"inputs disagree on dimension '{dim}' ({seen} and {size} in '{spec.name}'); give every input "
                    f"the same length"
                )


def _check_names(specs: Sequence[TensorSpec], inputs: Any) -> None:
    if not isinstance(inputs, Mapping):
        raise ApparateError(f"a request is a dict {{input name: array}}, got {type(inputs).__name__}")
    names = [s.name for s in specs]
    unknown = [n for n in inputs if n not in names]
    if unknown:
        raise ApparateError(f"unknown input '{unknown[0]}' (this model takes {', '.join(names)})")
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ApparateError(f"input '{missing[0]}' is missing (this model takes {', '.join(names)})")


def validate_batch(
    specs: Sequence[TensorSpec], inputs: Mapping[str, Any], *, sample: bool = False
) -> tuple[dict[str, np.ndarray], int]:
    """Check a batch (arrays with the batch axis first) against the model's inputs: the one check
    every request passes, from the Python API and from the server alike. Returns C-contiguous
    arrays of the model's dtypes and the batch size. ``sample=True``: ``inputs`` are ONE sample
    each (no batch axis); the arrays returned have a batch axis of 1.

    Raises ApparateError naming the problem: not a mapping, missing or unknown input names, an
    empty batch or batch sizes that disagree, a shape that does not match, a dtype that cannot be
    cast safely, NaN or inf.
    """
    _check_names(specs, inputs)
    out: dict[str, np.ndarray] = {}
    symbols: dict[str, int] = {}
    batch: int | None = None
    for spec in specs:
        try:
            value = np.asarray(inputs[spec.name])
        except (ValueError, TypeError) as exc:
            raise ApparateError(f"input '{spec.name}' is not an array ({exc})") from None
        if value.dtype == object:
            raise ApparateError(f"input '{spec.name}' is not a numeric array (dtype object); give a numpy array")
        if sample:
            value = value[None, ...]
        elif value.ndim == 0 or value.shape[0] < 1:
            raise ApparateError(f"input '{spec.name}' has an empty batch (shape {list(value.shape)}); give a sample")
        if batch is not None and value.shape[0] != batch:
            raise ApparateError(
                f"inputs disagree on the batch size: '{spec.name}' has {value.shape[0]}, another has {batch}"
            )
        batch = int(value.shape[0])
        _check_shape(spec, tuple(value.shape[1:]), symbols, sample)
        value = _cast(spec.name, value, np.dtype(spec.dtype))
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ApparateError(f"input '{spec.name}' holds NaN or infinite values; clean the sample before submitting")
        out[spec.name] = np.ascontiguousarray(value)
    assert batch is not None  # a model has at least one input
    return out, batch


def validate_sample(specs: Sequence[TensorSpec], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """:func:`validate_batch` of ONE sample (no batch axis): its arrays, without a batch axis."""
    arrays, _ = validate_batch(specs, inputs, sample=True)
    return {name: value[0] for name, value in arrays.items()}


def _group_by_shape(requests: list[_Request]) -> list[list[_Request]]:
    """Split a batch into groups that can be stacked (symbolic dims such as sequence length agree)."""
    groups: dict[tuple, list[_Request]] = {}
    for req in requests:
        groups.setdefault(req.shape_key, []).append(req)
    return list(groups.values())


def _set_once(future: Future, *, result: Any = None, error: BaseException | None = None) -> bool:
    """Resolve ``future`` unless it is already resolved; True if this call resolved it."""
    if future.done():
        return False
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except Exception:  # noqa: BLE001 - InvalidStateError from a race with cancel()
        return False
    return True


# ------------------------------------------------------------------------------------------ engine
class Engine:
    """A loaded engine directory serving requests (use :func:`load`)."""

    def __init__(
        self,
        manifest: Manifest,
        executor: Executor,
        controller: Controller | None,
        *,
        mode: str,
        max_batch: int,
        max_delay_ms: float,
        queue_size: int,
        timeout_ms: float | None,
        overload_fallback: bool = True,
        exit_mode: str = "release",
        learner: RampLearner | None = None,
    ) -> None:
        self.manifest = manifest
        self.mode = mode
        self.exit_mode = exit_mode
        """``release``, ``skip`` or ``auto`` (see :func:`load`); ``release`` for vanilla, the
        policy's own for a fixed policy."""
        self.executor = executor
        self.controller = controller
        self.learner = learner if controller is not None else None
        """The :class:`~apparate_trt.runtime.learning.learner.RampLearner` that refits the ramps on
        the served stream (None: vanilla, a fixed policy, or ``refits=False``)."""
        if self.learner is not None and self.learner.enabled:
            executor.keep_features = True
        self.timeout_ms = timeout_ms
        self.overload_fallback = bool(overload_fallback) and controller is not None
        """True when a batch dispatched with a full batch still waiting runs unsplit (see :func:`load`)."""
        self._ids = itertools.count()
        self._failed = 0
        self._unsplit_batches = 0
        self._skip_mode_batches = 0  # batches run in skip mode (all of skip's; auto's under a backlog)
        self._rows = {"released": 0, "audited": 0, "skipped": 0}
        self._compute_saved_ms = 0.0
        self._control = (
            None
            if controller is None
            else ControlLoop(
                self._observe_batches,
                self._apply_config,
                name=f"apparate-{manifest.model.name}-controller",
            )
        )
        self._batcher: DynamicBatcher[_Request] = DynamicBatcher(
            self._process,
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            queue_size=queue_size,
            on_expired=self._expire,
            name=f"apparate-{manifest.model.name}",
        )

    # ------------------------------------------------------------------------------------ requests
    def submit(
        self,
        inputs: Mapping[str, Any],
        on_result: Callable[[Result], None] | None = None,
        *,
        timeout_ms: float | None = None,
        tag: Any = None,
        wait_final: bool = False,
    ) -> RequestHandle:
        """Queue ONE sample (``{input name: array without the batch axis}``).

        ``on_result(Result)`` is called on the engine's worker thread with the early result (if a
        ramp releases it) and then with the final one; it must be quick and must not block. In
        skip mode a request released by a ramp may leave the batch there: its early result is then
        its last (``Result.skipped``); ``wait_final=True`` keeps it in the batch to the end so that
        the final result always comes.
        ``timeout_ms`` (default: the engine's) bounds the time the request may wait in the queue;
        past it the request is not run and its futures get :class:`RequestTimeoutError`.
        ``tag`` (any object, e.g. the sample's index in a stream) reaches the exit rule's
        ``begin_batch``: the oracle baseline of ``apparate_trt.eval.policies`` reads it.

        Raises:
            ApparateError: the sample is invalid (nothing is queued; other requests are unaffected).
            OverloadError: the queue is full (retry later).
            BatcherClosedError: the engine is closed.
        """
        return self._enqueue(inputs, True, on_result, timeout_ms, [tag], wait_final)[0]

    def submit_batch(
        self,
        inputs: Mapping[str, Any],
        on_result: Callable[[Result], None] | None = None,
        *,
        timeout_ms: float | None = None,
        tags: Sequence[Any] | None = None,
        wait_final: bool = False,
    ) -> list[RequestHandle]:
        """Queue a batch of samples (``{input name: array with the batch axis first}``) as one
        request each, all or none; one handle per sample, in batch order.

        The batch is checked once (:func:`validate_batch`) and each sample is a view of it (no copy);
        the samples are queued together, so a full queue refuses the whole batch. ``tags``: one per
        sample (None: untagged); the other arguments as for :meth:`submit`.

        Raises:
            ApparateError: the batch is invalid (nothing is queued).
            OverloadError: the queue has no room for every sample (nothing is queued).
            BatcherClosedError: the engine is closed.
        """
        return self._enqueue(inputs, False, on_result, timeout_ms, tags, wait_final)

    def _enqueue(
        self,
        inputs: Mapping[str, Any],
        sample: bool,
        on_result: Callable[[Result], None] | None,
        timeout_ms: float | None,
        tags: Sequence[Any] | None,
        wait_final: bool,
    ) -> list[RequestHandle]:
        t_arrival = time.monotonic()
        arrays, n = validate_batch(self.manifest.model.inputs, inputs, sample=sample)
        if tags is not None and len(tags) != n:
            raise ApparateError(f"{len(tags)} tags for a batch of {n}; give one tag per sample (or none)")
        requests = [
            _Request(
                RequestHandle(next(self._ids), t_arrival),
                {name: value[i] for name, value in arrays.items()},
                on_result,
                None if tags is None else tags[i],
                bool(wait_final),
            )
            for i in range(n)
        ]
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        self._batcher.submit_many(requests, timeout_ms=timeout)
        return [req.handle for req in requests]

    def infer(self, inputs: Mapping[str, Any], timeout_s: float | None = None) -> Result:
        """Submit one sample and wait for its final result (convenience)."""
        return self.submit(inputs).result(timeout_s)

    # ---------------------------------------------------------------------------------- the worker
    def _process(self, requests: list[_Request]) -> None:
        """Run a batch from the batcher; requests cancelled by their client are skipped."""
        live: list[_Request] = []
        for req in requests:
            if req.handle.final.cancelled():
                req.handle.early.cancel()
            else:
                live.append(req)
        unsplit = self._overloaded()
        skip = skips_batch(self.exit_mode, self._batcher.queue_depth)
        for group in _group_by_shape(live):
            self._run_group(group, unsplit, skip)

    def _overloaded(self) -> bool:
        """True when the overload fallback applies to the batch just taken: at least a full batch
        still waits behind it. Its requests then queue for longer than any exit could save, and the
        unsplit model, faster than the split one with ramps, drains the queue sooner."""
        return self.overload_fallback and self._batcher.queue_depth >= self._batcher.max_batch

    def _run_group(self, group: list[_Request], unsplit: bool = False, skip: bool = False) -> None:
        """Run ``group`` as one batch (``unsplit``: the original model, no ramps, no feedback;
        ``skip``: in skip mode, which exit mode ``auto`` decides per batch); if it fails, rerun
        each request alone so one fails alone."""
        try:
            batch = {name: np.stack([req.inputs[name] for req in group]) for name in group[0].inputs}

            def on_release(
                index: int, row: np.ndarray, pred: int, site: int | None, t_release: float, last: bool = False
            ) -> None:
                self._deliver(group[index], row, pred, site, t_release, last)

            options: dict[str, Any] = {}
            if unsplit:
                options["unsplit"] = True
            elif any(req.tag is not None for req in group):
                options["tags"] = [req.tag for req in group]
            if skip and not unsplit and any(req.wait_final for req in group):
                options["wait_final"] = [req.wait_final for req in group]
            if self.exit_mode == "auto" and skip and not unsplit:
                options["skip"] = True
            outcome = self.executor.run_batch(batch, on_release, **options)
        except Exception as exc:  # noqa: BLE001 - isolate the failing request(s)
            if len(group) > 1:
                log.warning("a batch of %d failed (%s); running its requests one by one", len(group), exc)
                for req in group:
                    self._run_group([req], unsplit, skip)
            else:
                self._fail(group[0], exc)
            return
        if unsplit:
            self._unsplit_batches += 1  # no ramp ran: nothing for the controller to learn
        else:
            self._skip_mode_batches += int(outcome.skipped is not None)
            self._count_rows(outcome)
            self._observe(outcome)

    def _count_rows(self, outcome: BatchOutcome) -> None:
        """Add the batch's early releases, audits, skips and compute saved to the engine's counters."""
        self._rows["released"] += int(np.count_nonzero(outcome.exit_site >= 0))
        self._rows["skipped"] += outcome.skipped_count
        self._rows["audited"] += int(outcome.audited)
        self._compute_saved_ms += float(outcome.compute_saved_ms)

    def _deliver(
        self, req: _Request, row: np.ndarray, pred: int, site: int | None, t_release: float, last: bool = False
    ) -> None:
        handle = req.handle
        skipped = bool(last) and site is not None
        result = Result(
            handle.request_id,
            np.array(row, dtype=np.float32),
            int(pred),
            site,
            site is None,
            handle.t_arrival,
            t_release,
            skipped,
        )
        delivered = _set_once(handle.early, result=result)
        if result.is_last:
            delivered = _set_once(handle.final, result=result) or delivered
        if delivered and req.on_result is not None:
            try:
                req.on_result(result)
            except Exception:  # noqa: BLE001 - a client's callback must not stop serving
                log.exception("on_result callback of request %d raised", handle.request_id)

    def _fail(self, req: _Request, exc: BaseException) -> None:
        self._failed += 1
        if not isinstance(exc, ApparateError):
            exc = ApparateError(f"request {req.handle.request_id} failed while running: {exc}")
        _set_once(req.handle.early, error=exc)
        _set_once(req.handle.final, error=exc)

    def _expire(self, requests: list[_Request]) -> None:
        for req in requests:
            waited_ms = (time.monotonic() - req.handle.t_arrival) * 1000.0
            self._fail(
                req,
                RequestTimeoutError(
                    f"request {req.handle.request_id} waited {waited_ms:.0f} ms in the queue, past its timeout; "
                    f"retry, or raise the timeout"
                ),
            )

    def _observe_batches(
        self, outcomes: Sequence[BatchOutcome], t: float | None
    ) -> tuple[list[int], list[float]] | None:
        """The control loop's step: the controller takes the feedback; skip mode's audit rate follows."""
        controller = self.controller
        assert controller is not None
        config = controller.observe_batches(outcomes, t)
        learner = self.learner
        if learner is not None and learner.enabled and isinstance(controller, Controller):
            learner.observe(outcomes)
            finished = learner.take_finished()
            if finished is not None and self._swap_refit(finished, t):
                config = None  # applied already, before the new head serves
            learner.maybe_start(controller.config[0], controller.probation)
        if compacts(self.exit_mode):
            self.executor.set_audit_rate(controller.audit_rate)
        return config

    def _swap_refit(self, finished: FinishedRefit, t: float | None) -> bool:
        """Act on a finished refit: an accepted head goes into probation (threshold 0, applied at
        once) and then serves from the next batch; a rejected one is only recorded. True when the
        controller's configuration was applied here."""
        controller = self.controller
        assert controller is not None
        figures = {k: v for k, v in finished.figures.items() if k not in ("file", "accepted")}
        figures.update(wall_s=finished.wall_s, requests_served=finished.served)
        if not finished.accepted or finished.file is None:
            controller.refit_rejected(t, finished.site, figures)
            return False
        controller.ramp_refitted(t, finished.site, figures)
        self._apply_config(controller.config)  # threshold 0 before the new head runs
        try:
            self.executor.replace_ramp(finished.site, finished.file)
        except ApparateError as exc:  # the refitted graph did not open: keep serving the old one
            log.warning("refitted ramp %d did not open (%s); it stays in probation on the old head", finished.site, exc)
        return True

    def _observe(self, outcome: BatchOutcome) -> None:
        """Hand the batch's feedback to the controller's thread (:mod:`~apparate_trt.runtime.control.loop`)."""
        if self._control is not None:
            self._control.submit(outcome)

    def _apply_config(self, config: tuple[list[int], list[float]]) -> None:
        active, thresholds = config
        self.executor.configure(active, thresholds)

    def sync_controller(self, timeout_s: float | None = None) -> bool:
        """Wait until the controller has taken the feedback of every batch finished so far and
        applied its decisions (for reports and tests: ``controller.events`` is then complete).
        True at once without a controller; False if ``timeout_s`` seconds passed first."""
        return True if self._control is None else self._control.sync(timeout_s)

    # ----------------------------------------------------------------------------------- lifecycle
    def stats(self) -> dict[str, Any]:
        """Counters for metrics: queue depth, batches, requests, active sites and their thresholds."""
        b = self._batcher.stats()
        thresholds = self.executor.thresholds
        active = self.executor.active_sites
        return {
            "mode": self.mode,
            "backend": self.executor.backend.describe(),
            "queue_depth": b.queue_depth,
            "batches": b.batches,
            "requests": b.accepted,
            "refused": b.refused,
            "expired": b.expired,
            "failed": self._failed,
            "batch_sizes": b.batch_sizes,
            "unsplit_batches": self._unsplit_batches,
            "exit_mode": self.exit_mode,
            "skip_mode_batches": self._skip_mode_batches,
            "released_rows": self._rows["released"],
            "audited_rows": self._rows["audited"],
            "skipped_rows": self._rows["skipped"],
            "compute_saved_ms": self._compute_saved_ms,
            "audit_rate": self.executor.audit_rate if compacts(self.exit_mode) else None,
            "active_sites": active,
            "thresholds": {site: thresholds.get(site, 0.0) for site in active},
            "feedback_dropped": self._control.dropped if self._control is not None else 0,
            "learning": self.learner.stats() if self.learner is not None else None,
        }

    def save_ramps(self, directory: str | Path) -> Path:
        """Write an engine directory at ``directory`` (new or empty) that serves the ramps as they
        are now: a copy of this one with every refitted head in place and each refitted ramp's
        manifest entry recording where it came from (``refit``: the compiled file, refits, requests
        served, samples, the before/after figures). It loads as any engine directory. Call it
        after :meth:`sync_controller` to include a refit that just finished, or after
        :meth:`close` to include every refit of the engine's life.

        Raises:
            ApparateError: the engine keeps no learner (vanilla, a fixed policy, ``refits=False``
                or refits off: see ``stats()["learning"]``), or ``directory`` holds files.
        """
        if self.learner is None:
            raise ApparateError(
                f"the engine in mode '{self.mode}' does not refit ramps; load it in apparate mode with refits on"
            )
        return self.learner.save(directory)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._batcher.closed

    @property
    def max_batch(self) -> int:
        """The largest batch the engine runs (samples)."""
        return self._batcher.max_batch

    def close(self, timeout_s: float | None = None) -> None:
        """Stop accepting requests, answer every accepted one, let the controller take their
        feedback, then free the executor."""
        self._batcher.close(timeout_s)
        if self._control is not None:
            self._control.close(timeout_s)
        if self.learner is not None:
            self.learner.close()
        self.executor.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    engine_dir: str | Path,
    config: EngineConfig | None = None,
    *,
    policy: ServingPolicy | None = None,
    **settings: Any,
) -> Engine:
    """Load an engine directory and start serving it.

    Args:
        engine_dir: the directory written by ``apparate-compile``.
        config: the settings (:class:`~apparate_trt.runtime.config.EngineConfig`; None: the
            defaults).
        policy: a fixed (non-adaptive) exit policy, e.g. the baselines of
            ``apparate_trt.eval.policies`` (static thresholds, patience, oracle), served on the
            same executor without a controller; None (default): ``mode`` decides (the adaptive
            controller or vanilla). With a policy the engine's ``mode`` is the policy's ``name``.
        settings: fields of :class:`~apparate_trt.runtime.config.EngineConfig` that replace
            ``config``'s, e.g. ``load(path, max_batch=8, accuracy_constraint=0.02)``.

    Raises:
        ApparateError: a setting is unknown or out of range, or the engine directory is missing,
            incomplete or corrupt (the message says which and how to fix it).
    """
    config = (config or EngineConfig()).replace(**settings)
    manifest = read_manifest(engine_dir)
    backend = choose_backend(manifest, config.backend)
    if backend.record is not None and config.max_batch > backend.record.max_batch:
        raise ApparateError(
            f"max batch {config.max_batch} exceeds the {backend.record.max_batch} the TensorRT engines in "
            f"{backend.engines} were built for; serve with --max-batch {backend.record.max_batch} or less, or rebuild "
            f"with apparate-compile --backend tensorrt --max-batch {config.max_batch}"
        )
    if policy is not None:
        mode, exit_mode, rule = policy.name, check_exit_mode(policy.exit_mode), policy.exit_rule()
    elif config.mode == "vanilla":
        mode, exit_mode, rule = "vanilla", "release", None
    else:
        exit_mode = check_exit_mode(config.exit_mode or default_exit_mode(backend.name))
        mode, rule = "apparate", None
    executor = Executor(manifest, config.threads, config.confidence, rule, exit_mode=exit_mode, backend=backend)
    controller: Controller | None = None
    learner: RampLearner | None = None
    try:
        if policy is not None:
            executor.configure(policy.sites, policy.thresholds, wait=True)
            executor.set_audit_rate(policy.audit_rate)
        elif mode == "apparate":
            options = {"confidence": config.confidence, "exit_mode": exit_mode, "audit_rate": config.audit_rate}
            options.update(config.controller_options or {})
            controller = Controller(manifest, accuracy_constraint=config.accuracy_constraint, **options)
            active, thresholds = controller.initial_config()
            executor.configure(active, thresholds, wait=True)
            executor.set_audit_rate(controller.audit_rate)
            learning = config.learning()
            if learning.refits:
                # refits run niced beside batches, not held by the build gate: under steady load
                # the gate left a refit stopped for good (none finished in 37 s at 244 rps on the
                # CV model), while a niced one left p50 latency unchanged (benchmarks/refit_stream.py)
                learner = RampLearner(manifest, controller.target_constraint, learning, gate=None)
    except BaseException:
        executor.close()
        raise
    fallback = exit_mode == "release" if config.overload_fallback is None else config.overload_fallback
    return Engine(
        manifest,
        executor,
        controller,
        mode=mode,
        max_batch=config.max_batch,
        max_delay_ms=config.max_delay_ms,
        queue_size=config.queue_size,
        timeout_ms=config.timeout_ms,
        overload_fallback=fallback,
        exit_mode=exit_mode,
        learner=learner,
    )
