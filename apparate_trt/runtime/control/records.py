"""Bounded, thread-safe logs of the controller's decisions and per-observation state.

A server runs for months: nothing it keeps per batch may grow with its age. :class:`RingLog` keeps
the newest ``capacity`` records (a ring buffer; the oldest is dropped) and counts every record ever
appended, so a reader can tell a complete log from a truncated one. Reading the newest record is
O(1) (``/metrics`` reads only that); a full copy is for reports and tests.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

EVENTS_KEPT = 2048
"""Default number of decisions (``{t, kind, reason, ...}``, a few hundred bytes each) the
controller keeps; at one tune per 16 batches that is the last 32,768 batches' decisions."""
HISTORY_KEPT = 4096
"""Default number of per-observation records (``{t, active_sites, thresholds, ...}``, under 1 KB
each at 16 sites) the controller keeps: about the last 4096 batches. A replay that wants its whole
run asks for one per request (``Controller(history_kept=...)``)."""


class RingLog:
    """The newest ``capacity`` records of an append-only log (``capacity`` >= 1)."""

    def __init__(self, capacity: int) -> None:
        if int(capacity) < 1:
            raise ValueError(f"a log keeps at least 1 record, got capacity {capacity}")
        self._records: deque[dict[str, Any]] = deque(maxlen=int(capacity))
        self._appended = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        """The most records kept."""
        return int(self._records.maxlen or 0)

    @property
    def appended(self) -> int:
        """Records appended since the start, kept or dropped."""
        return self._appended

    @property
    def dropped(self) -> int:
        """Records appended since the start that are no longer kept (the oldest ones)."""
        with self._lock:
            return self._appended - len(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def append(self, record: dict[str, Any]) -> None:
        """Keep ``record`` (the caller gives up its reference); drops the oldest at capacity."""
        with self._lock:
            self._records.append(record)
            self._appended += 1

    def latest(self) -> dict[str, Any] | None:
        """A copy of the newest record, or None when empty (O(1) in the log's length)."""
        with self._lock:
            return dict(self._records[-1]) if self._records else None

    def snapshot(self) -> list[dict[str, Any]]:
        """Copies of every kept record, oldest first."""
        with self._lock:
            return [dict(r) for r in self._records]


def plain(value: Any) -> Any:
    """numpy scalars and arrays as plain Python values (for JSON)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
