# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Python face of the C core in csrc/ (exit decisions, feedback window, threshold search, utility).

Every function mirrors one in csrc/apparate_core.h and one in tests/core/policy_reference.py (the
pure-numpy reference with the same semantics). Units: latencies in milliseconds (ms); confidences,
thresholds, accuracies and the accuracy constraint are fractions in [0, 1]. Ramps are indexed in
execution order; an input exits at the first ramp ``i`` with ``1 - conf < thresholds[i]``, so a
threshold of 0 never exits. Arrays are numpy; inputs of another (real) dtype or layout are converted,
bad arguments raise a one-line ValueError.

The GIL is released inside the threshold search and evaluation, and inside confidence computations
on large batches; the per-batch hot paths on small batches keep it (releasing it would let another
thread hold the executor thread up for a whole switch interval). FeedbackWindow methods keep the GIL,
so a window may be shared between Python threads.
"""
cimport cython
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_SIMPLE, PyBUF_WRITABLE,
                            PyBuffer_Release, PyObject_GetBuffer)
from libc.stdint cimport int32_t, int64_t, uint8_t

import numpy as np

from apparate_trt import core_checks as _ref

cdef extern from "apparate_core.h" nogil:
    int AP_API_VERSION
    int AP_OK, AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_VALUE, AP_ERR_KIND, AP_ERR_SITE, AP_ERR_NOMEM
    int ap_api_version()
    const char *ap_strerror(int status)
    int ap_confidence(const float *logits, int64_t n, int64_t k, int kind, float *conf, int32_t *pred)
    int ap_exit_decisions(const float *conf, int64_t r, int64_t n, const double *thresholds,
                          int32_t *exit_ramp)
    int ap_ramp_exits(const float *logits, int64_t n, int64_t k, int kind, double threshold,
                      uint8_t *done, float *conf, int32_t *pred, uint8_t *newly, int64_t *n_newly)
    int ap_batch_exits(const float *logits, int64_t r, int64_t n, int64_t k, int kind,
                       const double *thresholds, float *conf, int32_t *pred, int32_t *exit_ramp)
    ctypedef struct ap_window:
        pass
    int ap_window_create(int64_t capacity, int64_t max_sites, ap_window **out)
    void ap_window_destroy(ap_window *w)
    int ap_window_push(ap_window *w, const int32_t *site_ids, int64_t r, const float *conf,
                       const uint8_t *agree, int64_t n)
    int ap_window_remove_site(ap_window *w, int32_t site)
    void ap_window_clear(ap_window *w)
    int64_t ap_window_size(const ap_window *w)
    int ap_window_count(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t *count)
    int ap_window_gather(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t last,
                         float *conf, uint8_t *agree, int64_t stride, int64_t *m)
    int ap_window_accuracy(const ap_window *w, const int32_t *site_ids, int64_t r,
                           const double *thresholds, double *accuracy, int64_t *m)
    int ap_evaluate_thresholds(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                               const double *saved_ms, const double *thresholds, double *accuracy,
                               double *saved, int64_t *exit_counts)
    int ap_search_thresholds(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                             const double *saved_ms, double constraint, double init_step,
                             double min_step, double *thresholds, double *accuracy, double *saved)
    int ap_ramp_utility(const int64_t *exit_counts, const int64_t *pass_counts, int64_t r, int64_t n,
                        const double *saved_next_ms, const double *cost_ms, double *utility)
    int ap_window_push_weighted(ap_window *w, const int32_t *site_ids, int64_t r, const float *conf,
                                const uint8_t *agree, const double *weight, int64_t n)
    int ap_window_gather_weights(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t last,
                                 double *weight, int64_t stride, int64_t *m)
    int ap_evaluate_thresholds_weighted(const float *conf, const uint8_t *agree, const double *weight,
                                        int64_t r, int64_t m, const double *saved_ms,
                                        const double *thresholds, double *accuracy, double *saved,
                                        double *exit_weights)
    int ap_search_thresholds_weighted(const float *conf, const uint8_t *agree, const double *weight,
                                      int64_t r, int64_t m, const double *saved_ms, double constraint,
                                      double init_step, double min_step, double *thresholds,
                                      double *accuracy, double *saved)
    int ap_ramp_utility_weighted(const double *exit_weights, const double *pass_weights, int64_t r,
                                 double total, const double *saved_next_ms, const double *cost_ms,
                                 double *utility)

# Logit elements above which confidence computations release the GIL.
cdef int64_t _NOGIL_ELEMENTS = 1 << 16

cdef object _F32 = np.float32
cdef object _I32 = np.int32
cdef object _U8 = np.uint8
cdef object _empty = np.empty


def api_version() -> int:
    """Version of the C core's public API (``AP_API_VERSION`` in csrc/apparate_core.h)."""
    return ap_api_version()


