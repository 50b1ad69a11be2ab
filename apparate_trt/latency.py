"""The latency model: an engine's profiled latencies (ms) read at a batch size.

One model for the compiler's initial choice of ramps and the runtime controller: what a ramp costs,
what an exit at a site saves, what a segment boundary adds, the ramp budget. Figures come from the
manifest's profiles (``engine_dir.Manifest``), interpolated between profiled batch sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apparate_trt.engine_dir import Manifest


@dataclass(frozen=True)
class _ProfileAt:
    """The profile at one batch size: ms after each site, each ramp's cost, a boundary's cost, the model's latency."""

    remaining_ms: np.ndarray  # float64 [sites]: segments after the site, up to the model's end
    ramp_ms: np.ndarray  # float64 [sites]: each site's ramp cost
    model_ms: float
    boundary_ms: float = 0.0  # one segment boundary (Manifest.boundary_ms)


class LatencyModel:
    """The engine's latency profile (ms) as the controller reads it, cached per batch size.

    Batch sizes are rounded to integers; between profiled sizes latencies are interpolated
    (``Manifest.segment_ms`` / ``ramp_cost_ms`` / ``model_ms``).
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._cache: dict[int, _ProfileAt] = {}

    def at(self, batch_size: float) -> _ProfileAt:
        """The profile at ``batch_size`` (rounded, at least 1)."""
        b = max(1, int(round(batch_size)))
        found = self._cache.get(b)
        if found is None:
            m = self.manifest
            remaining = m.segment_ms(b).sum() - m.site_reached_ms(b) if m.sites else np.zeros(0)
            found = _ProfileAt(
                np.asarray(remaining, np.float64),
                np.asarray(m.ramp_cost_ms(b), np.float64),
                m.model_ms(b),
                m.boundary_ms(b),
            )
            self._cache[b] = found
        return found

    def ramp_costs_ms(self, sites: Sequence[int], batch_size: float) -> np.ndarray:
        """Latency (ms) each ramp in ``sites`` adds to a batch of ``batch_size``: float64 [r]."""
        return self.at(batch_size).ramp_ms[list(sites)]

    def boundary_ms(self, batch_size: float) -> float:
        """Latency (ms) the segment boundary at an active site adds to a batch of ``batch_size``."""
        return self.at(batch_size).boundary_ms

    def exit_saved_ms(self, sites: Sequence[int], batch_size: float) -> np.ndarray:
        """Latency (ms) saved by releasing an input at each active ramp instead of at the end.

        That is the segments after the site plus the active ramps after it: float64 [r], ``sites``
        in execution order.
        """
        if not sites:
            return np.zeros(0, dtype=np.float64)
        profile = self.at(batch_size)
        after = profile.remaining_ms[list(sites)]
        costs = profile.ramp_ms[list(sites)]
        return np.maximum(after + sum_after(costs), 0.0)

    def row_saved_ms(self, sites: Sequence[int], batch_size: float) -> np.ndarray:
        """Skip mode: latency (ms) one row leaving the batch at each active ramp gives the others.

        The later segments and active ramps run on one row fewer: ``b * (after(b) - after(b - 1))``
        at batch size ``b`` (``after(0) = 0``), the time every other row of the batch, or at batch
        1 the request queued behind it, gets its result sooner. float64 [r], ``sites`` in
        execution order.
        """
        if not sites:
            return np.zeros(0, dtype=np.float64)
        b = max(1, int(round(batch_size)))
        full = self.exit_saved_ms(sites, b)
        fewer = self.exit_saved_ms(sites, b - 1) if b > 1 else np.zeros(len(sites))
        return np.maximum(b * (full - fewer), 0.0)

    def budget_ms(self, batch_size: float) -> float:
        """The ramp budget in ms: ``manifest.budget`` times the model's latency at ``batch_size``."""
        return float(self.manifest.budget * self.at(batch_size).model_ms)

    def latest_useful_site(self, batch_size: float) -> int:
        """The deepest site whose exit saves more latency than its ramp and boundary cost (-1 when none does)."""
        profile = self.at(batch_size)
        found = np.flatnonzero(profile.remaining_ms > profile.ramp_ms + profile.boundary_ms)
        return int(found[-1]) if found.size else -1


def sum_after(values: np.ndarray) -> np.ndarray:
    """For each entry of ``values`` (float64 [r]), the sum of the entries after it (0 for the last):
    e.g. the cost of the ramps after each active ramp."""
    values = np.asarray(values, dtype=np.float64)
    return np.concatenate([np.cumsum(values[::-1])[::-1][1:], [0.0]]) if values.size else values.copy()


def saved_next_ms(saved_ms: np.ndarray) -> np.ndarray:
    """Latency (ms) an exit at each ramp saves relative to the next exit point (next ramp or end)."""
    return saved_ms - np.concatenate([saved_ms[1:], [0.0]])
