"""The ingress side of a replicated service: an Engine-shaped proxy over a Ray Serve handle.

:class:`ReplicatedEngine` has the part of :class:`~apparate_trt.runtime.api.Engine` that the
server uses (``submit_batch`` with early and final futures per sample, ``stats``, ``close``,
``manifest``, ``max_batch``), so the server's REST and gRPC front ends, its streaming early-then-
final answers, health and overload answers serve a replicated engine unchanged. Each request is
one streaming call to a replica (:meth:`.replica.EngineReplica.infer`), run on one asyncio loop
thread of this process; Ray Serve picks the replica (power of two choices on ongoing requests).

Faults: a call whose replica died (or that Ray could not place) before any of its results came
back is retried once on another replica; otherwise its unanswered samples fail with
:class:`ReplicaLostError`, which the server answers as retryable (HTTP 503 with Retry-After, gRPC
UNAVAILABLE). A request is never left without an answer: every call ends by resolving every
future it holds. Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from apparate_trt.errors import ApparateError
from apparate_trt.runtime.api import RequestHandle
from apparate_trt.runtime.batching import BatcherClosedError, OverloadError, ReplicaLostError, RequestTimeoutError

log = logging.getLogger(__name__)

RETRIES = 1
"""Calls retried on another replica when theirs died before answering anything."""
CALL_GRACE_S = 5.0
"""Seconds past a request's own timeout after which its call is cancelled."""
STATS_STALE_S = 60.0
"""A replica whose last stats are older than this (seconds) is left out of the sums (it died)."""
STATS_TIMEOUT_S = 2.0
"""The longest :meth:`ReplicatedEngine.stats` waits for the replicas' own numbers (seconds)."""
SUMMED = (
    "queue_depth",
    "batches",
    "unsplit_batches",
    "skip_mode_batches",
    "refused",
    "expired",
    "released_rows",
    "audited_rows",
    "skipped_rows",
    "compute_saved_ms",
    "reservoir_samples",
    "reservoir_bytes",
    "refits",
    "refits_accepted",
    "refit_seconds",
    "feedback_dropped",
)
"""``Engine.stats()`` numbers that add up over replicas."""


def error_for(code: str, message: str) -> BaseException:
    """The engine-side exception for a replica's error event (what the server maps to a status)."""
    if code == "overloaded":
        return OverloadError(message)
    if code == "closed":
        return ReplicaLostError(f"{message} (the replica is stopping; retry)")
    if code == "timeout":
        return RequestTimeoutError(message)
    return ApparateError(message)


def is_replica_failure(exc: BaseException) -> bool:
    """True for Ray's errors that say the replica (actor) died or is unreachable."""
    try:
        import ray.exceptions as rex
    except ImportError:  # pragma: no cover - Ray is what produced the exception
        return False
    kinds = tuple(
        k
        for k in (
            getattr(rex, "RayActorError", None),
            getattr(rex, "ActorDiedError", None),
            getattr(rex, "ActorUnavailableError", None),
            getattr(rex, "WorkerCrashedError", None),
            getattr(rex, "NodeDiedError", None),
            *_serve_failures(),
        )
        if k is not None
    )
    return isinstance(exc, kinds)


def _serve_failures() -> tuple[type, ...]:
    """Ray Serve's own errors for a replica or deployment that is gone."""
    try:
        import ray.serve.exceptions as sex
    except ImportError:  # pragma: no cover
        return ()
    names = ("ReplicaUnavailableError", "DeploymentUnavailableError")
    return tuple(getattr(sex, n) for n in names if getattr(sex, n, None) is not None)


def is_backpressure(exc: BaseException) -> bool:
    """True for Ray Serve's refusal when every replica's queue is full."""
    return type(exc).__name__ == "BackPressureError"