cdef int _check(int status, str what) except -1:
    """Raises a one-line ValueError (MemoryError for AP_ERR_NOMEM) for a failed C call."""
    if status == AP_OK:
        return 0
    if status == AP_ERR_NOMEM:
        raise MemoryError(f"{what}: out of memory")
    raise ValueError(f"{what}: {ap_strerror(status).decode()}")


cdef inline int _kind(object kind) except -1:
    if kind == "maxprob":
        return 0
    return _ref.check_kind(kind)


# ---- raw buffer access for the per-batch hot paths ------------------------------------------------
# Typed memoryviews cost ~0.3-0.6 us each to acquire; these helpers take a numpy array's buffer
# directly (~0.1 us) and fall back to the shared checks of core_checks for anything else.

@cython.final
cdef class _Buf:
    """A held buffer (released when the object goes away)."""
    cdef Py_buffer view
    cdef bint held

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


cdef inline bint _fmt_is(const char *fmt, char code) noexcept:
    """True for a native-order format of one `code` item ("f", "@f" or "=f")."""
    if fmt == NULL:
        return code == b'B'
    if fmt[0] == b'@' or fmt[0] == b'=':
        fmt += 1
    return fmt[0] == code and fmt[1] == 0


cdef _Buf _take(object obj, int flags, char code, char code2, int ndim):
    """obj's C-contiguous buffer when it holds `code` (or `code2`) items in `ndim` dims, else None."""
    cdef _Buf b = _Buf.__new__(_Buf)
    try:
        PyObject_GetBuffer(obj, &b.view, flags | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, TypeError, ValueError):
        return None
    b.held = True
    if b.view.ndim != ndim or not (_fmt_is(b.view.format, code) or _fmt_is(b.view.format, code2)):
        return None
    return b


cdef inline void *_ptr(object arr) except NULL:
    """Data pointer of an array this module just allocated (kept alive by the caller)."""
    cdef Py_buffer v
    PyObject_GetBuffer(arr, &v, PyBUF_SIMPLE | PyBUF_WRITABLE)
    cdef void *p = v.buf
    PyBuffer_Release(&v)
    return p


cdef _Buf _floats2d(object x, str name, str what):
    """float32 C-contiguous 2-D buffer of x (converting other real arrays)."""
    cdef _Buf b = _take(x, 0, b'f', b'f', 2)
    if b is None:
        b = _take(_ref.check_floats(x, name, 2, np.float32, what), 0, b'f', b'f', 2)
    return b


cdef _Buf _thresholds(object thresholds, int64_t r):
    """float64[r] thresholds, each in [0, 1]."""
    cdef _Buf b = _take(thresholds, 0, b'd', b'd', 1)
    cdef const double *t
    cdef int64_t i
    if b is not None and b.view.shape[0] == r:
        t = <const double *>b.view.buf
        for i in range(r):
            if not 0.0 <= t[i] <= 1.0:
                break
        else:
            return b
    return _take(_ref.check_thresholds(thresholds, r), 0, b'd', b'd', 1)


cdef inline double _threshold(object threshold) except? -1.0:
    cdef double thr
    try:
        thr = threshold
    except TypeError:
        thr = -1.0
    if not 0.0 <= thr <= 1.0:
        return _ref.check_fraction(threshold, "threshold", " (0 = never exit)")
    return thr


def confidence(logits, kind="maxprob"):
    """Confidence and argmax of each row of ``logits`` float32[n, k].

    Returns ``(conf float32[n], pred int32[n])``. ``kind="maxprob"``: max softmax probability;
    ``"entropy"``: ``1 - H(softmax)/log(k)``. A row holding NaN or inf gets conf 0.0 (never exits)
    and pred -1.
    """
    cdef int code = _kind(kind)
    cdef _Buf x = _floats2d(logits, "logits", "float32[n, k] logits")
    cdef int64_t n = x.view.shape[0], k = x.view.shape[1]
    if k < 1:
        raise ValueError(f"logits must have at least one class (column), got shape ({n}, 0)")
    conf = _empty(n, _F32)
    pred = _empty(n, _I32)
    if n == 0:
        return conf, pred
    cdef const float *xp = <const float *>x.view.buf
    cdef float *cp = <float *>_ptr(conf)
    cdef int32_t *pp = <int32_t *>_ptr(pred)
    cdef int st
    if n * k >= _NOGIL_ELEMENTS:
        with nogil:
            st = ap_confidence(xp, n, k, code, cp, pp)
    else:
        st = ap_confidence(xp, n, k, code, cp, pp)
    _check(st, "confidence")
    return conf, pred


