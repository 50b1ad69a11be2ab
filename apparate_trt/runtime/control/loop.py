"""The controller's own thread: feedback in from the batch thread, configurations out to the executor.

The batch thread only appends each finished batch's feedback (``BatchOutcome``) to a queue and
goes on to the next batch. The loop thread drains everything queued, gives it to
:meth:`Controller.observe_batches` in one call (one round of decisions however many batches
arrived, so a slow tune does not make it fall further behind) and hands a changed
configuration to ``apply`` (``Executor.configure``, which takes it from its next batch).

A decision therefore reaches the executor about one batch later than if the batch thread made
it, and in exchange no batch ever waits for the controller: its per-batch bookkeeping, threshold
searches and ramp adjustments run while the batch thread runs the model (ONNX Runtime releases
the GIL) or waits for requests.

The queue is bounded (``max_backlog`` batches, default MAX_BACKLOG): should the controller ever fall
that far behind, the oldest queued feedback is dropped (counted in :attr:`ControlLoop.dropped`) and
never holds memory; the controller then decides on the newest batches, which describe the
workload as it is now. Outcomes may carry the active ramps' pooled features for the ramp learner
(``BatchOutcome.features``, up to ``rows x sites x D`` floats): only the newest
:data:`FEATURES_BACKLOG` queued batches keep them, so a controller that falls behind costs the
learner some samples, never the memory of a thousand batches' features.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Config = tuple[list[int], list[float]]
MAX_BACKLOG = 1024
"""Default most batches' feedback queued for the controller (a batch's BatchOutcome at batch 16, 16
sites and 10 classes holds about 5 KB: about 5 MB in all at this bound)."""
FEATURES_BACKLOG = 64
"""Newest queued batches that keep their pooled features (older ones drop them: at batch 16, 3
active ramps of 2,048 features, 64 batches hold about 25 MB)."""


ObserveFn = Callable[[Sequence[Any], "float | None"], "Config | None"]
"""``(outcomes oldest first, time of the newest) -> new configuration or None``
(``Controller.observe_batches``)."""


class ControlLoop:
    """Runs ``observe`` on a thread of its own.

    Args:
        observe: the controller's ``observe_batches`` (the engine passes a function that looks its
            controller up at each call, so a replaced controller takes over).
        apply: called on the loop thread with each new configuration ``(active sites, thresholds)``.
        name: the thread's name.
        max_backlog: most batches queued; beyond it the oldest is dropped (default MAX_BACKLOG).
    """

    def __init__(
        self,
        observe: ObserveFn,
        apply: Callable[[Config], None],
        name: str = "apparate-controller",
        max_backlog: int | None = None,
    ) -> None:
        self._observe = observe
        self._apply = apply
        self._max_backlog = MAX_BACKLOG if max_backlog is None else int(max_backlog)
        if self._max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1 batch, got {max_backlog}")
        self._queue: deque[Any] = deque()
        self._dropped = 0
        self._cond = threading.Condition()
        self._submitted = 0
        self._observed = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, outcome: Any) -> None:
        """Queue one batch's feedback (never blocks on the controller; at ``max_backlog`` the
        oldest queued batch is dropped)."""
        with self._cond:
            if len(self._queue) >= self._max_backlog:
                self._queue.popleft()
                self._dropped += 1
                self._observed += 1  # dropped: nobody waits for it
                if self._dropped & (self._dropped - 1) == 0:  # 1, 2, 4, 8, ...: a line, not a flood
                    log.warning(
                        "the controller is %d batches behind; dropped the oldest feedback (%d so far)",
                        self._max_backlog,
                        self._dropped,
                    )
            self._queue.append(outcome)
            if len(self._queue) > FEATURES_BACKLOG:
                behind = self._queue[-FEATURES_BACKLOG - 1]
                if getattr(behind, "features", None):
                    behind.features = None  # the learner misses these samples; the controller does not
            self._submitted += 1
            self._cond.notify_all()

    @property
    def dropped(self) -> int:
        """Batches whose feedback was dropped because the queue held ``max_backlog`` already."""
        return self._dropped

    @property
    def backlog(self) -> int:
        """Batches submitted but not yet observed."""
        return self._submitted - self._observed

    def sync(self, timeout_s: float | None = None) -> bool:
        """Wait until every batch submitted so far was observed (and its configuration applied);
        False if ``timeout_s`` seconds passed first."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._observed >= target or not self._thread.is_alive(), timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Observe what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                outcomes = list(self._queue)
                self._queue.clear()
            try:
                config = self._observe(outcomes, getattr(outcomes[-1], "t_end", None))
                if config is not None:
                    self._apply(config)
            except Exception:  # noqa: BLE001 - a controller bug must not stop serving
                log.exception("the controller failed on %d batch(es); keeping the current configuration", len(outcomes))
            with self._cond:
                self._observed += len(outcomes)
                self._cond.notify_all()
