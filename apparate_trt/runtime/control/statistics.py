"""Statistics of the feedback window: how many wrong exits are an emergency, how large the window
is in skip mode, and how far below the target the threshold search must aim.

Pure functions of counts and fractions; the controller (:mod:`.controller`) calls them.
"""

from __future__ import annotations

import math

import numpy as np

EMERGENCY_MIN_ERRORS = 3
"""Wrong exits at one ramp in the emergency window below which no emergency is declared."""
EMERGENCY_P_VALUE = 1e-3
"""An emergency needs one ramp's wrong exits to be this unlikely for a ramp within the constraint."""
SKIP_WINDOW_CAP = 8192
"""Skip mode: the most samples the feedback window stores (see :func:`skip_window_size`)."""


def emergency_limit(constraint: float, samples: float, p_value: float = EMERGENCY_P_VALUE) -> int:
    """Wrong exits of one ramp among ``samples`` recent ones that declare an emergency.

    The smallest count ``k`` (at least EMERGENCY_MIN_ERRORS) that a ramp spending the whole error
    budget (wrong exits ~ Poisson(constraint * samples)) reaches with probability below ``p_value``:
    checked every batch, a ramp within the constraint is almost never cut, while one whose exits
    turn wrong is cut within a few batches.
    """
    lam = constraint * float(samples)
    k, pmf, below = 0, math.exp(-lam), 0.0
    while True:
        below += pmf  # P(X <= k)
        k += 1
        if 1.0 - below < p_value:
            return max(EMERGENCY_MIN_ERRORS, k)
        pmf *= lam / k


def emergency_samples(exits: np.ndarray, weights: np.ndarray) -> float:
    """The sample count at which to read :func:`emergency_limit` for wrong exits counted among
    kept rows only: the rows the window stands for (its weight) times the share of the exits that
    were kept (audited); equal to the sample count when every row was kept."""
    total = float(weights.sum())
    exited = exits >= 0
    weighed = float(weights[exited].sum())
    kept_share = float(np.count_nonzero(exited)) / weighed if weighed > 0 else 1.0
    return max(1.0, total * kept_share)


def skip_window_size(window_size: int, audit_rate: float) -> int:
    """Skip mode's window capacity: ``window_size / audit_rate`` kept samples (at most
    SKIP_WINDOW_CAP), so that the window holds about as many exits' feedback as ``window_size``
    rows in release mode; an audited exit's weight ``1 / p`` makes each one count more, and the
    estimate is noisier (its variance grows by ``(1 - p) / p`` per exit) without the extra samples."""
    return max(window_size, min(SKIP_WINDOW_CAP, int(math.ceil(window_size / audit_rate))))


def search_constraint(target: float, ramps: int, samples: float, exit_weight: float = 1.0) -> float:
    """The constraint handed to the threshold search on a window of ``samples`` for ``ramps`` ramps.

    The hill climb raises each ramp's threshold until just before the window's next wrong exit, so
    on new requests the thresholds it picks make about one more wrong exit per ramp than it saw in
    the window (the winner's curse of tuning on the very samples it is judged on). In skip mode the
    window holds only the audited exits, each of weight ``exit_weight`` (``1 / audit rate``): the
    next wrong exit the window would see lies about ``exit_weight`` real wrong exits further on.
    That expected excess, ``ramps * exit_weight / samples`` (``samples`` the weighted row count),
    is taken off the target (never below 0).
    """
    return max(0.0, target - ramps * max(1.0, exit_weight) / samples) if samples else target


def samples_to_tune(ramps: int, target: float, min_samples: int, window_size: int) -> int:
    """Fewest window samples (holding every active ramp) a tune of ``ramps`` ramps waits for.

    At least ``min_samples``, and enough that the winner's-curse excess of one wrong exit per ramp
    (see :func:`search_constraint`) fits in the ``target`` disagreement (a fraction):
    ``ramps / target`` samples, capped at ``window_size``.
    """
    if target <= 0:
        return min_samples
    return max(min_samples, min(window_size, math.ceil(ramps / target)))
