"""How long a ramp's training runs: the optimiser step count from which a head (``ramps.fit``,
which then rounds it up to whole epochs) and a per-position stage (``ramps.prestage``, which takes
it as is) both start."""

from __future__ import annotations


def step_count(rows: int, batch: int, epochs: int, min_steps: int, max_steps: int) -> int:
    """Optimiser steps for ``epochs`` passes over ``rows`` rows in batches of ``batch``, raised to
    ``min_steps`` and capped at ``max_steps`` (a cap below the floor gives the floor)."""
    per_epoch = max(1, -(-rows // max(1, batch)))
    return min(max(epochs * per_epoch, min_steps), max(max_steps, min_steps))
