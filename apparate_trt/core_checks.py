"""Argument checks of the C core's Python face (``apparate_trt._core``), one place for their messages.

Shared by the Cython wrapper and the numpy reference the tests cross-check it against
(``tests/core/policy_reference.py``), so both raise the same one-line ``ValueError`` for the same
bad argument. Units: latencies in milliseconds (ms); confidences, thresholds, accuracies and the
accuracy constraint are fractions in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np

KINDS = {"maxprob": 0, "entropy": 1}
"""Confidence measures: max softmax probability, or ``1 - H(softmax) / log(k)``."""


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
        raise ValueError(
            f"{name} must be a numpy array of {what}, got dtype {a.dtype}; convert it with "
            f".astype(np.{np.dtype(dtype).name})"
        )
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


def check_done(done, n: int) -> np.ndarray:
    """The in-place ``done`` flags: a writable, C-contiguous uint8 (or bool) numpy array [n]."""
    if not isinstance(done, np.ndarray) or done.dtype not in (np.uint8, np.bool_) or done.ndim != 1:
        got = f"{type(done).__name__} {getattr(done, 'dtype', '')} {getattr(done, 'shape', '')}".strip()
        raise ValueError(f"done must be a 1-D numpy uint8 (or bool) array, updated in place; got {got}")
    if done.shape[0] != n:
        raise ValueError(f"done has {done.shape[0]} entries but logits has {n} rows; pass one flag per input")
    if not done.flags.c_contiguous or not done.flags.writeable:
        raise ValueError("done must be C-contiguous and writable (it is updated in place); pass np.zeros(n, np.uint8)")
    return done.view(np.uint8)


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


def check_weighted_utility_args(exit_weights, pass_weights, total, saved_next_ms, cost_ms):
    e = check_floats(exit_weights, "exit_weights", 1, np.float64)
    p = check_floats(pass_weights, "pass_weights", 1, np.float64)
    sv = check_floats(saved_next_ms, "saved_next_ms", 1, np.float64)
    co = check_floats(cost_ms, "cost_ms", 1, np.float64)
    r = e.shape[0]
    if not (p.shape[0] == sv.shape[0] == co.shape[0] == r):
        raise ValueError(
            f"exit_weights, pass_weights, saved_next_ms and cost_ms must have the same length "
            f"(one per ramp), got {r}, {p.shape[0]}, {sv.shape[0]}, {co.shape[0]}"
        )
    try:
        tot = float(total)
    except (TypeError, ValueError):
        raise ValueError(f"total must be a positive number (weight observed), got {total!r}") from None
    if not (0.0 < tot < math.inf):
        raise ValueError(f"total must be a positive number (weight observed), got {total!r}")
    slack = tot * 1e-9
    if r and not ((e >= 0).all() and (p >= 0).all() and (e <= tot + slack).all() and (p <= tot + slack).all()):
        raise ValueError(
            f"exit_weights and pass_weights must be in [0, total={tot}], got {e.tolist()} and {p.tolist()}"
        )
    return e, p, sv, co, tot


def check_utility_args(exit_counts, pass_counts, n, saved_next_ms, cost_ms):
    e = check_ints(exit_counts, "exit_counts", 1, np.int64)
    p = check_ints(pass_counts, "pass_counts", 1, np.int64)
    sv = check_floats(saved_next_ms, "saved_next_ms", 1, np.float64)
    co = check_floats(cost_ms, "cost_ms", 1, np.float64)
    r = e.shape[0]
    if not (p.shape[0] == sv.shape[0] == co.shape[0] == r):
        raise ValueError(
            f"exit_counts, pass_counts, saved_next_ms and cost_ms must have the same length "
            f"(one per ramp), got {r}, {p.shape[0]}, {sv.shape[0]}, {co.shape[0]}"
        )
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer (inputs observed), got {n!r}")
    n = int(n)
    if r and (e.min() < 0 or p.min() < 0 or e.max() > n or p.max() > n):
        raise ValueError(f"exit_counts and pass_counts must be in [0, n={n}], got {e.tolist()} and {p.tolist()}")
    return e, p, sv, co, n


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
