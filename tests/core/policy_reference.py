"""Pure-numpy reference of the C core (``apparate_trt._core``): same functions, same semantics.

Tests cross-check the C core against it and ``benchmarks/bench_core.py`` uses it as the baseline.
Units: latencies in milliseconds (ms); confidences, thresholds, accuracies and the accuracy
constraint are fractions in [0, 1]. Ramps are indexed in execution order. An input exits at the
first ramp ``i`` with ``1 - conf < thresholds[i]`` (in float64), so threshold 0 never exits.

The argument checks come from ``apparate_trt.core_checks``, shared with the Cython wrapper, so both
raise the same one-line ``ValueError`` for the same bad argument.
"""

from __future__ import annotations

import math

import numpy as np

from apparate_trt.core_checks import *  # noqa: F403  (re-exported: tests call every R.check_*)
from apparate_trt.core_checks import (
    _check_conf_values,
    check_done,
    check_floats,
    check_fraction,
    check_kind,
    check_last,
    check_push,
    check_search_args,
    check_site,
    check_sites,
    check_thresholds,
    check_utility_args,
    check_weighted_utility_args,
    check_weights,
    check_window_arrays,
    check_window_size,
)

EPS = 1e-12
"""Tolerance of the accuracy constraint and of "saved increased" in the threshold search."""


