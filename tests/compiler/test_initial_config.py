"""Initial configuration: latest useful ramp, greedy count within the budget by expected saving, even spread."""
from __future__ import annotations

import numpy as np
import pytest

from apparate_trt.compiler.initial_config import choose_initial, exit_share_within, expected_saving_ms, spread_evenly


def test_exit_share_within_constraint() -> None:
    conf = np.array([0.99, 0.98, 0.97, 0.5, 0.4], np.float32)
    agree = np.array([1, 1, 0, 1, 0], np.uint8)
    assert exit_share_within(conf, agree, 0.0) == 0.4  # the two most confident are right
    assert exit_share_within(conf, agree, 0.2) == 0.8  # one wrong exit among 5 is 20%
    assert exit_share_within(conf, agree, 0.4) == 1.0


def test_spread_evenly() -> None:
    assert spread_evenly(1, 15) == [7]
    assert spread_evenly(3, 15) == [3, 7, 11]
    assert spread_evenly(16, 15) == list(range(16))
    for k in range(1, 12):
        picks = spread_evenly(k, 10)
        assert len(set(picks)) == k and picks == sorted(picks) and 0 <= picks[0] and picks[-1] <= 10


def test_choose_initial_respects_budget_and_latest_useful() -> None:
    n, sites = 200, 8
    conf = np.full((n, sites), 0.99, np.float32)
    agree = np.ones((n, sites), np.uint8)
    saved = np.linspace(9.0, 0.0, sites)  # the last site saves nothing
    cost = np.full(sites, 0.08)
    choice = choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.02)
    assert choice.latest_useful == 6
    assert choice.active_sites == [1, 4] and choice.thresholds == [0.0, 0.0]  # 2 x 0.08 <= 0.2 ms < 3 x 0.08
    # every input exits at the first ramp (site 1 saves 9 - 9/7 ms) and pays only that ramp
    assert choice.expected_saving_ms == pytest.approx(9.0 - 9.0 / 7 - 0.08)
    roomy = choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.5)
    assert roomy.active_sites == [1, 4]  # a third ramp ([1, 3, 5]) would save nothing more: the count stops


def test_expected_saving_counts_exits_and_the_ramps_each_input_reaches() -> None:
    conf = np.array([[0.99, 0.0], [0.0, 0.99], [0.0, 0.0], [0.0, 0.0]], np.float32)  # 4 samples, 2 sites
    agree = np.ones((4, 2), np.uint8)
    saved, cost = np.array([6.0, 2.0]), np.array([0.5, 0.25])
    # one exit at each site; all 4 reach ramp 0, 3 reach ramp 1
    assert expected_saving_ms(conf, agree, [0, 1], saved, cost, 0.0) == pytest.approx((6.0 + 2.0 - 4 * 0.5 - 3 * 0.25) / 4)
    assert expected_saving_ms(conf, agree, [1], saved, cost, 0.0) == pytest.approx((2.0 - 4 * 0.25) / 4)
    assert expected_saving_ms(conf, agree, [], saved, cost, 0.0) == 0.0


def test_a_boundary_cost_lowers_the_saving_and_the_latest_useful_site() -> None:
    n, sites = 200, 8
    conf = np.full((n, sites), 0.99, np.float32)
    agree = np.ones((n, sites), np.uint8)
    conf[n // 2:], agree[n // 2:] = 0.0, 0  # half the samples are never confident (nor right): they pass every ramp
    saved = np.linspace(9.0, 0.0, sites)
    cost = np.full(sites, 0.08)
    plain = choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.02)
    bounded = choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.02, boundary_ms=1.5)
    # site 6: half of the inputs save 9/7 ms, the other half pay 0.08 ms, or 1.58 with the boundary
    assert plain.latest_useful == 6 and bounded.latest_useful == 5
    assert plain.active_sites == [1, 4]  # two ramps fit the budget; the earlier exit saves more
    # every input reaches ramp 1 (exit there or pass), half of them ramp 4
    assert plain.expected_saving_ms == pytest.approx(0.5 * (9.0 - 9.0 / 7) - 1.5 * 0.08)
    # with the boundary, the second ramp's boundary (paid by the half that never exits) costs more
    # than the earlier exit of [1, 3] saves over one ramp at site 2
    assert bounded.active_sites == [2]
    assert bounded.expected_saving_ms == pytest.approx(0.5 * (9.0 - 2 * 9.0 / 7) - 1.58)


def test_the_first_ramp_that_fits_is_taken_even_without_a_saving() -> None:
    conf = np.zeros((50, 4), np.float32)  # nothing is ever confident: no site is useful
    agree = np.ones((50, 4), np.uint8)
    choice = choose_initial(conf, agree, np.array([6.0, 4.0, 2.0, 0.0]), np.full(4, 0.1), model_ms=8.0, budget=0.05)
    assert choice.latest_useful == 2 and choice.active_sites == [1]  # the controller needs feedback to judge
    assert choice.expected_saving_ms == pytest.approx(-0.1)


def test_choose_initial_nothing_fits() -> None:
    conf = np.full((10, 2), 0.9, np.float32)
    agree = np.ones((10, 2), np.uint8)
    choice = choose_initial(conf, agree, np.array([5.0, 2.0]), np.array([1.0, 1.0]), model_ms=10.0, budget=0.02)
    assert choice.active_sites == [] and choice.thresholds == []
    empty = choose_initial(np.zeros((10, 0), np.float32), np.zeros((10, 0), np.uint8), np.zeros(0), np.zeros(0), 10.0, 0.02)
    assert empty.active_sites == [] and empty.latest_useful is None
