"""Pure-numpy reference of the C core (``apparate_trt._core``): same functions, same semantics.

Tests cross-check the C core against it and ``benchmarks/bench_core.py`` uses it as the baseline.
Units: latencies in milliseconds (ms); confidences, thresholds, accuracies and the accuracy
constraint are fractions in [0, 1]. Ramps are indexed in execution order. An input exits at the
first ramp ``i`` with ``1 - conf < thresholds[i]`` (in float64), so threshold 0 never exits.

The argument checks (``check_*`` helpers) are shared with the Cython wrapper, so both raise the
same one-line ``ValueError`` for the same bad argument.
"""
from __future__ import annotations

import math

import numpy as np

KINDS = {"maxprob": 0, "entropy": 1}
"""Confidence measures: max softmax probability, or ``1 - H(softmax) / log(k)``."""

EPS = 1e-12
"""Tolerance of the accuracy constraint and of "saved increased" in the threshold search."""


# ---- argument checks (shared with apparate_trt/_core.pyx) -----------------------------------------

def _shape_text(ndim: int) -> str:
    return {1: "1-D", 2: "2-D"}.get(ndim, f"{ndim}-D")


def check_array(x, name: str, ndim: int, dtype, kinds: str, what: str) -> np.ndarray:
    """``x`` as a C-contiguous ``dtype`` array of ``ndim`` dimensions, or a one-line ValueError.

    ``kinds`` lists the numpy dtype kinds accepted for conversion (e.g. ``"fiu"``); ``what`` names
    the expected content in the message (e.g. ``"float32[n, k] logits"``).
    """
    try:
        a = np.asarray(x)
    except Exception as exc:  # e.g. ragged nested lists
        raise ValueError(f"{name} must be a numpy array of {what}; could not convert it ({exc})") from None
    if a.dtype.kind not in kinds and not (a.size == 0 and a.dtype.kind in "fiub"):
        raise ValueError(f"{name} must be a numpy array of {what}, got dtype {a.dtype}; convert it with "
                         f".astype(np.{np.dtype(dtype).name})")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {_shape_text(ndim)} array of {what}, got shape {a.shape}")
    if a.dtype.kind in "iu" and np.dtype(dtype).kind in "iu" and a.size:
        info = np.iinfo(dtype)
        if a.min() < info.min or a.max() > info.max:
            raise ValueError(f"{name} holds values outside the range of {np.dtype(dtype).name}")
    return np.ascontiguousarray(a, dtype=dtype)


def check_floats(x, name: str, ndim: int, dtype=np.float32, what: str | None = None) -> np.ndarray:
    """Real-valued array (float, int or unsigned accepted) converted to ``dtype``."""
    return check_array(x, name, ndim, dtype, "fiu", what or f"{np.dtype(dtype).name} values")


def check_ints(x, name: str, ndim: int, dtype=np.int32, what: str | None = None) -> np.ndarray:
    """Integer array converted to ``dtype`` (range-checked)."""
    return check_array(x, name, ndim, dtype, "iu", what or f"{np.dtype(dtype).name} integers")


def check_flags(x, name: str, ndim: int) -> np.ndarray:
    """Bool or integer array as uint8 0/1 (nonzero means true)."""
    a = check_array(x, name, ndim, None, "biu", "bool or uint8 flags")
    return a if a.dtype == np.uint8 else (a != 0).view(np.uint8)


