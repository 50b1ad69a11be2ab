/* Confidence of ramp logits and the exit rule (first ramp with 1 - conf < threshold). */
#include <math.h>

#include "apparate_core.h"
#include "internal.h"

/* Confidence and argmax of one row; returns 0 on success, -1 for a row holding NaN or inf. */
static int row_confidence(const float *x, int64_t k, int kind, float *conf, int32_t *pred) {
    float mx = x[0];
    int64_t arg = 0;
    for (int64_t c = 0; c < k; c++) {
        if (!isfinite(x[c])) return -1;
        if (x[c] > mx) { mx = x[c]; arg = c; }
    }
    *pred = (int32_t)arg;
    double s = 0.0, t = 0.0; /* s = sum exp(x - mx), t = sum (x - mx) exp(x - mx) */
    for (int64_t c = 0; c < k; c++) {
        double d = (double)x[c] - (double)mx;
        double e = exp(d);
        s += e;
        t += d * e;
    }
    double v;
    if (kind == AP_CONF_MAXPROB) {
        v = 1.0 / s;
    } else if (k == 1) {
        v = 1.0;
    } else {
        double h = log(s) - t / s; /* entropy of softmax(x) in nats */
        v = 1.0 - h / log((double)k);
    }
    *conf = (float)ap_clamp01(v);
    return 0;
}

static void confidence_rows(const float *logits, int64_t n, int64_t k, int kind, float *conf,
                            int32_t *pred) {
    for (int64_t j = 0; j < n; j++) {
        if (row_confidence(logits + j * k, k, kind, conf + j, pred + j) != 0) {
            conf[j] = 0.0f;
            pred[j] = -1;
        }
    }
}

int ap_confidence(const float *logits, int64_t n, int64_t k, int kind, float *conf, int32_t *pred) {
    if (n < 0 || k < 1) return AP_ERR_SIZE;
    if (kind != AP_CONF_MAXPROB && kind != AP_CONF_ENTROPY) return AP_ERR_KIND;
    if (n > 0 && (!logits || !conf || !pred)) return AP_ERR_NULL;
    confidence_rows(logits, n, k, kind, conf, pred);
    return AP_OK;
}

int ap_exit_decisions(const float *conf, int64_t r, int64_t n, const double *thresholds,
                      int32_t *exit_ramp) {
    if (r < 0 || n < 0) return AP_ERR_SIZE;
    if ((r > 0 && !thresholds) || (n > 0 && !exit_ramp) || (r > 0 && n > 0 && !conf))
        return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++)
        if (!ap_is_fraction(thresholds[i])) return AP_ERR_VALUE;
    for (int64_t j = 0; j < n; j++) exit_ramp[j] = -1;
    for (int64_t i = 0; i < r; i++) {
        double thr = thresholds[i];
        if (thr <= 0.0) continue;
        const float *row = conf + i * n;
        for (int64_t j = 0; j < n; j++)
            if (exit_ramp[j] < 0 && ap_exits(row[j], thr)) exit_ramp[j] = (int32_t)i;
    }
    return AP_OK;
}

int ap_ramp_exits(const float *logits, int64_t n, int64_t k, int kind, double threshold,
                  uint8_t *done, float *conf, int32_t *pred, uint8_t *newly, int64_t *n_newly) {
    if (n < 0 || k < 1) return AP_ERR_SIZE;
    if (kind != AP_CONF_MAXPROB && kind != AP_CONF_ENTROPY) return AP_ERR_KIND;
    if (!ap_is_fraction(threshold)) return AP_ERR_VALUE;
    if (n > 0 && (!logits || !done || !conf || !pred || !newly)) return AP_ERR_NULL;
    confidence_rows(logits, n, k, kind, conf, pred);
    int64_t count = 0;
    for (int64_t j = 0; j < n; j++) {
        uint8_t e = (uint8_t)(!done[j] && ap_exits(conf[j], threshold));
        newly[j] = e;
        if (e) { done[j] = 1; count++; }
    }
    if (n_newly) *n_newly = count;
    return AP_OK;
}

int ap_batch_exits(const float *logits, int64_t r, int64_t n, int64_t k, int kind,
                   const double *thresholds, float *conf, int32_t *pred, int32_t *exit_ramp) {
    if (r < 0 || n < 0 || k < 1) return AP_ERR_SIZE;
    if (kind != AP_CONF_MAXPROB && kind != AP_CONF_ENTROPY) return AP_ERR_KIND;
    if ((r > 0 && !thresholds) || (n > 0 && !exit_ramp) || (r > 0 && n > 0 && (!logits || !conf || !pred)))
        return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++)
        if (!ap_is_fraction(thresholds[i])) return AP_ERR_VALUE;
    confidence_rows(logits, r * n, k, kind, conf, pred);
    return ap_exit_decisions(conf, r, n, thresholds, exit_ramp);
}
