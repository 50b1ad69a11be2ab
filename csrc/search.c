/* Threshold evaluation and the greedy coordinate hill climb of DESIGN.md ("Threshold tuning").
 *
 * Every sample carries a weight (1 when the caller gives none): in skip mode an audited row stands
 * for 1 / (its audit probability) rows, so sums over samples are weighted sums (inverse probability
 * weighting). With all weights 1 every sum is a sum of small integers, exact in double precision,
 * so the unweighted entry points give the same results as counting. */
#include <stdlib.h>

#include "apparate_core.h"
#include "internal.h"

/* Checks the shared inputs of evaluate and search. */
static int check_window(const float *conf, const uint8_t *agree, const double *weight, int64_t r,
                        int64_t m, const double *saved_ms) {
    if (r < 0 || m < 0) return AP_ERR_SIZE;
    if (r > 0 && !saved_ms) return AP_ERR_NULL;
    if (r > 0 && m > 0 && (!conf || !agree)) return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++)
        if (!isfinite(saved_ms[i])) return AP_ERR_VALUE;
    if (weight)
        for (int64_t j = 0; j < m; j++)
            if (!(weight[j] > 0.0) || !isfinite(weight[j])) return AP_ERR_VALUE;
    return ap_check_conf(conf, r * m);
}

static inline double weight_of(const double *weight, int64_t j) { return weight ? weight[j] : 1.0; }

static double total_weight(const double *weight, int64_t m) {
    if (!weight) return (double)m;
    double s = 0.0;
    for (int64_t j = 0; j < m; j++) s += weight[j];
    return s;
}

/* Mean saving (ms per unit of weight) of exit weights; summed in ramp order (the numpy reference
 * does the same, so both give bit-identical results). */
static double mean_saved(const double *counts, const double *saved_ms, int64_t r, double total) {
    if (!(total > 0.0)) return 0.0;
    double s = 0.0;
    for (int64_t i = 0; i < r; i++) s += counts[i] * saved_ms[i];
    return s / total;
}

static double accuracy_of(double wrong, double total) {
    return total > 0.0 ? (total - wrong) / total : 1.0;
}

/* Exit ramp (r = none) of every sample under thresholds; fills weighted counts [r + 1]; returns
 * the weight of the wrong exits. */
