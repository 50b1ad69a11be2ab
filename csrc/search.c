/* Threshold evaluation and the greedy coordinate hill climb of DESIGN.md ("Threshold tuning"). */
#include <stdlib.h>

#include "apparate_core.h"
#include "internal.h"

/* Checks the shared inputs of evaluate and search. */
static int check_window(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                        const double *saved_ms) {
    if (r < 0 || m < 0) return AP_ERR_SIZE;
    if (r > 0 && !saved_ms) return AP_ERR_NULL;
    if (r > 0 && m > 0 && (!conf || !agree)) return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++)
        if (!isfinite(saved_ms[i])) return AP_ERR_VALUE;
    return ap_check_conf(conf, r * m);
}

/* Mean saving (ms per sample) of exit counts; summed in ramp order (the numpy reference does the
 * same, so both give bit-identical results). */
static double mean_saved(const int64_t *counts, const double *saved_ms, int64_t r, int64_t m) {
    if (m == 0) return 0.0;
    double s = 0.0;
    for (int64_t i = 0; i < r; i++) s += (double)counts[i] * saved_ms[i];
    return s / (double)m;
}

static double accuracy_of(int64_t wrong, int64_t m) {
    return m > 0 ? (double)(m - wrong) / (double)m : 1.0;
}

/* Exit ramp (r = none) of every sample under thresholds; fills counts [r + 1]; returns wrong. */
static int64_t assign_exits(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                            const double *thresholds, int32_t *exit_of, int64_t *counts) {
    int64_t wrong = 0;
    for (int64_t i = 0; i <= r; i++) counts[i] = 0;
    for (int64_t j = 0; j < m; j++) {
        int64_t e = r;
        for (int64_t i = 0; i < r; i++)
            if (ap_exits(conf[i * m + j], thresholds[i])) { e = i; break; }
        if (exit_of) exit_of[j] = (int32_t)e;
        counts[e]++;
        if (e < r && !agree[e * m + j]) wrong++;
    }
    return wrong;
}

/* The threshold a move of ramp i to `nt` really takes: when no sample still running at ramp i
 * (exit ramp > i) would exit there at nt, the move is extended to just past the nearest such sample
 * (the smallest double above its 1 - conf), so that a ramp whose step falls in a gap between the
 * window's confidences can still move. Returns 1 (no move possible) when no sample can exit there. */
static double skip_gap(const float *ci, const int32_t *exit_of, int64_t i, int64_t m, double nt) {
    double dmin = 2.0;
    for (int64_t j = 0; j < m; j++) {
        if (exit_of[j] <= i) continue;
        double d = 1.0 - (double)ci[j];
        if (d < nt) return nt;
        if (d < dmin) dmin = d;
    }
    if (dmin >= 1.0) return 1.0;
    double t = nextafter(dmin, 2.0);
    return t > 1.0 ? 1.0 : t;
}

int ap_evaluate_thresholds(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                           const double *saved_ms, const double *thresholds, double *accuracy,
                           double *saved, int64_t *exit_counts) {
    if (!accuracy || !saved) return AP_ERR_NULL;
    int st = check_window(conf, agree, r, m, saved_ms);
    if (st != AP_OK) return st;
    if (r > 0 && !thresholds) return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++)
        if (!ap_is_fraction(thresholds[i])) return AP_ERR_VALUE;
    int64_t *counts = exit_counts ? exit_counts : malloc((size_t)(r + 1) * sizeof(int64_t));
    if (!counts) return AP_ERR_NOMEM;
    int64_t wrong = assign_exits(conf, agree, r, m, thresholds, NULL, counts);
    *accuracy = accuracy_of(wrong, m);
    *saved = mean_saved(counts, saved_ms, r, m);
    if (!exit_counts) free(counts);
    return AP_OK;
}

