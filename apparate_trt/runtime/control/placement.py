"""Where the slow loop probes a ramp next (DESIGN.md, "Ramp adjustment").

Pure functions of site indices: after a removal, halfway deeper toward the next active ramp; with
spare budget, halfway between the start and the earliest active ramp. Sites in ``blocked`` (removed
recently, in their cooldown) and active sites are never proposed.
"""

from __future__ import annotations

from collections.abc import Sequence


def deeper_probe(removed: int, active: Sequence[int], latest: int, blocked: set[int]) -> int | None:
    """Site to probe after removing the ramp at ``removed``: halfway to the next boundary, deeper.

    The boundary is the next active ramp after ``removed`` (or ``latest + 1``). Sites in ``active``
    or ``blocked`` are skipped (the nearest free site from halfway onward, then back toward
    ``removed``). None when no site is free.
    """
    later = [s for s in active if s > removed]
    boundary = min(later) if later else latest + 1
    return free_site_between(removed + 1, boundary, active, blocked)


def earlier_probe(active: Sequence[int], latest: int, blocked: set[int]) -> int | None:
    """Site to probe with spare budget: halfway between the start and the earliest active ramp."""
    boundary = min(active) if active else latest + 1
    return free_site_between(0, boundary, active, blocked)


def free_site_between(low: int, high: int, active: Sequence[int], blocked: set[int]) -> int | None:
    """A free site in [low, high): the middle one if free, else the nearest free one to it."""
    if high <= low:
        return None
    middle = (low + high - 1) // 2 if high - low > 1 else low
    taken = set(active) | blocked
    for distance in range(high - low):
        for site in (middle + distance, middle - distance):
            if low <= site < high and site not in taken:
                return site
    return None


def with_site(
    active: Sequence[int], thresholds: Sequence[float], site: int, threshold: float = 0.0
) -> tuple[list[int], list[float]]:
    """``(sites, thresholds)`` with ``site`` added in execution order at ``threshold`` (default 0:
    never exits, a ramp in probation); the other ramps keep theirs."""
    per_site = dict(zip(active, thresholds))
    per_site[int(site)] = float(threshold)
    sites = sorted(per_site)
    return sites, [per_site[s] for s in sites]
