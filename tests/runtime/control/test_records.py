"""Bounded state: the controller's logs keep their newest records, and nothing grows with age."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from test_controller import Stream, drive, make_manifest

from apparate_trt.runtime.control.controller import TIMED_SETS_KEPT, Controller
from apparate_trt.runtime.control.records import RingLog


def test_a_ring_log_keeps_the_newest_records_and_counts_the_dropped() -> None:
    log = RingLog(3)
    assert log.latest() is None and log.snapshot() == [] and log.dropped == 0
    for i in range(5):
        log.append({"i": i})
    assert [r["i"] for r in log.snapshot()] == [2, 3, 4]
    assert log.latest() == {"i": 4} and len(log) == 3 and log.appended == 5 and log.dropped == 2
    copy = log.latest()
    copy["i"] = -1  # a copy: the log is unchanged
    assert log.latest() == {"i": 4}
    with pytest.raises(ValueError, match="at least 1"):
        RingLog(0)


def test_the_controller_keeps_its_newest_history_and_events_only() -> None:
    controller = Controller(
        make_manifest([1, 4]), window_size=256, initial_thresholds="never", history_kept=16, events_kept=4
    )
    drive(controller, Stream(seed=3), batches=200)
    history = controller.threshold_history
    assert len(history) == 16 and controller.history_dropped == 200 - 16
    assert controller.last_observation == history[-1]
    made = len(controller.events) + controller.events_dropped
    assert made > 4 and len(controller.events) == 4  # the initial event and a tune every 16 batches
    assert controller.events[-1]["kind"] == "tune"


@dataclass
class TimedOutcome:
    site_ids: np.ndarray
    confidence: np.ndarray
    agree: np.ndarray
    exit_site: np.ndarray
    segments_ms: np.ndarray
    ramps_ms: np.ndarray


def test_measured_timings_are_kept_for_the_most_recent_active_sets_only() -> None:
    controller = Controller(make_manifest([]), window_size=64, initial_thresholds="never", adjust_every_batches=10**9)
    n = 4
    active_sets = [c for r in (1, 2) for c in itertools.combinations(range(8), r)]
    assert len(active_sets) > TIMED_SETS_KEPT
    for k, active in enumerate(active_sets):
        sites = np.asarray(active, np.int32)
        r = sites.shape[0]
        controller.observe(
            TimedOutcome(
                sites,
                np.full((r, n), 0.5, np.float32),
                np.ones((r, n), np.uint8),
                np.full(n, -1, np.int32),
                np.ones(r + 1),
                np.full(r, 0.1),
            ),
            t=float(k),
        )
    assert len(controller._timings) == TIMED_SETS_KEPT
    assert tuple(active_sets[-1]) in controller._timings and tuple(active_sets[0]) not in controller._timings
