"""Reservoirs keep the newest samples within their sample and byte bounds."""

from __future__ import annotations

import numpy as np
import pytest

from apparate_trt.runtime.learning.reservoir import Reservoir, Reservoirs, row_bytes


def _rows(start: int, n: int, d: int = 4, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    features = np.tile(np.arange(start, start + n, dtype=np.float32)[:, None], (1, d))
    return features, np.full((n, classes), 1.0 / classes, dtype=np.float32)


def test_the_ring_keeps_the_newest_rows_oldest_first() -> None:
    reservoir = Reservoir(4, 3, samples=10, max_bytes=1 << 20, seed=0)
    reservoir.add(*_rows(0, 7))
    reservoir.add(*_rows(7, 6), weights=np.full(6, 4.0))
    features, probs, weights, heldout = reservoir.arrays()
    assert len(reservoir) == 10 and reservoir.seen == 13
    assert features[:, 0].tolist() == list(range(3, 13))
    assert weights.tolist() == [1.0] * 4 + [4.0] * 6
    assert probs.shape == (10, 3) and heldout.dtype == bool
    reservoir.add(*_rows(100, 25))  # more than the capacity at once: only the newest fit
    assert reservoir.arrays()[0][:, 0].tolist() == list(range(115, 125))


def test_held_out_marks_are_drawn_once_at_about_a_quarter() -> None:
    reservoir = Reservoir(4, 3, samples=4000, max_bytes=1 << 30, seed=1)
    reservoir.add(*_rows(0, 4000))
    marks = reservoir.arrays()[3]
    assert 0.22 < marks.mean() < 0.28
    reservoir.add(*_rows(4000, 10))
    assert np.array_equal(reservoir.arrays()[3][:-10], marks[10:])  # kept rows keep their marks


def test_bytes_bound_the_capacity_and_the_total() -> None:
    per_row = row_bytes(100, 10)
    reservoir = Reservoir(100, 10, samples=1000, max_bytes=50 * per_row)
    assert reservoir.capacity == 50 and reservoir.nbytes <= 50 * per_row
    many = Reservoirs(samples=100, max_bytes=1 << 30, total_bytes=2 * 100 * row_bytes(4, 3) + 10)
    for site in (0, 1, 2):
        many.add(site, *_rows(0, 5))
    many.add(1, *_rows(5, 5))
    assert many.get(0) is None and many.get(1) is not None and many.get(2) is not None  # the least recently fed
    assert many.dropped == 1 and many.nbytes <= many.total_bytes
    with pytest.raises(ValueError, match="do not fit"):
        many.add(1, *_rows(0, 2, d=4, classes=5))