int ap_search_thresholds(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                         const double *saved_ms, double constraint, double init_step,
                         double min_step, double *thresholds, double *accuracy, double *saved) {
    if (!accuracy || !saved) return AP_ERR_NULL;
    int st = check_window(conf, agree, r, m, saved_ms);
    if (st != AP_OK) return st;
    if (r > 0 && !thresholds) return AP_ERR_NULL;
    if (!ap_is_fraction(constraint) || !(init_step > 0.0 && init_step <= 1.0) || !(min_step > 0.0) ||
        !isfinite(min_step))
        return AP_ERR_VALUE;

    /* Working memory: exit ramp per sample, counts now and per candidate, steps. */
    int32_t *exit_of = malloc((size_t)(m > 0 ? m : 1) * sizeof(int32_t));
    int64_t *counts = malloc((size_t)(r + 1) * 3 * sizeof(int64_t));
    double *step = malloc((size_t)(r > 0 ? r : 1) * sizeof(double));
    if (!exit_of || !counts || !step) {
        free(exit_of);
        free(counts);
        free(step);
        return AP_ERR_NOMEM;
    }
    int64_t *cand = counts + (r + 1);     /* counts after the candidate move */
    int64_t *best_c = counts + 2 * (r + 1); /* counts after the best move so far */

    for (int64_t i = 0; i < r; i++) { thresholds[i] = 0.0; step[i] = init_step; }
    int64_t wrong = assign_exits(conf, agree, r, m, thresholds, exit_of, counts);
    double cur_saved = mean_saved(counts, saved_ms, r, m);
    const double floor_acc = 1.0 - constraint - AP_EPS;

    for (;;) {
        int any_step = 0;
        for (int64_t i = 0; i < r; i++) any_step |= step[i] >= min_step;
        if (!any_step || m == 0) break;

        int64_t best = -1, best_wrong = 0;
        double best_ratio = 0.0, best_saved = 0.0, best_thr = 0.0;
        for (int64_t i = 0; i < r; i++) {
            double nt = thresholds[i] + step[i];
            if (nt > 1.0) nt = 1.0;
            if (!(nt > thresholds[i])) continue;
            const float *ci = conf + i * m;
            const uint8_t *ai = agree + i * m;
            nt = skip_gap(ci, exit_of, i, m, nt);
            if (!(nt > thresholds[i])) continue;
            for (int64_t q = 0; q <= r; q++) cand[q] = counts[q];
            int64_t cand_wrong = wrong;
            for (int64_t j = 0; j < m; j++) {
                int64_t e = exit_of[j];
                if (e <= i || !ap_exits(ci[j], nt)) continue;
                cand[e]--;
                cand[i]++;
                cand_wrong += (int64_t)(!ai[j]) - (int64_t)(e < r && !agree[e * m + j]);
            }
            double acc = accuracy_of(cand_wrong, m);
            double sv = mean_saved(cand, saved_ms, r, m);
            double gain = sv - cur_saved;
            if (acc < floor_acc || !(gain > AP_EPS)) continue;
            double ratio = ((double)(cand_wrong - wrong) / (double)m) / gain;
            if (best < 0 || ratio < best_ratio || (ratio == best_ratio && sv > best_saved)) {
                best = i;
                best_ratio = ratio;
                best_saved = sv;
                best_wrong = cand_wrong;
                best_thr = nt;
                for (int64_t q = 0; q <= r; q++) best_c[q] = cand[q];
            }
        }
        if (best < 0) {
            for (int64_t i = 0; i < r; i++) step[i] *= 0.5;
            continue;
        }
        /* Apply the move: samples that now exit at `best` move there. */
        const float *cb = conf + best * m;
        for (int64_t j = 0; j < m; j++)
            if (exit_of[j] > best && ap_exits(cb[j], best_thr)) exit_of[j] = (int32_t)best;
        thresholds[best] = best_thr;
        for (int64_t q = 0; q <= r; q++) counts[q] = best_c[q];
        wrong = best_wrong;
        cur_saved = best_saved;
        step[best] = step[best] * 2.0 > 1.0 ? 1.0 : step[best] * 2.0;
    }
    *accuracy = accuracy_of(wrong, m);
    *saved = cur_saved;
    free(exit_of);
    free(counts);
    free(step);
    return AP_OK;
}
