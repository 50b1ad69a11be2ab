"""The initial ramp configuration (DESIGN.md step 7), from the held-out bootstrap statistics.

1. A site is *useful* if a ramp there is expected to save latency on the bootstrap data: with the
   loosest threshold that keeps its exits within the accuracy constraint, (share exiting x ms saved
   by an exit) exceeds (share passing x the ramp's cost). The *latest useful ramp* is the deepest
   useful site; sites after it are never used. (If no site is useful, e.g. with a small bootstrap
   set, the latest site where an exit saves more than the ramp costs is used instead.)
2. The count is greedy: the largest k whose k sites, spread evenly over the useful range
   [0, latest useful], cost at most ``budget x model latency`` in total.
3. Thresholds all start at 0 (never exit) until the first feedback arrives.

Latencies are in ms at batch size 1; budget and accuracy constraint are fractions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InitialChoice:
    """The chosen active sites and thresholds, with what they were chosen from."""

    active_sites: list[int]
    thresholds: list[float]
    latest_useful: int | None
    budget_ms: float


def exit_share_within(confidence: np.ndarray, agree: np.ndarray, constraint: float) -> float:
    """Largest share of samples that can exit at one ramp (most confident first) with accuracy >= 1 - constraint."""
    n = confidence.shape[0]
    if n == 0:
        return 0.0
    order = np.argsort(-confidence, kind="stable")
    correct = np.cumsum(agree[order].astype(np.float64))
    exiting = np.arange(1, n + 1)
    # samples that do not exit are correct by definition: accuracy = 1 - wrong exits / n
    ok = (exiting - correct) / n <= constraint
    return float(exiting[ok].max() / n) if ok.any() else 0.0


def net_saving_ms(exit_share: float, saved_ms: float, cost_ms: float) -> float:
    """Expected ms saved per input by one ramp: exits save ``saved_ms``, the rest pay ``cost_ms``."""
    return exit_share * saved_ms - (1.0 - exit_share) * cost_ms


def latest_useful_site(confidence: np.ndarray, agree: np.ndarray, saved_ms: np.ndarray, cost_ms: np.ndarray, constraint: float) -> int | None:
    """Deepest site whose ramp is expected to save latency (see module docstring), or None."""
    num_sites = saved_ms.shape[0]
    useful = [
        s
        for s in range(num_sites)
        if net_saving_ms(exit_share_within(confidence[:, s], agree[:, s], constraint), saved_ms[s], cost_ms[s]) > 0
    ]
    if not useful:
        useful = [s for s in range(num_sites) if saved_ms[s] > cost_ms[s]]
    return max(useful) if useful else None


def spread_evenly(k: int, last: int) -> list[int]:
    """``k`` distinct site ids spread evenly over 0..``last``, with equal gaps at both ends."""
    n = last + 1
    if k >= n:
        return list(range(n))
    return [int(np.floor((j + 1) * n / (k + 1) + 0.5)) - 1 for j in range(k)]


def choose_initial(
    confidence: np.ndarray,
    agree: np.ndarray,
    saved_ms: np.ndarray,
    cost_ms: np.ndarray,
    model_ms: float,
    budget: float,
    constraint: float = 0.01,
) -> InitialChoice:
    """Initial active sites within ``budget`` (fraction of ``model_ms``), thresholds all 0."""
    budget_ms = budget * model_ms
    latest = latest_useful_site(confidence, agree, np.asarray(saved_ms), np.asarray(cost_ms), constraint)
    chosen: list[int] = []
    if latest is not None:
        for k in range(1, latest + 2):
            sites = spread_evenly(k, latest)
            if float(np.sum(np.asarray(cost_ms)[sites])) > budget_ms:
                break
            chosen = sites
    return InitialChoice(chosen, [0.0] * len(chosen), latest, budget_ms)
