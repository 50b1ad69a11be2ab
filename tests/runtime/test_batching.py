"""The dynamic batcher: dispatch on size and on delay, a bounded queue, timeouts, a draining close."""

from __future__ import annotations

import threading
import time

import pytest

from apparate_trt.errors import ApparateError
from apparate_trt.runtime.batching import BatcherClosedError, DynamicBatcher, OverloadError

WAIT_S = 10.0  # generous bound for anything that should happen "soon"


class Recorder:
    """A ``process`` callable that records batches (and their dispatch times) and may block."""

    def __init__(self, block: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.times: list[float] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def __call__(self, batch: list[int]) -> None:
        self.started.set()
        self.release.wait(WAIT_S)
        with self._cond:
            self.batches.append(list(batch))
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def wait_items(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: sum(map(len, self.batches)) >= count, WAIT_S), self.batches

    @property
    def items(self) -> list[int]:
        return [i for b in self.batches for i in b]


def _dispatch(count: int, max_batch: int, max_delay_ms: float) -> tuple[list[list[int]], float]:
    """Submit ``count`` items at once; return the batches and the first dispatch's delay (s)."""
    rec = Recorder()
    batcher = DynamicBatcher(rec, max_batch=max_batch, max_delay_ms=max_delay_ms, queue_size=16)
    t0 = time.monotonic()
    for i in range(count):
        batcher.submit(i)
    rec.wait_items(count)
    batcher.close()
    return rec.batches, rec.times[0] - t0


def test_dispatches_a_full_batch_without_waiting_for_the_delay():
    batches, delay_s = _dispatch(4, max_batch=4, max_delay_ms=60_000)
    assert batches == [[0, 1, 2, 3]]
    assert delay_s < 30, "a full batch must not wait for the 60 s delay"


def test_dispatches_a_partial_batch_after_the_delay():
    batches, delay_s = _dispatch(3, max_batch=100, max_delay_ms=200)
    assert batches == [[0, 1, 2]]
    assert delay_s >= 0.19, "a partial batch waits for the oldest request's delay"


def test_splits_a_backlog_into_batches_of_at_most_max_batch_in_arrival_order():
    rec = Recorder(block=True)
    batcher = DynamicBatcher(rec, max_batch=3, max_delay_ms=0, queue_size=64)
    batcher.submit(0)
    assert rec.started.wait(WAIT_S)
    for i in range(1, 8):
        batcher.submit(i)
    rec.release.set()
    rec.wait_items(8)
    assert rec.items == list(range(8))
    assert all(1 <= len(b) <= 3 for b in rec.batches)
    batcher.close()


def test_overload_is_refused_at_once_and_nothing_accepted_is_lost():
    rec = Recorder(block=True)
    batcher = DynamicBatcher(rec, max_batch=1, max_delay_ms=0, queue_size=3)
    batcher.submit(0)
    assert rec.started.wait(WAIT_S)  # the worker holds item 0; the queue is empty again
    for i in range(1, 4):
        batcher.submit(i)
    t0 = time.monotonic()
    with pytest.raises(OverloadError, match="queue full"):
        batcher.submit(99)
    assert time.monotonic() - t0 < 1.0, "overload must be refused at once, not after a wait"
    assert isinstance(OverloadError("x"), ApparateError)
    assert batcher.stats().refused == 1 and batcher.queue_depth == 3
    rec.release.set()
    batcher.close()
    assert rec.items == [0, 1, 2, 3]


def test_submit_many_queues_all_or_none():
    rec = Recorder(block=True)
    batcher = DynamicBatcher(rec, max_batch=1, max_delay_ms=0, queue_size=3)
    batcher.submit(0)
    assert rec.started.wait(WAIT_S)  # the worker holds item 0
    batcher.submit_many([1, 2])
    with pytest.raises(OverloadError, match="room for 1, 2 sent"):
        batcher.submit_many([3, 4])  # one would fit: neither is queued
    assert batcher.queue_depth == 2 and batcher.stats().refused == 2
    with pytest.raises(ApparateError, match="can never fit the queue of 3") as never:
        batcher.submit_many([5, 6, 7, 8])
    assert not isinstance(never.value, OverloadError)  # not "retry later"
    batcher.submit_many([9])
    rec.release.set()
    batcher.close()
    assert rec.items == [0, 1, 2, 9]


def test_close_answers_every_accepted_item_then_refuses_new_ones():
    rec = Recorder(block=True)
    batcher = DynamicBatcher(rec, max_batch=2, max_delay_ms=60_000, queue_size=64)
    for i in range(5):
        batcher.submit(i)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    deadline = time.monotonic() + WAIT_S
    while not batcher.closed and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(BatcherClosedError):
        batcher.submit(100)
    rec.release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert rec.items == [0, 1, 2, 3, 4], "close must not wait out the delay nor drop anything"
    assert batcher.stats().items == 5


def test_items_past_their_timeout_are_expired_not_run():
    rec = Recorder(block=True)
    expired: list[int] = []
    batcher = DynamicBatcher(rec, max_batch=1, max_delay_ms=0, queue_size=8, on_expired=expired.extend)
    batcher.submit(0)
    assert rec.started.wait(WAIT_S)
    batcher.submit(1, timeout_ms=1)
    batcher.submit(2)  # no timeout
    time.sleep(0.05)
    rec.release.set()
    batcher.close()
    assert expired == [1]
    assert rec.items == [0, 2]
    assert batcher.stats().expired == 1


def test_a_failing_batch_does_not_stop_the_worker():
    seen: list[list[int]] = []

    def process(batch: list[int]) -> None:
        seen.append(batch)
        if 0 in batch:
            raise RuntimeError("boom")

    batcher = DynamicBatcher(process, max_batch=1, max_delay_ms=0, queue_size=8)
    batcher.submit(0)
    batcher.submit(1)
    batcher.close()
    assert seen == [[0], [1]]


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_delay_ms": -1}, {"queue_size": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ApparateError):
        DynamicBatcher(lambda batch: None, **kwargs)
