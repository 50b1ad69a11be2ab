"""Where the slow loop probes a ramp next (DESIGN.md, "Ramp adjustment").

Pure functions of site indices: after a removal, halfway deeper toward the next active ramp; with
spare budget, halfway between the start and the earliest active ramp. Sites in ``blocked`` (removed
recently, in their cooldown) and active sites are never proposed. The ``*_probes`` functions list
every free site of the range in order of preference (the halfway one first, then outward), so the
controller can take the first one its budget affords: probing only the halfway site, which may cost
more than the budget, left an engine with no ramp for good (issue 32).
"""

from __future__ import annotations

from collections.abc import Sequence


def deeper_probes(removed: int, active: Sequence[int], latest: int, blocked: set[int]) -> list[int]:
    """Every free site :func:`deeper_probe` could propose, best first."""
    later = [s for s in active if s > removed]
    boundary = min(later) if later else latest + 1
    return free_sites_between(removed + 1, boundary, active, blocked)


def earlier_probes(active: Sequence[int], latest: int, blocked: set[int]) -> list[int]:
    """Every free site :func:`earlier_probe` could propose, best first."""
    boundary = min(active) if active else latest + 1
    return free_sites_between(0, boundary, active, blocked)


def deeper_probe(removed: int, active: Sequence[int], latest: int, blocked: set[int]) -> int | None:
    """Site to probe after removing the ramp at ``removed``: halfway to the next boundary, deeper.

    The boundary is the next active ramp after ``removed`` (or ``latest + 1``). Sites in ``active``
    or ``blocked`` are skipped (the nearest free site from halfway onward, then back toward
    ``removed``). None when no site is free.
    """
    probes = deeper_probes(removed, active, latest, blocked)
    return probes[0] if probes else None


def earlier_probe(active: Sequence[int], latest: int, blocked: set[int]) -> int | None:
    """Site to probe with spare budget: halfway between the start and the earliest active ramp."""
    probes = earlier_probes(active, latest, blocked)
    return probes[0] if probes else None


def free_sites_between(low: int, high: int, active: Sequence[int], blocked: set[int]) -> list[int]:
    """The free sites in [low, high), the middle one first, then by distance from it (deeper first on ties)."""
    if high <= low:
        return []
    middle = (low + high - 1) // 2 if high - low > 1 else low
    taken = set(active) | blocked
    order: list[int] = []
    for distance in range(high - low):
        for site in (middle + distance, middle - distance):
            if low <= site < high and site not in taken and site not in order:
                order.append(site)
    return order


def free_site_between(low: int, high: int, active: Sequence[int], blocked: set[int]) -> int | None:
    """A free site in [low, high): the middle one if free, else the nearest free one to it."""
    sites = free_sites_between(low, high, active, blocked)
    return sites[0] if sites else None


def with_site(
    active: Sequence[int], thresholds: Sequence[float], site: int, threshold: float = 0.0
) -> tuple[list[int], list[float]]:
    """``(sites, thresholds)`` with ``site`` added in execution order at ``threshold`` (default 0:
    never exits, a ramp in probation); the other ramps keep theirs."""
    per_site = dict(zip(active, thresholds))
    per_site[int(site)] = float(threshold)
    sites = sorted(per_site)
    return sites, [per_site[s] for s in sites]
