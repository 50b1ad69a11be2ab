/* apparate_core.h: the public C API of apparate_trt's host-side early-exit policy.
 * No Python here: a C or C++ service links the csrc/ objects directly.
 *
 * Conventions (every function):
 *   - Arrays are dense and row-major; "[r, n]" means r rows of n elements, row i at ptr + i * n.
 *   - Buffers are owned by the caller; nothing is allocated for the caller except the opaque
 *     ap_window handle (ap_window_create / ap_window_destroy).
 *   - Every function that can fail returns an int status: AP_OK (0) or a negative AP_ERR_* code;
 *     ap_strerror(status) names it. On failure, outputs may be partly written and must be ignored,
 *     except that ap_window_* functions leave the window unchanged.
 *   - Units: latencies in milliseconds (ms); confidences, thresholds, accuracies and the accuracy
 *     constraint are fractions in [0, 1].
 *   - Ramps are indexed 0..r-1 in execution order (ramp 0 runs first).
 *   - An input exits at ramp i when (1 - conf) < threshold[i], evaluated in double precision;
 *     threshold 0 therefore never exits. It exits at the first such ramp.
 *   - No global state: calls on distinct data (distinct ap_window handles) are thread-safe;
 *     a single ap_window must not be used by two threads at once.
 */
#ifndef APPARATE_CORE_H
#define APPARATE_CORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this header's API, bumped on incompatible changes. */
#define AP_API_VERSION 3

/* Status codes. */
#define AP_OK 0
#define AP_ERR_NULL (-1)   /* a required pointer is NULL */
#define AP_ERR_SIZE (-2)   /* a count or size is out of range, or an output buffer is too small */
#define AP_ERR_VALUE (-3)  /* a value is out of range or NaN (threshold, constraint, step, conf) */
#define AP_ERR_KIND (-4)   /* unknown confidence kind */
#define AP_ERR_SITE (-5)   /* a site id is out of [0, max_sites) or repeated */
#define AP_ERR_NOMEM (-6)  /* memory allocation failed */

/* Confidence measures (ap_conf_kind). */
#define AP_CONF_MAXPROB 0 /* max softmax probability */
#define AP_CONF_ENTROPY 1 /* 1 - H(softmax) / log(k); 1 for k == 1 */

/* Returns AP_API_VERSION of the compiled library. */
int ap_api_version(void);

/* Returns a static one-line description of a status code (never NULL). */
const char *ap_strerror(int status);

/* ---- confidence and exit decisions (csrc/confidence.c) ------------------------------------- */

/* Confidence and argmax of n rows of k logits each.
 *   logits: [n, k]; conf: [n] out, in [0, 1]; pred: [n] out, argmax (first maximum).
 *   kind: AP_CONF_MAXPROB or AP_CONF_ENTROPY. Softmax is computed stably in double precision.
 *   A row holding NaN or +-inf gets conf 0 (never exits) and pred -1; this is not an error.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE (n < 0 or k < 1), AP_ERR_KIND. */
int ap_confidence(const float *logits, int64_t n, int64_t k, int kind, float *conf, int32_t *pred);

/* Exit ramp of each of n inputs given r ramps' confidences.
 *   conf: [r, n]; thresholds: [r], each in [0, 1]; exit_ramp: [n] out, the first ramp i with
 *   1 - conf[i, j] < thresholds[i], or -1 when none. A NaN confidence never exits.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE (r < 0 or n < 0), AP_ERR_VALUE (threshold NaN or outside [0, 1]). */
int ap_exit_decisions(const float *conf, int64_t r, int64_t n, const double *thresholds,
                      int32_t *exit_ramp);

/* One ramp's decisions for a batch (the executor's per-ramp hot path).
 *   logits: [n, k]; conf, pred: [n] out for every row (as ap_confidence);
 *   done: [n] in/out, nonzero for inputs that already exited at an earlier ramp;
 *   newly: [n] out, 1 where an input not yet done exits here (1 - conf < threshold), else 0;
 *   done[j] is set to 1 where newly[j] is 1. n_newly (may be NULL) receives the number of new exits.
 *   threshold in [0, 1].
 * Errors: AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_KIND, AP_ERR_VALUE (threshold). */
int ap_ramp_exits(const float *logits, int64_t n, int64_t k, int kind, double threshold,
                  uint8_t *done, float *conf, int32_t *pred, uint8_t *newly, int64_t *n_newly);

/* All ramps' decisions for a batch in one call (when every active ramp's logits are at hand).
 *   logits: [r, n, k], ramp i's logits at logits + i * n * k; thresholds: [r] in [0, 1];
 *   conf, pred: [r, n] out (as ap_confidence, per ramp); exit_ramp: [n] out (as ap_exit_decisions).
 * Errors: AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_KIND, AP_ERR_VALUE (threshold). */