def exit_decisions(conf, thresholds):
    """Exit ramp (0..r-1) of each input, or -1: the first ramp ``i`` with
    ``1 - conf[i, j] < thresholds[i]``. ``conf`` float32[r, n], ``thresholds`` float64[r] in [0, 1];
    returns int32[n]."""
    cdef _Buf c = _floats2d(conf, "conf", "float32[r, n] confidences")
    cdef int64_t r = c.view.shape[0], n = c.view.shape[1]
    cdef _Buf t = _thresholds(thresholds, r)
    out = _empty(n, _I32)
    if n == 0:
        return out
    if r == 0:
        out.fill(-1)
        return out
    _check(ap_exit_decisions(<const float *>c.view.buf, r, n, <const double *>t.view.buf,
                             <int32_t *>_ptr(out)), "exit_decisions")
    return out


def ramp_exits(logits, threshold, done, kind="maxprob"):
    """One ramp's decisions for a batch (the executor's per-ramp hot path).

    ``logits`` float32[n, k]; ``threshold`` in [0, 1] (0 = never exit); ``done`` uint8 (or bool)
    numpy array [n], nonzero for inputs that already exited, updated in place. Returns
    ``(conf float32[n], pred int32[n], newly uint8[n])`` with conf and pred for every row and
    ``newly[j] = 1`` where input j was not done and ``1 - conf[j] < threshold``.
    """
    cdef int code = _kind(kind)
    cdef double thr = _threshold(threshold)
    cdef _Buf x = _floats2d(logits, "logits", "float32[n, k] logits")
    cdef int64_t n = x.view.shape[0], k = x.view.shape[1]
    if k < 1:
        raise ValueError(f"logits must have at least one class (column), got shape ({n}, 0)")
    cdef _Buf d = _take(done, PyBUF_WRITABLE, b'B', b'?', 1)
    if d is None or d.view.shape[0] != n:
        d = _take(_ref.check_done(done, n), PyBUF_WRITABLE, b'B', b'B', 1)
    conf = _empty(n, _F32)
    pred = _empty(n, _I32)
    newly = _empty(n, _U8)
    if n == 0:
        return conf, pred, newly
    cdef const float *xp = <const float *>x.view.buf
    cdef uint8_t *dp = <uint8_t *>d.view.buf
    cdef float *cp = <float *>_ptr(conf)
    cdef int32_t *pp = <int32_t *>_ptr(pred)
    cdef uint8_t *wp = <uint8_t *>_ptr(newly)
    cdef int st
    if n * k >= _NOGIL_ELEMENTS:
        with nogil:
            st = ap_ramp_exits(xp, n, k, code, thr, dp, cp, pp, wp, NULL)
    else:
        st = ap_ramp_exits(xp, n, k, code, thr, dp, cp, pp, wp, NULL)
    _check(st, "ramp_exits")
    return conf, pred, newly


def batch_exits(logits, thresholds, kind="maxprob"):
    """All ramps' decisions for a batch in one call (when every active ramp's logits are at hand).

    ``logits`` float32[r, n, k] (ramp i's logits at ``logits[i]``, ramps in execution order),
    ``thresholds`` float64[r] in [0, 1]. Returns ``(conf float32[r, n], pred int32[r, n],
    exit_ramp int32[n])``: confidence() per ramp, and the first ramp each input exits at (or -1).
    """
    cdef int code = _kind(kind)
    cdef _Buf x = _take(logits, 0, b'f', b'f', 3)
    if x is None:
        x = _take(_ref.check_floats(logits, "logits", 3, np.float32, "float32[r, n, k] logits"), 0, b'f', b'f', 3)
    cdef int64_t r = x.view.shape[0], n = x.view.shape[1], k = x.view.shape[2]
    if k < 1:
        raise ValueError(f"logits must have at least one class, got shape ({r}, {n}, 0)")
    cdef _Buf t = _thresholds(thresholds, r)
    conf = _empty((r, n), _F32)
    pred = _empty((r, n), _I32)
    exit_ramp = _empty(n, _I32)
    if n == 0:
        return conf, pred, exit_ramp
    if r == 0:
        exit_ramp.fill(-1)
        return conf, pred, exit_ramp
    cdef const float *xp = <const float *>x.view.buf
    cdef const double *tp = <const double *>t.view.buf
    cdef float *cp = <float *>_ptr(conf)
    cdef int32_t *pp = <int32_t *>_ptr(pred)
    cdef int32_t *ep = <int32_t *>_ptr(exit_ramp)
    cdef int st
    if r * n * k >= _NOGIL_ELEMENTS:
        with nogil:
            st = ap_batch_exits(xp, r, n, k, code, tp, cp, pp, ep)
    else:
        st = ap_batch_exits(xp, r, n, k, code, tp, cp, pp, ep)
    _check(st, "batch_exits")
    return conf, pred, exit_ramp