def sum_stats(replicas: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The service's numbers from each replica's ``Engine.stats()``: counts summed, the window
    accuracy weighted by each replica's batches; ``replicas`` keeps each replica's own."""
    total: dict[str, Any] = {}
    for key in SUMMED:
        values = [s[key] for s in replicas.values() if isinstance(s.get(key), (int, float))]
        if values:
            total[key] = float(sum(values)) if any(isinstance(v, float) for v in values) else int(sum(values))
    weighted = [
        (float(s["window_accuracy"]), max(1.0, float(s.get("batches") or 0)))
        for s in replicas.values()
        if isinstance(s.get("window_accuracy"), (int, float))
    ]
    if weighted:
        total["window_accuracy"] = sum(a * w for a, w in weighted) / sum(w for _, w in weighted)
    total["replicas"] = {rid: dict(s) for rid, s in replicas.items()}
    return total


@dataclass
class Waiting:
    """A request not yet sent: its handles, inputs and options; ``done`` resolves when its call ends."""

    handles: list[RequestHandle]
    arrays: dict[str, np.ndarray]
    timeout_ms: float | None
    wait_final: bool
    done: cf.Future = field(default_factory=cf.Future)

    def key(self) -> tuple[Any, ...]:
        """What requests must share to travel in one call: each input's sample shape and dtype,
        and whether they wait for the final answer."""
        return (tuple((n, a.shape[1:], a.dtype.str) for n, a in self.arrays.items()), self.wait_final)


def coalesce(waiting: Sequence[Waiting], max_samples: int) -> list[list[Waiting]]:
    """Group ``waiting`` (in order) into calls: requests with the same :meth:`Waiting.key`, up to
    ``max_samples`` samples a call (a larger request travels alone)."""
    calls: list[list[Waiting]] = []
    open_calls: dict[tuple[Any, ...], tuple[list[Waiting], int]] = {}
    for w in waiting:
        key, size = w.key(), len(w.handles)
        group, count = open_calls.get(key, ([], 0))
        if group and count + size > max_samples:
            group, count = [], 0
        if not group:
            calls.append(group)
        group.append(w)
        open_calls[key] = (group, count + size)
    return calls


class ReplicatedEngine:
    """An Engine-shaped proxy whose requests run on Ray Serve replicas of :class:`.EngineReplica`.

    Args:
        handle: a Ray Serve ``DeploymentHandle`` of the replicas' deployment.
        manifest: the engine directory's manifest (the model the replicas serve).
        max_batch: the replicas' max batch size (reported in the model config).
        mode: the replicas' mode (``apparate`` or ``vanilla``), for the server's ready line.
        on_close: called once by :meth:`close` after the last call ended (e.g. delete the
            deployment and stop a local Ray instance); None: nothing.
    """

    controller = None
    learner = None

    def __init__(
        self,
        handle: Any,
        manifest: Any,
        max_batch: int,
        mode: str = "apparate",
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.max_batch = int(max_batch)
        self.mode = mode
        self._plain = handle
        self._handle = handle.options(stream=True)
        self._on_close = on_close
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="apparate-replicas", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._calls: set[cf.Future] = set()  # one per request not yet answered in full
        self._waiting: list[Waiting] = []
        self._flush_due = False
        self._closed = False
        self._next_id = 0
        self._replica_stats: dict[str, tuple[float, dict[str, Any]]] = {}
        self.retried = 0
        self.lost = 0

    # ---------------------------------------------------------------------------- requests
    def submit_batch(
        self,
        inputs: Mapping[str, Any],
        on_result: Callable[[Any], None] | None = None,
        *,
        timeout_ms: float | None = None,
        tags: Sequence[Any] | None = None,
        wait_final: bool = False,
    ) -> list[RequestHandle]:
        """Send one request (``{input name: array with the batch axis first}``) to a replica; one
        handle per sample, whose futures resolve as the replica's results stream back.

        Raises:
            ApparateError: ``inputs`` is not a batch of equal-length arrays (nothing is sent).
            BatcherClosedError: the engine is closed.
        """
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        sizes = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        if not arrays or len(sizes) != 1 or min(sizes) < 1:
            raise ApparateError("a batch needs every input with the same batch size (axis 0) of at least 1")
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise BatcherClosedError("the replicated engine is closed; it accepts no new requests")
            first = self._next_id
            self._next_id += sizes.pop()
            handles = [RequestHandle(first + i, now) for i in range(self._next_id - first)]
            waiting = Waiting(handles, arrays, timeout_ms, wait_final)
            self._waiting.append(waiting)
            self._calls.add(waiting.done)
            flush, self._flush_due = not self._flush_due, True
        waiting.done.add_done_callback(self._call_done)
        if flush:
            self._loop.call_soon_threadsafe(self._flush)
        if on_result is not None:
            for handle in handles:
                handle.final.add_done_callback(lambda f: None if f.exception() else on_result(f.result()))
        return handles

    def _flush(self) -> None:
        """On the loop: send every waiting request, coalesced into calls of up to ``max_batch``
        samples (:func:`coalesce`): under load one Ray call carries several requests."""
        with self._lock:
            waiting, self._waiting, self._flush_due = self._waiting, [], False
        for group in coalesce(waiting, self.max_batch):
            handles = [h for w in group for h in w.handles]
            arrays = {name: np.concatenate([w.arrays[name] for w in group]) for name in group[0].arrays}
            timeouts = [w.timeout_ms for w in group if w.timeout_ms is not None]
            task = self._loop.create_task(
                self._call(handles, arrays, min(timeouts) if timeouts else None, group[0].wait_final)
            )
            task.add_done_callback(lambda _, group=group: [_settle(w.done, None) for w in group])

    def _call_done(self, call: cf.Future) -> None:
        with self._lock:
            self._calls.discard(call)

    async def _call(
        self, handles: list[RequestHandle], inputs: dict[str, np.ndarray], timeout_ms: float | None, wait_final: bool
    ) -> None:
        """Run one request on a replica and resolve every future of ``handles``, whatever happens."""
        limit_s = None if timeout_ms is None else timeout_ms / 1000.0 + CALL_GRACE_S
        try:
            for attempt in range(RETRIES + 1):
                try:
                    stream = self._handle.infer.remote(inputs, timeout_ms, wait_final)
                    await asyncio.wait_for(self._consume(stream, handles), limit_s)
                    return
                except Exception as exc:  # noqa: BLE001 - classified below; every future gets an answer
                    answered = any(h.early.done() for h in handles)
                    if is_backpressure(exc):
                        self._fail(handles, OverloadError(f"every replica's queue is full ({exc}); retry shortly"))
                        return
                    if isinstance(exc, asyncio.TimeoutError):
                        self._fail(handles, RequestTimeoutError("no answer from the replica within the timeout"))
                        return
                    if is_replica_failure(exc) and not answered and attempt < RETRIES:
                        self.retried += 1
                        log.warning("a replica failed before answering (%s); retrying on another", type(exc).__name__)
                        continue
                    if is_replica_failure(exc):
                        self.lost += 1
                        self._fail(handles, ReplicaLostError(f"the replica serving this request died ({exc}); retry"))
                    else:
                        self._fail(handles, ApparateError(f"the replicated call failed: {exc}"))
                    return
        finally:
            self._fail(handles, ReplicaLostError("the replica ended the request without answering it; retry"))

    async def _consume(self, stream: Any, handles: list[RequestHandle]) -> None:
        """Resolve ``handles`` from a replica's event stream (its early, final and error events)."""
        async for event in stream:
            kind = event.get("kind")
            index = event.get("index")
            targets = handles if index is None else [handles[int(index)]]
            if kind == "error":
                self._fail(targets, error_for(str(event.get("error")), str(event.get("message"))))
                continue
            result = event["result"]
            last = kind == "final" or getattr(result, "skipped", False)  # no other result follows
            for handle in targets:
                _settle(handle.early, result)
                if last:
                    _settle(handle.final, result)

    @staticmethod
    def _fail(handles: Sequence[RequestHandle], exc: BaseException) -> None:
        for handle in handles:
            _settle(handle.early, exc)
            _settle(handle.final, exc)

    # ------------------------------------------------------------------------------- state
    def refresh_stats(self, timeout_s: float = STATS_TIMEOUT_S) -> None:
        """Ask every running replica for its numbers now (Ray Serve's ``broadcast``: a control-plane
        call, one per replica); on failure each replica's previous numbers stay (for
        :data:`STATS_STALE_S`)."""
        try:
            events = self._plain.broadcast("stats").results(timeout_s=timeout_s, return_exceptions=True)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because a replica is restarting
            log.debug("broadcasting for the replicas' stats failed: %s", exc)
            return
        now = time.monotonic()
        for event in events:
            if isinstance(event, Mapping) and event.get("kind") == "stats":
                self._replica_stats[str(event["replica"])] = (now, dict(event["stats"]))

    def stats(self) -> dict[str, Any]:
        """The service's numbers: each running replica's own (``replicas``) and their sums
        (:func:`sum_stats`), plus this proxy's calls in flight, retried and lost."""
        if not self._closed:
            self.refresh_stats()
        now = time.monotonic()
        fresh = {rid: s for rid, (t, s) in list(self._replica_stats.items()) if now - t <= STATS_STALE_S}
        total = sum_stats(fresh)
        with self._lock:
            total["calls_inflight"] = len(self._calls)
        total["calls_retried"] = self.retried
        total["calls_lost"] = self.lost
        return total

    def close(self, timeout_s: float = 60.0) -> None:
        """Refuse new requests, have every replica dispatch its queue at once and answer what it
        accepted (``EngineReplica.drain``), wait (up to ``timeout_s``) for every call to end, then
        run ``on_close`` and stop the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            calls = list(self._calls)
        if calls:
            self.refresh_stats()  # the replicas' last numbers, before they close
            try:
                self._plain.broadcast("drain").results(timeout_s=timeout_s, return_exceptions=True)
            except Exception as exc:  # noqa: BLE001 - the calls still end by themselves
                log.warning("asking the replicas to drain failed: %s", exc)
        cf.wait(calls, timeout=timeout_s)
        try:
            if self._on_close is not None:
                self._on_close()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)

    def save_ramps(self, directory: str) -> Any:
        raise ApparateError(
            "saving refitted ramps is not supported with replicas (each replica refits its own); "
            "serve one process (drop --replicas) to use --save-ramps"
        )


def _settle(future: cf.Future, value: Any) -> None:
    """Resolve ``future`` with ``value`` (an exception fails it) unless it is done already."""
    if future.done():
        return
    try:
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
    except cf.InvalidStateError:  # resolved (or cancelled by the client) meanwhile
        pass