int ap_batch_exits(const float *logits, int64_t r, int64_t n, int64_t k, int kind,
                   const double *thresholds, float *conf, int32_t *pred, int32_t *exit_ramp);

/* ---- feedback window (csrc/window.c) -------------------------------------------------------- */

/* Ring buffer of the most recent `capacity` samples (one sample = one input's feedback). A sample
 * stores, for each site id in [0, max_sites) it was observed at, the ramp's confidence there
 * (float) and whether the ramp's prediction agreed with the final output (0/1). */
typedef struct ap_window ap_window;

/* Creates an empty window. capacity >= 1 samples, max_sites >= 1. *out receives the handle.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_NOMEM. */
int ap_window_create(int64_t capacity, int64_t max_sites, ap_window **out);

/* Frees a window (NULL is ignored). */
void ap_window_destroy(ap_window *w);

/* Appends n samples, evicting the oldest ones beyond capacity.
 *   site_ids: [r] distinct site ids the samples were observed at (r may be 0);
 *   conf: [r, n] confidences in [0, 1] (NaN rejected); agree: [r, n], nonzero = agreed.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_SITE, AP_ERR_VALUE (conf NaN or outside [0, 1]);
 * the window is unchanged on error. */
int ap_window_push(ap_window *w, const int32_t *site_ids, int64_t r, const float *conf,
                   const uint8_t *agree, int64_t n);

/* As ap_window_push, with one weight per sample: weight [n], each finite and > 0 (NULL: all 1).
 * A sample's weight is the number of inputs it stands for: in skip mode an audited row that was
 * kept with probability p weighs 1 / p, so window sums are unbiased (inverse probability weighting).
 * Errors: as ap_window_push, and AP_ERR_VALUE for a weight that is not finite and > 0. */
int ap_window_push_weighted(ap_window *w, const int32_t *site_ids, int64_t r, const float *conf,
                            const uint8_t *agree, const double *weight, int64_t n);

/* Forgets the values of one site in every stored sample (the samples themselves stay).
 * Errors: AP_ERR_NULL, AP_ERR_SITE. */
int ap_window_remove_site(ap_window *w, int32_t site);

/* Empties the window (capacity and max_sites are kept). No-op on NULL. */
void ap_window_clear(ap_window *w);

/* Number of stored samples (0 on NULL). */
int64_t ap_window_size(const ap_window *w);
/* Capacity in samples and number of site ids, as created (0 on NULL). */
int64_t ap_window_capacity(const ap_window *w);
int64_t ap_window_max_sites(const ap_window *w);

/* Number of stored samples that hold every one of the r sites (all samples when r == 0).
 * Errors: AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_SITE. */
int ap_window_count(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t *count);

/* Copies, oldest first, the samples that hold every one of the r sites; with last >= 0 only the
 * `last` most recent such samples (last < 0: all of them).
 *   conf: [r, stride] out, agree: [r, stride] out (0/1); row i is site_ids[i]; the first *m
 *   columns are written. stride must be >= the number of samples copied (see ap_window_count).
 * Errors: AP_ERR_NULL, AP_ERR_SIZE (stride too small), AP_ERR_SITE. */
int ap_window_gather(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t last,
                     float *conf, uint8_t *agree, int64_t stride, int64_t *m);

/* The weights of the samples ap_window_gather copies with the same arguments, in the same order:
 *   weight: [stride] out; the first *m entries are written.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE (stride too small), AP_ERR_SITE. */
int ap_window_gather_weights(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t last,
                             double *weight, int64_t stride, int64_t *m);

/* Accuracy (fraction) that thresholds [r] for the sites [r] (in execution order) would have had on
 * the stored samples holding all those sites, weighted by the samples' weights, as
 * ap_evaluate_thresholds_weighted; 1 when there are none.
 * *m (may be NULL) receives the number of samples used. Allocates nothing.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_SITE, AP_ERR_VALUE (threshold). */
int ap_window_accuracy(const ap_window *w, const int32_t *site_ids, int64_t r,
                       const double *thresholds, double *accuracy, int64_t *m);

/* ---- threshold search (csrc/search.c) ------------------------------------------------------- */

/* Outcome of thresholds on a window of m samples and r ramps.
 *   conf: [r, m] in [0, 1] (NaN rejected); agree: [r, m], nonzero = ramp i agreed with the final
 *   output on sample j; saved_ms: [r], latency saved (ms) by releasing at ramp i;
 *   thresholds: [r] in [0, 1].
 *   accuracy (out): share of samples whose released result agrees with the final output
 *   (non-exiting samples agree); 1 when m == 0.
 *   saved (out): mean latency saved per sample (ms) = sum_i exit_count[i] * saved_ms[i] / m
 *   (summed in ramp order); 0 when m == 0.
 *   exit_counts (out, may be NULL): [r + 1] samples exiting at each ramp; last entry = non-exits.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_VALUE (NaN/out-of-range conf, threshold or saved_ms). */
