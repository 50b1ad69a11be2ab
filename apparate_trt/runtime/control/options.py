"""Checks of the controller's options: each bad value is a one-line error that says the valid range."""

from __future__ import annotations

from apparate_trt.errors import ApparateError

INITIAL_THRESHOLD_MODES = ("bootstrap", "never")
"""``bootstrap``: tune on the engine directory's held-out statistics at start; ``never``: threshold 0
(never exit) until the first tune on live feedback."""


def check_options(
    constraint: float,
    window_size: int,
    tune_every: int,
    adjust_every: int,
    emergency_window: int,
    target_fraction: float,
    min_tune_samples: int,
    initial_thresholds: str,
    probe_cooldown: int,
) -> None:
    """Raise ApparateError for the first option out of its range."""
    if not 0.0 <= constraint < 1.0:
        raise ApparateError(f"accuracy constraint must be a fraction in [0, 1), e.g. 0.01 for 1%, got {constraint}")
    for name, value in (
        ("window size", window_size),
        ("tune interval (batches)", tune_every),
        ("adjust interval (batches)", adjust_every),
        ("emergency window", emergency_window),
        ("min tune samples", min_tune_samples),
    ):
        if int(value) < 1:
            raise ApparateError(f"controller {name} must be at least 1, got {value}")
    if not 0.0 < target_fraction <= 1.0:
        raise ApparateError(f"target_fraction must be in (0, 1], got {target_fraction}")
    if initial_thresholds not in INITIAL_THRESHOLD_MODES:
        raise ApparateError(
            f"initial_thresholds must be one of {', '.join(INITIAL_THRESHOLD_MODES)}, got {initial_thresholds!r}"
        )
    if int(probe_cooldown) < 0:
        raise ApparateError(f"probe_cooldown must be >= 0, got {probe_cooldown}")
