"""Initial configuration: latest useful ramp, greedy count within the budget, even spread."""
from __future__ import annotations

import numpy as np

from apparate_trt.compiler.initial_config import choose_initial, exit_share_within, spread_evenly


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
    roomy = choose_initial(conf, agree, saved, cost, model_ms=10.0, budget=0.5)
    assert roomy.active_sites == list(range(7))


def test_choose_initial_nothing_fits() -> None:
    conf = np.full((10, 2), 0.9, np.float32)
    agree = np.ones((10, 2), np.uint8)
    choice = choose_initial(conf, agree, np.array([5.0, 2.0]), np.array([1.0, 1.0]), model_ms=10.0, budget=0.02)
    assert choice.active_sites == [] and choice.thresholds == []
    empty = choose_initial(np.zeros((10, 0), np.float32), np.zeros((10, 0), np.uint8), np.zeros(0), np.zeros(0), 10.0, 0.02)
    assert empty.active_sites == [] and empty.latest_useful is None