cdef class FeedbackWindow:
    """Ring buffer of the most recent ``capacity`` feedback samples (one sample per input).

    A sample stores, for each site id in [0, max_sites) it was observed at, the ramp's confidence
    (float32 in [0, 1]) and whether its prediction agreed with the final output (uint8 0/1).
    """
    cdef ap_window *_w
    cdef readonly int64_t capacity
    cdef readonly int64_t max_sites

    def __cinit__(self, capacity, max_sites):
        self.capacity, self.max_sites = _ref.check_window_size(capacity, max_sites)
        _check(ap_window_create(self.capacity, self.max_sites, &self._w), "FeedbackWindow")

    def __dealloc__(self):
        ap_window_destroy(self._w)

    def __len__(self):
        return ap_window_size(self._w)

    def clear(self):
        """Forgets every stored sample."""
        ap_window_clear(self._w)

    def push(self, site_ids, conf, agree, weights=None):
        """Appends n samples observed at ``site_ids`` int32[r] (distinct, in [0, max_sites)):
        ``conf`` float32[r, n] in [0, 1], ``agree`` uint8[r, n], ``weights`` float64[n] (each > 0,
        the inputs a sample stands for: 1 / p for a row audited with probability p; None: all 1);
        evicts the oldest beyond capacity."""
        s, c, a = _ref.check_push(site_ids, conf, agree, self.max_sites)
        w = _ref.check_weights(weights, c.shape[1])
        cdef const int32_t[::1] sv = s
        cdef const float[:, ::1] cv = c
        cdef const uint8_t[:, ::1] av = a
        cdef const double[::1] wv
        cdef const double *wp = NULL
        cdef int64_t r = cv.shape[0], n = cv.shape[1]
        cdef int st
        if n == 0:
            return
        if w is not None:
            wv = w
            wp = &wv[0]
        if r == 0:
            _check(ap_window_push_weighted(self._w, NULL, 0, NULL, NULL, wp, n), "FeedbackWindow.push")
            return
        st = ap_window_push_weighted(self._w, &sv[0], r, &cv[0, 0], &av[0, 0], wp, n)
        if st == AP_ERR_VALUE:
            raise _ref.conf_range_error()
        _check(st, "FeedbackWindow.push")

    def remove_site(self, site):
        """Forgets one site's values in every stored sample (the samples stay)."""
        _check(ap_window_remove_site(self._w, _ref.check_site(site, self.max_sites)),
               "FeedbackWindow.remove_site")

    def count(self, site_ids):
        """Number of stored samples holding every one of ``site_ids``."""
        cdef const int32_t[::1] sv = _ref.check_sites(site_ids, self.max_sites)
        cdef int64_t m = 0
        _check(ap_window_count(self._w, &sv[0] if sv.shape[0] else NULL, sv.shape[0], &m),
               "FeedbackWindow.count")
        return m

    def gather(self, site_ids, last=None):
        """``(conf float32[r, m], agree uint8[r, m])`` of the stored samples, oldest first, that hold
        every one of ``site_ids`` (row i = site_ids[i]); with ``last``, only the ``last`` most
        recent such samples."""
        cdef const int32_t[::1] sv = _ref.check_sites(site_ids, self.max_sites)
        cdef int64_t lim = _ref.check_last(last)
        cdef int64_t r = sv.shape[0], total = 0, m = 0
        cdef const int32_t *sp = &sv[0] if r else NULL
        _check(ap_window_count(self._w, sp, r, &total), "FeedbackWindow.gather")
        if lim >= 0 and total > lim:
            total = lim
        conf = _empty((r, total), _F32)
        agree = _empty((r, total), _U8)
        cdef float[:, ::1] cv = conf
        cdef uint8_t[:, ::1] av = agree
        if r == 0 or total == 0:
            return conf, agree
        _check(ap_window_gather(self._w, sp, r, lim, &cv[0, 0], &av[0, 0], total, &m),
               "FeedbackWindow.gather")
        return conf, agree

    def gather_weights(self, site_ids, last=None):
        """The weights float64[m] of the samples :meth:`gather` returns with the same arguments,
        in the same order."""
        cdef const int32_t[::1] sv = _ref.check_sites(site_ids, self.max_sites)
        cdef int64_t lim = _ref.check_last(last)
        cdef int64_t r = sv.shape[0], total = 0, m = 0
        cdef const int32_t *sp = &sv[0] if r else NULL
        _check(ap_window_count(self._w, sp, r, &total), "FeedbackWindow.gather_weights")
        if lim >= 0 and total > lim:
            total = lim
        weights = _empty(total, np.float64)
        cdef double[::1] wv = weights
        if total == 0:
            return weights
        _check(ap_window_gather_weights(self._w, sp, r, lim, &wv[0], total, &m), "FeedbackWindow.gather_weights")
        return weights

    def accuracy_with(self, site_ids, thresholds):
        """Weighted accuracy (fraction) that thresholds float64[r] for ``site_ids`` (in execution order)
        would have had on the stored samples holding all those sites; 1.0 when there are none."""
        cdef const int32_t[::1] sv = _ref.check_sites(site_ids, self.max_sites)
        cdef int64_t r = sv.shape[0]
        cdef const double[::1] t = _ref.check_thresholds(thresholds, r)
        cdef double acc = 1.0
        _check(ap_window_accuracy(self._w, &sv[0] if r else NULL, r, &t[0] if r else NULL, &acc, NULL),
               "FeedbackWindow.accuracy_with")
        return acc


