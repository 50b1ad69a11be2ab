"""How long a ramp's training runs: the optimiser steps of a head (``ramps.fit``) and of a
per-position stage (``ramps.prestage``) alike."""

from __future__ import annotations


def step_count(rows: int, batch: int, epochs: int, min_steps: int, max_steps: int) -> int:
    """Optimiser steps for ``epochs`` passes over ``rows`` rows in batches of ``batch``, raised to
    ``min_steps`` and capped at ``max_steps`` (a cap below the floor gives the floor)."""
    per_epoch = max(1, -(-rows // max(1, batch)))
    return min(max(epochs * per_epoch, min_steps), max(max_steps, min_steps))