int ap_evaluate_thresholds(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                           const double *saved_ms, const double *thresholds, double *accuracy,
                           double *saved, int64_t *exit_counts);

/* As ap_evaluate_thresholds, each sample j counted with weight[j] (finite, > 0; NULL: all 1):
 *   accuracy = 1 - (weight of the wrong exits) / (total weight); saved = sum_i exit_weights[i] *
 *   saved_ms[i] / (total weight); exit_weights (out, may be NULL): [r + 1] weight exiting at each
 *   ramp, last entry = weight of the non-exits. With all weights 1 it equals ap_evaluate_thresholds.
 * Errors: as ap_evaluate_thresholds, and AP_ERR_VALUE for a bad weight. */
int ap_evaluate_thresholds_weighted(const float *conf, const uint8_t *agree, const double *weight,
                                    int64_t r, int64_t m, const double *saved_ms,
                                    const double *thresholds, double *accuracy, double *saved,
                                    double *exit_weights);

/* Greedy coordinate hill climb (DESIGN.md, "Threshold tuning"): maximise the mean latency saved
 * subject to accuracy >= 1 - constraint (compared with a 1e-12 tolerance).
 *   Inputs as ap_evaluate_thresholds; constraint in [0, 1]; init_step in (0, 1]; min_step > 0.
 *   Start: all thresholds 0 (never exit), every ramp's step = init_step.
 *   Each round: for every ramp i, the move raises thresholds[i] by step[i] (capped at 1; a ramp
 *   already at 1 has no move). When that would let no further sample exit at ramp i (the step
 *   falls in a gap between the window's confidences), the move goes instead to just past the
 *   nearest sample still running at ramp i (the smallest double above its 1 - conf). A move is feasible when it keeps the accuracy constraint and raises
 *   the mean saving by more than 1e-12 ms. Among feasible moves take the one with the least
 *   accuracy lost per ms saved ((accuracy_before - accuracy_after) / (saved_after - saved_before),
 *   which is negative when a move fixes wrong exits); ties: the most saved, then the lowest ramp.
 *   On success that ramp's step doubles (capped at 1); when no move is feasible every step halves.
 *   Stops when every step < min_step. Deterministic.
 *   thresholds (out): [r]; accuracy, saved (out): as ap_evaluate_thresholds for the result.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE, AP_ERR_VALUE, AP_ERR_NOMEM (O(m + r) working memory). */
int ap_search_thresholds(const float *conf, const uint8_t *agree, int64_t r, int64_t m,
                         const double *saved_ms, double constraint, double init_step,
                         double min_step, double *thresholds, double *accuracy, double *saved);

/* As ap_search_thresholds on weighted samples (weight [m], finite, > 0; NULL: all 1): accuracy,
 * savings and the accuracy lost per ms saved are weighted sums over total weight, as
 * ap_evaluate_thresholds_weighted. With all weights 1 it equals ap_search_thresholds.
 * Errors: as ap_search_thresholds, and AP_ERR_VALUE for a bad weight. */
int ap_search_thresholds_weighted(const float *conf, const uint8_t *agree, const double *weight,
                                  int64_t r, int64_t m, const double *saved_ms, double constraint,
                                  double init_step, double min_step, double *thresholds,
                                  double *accuracy, double *saved);

/* ---- ramp utility (csrc/utility.c) ---------------------------------------------------------- */

/* Per-ramp utility in ms per input (DESIGN.md, "Ramp adjustment"):
 *   utility[i] = exit_counts[i] / n * saved_next_ms[i] - pass_counts[i] / n * cost_ms[i]
 *   exit_counts: [r] inputs that exited at ramp i; pass_counts: [r] inputs that reached ramp i and
 *   did not exit there; n >= 1 inputs observed; saved_next_ms: [r] latency (ms) an exit at ramp i
 *   saves relative to the next exit point; cost_ms: [r] latency (ms) ramp i adds to an input.
 * Errors: AP_ERR_NULL, AP_ERR_SIZE (r < 0, n < 1, a negative count or a count above n). */
int ap_ramp_utility(const int64_t *exit_counts, const int64_t *pass_counts, int64_t r, int64_t n,
                    const double *saved_next_ms, const double *cost_ms, double *utility);

/* As ap_ramp_utility with weighted counts: exit_weights, pass_weights [r] (each in [0, total]),
 * total > 0 the weight of the inputs observed:
 *   utility[i] = exit_weights[i] / total * saved_next_ms[i] - pass_weights[i] / total * cost_ms[i]
 * Errors: AP_ERR_NULL, AP_ERR_SIZE (r < 0, total not finite and > 0, a weight outside [0, total]). */
int ap_ramp_utility_weighted(const double *exit_weights, const double *pass_weights, int64_t r,
                             double total, const double *saved_next_ms, const double *cost_ms,
                             double *utility);

#ifdef __cplusplus
}
#endif
#endif /* APPARATE_CORE_H */