static double assign_exits(const float *conf, const uint8_t *agree, const double *weight, int64_t r,
                           int64_t m, const double *thresholds, int32_t *exit_of, double *counts) {
    double wrong = 0.0;
    for (int64_t i = 0; i <= r; i++) counts[i] = 0.0;
    for (int64_t j = 0; j < m; j++) {
        int64_t e = r;
        for (int64_t i = 0; i < r; i++)
            if (ap_exits(conf[i * m + j], thresholds[i])) { e = i; break; }
        if (exit_of) exit_of[j] = (int32_t)e;
        double wj = weight_of(weight, j);
        counts[e] += wj;
        if (e < r && !agree[e * m + j]) wrong += wj;
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

int ap_evaluate_thresholds_weighted(const float *conf, const uint8_t *agree, const double *weight,
                                    int64_t r, int64_t m, const double *saved_ms,
                                    const double *thresholds, double *accuracy, double *saved,
                                    double *exit_weights) {
    if (!accuracy || !saved) return AP_ERR_NULL;
    int st = check_window(conf, agree, weight, r, m, saved_ms);
    if (st != AP_OK) return st;
    if (r > 0 && !thresholds) return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++)
        if (!ap_is_fraction(thresholds[i])) return AP_ERR_VALUE;
    double *counts = exit_weights ? exit_weights : malloc((size_t)(r + 1) * sizeof(double));
    if (!counts) return AP_ERR_NOMEM;
    double total = total_weight(weight, m);
    double wrong = assign_exits(conf, agree, weight, r, m, thresholds, NULL, counts);
    *accuracy = accuracy_of(wrong, total);
    *saved = mean_saved(counts, saved_ms, r, total);
    if (!exit_weights) free(counts);
    return AP_OK;
}

int ap_evaluate_thresholds(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                           const double *saved_ms, const double *thresholds, double *accuracy,
                           double *saved, int64_t *exit_counts) {
    if (r < 0) return AP_ERR_SIZE;
    double *counts = malloc((size_t)(r + 1) * sizeof(double));
    if (!counts) return AP_ERR_NOMEM;
    int st = ap_evaluate_thresholds_weighted(conf, agree, NULL, r, m, saved_ms, thresholds, accuracy,
                                             saved, counts);
    if (st == AP_OK && exit_counts)
        for (int64_t i = 0; i <= r; i++) exit_counts[i] = (int64_t)counts[i];
    free(counts);
    return st;
}

int ap_search_thresholds_weighted(const float *conf, const uint8_t *agree, const double *weight,
                                  int64_t r, int64_t m, const double *saved_ms, double constraint,
                                  double init_step, double min_step, double *thresholds,
                                  double *accuracy, double *saved) {
    if (!accuracy || !saved) return AP_ERR_NULL;
    int st = check_window(conf, agree, weight, r, m, saved_ms);
    if (st != AP_OK) return st;
    if (r > 0 && !thresholds) return AP_ERR_NULL;
    if (!ap_is_fraction(constraint) || !(init_step > 0.0 && init_step <= 1.0) || !(min_step > 0.0) ||
        !isfinite(min_step))
        return AP_ERR_VALUE;

    /* Working memory: exit ramp per sample, weighted counts now and per candidate, steps. */
    int32_t *exit_of = malloc((size_t)(m > 0 ? m : 1) * sizeof(int32_t));
    double *counts = malloc((size_t)(r + 1) * 3 * sizeof(double));
    double *step = malloc((size_t)(r > 0 ? r : 1) * sizeof(double));
    if (!exit_of || !counts || !step) {
        free(exit_of);
        free(counts);
        free(step);
        return AP_ERR_NOMEM;
    }
    double *cand = counts + (r + 1);     /* counts after the candidate move */
    double *best_c = counts + 2 * (r + 1); /* counts after the best move so far */

    for (int64_t i = 0; i < r; i++) { thresholds[i] = 0.0; step[i] = init_step; }
    const double total = total_weight(weight, m);
    double wrong = assign_exits(conf, agree, weight, r, m, thresholds, exit_of, counts);
    double cur_saved = mean_saved(counts, saved_ms, r, total);
    const double floor_acc = 1.0 - constraint - AP_EPS;

    for (;;) {
        int any_step = 0;
        for (int64_t i = 0; i < r; i++) any_step |= step[i] >= min_step;
        if (!any_step || m == 0) break;

        int64_t best = -1;
        double best_wrong = 0.0, best_ratio = 0.0, best_saved = 0.0, best_thr = 0.0;
        for (int64_t i = 0; i < r; i++) {
            double nt = thresholds[i] + step[i];
            if (nt > 1.0) nt = 1.0;
            if (!(nt > thresholds[i])) continue;
            const float *ci = conf + i * m;
            const uint8_t *ai = agree + i * m;
            nt = skip_gap(ci, exit_of, i, m, nt);
            if (!(nt > thresholds[i])) continue;
            for (int64_t q = 0; q <= r; q++) cand[q] = counts[q];
            double cand_wrong = wrong;
            for (int64_t j = 0; j < m; j++) {
                int64_t e = exit_of[j];
                if (e <= i || !ap_exits(ci[j], nt)) continue;
                double wj = weight_of(weight, j);
                cand[e] -= wj;
                cand[i] += wj;
                if (!ai[j]) cand_wrong += wj;
                if (e < r && !agree[e * m + j]) cand_wrong -= wj;
            }
            double acc = accuracy_of(cand_wrong, total);
            double sv = mean_saved(cand, saved_ms, r, total);
            double gain = sv - cur_saved;
            if (acc < floor_acc || !(gain > AP_EPS)) continue;
            double ratio = ((cand_wrong - wrong) / total) / gain;
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
    *accuracy = accuracy_of(wrong, total);
    *saved = cur_saved;
    free(exit_of);
    free(counts);
    free(step);
    return AP_OK;
}

int ap_search_thresholds(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                         const double *saved_ms, double constraint, double init_step,
                         double min_step, double *thresholds, double *accuracy, double *saved) {
    return ap_search_thresholds_weighted(conf, agree, NULL, r, m, saved_ms, constraint, init_step,
                                         min_step, thresholds, accuracy, saved);
}
