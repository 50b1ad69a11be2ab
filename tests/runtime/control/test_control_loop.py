"""The controller's thread: every batch's feedback observed once, in order, batched when behind."""

from __future__ import annotations

import threading
import time

import pytest

from apparate_trt.runtime.control.loop import ControlLoop

WAIT_S = 10.0


class Recorder:
    def __init__(self, gate: threading.Event | None = None, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.times: list[float | None] = []
        self.gate = gate
        self.fail_on = fail_on

    def __call__(self, outcomes, t):
        if self.gate is not None:
            self.gate.wait(WAIT_S)
        self.calls.append([o.n for o in outcomes])
        self.times.append(t)
        if self.fail_on is not None and self.fail_on in self.calls[-1]:
            raise RuntimeError("controller bug")
        return ([outcomes[-1].n], [0.5]) if o_changes(outcomes) else None


class Outcome:
    def __init__(self, n: int) -> None:
        self.n = n
        self.t_end = float(n)


def o_changes(outcomes) -> bool:
    return any(o.n % 2 == 0 for o in outcomes)


def test_every_outcome_is_observed_once_in_order_and_configs_are_applied() -> None:
    applied: list = []
    observe = Recorder()
    loop = ControlLoop(observe, applied.append)
    for n in range(1, 6):
        loop.submit(Outcome(n))
    assert loop.sync(WAIT_S) and loop.backlog == 0
    loop.close(WAIT_S)
    assert [n for call in observe.calls for n in call] == [1, 2, 3, 4, 5]
    assert observe.times[-1] == 5.0  # decided as of the newest batch
    assert applied and all(config[1] == [0.5] for config in applied)


def test_a_slow_controller_gets_the_backlog_in_one_call() -> None:
    gate = threading.Event()
    observe = Recorder(gate)
    loop = ControlLoop(observe, lambda config: None)
    for n in range(1, 5):
        loop.submit(Outcome(n))  # never blocks, although the controller is held
    assert not loop.sync(0.05) and loop.backlog == 4
    gate.set()
    assert loop.sync(WAIT_S)
    loop.close(WAIT_S)
    assert [n for call in observe.calls for n in call] == [1, 2, 3, 4]
    assert len(observe.calls) <= 2  # the first call, then everything that queued behind it


def test_a_failing_controller_does_not_stop_the_loop_and_close_drains() -> None:
    observe = Recorder(fail_on=2)
    loop = ControlLoop(observe, lambda config: None)
    loop.submit(Outcome(2))
    assert loop.sync(WAIT_S)
    for n in (3, 5):
        loop.submit(Outcome(n))
    loop.close(WAIT_S)  # observes what is queued before stopping
    assert [n for call in observe.calls for n in call] == [2, 3, 5]


def test_the_backlog_is_bounded_and_the_oldest_feedback_is_dropped() -> None:
    gate = threading.Event()
    observe = Recorder(gate)
    loop = ControlLoop(observe, lambda config: None, max_backlog=3)
    loop.submit(Outcome(1))  # taken by the loop thread, which then waits at the gate
    deadline = time.monotonic() + WAIT_S
    while loop._queue and time.monotonic() < deadline:
        time.sleep(0.005)
    for n in range(2, 8):
        loop.submit(Outcome(n))
    assert len(loop._queue) == 3 and loop.dropped == 3  # 2, 3, 4 dropped; 5, 6, 7 queued
    gate.set()
    assert loop.sync(WAIT_S) and loop.backlog == 0
    loop.close(WAIT_S)
    assert [n for call in observe.calls for n in call] == [1, 5, 6, 7]


def test_a_backlog_below_one_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="max_backlog"):
        ControlLoop(lambda outcomes, t: None, lambda config: None, max_backlog=0)


def test_only_the_newest_queued_batches_keep_their_features() -> None:
    from apparate_trt.runtime.control.loop import FEATURES_BACKLOG

    gate = threading.Event()
    seen: list[object] = []

    def observe(outcomes, t):
        gate.wait(WAIT_S)
        seen.extend(outcomes)
        return None

    loop = ControlLoop(observe, lambda config: None)
    outcomes = [Outcome(i) for i in range(FEATURES_BACKLOG + 40)]
    for o in outcomes:
        o.features = {0: [float(o.n)]}
    try:
        loop.submit(outcomes[0])
        time.sleep(0.2)  # the loop takes the first and blocks on the gate: the rest queue up
        for o in outcomes[1:]:
            loop.submit(o)
        gate.set()
        assert loop.sync(WAIT_S)
    finally:
        loop.close(WAIT_S)
    assert [o.n for o in seen] == list(range(len(outcomes)))  # every batch's feedback is observed
    kept = [o.n for o in outcomes if o.features]
    assert kept[-FEATURES_BACKLOG:] == list(range(len(outcomes) - FEATURES_BACKLOG, len(outcomes)))
    assert len(kept) <= FEATURES_BACKLOG + 1  # the one being observed when the rest queued keeps its own
