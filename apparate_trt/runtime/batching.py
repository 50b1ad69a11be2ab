"""Dynamic batching: a bounded queue drained by one worker thread into batches.

A batch is dispatched when it is full (``max_batch`` items) or when its oldest item has waited
``max_delay_ms`` milliseconds, as in Triton's or TF-Serving's dynamic batcher. The queue is
bounded: submitting past ``queue_size`` waiting items raises :class:`OverloadError` at once, so a
burst is refused fast instead of queued without bound. Items that waited longer than their own
timeout are handed to ``on_expired`` instead of being run. ``close()`` stops accepting, runs every
accepted item, then returns.

The batcher knows nothing about models: it moves opaque items to a ``process(list)`` callable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from apparate_trt.defaults import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY_MS
from apparate_trt.errors import ApparateError

log = logging.getLogger(__name__)

T = TypeVar("T")


class OverloadError(ApparateError):
    """The request queue is full: the request was refused without being queued (retry later)."""


class RequestTimeoutError(ApparateError):
    """A request waited in the queue longer than its timeout and was not run."""


class BatcherClosedError(ApparateError):
    """The batcher (engine) is closed and accepts no new requests."""


class ReplicaLostError(ApparateError):
    """The replica running the request died or stopped before answering it (retry: another
    replica serves it); raised by replicated engines (``runtime.cluster``)."""


@dataclass
class _Queued(Generic[T]):
    item: T
    t_enqueue: float  # time.monotonic() seconds
    deadline: float | None  # monotonic seconds after which the item is not run, or None


@dataclass
class BatcherStats:
    """Counters of a :class:`DynamicBatcher` (read without locking: a consistent-enough snapshot)."""

    queue_depth: int = 0
    accepted: int = 0
    batches: int = 0
    items: int = 0
    refused: int = 0
    expired: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


def validate_settings(max_batch: int, max_delay_ms: float, queue_size: int) -> None:
    """Raise ApparateError unless max_batch >= 1, max_delay_ms >= 0 and queue_size >= 1."""
    if int(max_batch) < 1:
        raise ApparateError(f"max batch size must be at least 1, got {max_batch}")
    if not max_delay_ms >= 0:
        raise ApparateError(f"max queueing delay must be >= 0 ms, got {max_delay_ms}")
    if int(queue_size) < 1:
        raise ApparateError(f"queue size must be at least 1, got {queue_size}")


class DynamicBatcher(Generic[T]):
    """Collects submitted items into batches and runs ``process(batch)`` on one worker thread.

    Args:
        process: called with each batch (a non-empty list of items, in arrival order) on the worker
            thread; an exception it raises is logged and the worker carries on (``process`` is
            expected to answer its items itself, also on failure).
        max_batch: the largest batch.
        max_delay_ms: the longest time (ms) the oldest queued item waits for the batch to fill.
        queue_size: the most items waiting (not yet dispatched); past it ``submit`` raises
            :class:`OverloadError`.
        on_expired: called on the worker thread with the items whose timeout passed while they
            waited; they are not processed.
        name: the worker thread's name.
    """

    def __init__(
        self,
        process: Callable[[list[T]], None],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
        queue_size: int = 1024,
        on_expired: Callable[[list[T]], None] | None = None,
        name: str = "apparate-batcher",
    ) -> None:
        validate_settings(max_batch, max_delay_ms, queue_size)
        self.max_batch = int(max_batch)
        self.max_delay_s = float(max_delay_ms) / 1000.0
        self.queue_size = int(queue_size)
        self._process = process
        self._on_expired = on_expired
        self._queue: deque[_Queued[T]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._stats = BatcherStats()
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------------------------- intake
    def submit(self, item: T, timeout_ms: float | None = None) -> None:
        """Queue ``item``; it is dropped (``on_expired``) if not dispatched within ``timeout_ms`` ms.

        Raises:
            OverloadError: ``queue_size`` items are already waiting (nothing is queued).
            BatcherClosedError: ``close()`` was called.
        """
        self.submit_many([item], timeout_ms)

    def submit_many(self, items: Sequence[T], timeout_ms: float | None = None) -> None:
        """Queue every one of ``items`` (in order, with one deadline), or none of them.

        Raises:
            ApparateError: more items than the queue holds (they could never fit; nothing is queued).
            OverloadError: the queue has no room for all of them now (nothing is queued; each counts
                as refused).
            BatcherClosedError: ``close()`` was called.
        """
        if len(items) > self.queue_size:
            raise ApparateError(
                f"{len(items)} samples at once can never fit the queue of {self.queue_size}; send at most "
                f"{self.queue_size} per request, or raise queue_size"
            )
        now = time.monotonic()
        deadline = None if timeout_ms is None else now + float(timeout_ms) / 1000.0
        with self._cond:
            if self._closing:
                raise BatcherClosedError("the engine is closed and accepts no new requests; load it again")
            if len(self._queue) + len(items) > self.queue_size:
                self._stats.refused += len(items)
                room = max(0, self.queue_size - len(self._queue))
                raise OverloadError(
                    f"request queue full ({len(self._queue)} of {self.queue_size} waiting, room for {room}, "
                    f"{len(items)} sent); retry later or raise queue_size"
                )
            self._queue.extend(_Queued(item, now, deadline) for item in items)
            self._stats.accepted += len(items)
            self._stats.queue_depth = len(self._queue)
            self._cond.notify()

    @property
    def queue_depth(self) -> int:
        """Items waiting to be dispatched."""
        return len(self._queue)

    def stats(self) -> BatcherStats:
        """A copy of the counters."""
        s = self._stats
        return BatcherStats(len(self._queue), s.accepted, s.batches, s.items, s.refused, s.expired, dict(s.batch_sizes))

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closing

    # ----------------------------------------------------------------------------------- worker
    def _next_batch(self) -> tuple[list[T], list[T]] | None:
        """Block until a batch is due; return (batch, expired items), or None when closed and empty."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            dispatch_at = self._queue[0].t_enqueue + self.max_delay_s
            while len(self._queue) < self.max_batch and not self._closing:
                remaining = dispatch_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            now = time.monotonic()
            batch: list[T] = []
            expired: list[T] = []
            while self._queue and len(batch) < self.max_batch:
                queued = self._queue.popleft()
                if queued.deadline is not None and now > queued.deadline:
                    expired.append(queued.item)
                else:
                    batch.append(queued.item)
            self._stats.queue_depth = len(self._queue)
            return batch, expired

    def _run(self) -> None:
        while True:
            due = self._next_batch()
            if due is None:
                return
            batch, expired = due
            if expired:
                self._stats.expired += len(expired)
                self._call(self._on_expired, expired)
            if batch:
                self._stats.batches += 1
                self._stats.items += len(batch)
                self._stats.batch_sizes[len(batch)] = self._stats.batch_sizes.get(len(batch), 0) + 1
                self._call(self._process, batch)

    @staticmethod
    def _call(fn: Callable[[list[T]], None] | None, items: list[T]) -> None:
        if fn is None:
            return
        try:
            fn(items)
        except Exception:  # noqa: BLE001 - the worker must survive a failing batch
            log.exception("batch of %d item(s) failed in %s", len(items), getattr(fn, "__name__", fn))

    # ---------------------------------------------------------------------------------- shutdown
    def close(self, timeout_s: float | None = None) -> None:
        """Stop accepting, dispatch every queued item without waiting for the delay, and join.

        Returns when the worker has processed everything accepted (or after ``timeout_s`` seconds).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout_s)