def confidence(logits, kind: str = "maxprob"):
    """Confidence and argmax of each row of ``logits`` float32[n, k].

    Returns ``(conf float32[n], pred int32[n])``. ``maxprob``: max softmax probability;
    ``entropy``: ``1 - H(softmax)/log(k)`` (1 when k == 1). A row holding NaN or inf gets conf 0
    (never exits) and pred -1.
    """
    code = check_kind(kind)
    x = check_floats(logits, "logits", 2, np.float32, "float32[n, k] logits")
    n, k = x.shape
    if k < 1:
        raise ValueError(f"logits must have at least one class (column), got shape {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    xd = np.where(finite[:, None], x, 0.0).astype(np.float64)
    d = xd - xd.max(axis=1, keepdims=True)
    e = np.exp(d)
    s = e.sum(axis=1)
    if code == 0:
        v = 1.0 / s
    elif k == 1:
        v = np.ones(n)
    else:
        h = np.log(s) - (d * e).sum(axis=1) / s
        v = 1.0 - h / math.log(k)
    conf = np.clip(v, 0.0, 1.0).astype(np.float32)
    pred = x.argmax(axis=1).astype(np.int32)
    conf[~finite] = 0.0
    pred[~finite] = -1
    return conf, pred


def exit_decisions(conf, thresholds) -> np.ndarray:
    """Exit ramp of each input: first ramp ``i`` with ``1 - conf[i, j] < thresholds[i]``, else -1.

    ``conf`` float32[r, n], ``thresholds`` float64[r] in [0, 1]; returns int32[n].
    """
    c = check_floats(conf, "conf", 2, np.float32, "float32[r, n] confidences")
    t = check_thresholds(thresholds, c.shape[0])
    ex = (1.0 - c.astype(np.float64)) < t[:, None]
    out = np.where(ex.any(axis=0), ex.argmax(axis=0), -1).astype(np.int32)
    return out


def ramp_exits(logits, threshold: float, done, kind: str = "maxprob"):
    """One ramp's decisions for a batch: ``(conf float32[n], pred int32[n], newly uint8[n])``.

    ``newly[j]`` is 1 when input j was not ``done`` and ``1 - conf[j] < threshold``; ``done`` (uint8
    or bool [n]) is updated in place. conf and pred are computed for every row.
    """
    thr = check_fraction(threshold, "threshold", " (0 = never exit)")
    conf, pred = confidence(logits, kind)
    d = check_done(done, conf.shape[0])
    newly = (d == 0) & ((1.0 - conf.astype(np.float64)) < thr)
    d[newly] = 1
    return conf, pred, newly.view(np.uint8)


def batch_exits(logits, thresholds, kind: str = "maxprob"):
    """All ramps' decisions for a batch in one call: ``logits`` float32[r, n, k] (ramp i's logits
    at ``logits[i]``), ``thresholds`` float64[r] in [0, 1]. Returns ``(conf float32[r, n],
    pred int32[r, n], exit_ramp int32[n])`` as confidence() per ramp and exit_decisions()."""
    x = check_floats(logits, "logits", 3, np.float32, "float32[r, n, k] logits")
    r, n, k = x.shape
    conf, pred = confidence(x.reshape(r * n, k), kind)
    conf, pred = conf.reshape(r, n), pred.reshape(r, n)
    return conf, pred, exit_decisions(conf, thresholds)


def _mean_saved(counts, saved_ms: np.ndarray, total: float) -> float:
    """Sum in ramp order, as the C core does (bit-identical results)."""
    if not total > 0:
        return 0.0
    s = 0.0
    for i in range(saved_ms.shape[0]):
        s += float(counts[i]) * float(saved_ms[i])
    return s / total


def _accuracy(wrong: float, total: float) -> float:
    return (total - wrong) / total if total > 0 else 1.0


def _exits_of(c: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Exit ramp per sample, r (= none) when no ramp exits."""
    r = c.shape[0]
    ex = (1.0 - c.astype(np.float64)) < t[:, None]
    return np.where(ex.any(axis=0), ex.argmax(axis=0), r) if r else np.zeros(c.shape[1], np.int64)


def _wrong_of(a: np.ndarray, exits: np.ndarray, w: np.ndarray | None = None) -> float:
    """Number (or, with weights ``w``, weight) of the samples whose exit is wrong."""
    r = a.shape[0]
    j = np.nonzero(exits < r)[0]
    bad = a[exits[j], j] == 0
    return int(bad.sum()) if w is None else float(w[j][bad].sum())


def evaluate_thresholds(conf, agree, saved_ms, thresholds, weights=None):
    """Outcome of thresholds on a window: ``(accuracy, saved_ms_per_sample, exit_counts[r+1])``.

    ``conf`` float32[r, m], ``agree`` uint8[r, m] (ramp i agreed with the final output on sample j),
    ``saved_ms`` float64[r] (ms saved by exiting at ramp i). Accuracy counts non-exits as agreeing
    (1 when m == 0); saved is the mean over samples (ms); the last exit count is the non-exits.
    With ``weights`` (float64[m], > 0) every sum is weighted (inverse probability weighting) and
    exit_counts are the float64 weights exiting at each ramp; without, int64 counts.
    """
    c, a, s = check_window_arrays(conf, agree, saved_ms)
    _check_conf_values(c)
    r, m = c.shape
    t = check_thresholds(thresholds, r)
    w = check_weights(weights, m)
    exits = _exits_of(c, t)
    if w is None:
        counts = np.bincount(exits, minlength=r + 1).astype(np.int64)
        return _accuracy(_wrong_of(a, exits), m), _mean_saved(counts, s, m), counts
    counts = np.bincount(exits, weights=w, minlength=r + 1).astype(np.float64)
    total = float(w.sum())
    return _accuracy(_wrong_of(a, exits, w), total), _mean_saved(counts, s, total), counts


def search_thresholds(
    conf, agree, saved_ms, constraint: float, init_step: float = 0.05, min_step: float = 0.001, weights=None
):
    """Greedy coordinate hill climb of per-ramp thresholds (DESIGN.md, "Threshold tuning").

    Maximises the mean latency saved (ms per sample) subject to accuracy >= 1 - constraint.
    Returns ``(thresholds float64[r], accuracy, saved_ms_per_sample)``; see
    ``ap_search_thresholds`` in csrc/apparate_core.h for the exact rule. ``weights`` (float64[m],
    > 0): weighted samples, as ``ap_search_thresholds_weighted``.
    """
    c, a, s = check_window_arrays(conf, agree, saved_ms)
    _check_conf_values(c)
    con, init, mn = check_search_args(constraint, init_step, min_step)
    r, m = c.shape
    w = check_weights(weights, m)
    wt = np.ones(m) if w is None else w
    total = float(m) if w is None else float(w.sum())
    d = 1.0 - c.astype(np.float64)
    thr = np.zeros(r)
    step = np.full(r, init)
    exits = _exits_of(c, thr)
    counts = np.bincount(exits, weights=wt, minlength=r + 1).astype(np.float64)
    wrong = _wrong_of(a, exits, wt)
    cur_saved = _mean_saved(counts, s, total)
    floor_acc = 1.0 - con - EPS
    cols = np.arange(m)
    bad = np.vstack([a == 0, np.zeros((1, m), bool)])  # bad[e, j]: exit at e is wrong (e = r: never)
    while m and (step >= mn).any():
        best = None
        for i in range(r):
            nt = min(thr[i] + step[i], 1.0)
            if not nt > thr[i]:
                continue
            running = exits > i
            if running.any() and not (d[i][running] < nt).any():  # a gap: extend to the next sample
                nt = min(float(np.nextafter(d[i][running].min(), 2.0)), 1.0)
                if not nt > thr[i]:
                    continue
            moved = running & (d[i] < nt)
            src = exits[moved]
            wm = wt[moved]
            cand = counts - np.bincount(src, weights=wm, minlength=r + 1)
            cand[i] += float(wm.sum())
            cand_wrong = wrong + float(wm[bad[i, moved]].sum()) - float(wm[bad[src, cols[moved]]].sum())
            acc = _accuracy(cand_wrong, total)
            sv = _mean_saved(cand, s, total)
            gain = sv - cur_saved
            if acc < floor_acc or not gain > EPS:
                continue
            ratio = ((cand_wrong - wrong) / total) / gain
            if best is None or ratio < best[0] or (ratio == best[0] and sv > best[1]):
                best = (ratio, sv, i, nt, moved, cand, cand_wrong)
        if best is None:
            step *= 0.5
            continue
        _, cur_saved, i, nt, moved, counts, wrong = best
        exits[moved] = i
        thr[i] = nt
        step[i] = min(step[i] * 2.0, 1.0)
    return thr, _accuracy(wrong, total), cur_saved


def ramp_utility(exit_counts, pass_counts, n: int, saved_next_ms, cost_ms) -> np.ndarray:
    """Utility of each ramp in ms per input: ``exit_counts/n * saved_next_ms - pass_counts/n * cost_ms``.

    ``exit_counts`` int64[r]: inputs that exited at ramp i; ``pass_counts`` int64[r]: inputs that
    reached ramp i without exiting there; ``n``: inputs observed (>= 1); ``saved_next_ms`` float64[r]:
    ms an exit at ramp i saves relative to the next exit point; ``cost_ms`` float64[r]: ms ramp i adds.
    """
    e, p, sv, co, nn = check_utility_args(exit_counts, pass_counts, n, saved_next_ms, cost_ms)
    return e / nn * sv - p / nn * co


def ramp_utility_weighted(exit_weights, pass_weights, total: float, saved_next_ms, cost_ms) -> np.ndarray:
    """:func:`ramp_utility` on weighted counts: ``exit_weights/total * saved_next_ms -
    pass_weights/total * cost_ms`` (float64[r] weights in [0, total], ``total`` > 0)."""
    e, p, sv, co, tot = check_weighted_utility_args(exit_weights, pass_weights, total, saved_next_ms, cost_ms)
    return e / tot * sv - p / tot * co


def synthetic_window(rng: np.random.Generator, r: int, m: int, rounded: bool = False):
    """A synthetic feedback window shaped like a real one, for tests and benchmarks.

    Each sample has a difficulty; deeper ramps are more confident and more often agree with the
    final output. Returns ``(conf float32[r, m], agree uint8[r, m], saved_ms float64[r])`` with
    savings (ms) decreasing with depth; ``rounded`` rounds confidences to 3 decimals (ties).
    """
    diff = rng.random(m)
    conf = np.empty((r, m), np.float32)
    agree = np.empty((r, m), np.uint8)
    for i in range(r):
        skill = (i + 1) / (r + 1)
        q = np.clip(1.0 - diff * (1.2 - skill) + rng.normal(0.0, 0.08, m), 0.0, 1.0)
        conf[i] = np.round(q, 3) if rounded else q
        agree[i] = rng.random(m) < 0.3 + 0.7 * q
    saved = np.sort(rng.uniform(1.0, 10.0, r))[::-1].copy()
    return conf, agree, saved


class FeedbackWindow:
    """Ring buffer of the most recent ``capacity`` feedback samples (one sample per input).

    A sample stores, for each site id in [0, max_sites) it was observed at, the ramp's confidence
    (float32) and whether its prediction agreed with the final output (uint8 0/1).
    """

    def __init__(self, capacity: int, max_sites: int):
        self.capacity, self.max_sites = check_window_size(capacity, max_sites)
        self._conf = np.zeros((self.max_sites, self.capacity), np.float32)
        self._agree = np.zeros((self.max_sites, self.capacity), np.uint8)
        self._has = np.zeros((self.max_sites, self.capacity), bool)
        self._weight = np.ones(self.capacity, np.float64)
        self._head = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def clear(self) -> None:
        self._has[:] = False
        self._head = self._size = 0

    def push(self, site_ids, conf, agree, weights=None) -> None:
        """Appends n samples observed at ``site_ids`` int32[r]: conf float32[r, n], agree uint8[r, n],
        ``weights`` float64[n] (> 0; None: all 1)."""
        s, c, a = check_push(site_ids, conf, agree, self.max_sites)
        _check_conf_values(c)
        n = c.shape[1]
        w = check_weights(weights, n)
        first = max(0, n - self.capacity)
        for j in range(first, n):
            slot = self._head
            self._has[:, slot] = False
            self._conf[s, slot] = c[:, j]
            self._agree[s, slot] = a[:, j] != 0
            self._has[s, slot] = True
            self._weight[slot] = 1.0 if w is None else w[j]
            self._head = (slot + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)

    def remove_site(self, site: int) -> None:
        """Forgets one site's values in every stored sample."""
        self._has[check_site(site, self.max_sites)] = False

    def _slots(self, s: np.ndarray) -> np.ndarray:
        """Slots (oldest first) of the stored samples holding all sites ``s``."""
        order = (self._head - self._size + np.arange(self._size)) % self.capacity
        return order[self._has[s][:, order].all(axis=0)] if s.size else order

    def count(self, site_ids) -> int:
        """Number of stored samples holding every one of ``site_ids``."""
        return int(self._slots(check_sites(site_ids, self.max_sites)).shape[0])

    def gather(self, site_ids, last: int | None = None):
        """``(conf float32[r, m], agree uint8[r, m])`` of the samples (oldest first) holding all sites;
        with ``last``, only the ``last`` most recent such samples."""
        s = check_sites(site_ids, self.max_sites)
        lim = check_last(last)
        slots = self._slots(s)
        if lim >= 0:
            slots = slots[max(0, slots.shape[0] - lim) :]
        return (np.ascontiguousarray(self._conf[s][:, slots]), np.ascontiguousarray(self._agree[s][:, slots]))

    def gather_weights(self, site_ids, last: int | None = None) -> np.ndarray:
        """The weights (float64[m]) of the samples :meth:`gather` returns, in the same order."""
        s = check_sites(site_ids, self.max_sites)
        lim = check_last(last)
        slots = self._slots(s)
        if lim >= 0:
            slots = slots[max(0, slots.shape[0] - lim) :]
        return self._weight[slots].copy()

    def accuracy_with(self, site_ids, thresholds) -> float:
        """Weighted accuracy (fraction) thresholds float64[r] for ``site_ids`` (in execution order)
        would have had on the stored samples holding all those sites; 1.0 when there are none."""
        s = check_sites(site_ids, self.max_sites)
        t = check_thresholds(thresholds, s.shape[0])
        c, a = self.gather(s)
        w = self.gather_weights(s)
        exits = _exits_of(c, t)
        return _accuracy(_wrong_of(a, exits, w), float(w.sum()))
