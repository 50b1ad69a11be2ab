"""``ramps.steps.step_count``: the optimiser steps of a head and of a per-position stage."""

from apparate_trt.ramps.fit import HeadTraining
from apparate_trt.ramps.prestage import PreStageTraining
from apparate_trt.ramps.steps import step_count


def test_stage_steps_follow_the_rows_between_the_floor_and_the_cap():
    c = PreStageTraining()
    assert step_count(4000, 128, c.epochs, c.min_steps, c.max_steps) == 600  # 32 steps an epoch x 30, capped
    assert step_count(150, 128, c.epochs, c.min_steps, c.max_steps) == 60  # 2 steps an epoch x 30
    assert step_count(40, 40, c.epochs, c.min_steps, c.max_steps) == 50  # 1 step an epoch x 30, raised


def test_head_steps_and_a_cap_below_the_floor():
    c = HeadTraining()
    assert step_count(1000, 128, c.epochs, c.min_steps, c.max_steps) == 200  # 8 x 20 = 160, raised to 200
    assert step_count(10_000, 128, 5, 10, 3) == 10  # the floor wins over a lower cap