def evaluate_thresholds(conf, agree, saved_ms, thresholds, weights=None):
    """Outcome of ``thresholds`` float64[r] on a window: ``(accuracy, saved, exit_counts int64[r+1])``.

    ``conf`` float32[r, m] in [0, 1]; ``agree`` uint8[r, m], 1 where ramp i agreed with the final
    output on sample j; ``saved_ms`` float64[r], ms saved by releasing at ramp i. accuracy: share of
    samples whose released result agrees with the final (non-exits agree; 1.0 when m == 0); saved:
    mean ms saved per sample; exit_counts: samples exiting at each ramp, last entry = non-exits.
    With ``weights`` (float64[m], each > 0) every sum is weighted (ap_evaluate_thresholds_weighted)
    and exit_counts are float64 weights.
    """
    c, a, s = _ref.check_window_arrays(conf, agree, saved_ms)
    if weights is not None:
        return _evaluate_weighted(c, a, s, thresholds, _ref.check_weights(weights, c.shape[1]))
    cdef const float[:, ::1] cv = c
    cdef const uint8_t[:, ::1] av = a
    cdef const double[::1] sv = s
    cdef int64_t r = cv.shape[0], m = cv.shape[1]
    cdef const double[::1] t = _ref.check_thresholds(thresholds, r)
    counts = np.zeros(r + 1, np.int64)
    counts[r] = m
    cdef int64_t[::1] ct = counts
    cdef double acc = 1.0, saved = 0.0
    cdef int st
    if r == 0 or m == 0:
        return acc, saved, counts
    with nogil:
        st = ap_evaluate_thresholds(&cv[0, 0], &av[0, 0], r, m, &sv[0], &t[0], &acc, &saved, &ct[0])
    if st == AP_ERR_VALUE:
        raise _ref.conf_range_error()
    _check(st, "evaluate_thresholds")
    return acc, saved, counts


def _evaluate_weighted(c, a, s, thresholds, w):
    cdef const float[:, ::1] cv = c
    cdef const uint8_t[:, ::1] av = a
    cdef const double[::1] sv = s
    cdef const double[::1] wv = w
    cdef int64_t r = cv.shape[0], m = cv.shape[1]
    cdef const double[::1] t = _ref.check_thresholds(thresholds, r)
    counts = np.zeros(r + 1, np.float64)
    counts[r] = float(w.sum())
    cdef double[::1] ct = counts
    cdef double acc = 1.0, saved = 0.0
    cdef int st
    if r == 0 or m == 0:
        return acc, saved, counts
    with nogil:
        st = ap_evaluate_thresholds_weighted(&cv[0, 0], &av[0, 0], &wv[0], r, m, &sv[0], &t[0], &acc, &saved, &ct[0])
    if st == AP_ERR_VALUE:
        raise _ref.conf_range_error()
    _check(st, "evaluate_thresholds")
    return acc, saved, counts


