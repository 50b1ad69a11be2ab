"""The initial ramp configuration (DESIGN.md step 7), from the held-out bootstrap statistics.

1. A site is *useful* if a ramp there is expected to save latency on the bootstrap data: with the
   loosest threshold that keeps its exits within the accuracy target, (share exiting x ms saved
   by an exit) exceeds (share passing x the ramp's cost plus the segment boundary its site needs).
   The *latest useful ramp* is the deepest useful site; sites after it are never used. (If no site
   is useful, e.g. with a small bootstrap set, the latest site where an exit saves more than the
   ramp and boundary cost is used instead.)
2. The sites are chosen greedily (forward selection): start with none and add, one at a time, the
   site in the useful range [0, latest useful] whose ramp raises the expected saving the most
   (:func:`expected_saving_ms`: the C core's threshold search on the bootstrap statistics, as the
   controller will tune them), while the ramps cost at most ``budget x model latency`` in total
   (with ``defaults.BUDGET_SLACK`` of margin for the profile's noise, so that one model compiles to
   the same sites every time) and the saving rises. The first ramp that fits is always taken: the
   controller judges ramps on live feedback, and with no ramp it gets none. Ties go to the site
   nearest the middle of the useful range, so that statistics that tell the sites apart not at all
   give the reference's hedge.
   (DESIGN.md's reference code spreads its greedy count evenly over the useful range instead; on
   the EfficientNet-Lite0 benchmark engine that put the one ramp the budget allows in the middle,
   where forward selection finds an earlier site whose exits save more: benchmarks/README.md.)
3. Thresholds all start at 0 (never exit) until the first feedback arrives.

Latencies are in ms at the batch size the pipeline chooses at (``pipeline.serving_batch``: the largest
profiled one up to the serving default); budget and accuracy target are fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apparate_trt import _core
from apparate_trt.defaults import BUDGET_SLACK, SEARCH_MIN_STEP
from apparate_trt.latency import sum_after


@dataclass
class InitialChoice:
    """The chosen active sites and thresholds, with what they were chosen from."""

    active_sites: list[int]
    thresholds: list[float]
    latest_useful: int | None
    budget_ms: float
    expected_saving_ms: float | None = None
    """Expected ms saved per input on the bootstrap statistics (None when no ramp is chosen)."""


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


def expected_saving_ms(
    confidence: np.ndarray,
    agree: np.ndarray,
    sites: Sequence[int],
    saved_ms: np.ndarray,
    cost_ms: np.ndarray,
    constraint: float,
) -> float:
    """Expected ms saved per input by ramps at ``sites`` (ascending) on the statistics ``confidence`` /
    ``agree`` ([samples, all sites]), with per-ramp thresholds from the C core's search at
    ``constraint``: an input exiting at a site saves ``saved_ms`` there, and every input pays
    ``cost_ms`` (ramp and boundary) at each ramp it reaches, the one it exits at included."""
    k, n = len(sites), confidence.shape[0]
    if k == 0 or n == 0:
        return 0.0
    conf = np.ascontiguousarray(confidence[:, sites].T, dtype=np.float32)
    agr = np.ascontiguousarray(agree[:, sites].T, dtype=np.uint8)
    costs = np.asarray(cost_ms, np.float64)[list(sites)]
    saved = np.asarray(saved_ms, np.float64)[list(sites)]
    in_chain = saved + sum_after(costs)  # an exit also skips the later ramps
    thresholds, _, _ = _core.search_thresholds(conf, agr, in_chain, constraint, min_step=SEARCH_MIN_STEP)
    _, _, counts = _core.evaluate_thresholds(conf, agr, in_chain, thresholds)
    exits = np.asarray(counts[:k], np.float64)
    reach = n - np.concatenate([[0.0], np.cumsum(exits)[:-1]])
    return float((exits * saved).sum() - (reach * costs).sum()) / n


def latest_useful_site(
    confidence: np.ndarray, agree: np.ndarray, saved_ms: np.ndarray, cost_ms: np.ndarray, constraint: float
) -> int | None:
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


def forward_selection(
    confidence: np.ndarray,
    agree: np.ndarray,
    saved_ms: np.ndarray,
    ramp_ms: np.ndarray,
    paid_ms: np.ndarray,
    budget_ms: float,
    constraint: float,
    last: int,
) -> tuple[list[int], float]:
    """Sites among 0..``last`` chosen one at a time by expected saving (module docstring, step 2):
    (the ascending sites, their expected saving in ms per input; -inf when none fits).
    ``ramp_ms`` is what the budget counts; ``paid_ms`` what an input pays at a ramp it reaches."""
    chosen: list[int] = []
    best = -np.inf
    middle = last / 2.0
    while True:
        options = []
        for site in range(last + 1):
            if site in chosen:
                continue
            sites = sorted([*chosen, site])
            if float(np.sum(ramp_ms[sites])) > budget_ms * (1.0 + BUDGET_SLACK):
                continue
            value = expected_saving_ms(confidence, agree, sites, saved_ms, paid_ms, constraint)
            options.append((value, -abs(site - middle), -site, sites))
        if not options:
            return chosen, best
        value, _, _, sites = max(options)
        if chosen and value <= best:
            return chosen, best
        chosen, best = sites, value


def choose_initial(
    confidence: np.ndarray,
    agree: np.ndarray,
    saved_ms: np.ndarray,
    cost_ms: np.ndarray,
    model_ms: float,
    budget: float,
    constraint: float = 0.01,
    boundary_ms: float = 0.0,
) -> InitialChoice:
    """Initial active sites within ``budget`` (fraction of ``model_ms``), thresholds all 0.

    ``confidence`` / ``agree``: [samples, sites] held-out bootstrap statistics; ``saved_ms`` /
    ``cost_ms``: per site, what an exit saves and what the ramp costs (ms); ``boundary_ms``: what
    the segment boundary at an active site adds (ms); ``constraint``: the share of disagreeing
    exits the thresholds may make (the controller's target). The budget counts ramps alone.
    """
    budget_ms = budget * model_ms
    saved = np.asarray(saved_ms, np.float64)
    ramp_ms = np.asarray(cost_ms, np.float64)
    paid_ms = ramp_ms + boundary_ms
    latest = latest_useful_site(confidence, agree, saved, paid_ms, constraint)
    chosen, best = (
        ([], -np.inf)
        if latest is None
        else forward_selection(confidence, agree, saved, ramp_ms, paid_ms, budget_ms, constraint, latest)
    )
    return InitialChoice(chosen, [0.0] * len(chosen), latest, budget_ms, None if not chosen else best)