def check_fraction(v, name: str, hint: str = "") -> float:
    """A number in [0, 1] (NaN rejected) as a Python float."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {v!r}") from None
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {f!r}{hint}")
    return f


def check_kind(kind) -> int:
    """Confidence kind name -> C code."""
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}") from None


def check_thresholds(thresholds, r: int) -> np.ndarray:
    """float64[r] thresholds, each in [0, 1]."""
    t = check_floats(thresholds, "thresholds", 1, np.float64, "float64[r] thresholds")
    if t.shape[0] != r:
        raise ValueError(f"thresholds has {t.shape[0]} entries but conf has {r} ramps (rows); pass one per ramp")
    if t.size and not ((t >= 0.0) & (t <= 1.0)).all():
        raise ValueError(f"thresholds must each be in [0, 1] (0 = never exit), got {t.tolist()}")
    return t


def check_window_arrays(conf, agree, saved_ms):
    """conf float32[r, m] in [0, 1], agree uint8[r, m], saved_ms float64[r] (finite)."""
    c = check_floats(conf, "conf", 2, np.float32, "float32[r, m] confidences")
    a = check_flags(agree, "agree", 2)
    if a.shape != c.shape:
        raise ValueError(f"agree has shape {a.shape} but conf has shape {c.shape}; they must match [r, m]")
    s = check_floats(saved_ms, "saved_ms", 1, np.float64, "float64[r] savings in ms")
    if s.shape[0] != c.shape[0]:
        raise ValueError(f"saved_ms has {s.shape[0]} entries but conf has {c.shape[0]} ramps; pass one per ramp")
    if not np.isfinite(s).all():
        raise ValueError(f"saved_ms must be finite (ms saved by exiting at each ramp), got {s.tolist()}")
    return c, a, s


def conf_range_error(name: str = "conf") -> ValueError:
    return ValueError(f"{name} must hold confidences in [0, 1] with no NaN; compute them with confidence()")


def _check_conf_values(c: np.ndarray, name: str = "conf") -> None:
    if c.size and not ((c >= 0.0) & (c <= 1.0)).all():
        raise conf_range_error(name)


# ---- confidence and exit decisions ----------------------------------------------------------------

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


def check_done(done, n: int) -> np.ndarray:
    """The in-place ``done`` flags: a writable, C-contiguous uint8 (or bool) numpy array [n]."""
    if not isinstance(done, np.ndarray) or done.dtype not in (np.uint8, np.bool_) or done.ndim != 1:
        got = f"{type(done).__name__} {getattr(done, 'dtype', '')} {getattr(done, 'shape', '')}".strip()
        raise ValueError(f"done must be a 1-D numpy uint8 (or bool) array, updated in place; got {got}")
    if done.shape[0] != n:
        raise ValueError(f"done has {done.shape[0]} entries but logits has {n} rows; pass one flag per input")
    if not done.flags.c_contiguous or not done.flags.writeable:
        raise ValueError("done must be C-contiguous and writable (it is updated in place); "
                         "pass np.zeros(n, np.uint8)")
    return done.view(np.uint8)


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


# ---- threshold evaluation and search --------------------------------------------------------------

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


def check_weights(weights, m: int) -> np.ndarray | None:
    """None, or float64[m] sample weights, each finite and > 0 (skip mode's audited rows weigh 1 / p)."""
    if weights is None:
        return None
    w = check_floats(weights, "weights", 1, np.float64, "float64[m] sample weights")
    if w.shape[0] != m:
        raise ValueError(f"weights has {w.shape[0]} entries but the window has {m} samples; give one weight per sample")
    if m and not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError("weights must be finite and > 0 (a sample kept with probability p weighs 1 / p)")
    return w


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


def check_search_args(constraint, init_step, min_step):
    """constraint in [0, 1], init_step in (0, 1], min_step > 0 (finite)."""
    con = check_fraction(constraint, "constraint", " (the allowed share of disagreeing results, e.g. 0.01)")
    try:
        i, mn = float(init_step), float(min_step)
    except (TypeError, ValueError):
        raise ValueError(f"init_step and min_step must be numbers, got {init_step!r}, {min_step!r}") from None
    if not 0.0 < i <= 1.0:
        raise ValueError(f"init_step must be in (0, 1], got {i!r}")
    if not (0.0 < mn < math.inf):
        raise ValueError(f"min_step must be a positive number, got {mn!r}")
    return con, i, mn


def search_thresholds(conf, agree, saved_ms, constraint: float, init_step: float = 0.05,
                      min_step: float = 0.001, weights=None):
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


def check_weighted_utility_args(exit_weights, pass_weights, total, saved_next_ms, cost_ms):
    e = check_floats(exit_weights, "exit_weights", 1, np.float64)
    p = check_floats(pass_weights, "pass_weights", 1, np.float64)
    sv = check_floats(saved_next_ms, "saved_next_ms", 1, np.float64)
    co = check_floats(cost_ms, "cost_ms", 1, np.float64)
    r = e.shape[0]
    if not (p.shape[0] == sv.shape[0] == co.shape[0] == r):
        raise ValueError(f"exit_weights, pass_weights, saved_next_ms and cost_ms must have the same length "
                         f"(one per ramp), got {r}, {p.shape[0]}, {sv.shape[0]}, {co.shape[0]}")
    try:
        tot = float(total)
    except (TypeError, ValueError):
        raise ValueError(f"total must be a positive number (weight observed), got {total!r}") from None
    if not (0.0 < tot < math.inf):
        raise ValueError(f"total must be a positive number (weight observed), got {total!r}")
    slack = tot * 1e-9
    if r and not ((e >= 0).all() and (p >= 0).all() and (e <= tot + slack).all() and (p <= tot + slack).all()):
        raise ValueError(f"exit_weights and pass_weights must be in [0, total={tot}], got {e.tolist()} and {p.tolist()}")
    return e, p, sv, co, tot


def check_utility_args(exit_counts, pass_counts, n, saved_next_ms, cost_ms):
    e = check_ints(exit_counts, "exit_counts", 1, np.int64)
    p = check_ints(pass_counts, "pass_counts", 1, np.int64)
    sv = check_floats(saved_next_ms, "saved_next_ms", 1, np.float64)
    co = check_floats(cost_ms, "cost_ms", 1, np.float64)
    r = e.shape[0]
    if not (p.shape[0] == sv.shape[0] == co.shape[0] == r):
        raise ValueError(f"exit_counts, pass_counts, saved_next_ms and cost_ms must have the same length "
                         f"(one per ramp), got {r}, {p.shape[0]}, {sv.shape[0]}, {co.shape[0]}")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer (inputs observed), got {n!r}")
    n = int(n)
    if r and (e.min() < 0 or p.min() < 0 or e.max() > n or p.max() > n):
        raise ValueError(f"exit_counts and pass_counts must be in [0, n={n}], got {e.tolist()} and {p.tolist()}")
    return e, p, sv, co, n


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


# ---- feedback window ------------------------------------------------------------------------------

def check_window_size(capacity, max_sites):
    for name, v in (("capacity", capacity), ("max_sites", max_sites)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(capacity), int(max_sites)


def check_sites(site_ids, max_sites: int) -> np.ndarray:
    """int32[r] distinct site ids in [0, max_sites)."""
    s = check_ints(site_ids, "site_ids", 1, np.int64, "int32[r] site ids")
    if s.size and (s.min() < 0 or s.max() >= max_sites):
        raise ValueError(f"site_ids must be in [0, max_sites={max_sites}), got {s.tolist()}")
    if np.unique(s).shape[0] != s.shape[0]:
        raise ValueError(f"site_ids must be distinct, got {s.tolist()}")
    return s.astype(np.int32)


def check_site(site, max_sites: int) -> int:
    if isinstance(site, (bool, np.bool_)) or not isinstance(site, (int, np.integer)) or not 0 <= site < max_sites:
        raise ValueError(f"site must be an integer in [0, max_sites={max_sites}), got {site!r}")
    return int(site)


def check_push(site_ids, conf, agree, max_sites: int):
    """site ids int32[r], conf float32[r, n], agree uint8[r, n] for FeedbackWindow.push."""
    s = check_sites(site_ids, max_sites)
    c = check_floats(conf, "conf", 2, np.float32, "float32[r, n] confidences")
    a = check_flags(agree, "agree", 2)
    if c.shape[0] != s.shape[0]:
        raise ValueError(f"conf has {c.shape[0]} rows but site_ids has {s.shape[0]} sites; pass one row per site")
    if a.shape != c.shape:
        raise ValueError(f"agree has shape {a.shape} but conf has shape {c.shape}; they must match [r, n]")
    return s, c, a


def check_last(last):
    if last is None:
        return -1
    if isinstance(last, (bool, np.bool_)) or not isinstance(last, (int, np.integer)) or last < 0:
        raise ValueError(f"last must be None or a non-negative integer (most recent samples), got {last!r}")
    return int(last)


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
            slots = slots[max(0, slots.shape[0] - lim):]
        return (np.ascontiguousarray(self._conf[s][:, slots]),
                np.ascontiguousarray(self._agree[s][:, slots]))

    def gather_weights(self, site_ids, last: int | None = None) -> np.ndarray:
        """The weights (float64[m]) of the samples :meth:`gather` returns, in the same order."""
        s = check_sites(site_ids, self.max_sites)
        lim = check_last(last)
        slots = self._slots(s)
        if lim >= 0:
            slots = slots[max(0, slots.shape[0] - lim):]
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