def search_thresholds(conf, agree, saved_ms, constraint, init_step=0.05, min_step=0.001, weights=None):
    """Per-ramp thresholds by DESIGN.md's greedy coordinate hill climb.

    Maximises the mean latency saved (ms per sample) on the window subject to
    ``accuracy >= 1 - constraint`` (constraint: allowed share of results disagreeing with the
    original model, e.g. 0.01). ``conf`` float32[r, m], ``agree`` uint8[r, m], ``saved_ms``
    float64[r] as in evaluate_thresholds; ``init_step`` in (0, 1] and ``min_step`` > 0 are threshold
    steps. Returns ``(thresholds float64[r], accuracy, saved)``. Exact rule: ap_search_thresholds in
    csrc/apparate_core.h. ``weights`` (float64[m], each > 0): weighted samples
    (ap_search_thresholds_weighted), e.g. skip mode's audited rows at 1 / their audit probability.
    """
    c, a, s = _ref.check_window_arrays(conf, agree, saved_ms)
    con, init, mn = _ref.check_search_args(constraint, init_step, min_step)
    w = _ref.check_weights(weights, c.shape[1])
    cdef const double[::1] wv
    cdef const double *wp = NULL
    if w is not None and w.shape[0]:
        wv = w
        wp = &wv[0]
    cdef const float[:, ::1] cv = c
    cdef const uint8_t[:, ::1] av = a
    cdef const double[::1] sv = s
    cdef int64_t r = cv.shape[0], m = cv.shape[1]
    thresholds = np.zeros(r, np.float64)
    cdef double[::1] t = thresholds
    cdef double acc = 1.0, saved = 0.0, cc = con, ii = init, mm = mn
    cdef int st
    if r == 0 or m == 0:
        return thresholds, acc, saved
    with nogil:
        st = ap_search_thresholds_weighted(&cv[0, 0], &av[0, 0], wp, r, m, &sv[0], cc, ii, mm, &t[0], &acc, &saved)
    if st == AP_ERR_VALUE:
        raise _ref.conf_range_error()
    _check(st, "search_thresholds")
    return thresholds, acc, saved


def ramp_utility(exit_counts, pass_counts, n, saved_next_ms, cost_ms):
    """Utility of each ramp in ms per input: ``exit_counts/n * saved_next_ms - pass_counts/n * cost_ms``.

    ``exit_counts`` int64[r]: inputs that exited at ramp i; ``pass_counts`` int64[r]: inputs that
    reached ramp i and did not exit there; ``n``: inputs observed (>= 1); ``saved_next_ms``
    float64[r]: ms an exit at ramp i saves relative to the next exit point; ``cost_ms`` float64[r]:
    ms ramp i adds to an input. Returns float64[r].
    """
    e, p, s, co, nn = _ref.check_utility_args(exit_counts, pass_counts, n, saved_next_ms, cost_ms)
    cdef const int64_t[::1] ev = e
    cdef const int64_t[::1] pv = p
    cdef const double[::1] sv = s
    cdef const double[::1] cv = co
    cdef int64_t r = ev.shape[0]
    out = np.zeros(r, np.float64)
    cdef double[::1] o = out
    if r:
        _check(ap_ramp_utility(&ev[0], &pv[0], r, nn, &sv[0], &cv[0], &o[0]), "ramp_utility")
    return out


def ramp_utility_weighted(exit_weights, pass_weights, total, saved_next_ms, cost_ms):
    """:func:`ramp_utility` on weighted counts (skip mode's audited rows weigh 1 / p):
    ``exit_weights/total * saved_next_ms - pass_weights/total * cost_ms``; float64[r] weights in
    [0, total], ``total`` > 0 the weight observed. Returns float64[r]."""
    e, p, s, co, tot = _ref.check_weighted_utility_args(exit_weights, pass_weights, total, saved_next_ms, cost_ms)
    cdef const double[::1] ev = e
    cdef const double[::1] pv = p
    cdef const double[::1] sv = s
    cdef const double[::1] cv = co
    cdef int64_t r = ev.shape[0]
    out = np.zeros(r, np.float64)
    cdef double[::1] o = out
    if r:
        _check(ap_ramp_utility_weighted(&ev[0], &pv[0], r, tot, &sv[0], &cv[0], &o[0]), "ramp_utility_weighted")
    return out
