/* Per-ramp utility (DESIGN.md, "Ramp adjustment"): savings minus overhead, ms per input. */
#include <math.h>

#include "apparate_core.h"

int ap_ramp_utility(const int64_t *exit_counts, const int64_t *pass_counts, int64_t r, int64_t n,
                    const double *saved_next_ms, const double *cost_ms, double *utility) {
    if (r < 0 || n < 1) return AP_ERR_SIZE;
    if (r > 0 && (!exit_counts || !pass_counts || !saved_next_ms || !cost_ms || !utility))
        return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++) {
        if (exit_counts[i] < 0 || exit_counts[i] > n || pass_counts[i] < 0 || pass_counts[i] > n)
            return AP_ERR_SIZE;
    }
    for (int64_t i = 0; i < r; i++)
        utility[i] = (double)exit_counts[i] / (double)n * saved_next_ms[i] -
                     (double)pass_counts[i] / (double)n * cost_ms[i];
    return AP_OK;
}

int ap_ramp_utility_weighted(const double *exit_weights, const double *pass_weights, int64_t r,
                             double total, const double *saved_next_ms, const double *cost_ms,
                             double *utility) {
    if (r < 0 || !(total > 0.0) || !isfinite(total)) return AP_ERR_SIZE;
    if (r > 0 && (!exit_weights || !pass_weights || !saved_next_ms || !cost_ms || !utility))
        return AP_ERR_NULL;
    const double slack = total * 1e-9; /* sums of the same weights in another order */
    for (int64_t i = 0; i < r; i++) {
        if (!(exit_weights[i] >= 0.0) || exit_weights[i] > total + slack || !(pass_weights[i] >= 0.0) ||
            pass_weights[i] > total + slack)
            return AP_ERR_SIZE;
    }
    for (int64_t i = 0; i < r; i++)
        utility[i] = exit_weights[i] / total * saved_next_ms[i] - pass_weights[i] / total * cost_ms[i];
    return AP_OK;
}
