"""Initial configuration: latest useful ramp, sites chosen one at a time by expected saving within the budget."""

from __future__ import annotations

import numpy as np
import pytest

from apparate_trt.compiler.initial_config import choose_initial, exit_share_within, expected_saving_ms


def test_exit_share_within_constraint() -> None:
    conf = np.array([0.99, 0.98, 0.97, 0.5, 0.4], np.float32)
    agree = np.array([1, 1, 0, 1, 0], np.uint8)
    assert exit_share_within(conf, agree, 0.0) == 0.4  # the two most confident are right
    assert exit_share_within(conf, agree, 0.2) == 0.8  # one wrong exit among 5 is 20%
    assert exit_share_within(conf, agree, 0.4) == 1.0


def _two_groups(n: int = 200, sites: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Statistics where a ramp at site 2 or later releases the first 30% of the samples, one at
    site 5 or later 30% more, and the rest are never confident (nor right); site s saves 9 - 9s/7 ms."""
    conf = np.zeros((n, sites), np.float32)
    agree = np.zeros((n, sites), np.uint8)
    first, second = slice(0, 60), slice(60, 120)
    conf[first, 2:], agree[first, 2:] = 0.99, 1
    conf[second, 5:], agree[second, 5:] = 0.99, 1
    return conf, agree, np.linspace(9.0, 0.0, sites), np.full(sites, 0.08)


SAVED = 9.0 - 9.0 * np.arange(8) / 7  # ms an exit saves at each site of _two_groups


def test_sites_are_added_one_at_a_time_by_expected_saving() -> None:
    conf, agree, saved, cost = _two_groups()
    choice = choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.05)  # 0.5 ms: up to six ramps
    assert choice.latest_useful == 6  # site 7 saves nothing
    # site 2 alone saves most (30% exit early); site 5 then adds the second group; a third ramp adds
    # no exit, only its cost, so the selection stops
    assert choice.active_sites == [2, 5] and choice.thresholds == [0.0, 0.0]
    # all 200 reach ramp 2, the 140 that did not exit reach ramp 5
    assert choice.expected_saving_ms == pytest.approx((60 * SAVED[2] + 60 * SAVED[5] - 200 * 0.08 - 140 * 0.08) / 200)


def test_the_budget_bounds_the_ramps_chosen() -> None:
    conf, agree, saved, cost = _two_groups()
    choice = choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.01)  # 0.1 ms: one ramp
    assert choice.active_sites == [2] and choice.expected_saving_ms == pytest.approx((60 * SAVED[2] - 200 * 0.08) / 200)
    assert choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.005).active_sites == []  # not even one fits


def test_expected_saving_counts_exits_and_the_ramps_each_input_reaches() -> None:
    conf = np.array([[0.99, 0.0], [0.0, 0.99], [0.0, 0.0], [0.0, 0.0]], np.float32)  # 4 samples, 2 sites
    agree = np.ones((4, 2), np.uint8)
    saved, cost = np.array([6.0, 2.0]), np.array([0.5, 0.25])
    # one exit at each site; all 4 reach ramp 0, 3 reach ramp 1
    assert expected_saving_ms(conf, agree, [0, 1], saved, cost, 0.0) == pytest.approx(
        (6.0 + 2.0 - 4 * 0.5 - 3 * 0.25) / 4
    )
    assert expected_saving_ms(conf, agree, [1], saved, cost, 0.0) == pytest.approx((2.0 - 4 * 0.25) / 4)
    assert expected_saving_ms(conf, agree, [], saved, cost, 0.0) == 0.0


def test_a_boundary_cost_lowers_the_saving_and_stops_the_second_ramp() -> None:
    conf, agree, saved, cost = _two_groups()
    bounded = choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.05, boundary_ms=1.5)
    # site 6 is still useful: its 120 exits save 9/7 ms each, more than the 80 others pay (1.58 ms each)
    assert bounded.latest_useful == 6
    # a second ramp at site 5 would save its 60 exits 2.57 ms each but cost the 140 inputs reaching it 1.58 ms
    assert bounded.active_sites == [2]
    assert bounded.expected_saving_ms == pytest.approx((60 * SAVED[2] - 200 * 1.58) / 200)


def test_the_first_ramp_that_fits_is_taken_even_without_a_saving() -> None:
    conf = np.zeros((50, 4), np.float32)  # nothing is ever confident: no site is useful
    agree = np.ones((50, 4), np.uint8)
    choice = choose_initial(conf, agree, np.array([6.0, 4.0, 2.0, 0.0]), np.full(4, 0.1), model_ms=8.0, budget=0.05)
    # the controller needs feedback to judge; with nothing to tell the sites apart, the middle one
    assert choice.latest_useful == 2 and choice.active_sites == [1]
    assert choice.expected_saving_ms == pytest.approx(-0.1)


def test_choose_initial_nothing_fits() -> None:
    conf = np.full((10, 2), 0.9, np.float32)
    agree = np.ones((10, 2), np.uint8)
    choice = choose_initial(conf, agree, np.array([5.0, 2.0]), np.array([1.0, 1.0]), model_ms=10.0, budget=0.02)
    assert choice.active_sites == [] and choice.thresholds == []
    empty = choose_initial(
        np.zeros((10, 0), np.float32), np.zeros((10, 0), np.uint8), np.zeros(0), np.zeros(0), 10.0, 0.02
    )
    assert empty.active_sites == [] and empty.latest_useful is None
