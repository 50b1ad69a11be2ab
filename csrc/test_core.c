/* test_core.c: drives csrc/apparate_core.h as a C service would (no Python).
 * Built and run by `make test-c`; prints every check and ends with "N passed, M failed". */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "apparate_core.h"

static int passed = 0, failed = 0;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (cond) {                                             \
            passed++;                                           \
            printf("ok    ");                                   \
        } else {                                                \
            failed++;                                           \
            printf("FAIL  (%s:%d: %s) ", __FILE__, __LINE__, #cond); \
        }                                                       \
        printf(__VA_ARGS__);                                    \
        printf("\n");                                           \
    } while (0)

static int near(double a, double b, double tol) { return fabs(a - b) <= tol; }

/* Deterministic pseudo-random numbers in [0, 1). */
static unsigned long long rng_state = 88172645463325252ULL;
static double rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static void test_version(void) {
    CHECK(ap_api_version() == AP_API_VERSION, "ap_api_version() == %d", AP_API_VERSION);
    CHECK(strcmp(ap_strerror(AP_OK), "ok") == 0, "ap_strerror(AP_OK) is \"ok\"");
    CHECK(strstr(ap_strerror(AP_ERR_SITE), "site") != NULL, "ap_strerror(AP_ERR_SITE) names sites");
    CHECK(ap_strerror(12345) != NULL, "ap_strerror of an unknown code is not NULL");
}

static void test_confidence(void) {
    const float nan = (float)NAN, inf = (float)INFINITY;
    /* rows: uniform pair, p = 3/4, huge logits (stability), NaN row, inf row */
    float logits[5 * 2] = {0, 0, 0, (float)log(3.0), 1000.0f, 0, 1, nan, -inf, 0};
    float conf[5];
    int32_t pred[5];
    CHECK(ap_confidence(logits, 5, 2, AP_CONF_MAXPROB, conf, pred) == AP_OK, "maxprob status ok");
    CHECK(near(conf[0], 0.5, 1e-7) && pred[0] == 0, "uniform pair -> 0.5, first argmax (got %g, %d)",
          conf[0], pred[0]);
    CHECK(near(conf[1], 0.75, 1e-6) && pred[1] == 1, "logits (0, log 3) -> 0.75, class 1 (got %g)", conf[1]);
    CHECK(conf[2] == 1.0f && pred[2] == 0, "logit 1000 is stable -> 1.0 (got %g)", conf[2]);
    CHECK(conf[3] == 0.0f && pred[3] == -1, "NaN row -> conf 0, pred -1");
    CHECK(conf[4] == 0.0f && pred[4] == -1, "inf row -> conf 0, pred -1");

    float ent_logits[3 * 4] = {1, 1, 1, 1, 50, 0, 0, 0, 2, 1, 0, -1};
    CHECK(ap_confidence(ent_logits, 3, 4, AP_CONF_ENTROPY, conf, pred) == AP_OK, "entropy status ok");
    CHECK(near(conf[0], 0.0, 1e-6), "entropy of a uniform row -> 0 (got %g)", conf[0]);
    CHECK(near(conf[1], 1.0, 1e-6) && pred[1] == 0, "entropy of a peaked row -> 1 (got %g)", conf[1]);
    {
        double e[4], s = 0, h = 0;
        for (int c = 0; c < 4; c++) s += e[c] = exp(ent_logits[8 + c]);
        for (int c = 0; c < 4; c++) h -= e[c] / s * log(e[c] / s);
        CHECK(near(conf[2], 1.0 - h / log(4.0), 1e-6), "entropy matches 1 - H/log k (%g vs %g)", conf[2],
              1.0 - h / log(4.0));
    }
    float one[2] = {3.0f, -7.0f};
    CHECK(ap_confidence(one, 2, 1, AP_CONF_ENTROPY, conf, pred) == AP_OK && conf[0] == 1.0f &&
              conf[1] == 1.0f && pred[1] == 0,
          "a single class is certain (k = 1)");
    CHECK(ap_confidence(logits, 5, 0, AP_CONF_MAXPROB, conf, pred) == AP_ERR_SIZE, "k = 0 -> AP_ERR_SIZE");
    CHECK(ap_confidence(logits, 5, 2, 7, conf, pred) == AP_ERR_KIND, "unknown kind -> AP_ERR_KIND");
    CHECK(ap_confidence(NULL, 5, 2, AP_CONF_MAXPROB, conf, pred) == AP_ERR_NULL, "NULL logits -> AP_ERR_NULL");
    CHECK(ap_confidence(NULL, 0, 2, AP_CONF_MAXPROB, NULL, NULL) == AP_OK, "n = 0 with NULL buffers is ok");
}

static void test_exit_decisions(void) {
    /* 3 ramps x 4 inputs */
    float conf[3 * 4] = {0.99f, 0.50f, 0.50f, 0.90f,  /* ramp 0 */
                         0.99f, 0.96f, 0.50f, 0.99f,  /* ramp 1 */
                         1.00f, 0.50f, 0.99f, 0.50f}; /* ramp 2 */
    double thr[3] = {0.05, 0.05, 0.0};
    int32_t ex[4];
    CHECK(ap_exit_decisions(conf, 3, 4, thr, ex) == AP_OK, "exit_decisions status ok");
    CHECK(ex[0] == 0 && ex[1] == 1 && ex[2] == -1 && ex[3] == 1,
          "first confident ramp wins; threshold 0 never exits (got %d %d %d %d)", ex[0], ex[1], ex[2], ex[3]);
    double zero[3] = {0, 0, 0};
    CHECK(ap_exit_decisions(conf, 3, 4, zero, ex) == AP_OK && ex[0] == -1 && ex[1] == -1,
          "all-zero thresholds: nobody exits, even conf 1.0");
    float exact[2] = {0.75f, 0.5f}; /* exactly representable: 1 - conf is 0.25 and 0.5 */
    double at[1] = {0.25}, above[1] = {0.25 + 1e-9};
    CHECK(ap_exit_decisions(exact, 1, 2, at, ex) == AP_OK && ex[0] == -1 && ex[1] == -1,
          "1 - conf < threshold is strict: conf 0.75 does not exit at threshold 0.25");
    CHECK(ap_exit_decisions(exact, 1, 2, above, ex) == AP_OK && ex[0] == 0 && ex[1] == -1,
          "conf 0.75 exits just above threshold 0.25");
    double bad[3] = {0.1, 1.5, 0.0};
    CHECK(ap_exit_decisions(conf, 3, 4, bad, ex) == AP_ERR_VALUE, "threshold 1.5 -> AP_ERR_VALUE");
    bad[1] = NAN;
    CHECK(ap_exit_decisions(conf, 3, 4, bad, ex) == AP_ERR_VALUE, "NaN threshold -> AP_ERR_VALUE");
}

static void test_ramp_exits(void) {
    float logits[4 * 2] = {0, 10, 0, 10, 0, 0, (float)NAN, 0};
    uint8_t done[4] = {0, 1, 0, 0}, newly[4];
    float conf[4];
    int32_t pred[4];
    int64_t count = -1;
    int st = ap_ramp_exits(logits, 4, 2, AP_CONF_MAXPROB, 0.1, done, conf, pred, newly, &count);
    CHECK(st == AP_OK, "ramp_exits status ok");
    CHECK(newly[0] == 1 && newly[1] == 0 && newly[2] == 0 && newly[3] == 0 && count == 1,
          "only the confident, not-yet-done input exits (newly %d %d %d %d, count %lld)", newly[0], newly[1],
          newly[2], newly[3], (long long)count);
    CHECK(done[0] == 1 && done[1] == 1 && done[2] == 0 && done[3] == 0, "done is updated in place");
    CHECK(pred[1] == 1 && conf[1] > 0.99f, "conf and pred are computed for done rows too");
    CHECK(pred[3] == -1 && conf[3] == 0.0f, "a NaN row never exits");
    CHECK(ap_ramp_exits(logits, 4, 2, AP_CONF_MAXPROB, -0.1, done, conf, pred, newly, NULL) == AP_ERR_VALUE,
          "negative threshold -> AP_ERR_VALUE");
}

static void test_batch_exits(void) {
    /* 2 ramps x 3 inputs x 2 classes */
    float logits[2 * 3 * 2] = {0, 10, 0, 0, 0, 0,   /* ramp 0: input 0 confident */
                               0, 0, 10, 0, 0, 10}; /* ramp 1: inputs 1 and 2 confident */
    double thr[2] = {0.1, 0.1};
    float conf[6];
    int32_t pred[6], ex[3];
    CHECK(ap_batch_exits(logits, 2, 3, 2, AP_CONF_MAXPROB, thr, conf, pred, ex) == AP_OK, "batch_exits ok");
    CHECK(ex[0] == 0 && ex[1] == 1 && ex[2] == 1, "first confident ramp per input (got %d %d %d)", ex[0], ex[1],
          ex[2]);
    CHECK(pred[0] == 1 && pred[3] == 0 && pred[4] == 0 && pred[5] == 1 && near(conf[1], 0.5, 1e-7),
          "conf and pred laid out [ramp, input]");
    thr[0] = 0.0;
    CHECK(ap_batch_exits(logits, 2, 3, 2, AP_CONF_MAXPROB, thr, conf, pred, ex) == AP_OK && ex[0] == -1,
          "threshold 0 on ramp 0: input 0 does not exit");
    thr[1] = 2.0;
    CHECK(ap_batch_exits(logits, 2, 3, 2, AP_CONF_MAXPROB, thr, conf, pred, ex) == AP_ERR_VALUE,
          "threshold 2 -> AP_ERR_VALUE");
}

static void test_window(void) {
    ap_window *w = NULL;
    CHECK(ap_window_create(0, 4, &w) == AP_ERR_SIZE && w == NULL, "capacity 0 -> AP_ERR_SIZE");
    CHECK(ap_window_create(4, 3, &w) == AP_OK && w != NULL, "create capacity 4, 3 sites");
    CHECK(ap_window_size(w) == 0 && ap_window_capacity(w) == 4 && ap_window_max_sites(w) == 3,
          "new window is empty with its sizes");

    /* 3 samples at sites {0, 2}: conf 0.1, 0.2, 0.3 at site 0; agree alternates */
    int32_t s02[2] = {0, 2};
    float c1[2 * 3] = {0.1f, 0.2f, 0.3f, 0.6f, 0.7f, 0.8f};
    uint8_t a1[2 * 3] = {1, 0, 1, 1, 1, 0};
    CHECK(ap_window_push(w, s02, 2, c1, a1, 3) == AP_OK && ap_window_size(w) == 3, "push 3 samples");
    /* 2 samples at site {1} only: the first evicts nothing, the second evicts the oldest */
    int32_t s1[1] = {1};
    float c2[2] = {0.4f, 0.5f};
    uint8_t a2[2] = {1, 7};
    CHECK(ap_window_push(w, s1, 1, c2, a2, 2) == AP_OK && ap_window_size(w) == 4,
          "push 2 more: size capped at capacity 4");

    float conf[2 * 4];
    uint8_t agree[2 * 4];
    int64_t m = -1, count = -1;
    CHECK(ap_window_count(w, s02, 2, &count) == AP_OK && count == 2, "2 samples still hold sites {0, 2}");
    CHECK(ap_window_gather(w, s02, 2, -1, conf, agree, 4, &m) == AP_OK && m == 2, "gather sites {0, 2}");
    CHECK(conf[0] == 0.2f && conf[1] == 0.3f && conf[4] == 0.7f && conf[5] == 0.8f,
          "oldest evicted, oldest first, rows follow site order (%g %g | %g %g)", conf[0], conf[1], conf[4],
          conf[5]);
    CHECK(agree[0] == 0 && agree[1] == 1 && agree[4] == 1 && agree[5] == 0, "agreement kept per site");
    int32_t s20[2] = {2, 0};
    CHECK(ap_window_gather(w, s20, 2, -1, conf, agree, 4, &m) == AP_OK && conf[0] == 0.7f && conf[4] == 0.2f,
          "row i is site_ids[i]");
    CHECK(ap_window_gather(w, s1, 1, -1, conf, agree, 4, &m) == AP_OK && m == 2 && agree[1] == 1,
          "site {1}: 2 samples, agreement normalised to 0/1");
    CHECK(ap_window_gather(w, s02, 2, 1, conf, agree, 4, &m) == AP_OK && m == 1 && conf[0] == 0.3f,
          "last = 1 keeps the most recent sample");
    CHECK(ap_window_gather(w, s02, 2, -1, conf, agree, 1, &m) == AP_ERR_SIZE, "stride too small -> AP_ERR_SIZE");
    int32_t s01[2] = {0, 1};
    CHECK(ap_window_count(w, s01, 2, &count) == AP_OK && count == 0, "no sample holds both sites 0 and 1");
    CHECK(ap_window_count(w, NULL, 0, &count) == AP_OK && count == 4, "no sites: every sample counts");

    int32_t dup[2] = {2, 2}, out_of_range[1] = {3};
    CHECK(ap_window_count(w, dup, 2, &count) == AP_ERR_SITE, "repeated site -> AP_ERR_SITE");
    CHECK(ap_window_push(w, out_of_range, 1, c2, a2, 1) == AP_ERR_SITE, "site 3 of 3 -> AP_ERR_SITE");
    float nanc[2] = {0.5f, (float)NAN};
    CHECK(ap_window_push(w, s1, 1, nanc, a2, 2) == AP_ERR_VALUE && ap_window_size(w) == 4,
          "NaN confidence -> AP_ERR_VALUE, window unchanged");

    double acc = -1;
    double thr2[2] = {0.85, 0.0}; /* site 0 exits when conf > 0.15: both samples, first wrong */
    CHECK(ap_window_accuracy(w, s02, 2, thr2, &acc, &m) == AP_OK && m == 2 && near(acc, 0.5, 1e-12),
          "accuracy_with: one of two exits disagrees -> 0.5 (got %g)", acc);

    CHECK(ap_window_remove_site(w, 0) == AP_OK, "remove site 0");
    CHECK(ap_window_count(w, s02, 2, &count) == AP_OK && count == 0 && ap_window_size(w) == 4,
          "after removal no sample holds site 0; samples stay");
    int32_t s2[1] = {2};
    CHECK(ap_window_count(w, s2, 1, &count) == AP_OK && count == 2, "site 2 values are kept");
    CHECK(ap_window_remove_site(w, -1) == AP_ERR_SITE, "remove site -1 -> AP_ERR_SITE");

    /* a push larger than the capacity keeps only the newest samples */
    float big[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
    uint8_t bigA[6] = {1, 1, 1, 1, 1, 1};
    CHECK(ap_window_push(w, s2, 1, big, bigA, 6) == AP_OK && ap_window_size(w) == 4, "push 6 into capacity 4");
    CHECK(ap_window_gather(w, s2, 1, -1, conf, agree, 4, &m) == AP_OK && m == 4 && conf[0] == 0.3f &&
              conf[3] == 0.6f,
          "the newest 4 are kept, oldest first");
    ap_window_clear(w);
    CHECK(ap_window_size(w) == 0 && ap_window_count(w, s2, 1, &count) == AP_OK && count == 0, "clear empties");
    ap_window_destroy(w);
    ap_window_destroy(NULL);
    CHECK(1, "destroy (and destroy NULL) do not crash");
}

static void test_evaluate(void) {
    /* 2 ramps x 5 samples */
    float conf[2 * 5] = {0.99f, 0.98f, 0.50f, 0.50f, 0.10f, 0.99f, 0.99f, 0.99f, 0.50f, 0.10f};
    uint8_t agree[2 * 5] = {1, 0, 1, 1, 1, 1, 1, 0, 1, 1};
    double saved[2] = {10.0, 4.0};
    double thr[2] = {0.05, 0.05};
    double acc, sv;
    int64_t counts[3];
    CHECK(ap_evaluate_thresholds(conf, agree, 2, 5, saved, thr, &acc, &sv, counts) == AP_OK, "evaluate ok");
    CHECK(counts[0] == 2 && counts[1] == 1 && counts[2] == 2, "exit counts 2/1/2 (got %lld %lld %lld)",
          (long long)counts[0], (long long)counts[1], (long long)counts[2]);
    CHECK(near(acc, 3.0 / 5.0, 1e-12), "two wrong exits -> accuracy 0.6 (got %g)", acc);
    CHECK(near(sv, (2 * 10.0 + 4.0) / 5.0, 1e-12), "saved = (2*10 + 4)/5 ms (got %g)", sv);
    CHECK(ap_evaluate_thresholds(conf, agree, 2, 0, saved, thr, &acc, &sv, counts) == AP_OK && acc == 1.0 &&
              sv == 0.0,
          "empty window -> accuracy 1, saved 0");
    conf[3] = 1.5f;
    CHECK(ap_evaluate_thresholds(conf, agree, 2, 5, saved, thr, &acc, &sv, NULL) == AP_ERR_VALUE,
          "confidence 1.5 -> AP_ERR_VALUE");
}

static void test_search(void) {
    /* Ramp 0 is right on samples 0-5 (conf 0.99) and wrong on 6-7 (conf 0.97); ramp 1 is right
     * everywhere with conf 0.995. With a 0 constraint the best is: ramp 0 exits 0-5 only
     * (0.01 < thr0 <= 0.03), ramp 1 takes 6-7. */
    enum { M = 8 };
    float conf[2 * M];
    uint8_t agree[2 * M];
    for (int j = 0; j < M; j++) {
        conf[j] = j < 6 ? 0.99f : 0.97f;
        agree[j] = j < 6;
        conf[M + j] = 0.995f;
        agree[M + j] = 1;
    }
    double saved_ms[2] = {8.0, 3.0}, thr[2], acc, sv;
    int st = ap_search_thresholds(conf, agree, 2, M, saved_ms, 0.0, 0.05, 0.001, thr, &acc, &sv);
    CHECK(st == AP_OK, "search status ok");
    CHECK(acc == 1.0, "constraint 0 -> accuracy 1 (got %g)", acc);
    CHECK(near(sv, (6 * 8.0 + 2 * 3.0) / M, 1e-12), "optimal saving 6.75 ms found (got %g, thr %g %g)", sv,
          thr[0], thr[1]);
    CHECK(thr[0] > 0.01 && thr[0] <= 0.03 + 1e-9, "ramp 0 threshold separates right from wrong (%g)", thr[0]);
    double acc2, sv2;
    CHECK(ap_evaluate_thresholds(conf, agree, 2, M, saved_ms, thr, &acc2, &sv2, NULL) == AP_OK && acc2 == acc &&
              sv2 == sv,
          "search's accuracy and saving equal evaluate's for its thresholds");

    st = ap_search_thresholds(conf, agree, 2, M, saved_ms, 0.25, 0.05, 0.001, thr, &acc, &sv);
    CHECK(st == AP_OK && near(sv, 8.0, 1e-12) && near(acc, 0.75, 1e-12),
          "constraint 0.25 lets every sample exit at ramp 0 (saved %g, accuracy %g)", sv, acc);

    /* random windows: result feasible, deterministic, consistent with evaluate */
    enum { R = 4, N = 512 };
    static float rc[R * N];
    static uint8_t ra[R * N];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < N; j++) {
            double q = pow(rnd(), 0.3 / (i + 1)); /* deeper ramps are more confident */
            rc[i * N + j] = (float)q;
            ra[i * N + j] = rnd() < 0.5 + 0.5 * q;
        }
    double rs[R] = {12.0, 9.0, 6.0, 3.0}, t1[R], t2[R], a1, a2, s1, s2;
    int ok = ap_search_thresholds(rc, ra, R, N, rs, 0.01, 0.05, 0.001, t1, &a1, &s1) == AP_OK &&
             ap_search_thresholds(rc, ra, R, N, rs, 0.01, 0.05, 0.001, t2, &a2, &s2) == AP_OK;
    CHECK(ok && a1 >= 0.99 && s1 > 0.0, "random 4x512 window: accuracy %g >= 0.99, saved %g ms > 0", a1, s1);
    CHECK(ok && memcmp(t1, t2, sizeof t1) == 0 && s1 == s2, "search is deterministic");
    CHECK(ap_evaluate_thresholds(rc, ra, R, N, rs, t1, &a2, &s2, NULL) == AP_OK && a2 == a1 && s2 == s1,
          "random window: evaluate agrees with the search result");
    CHECK(ap_search_thresholds(rc, ra, R, N, rs, 1.5, 0.05, 0.001, t1, &a1, &s1) == AP_ERR_VALUE,
          "constraint 1.5 -> AP_ERR_VALUE");
    CHECK(ap_search_thresholds(rc, ra, R, N, rs, 0.01, 0.0, 0.001, t1, &a1, &s1) == AP_ERR_VALUE,
          "init_step 0 -> AP_ERR_VALUE");
}

static void test_utility(void) {
    int64_t exits[2] = {30, 10}, passes[2] = {70, 60};
    double saved_next[2] = {5.0, 2.0}, cost[2] = {0.1, 0.5}, u[2];
    CHECK(ap_ramp_utility(exits, passes, 2, 100, saved_next, cost, u) == AP_OK, "utility ok");
    CHECK(near(u[0], 0.3 * 5.0 - 0.7 * 0.1, 1e-12) && near(u[1], 0.1 * 2.0 - 0.6 * 0.5, 1e-12),
          "utility = exit share * saved - pass share * cost (%g, %g)", u[0], u[1]);
    CHECK(u[1] < 0, "a ramp that costs more than it saves has negative utility");
    CHECK(ap_ramp_utility(exits, passes, 2, 0, saved_next, cost, u) == AP_ERR_SIZE, "n = 0 -> AP_ERR_SIZE");
    exits[0] = 101;
    CHECK(ap_ramp_utility(exits, passes, 2, 100, saved_next, cost, u) == AP_ERR_SIZE,
          "a count above n -> AP_ERR_SIZE");
}

/* Weighted samples (skip mode's audited rows): a sample of weight k must count as k copies of it. */
static void test_weighted(void) {
    enum { R = 3, M = 300 };
    static float conf[R * M], dup_conf[R * M * 3];
    static uint8_t agree[R * M], dup_agree[R * M * 3];
    static double weight[M];
    int64_t md = 0;
    for (int j = 0; j < M; j++) weight[j] = 1.0 + (double)(j % 3); /* 1, 2 or 3 copies */
    for (int j = 0; j < M; j++) md += (int64_t)weight[j];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < M; j++) {
            double q = pow(rnd(), 0.4 / (i + 1));
            conf[i * M + j] = (float)q;
            agree[i * M + j] = rnd() < 0.6 + 0.4 * q;
        }
    for (int i = 0; i < R; i++) {
        int64_t col = 0;
        for (int j = 0; j < M; j++)
            for (int c = 0; c < (int)weight[j]; c++, col++) {
                dup_conf[i * md + col] = conf[i * M + j];
                dup_agree[i * md + col] = agree[i * M + j];
            }
    }
    double saved[R] = {9.0, 6.0, 3.0}, tw[R], td[R], aw, ad, sw, sd;
    int ok = ap_search_thresholds_weighted(conf, agree, weight, R, M, saved, 0.02, 0.05, 1e-4, tw, &aw, &sw) == AP_OK &&
             ap_search_thresholds(dup_conf, dup_agree, R, md, saved, 0.02, 0.05, 1e-4, td, &ad, &sd) == AP_OK;
    CHECK(ok && memcmp(tw, td, sizeof tw) == 0 && near(aw, ad, 1e-12) && near(sw, sd, 1e-9),
          "weighted search equals the search on copies (accuracy %g vs %g, saved %g vs %g)", aw, ad, sw, sd);
    double ew[R + 1];
    int64_t dc[R + 1];
    ok = ap_evaluate_thresholds_weighted(conf, agree, weight, R, M, saved, tw, &aw, &sw, ew) == AP_OK &&
         ap_evaluate_thresholds(dup_conf, dup_agree, R, md, saved, tw, &ad, &sd, dc) == AP_OK;
    int same = ok;
    for (int i = 0; i <= R; i++) same &= near(ew[i], (double)dc[i], 1e-9);
    CHECK(same && near(aw, ad, 1e-12), "weighted evaluate: exit weights equal the copies' exit counts");
    double t0[R];
    ok = ap_search_thresholds_weighted(conf, agree, NULL, R, M, saved, 0.02, 0.05, 1e-4, tw, &aw, &sw) == AP_OK &&
         ap_search_thresholds(conf, agree, R, M, saved, 0.02, 0.05, 1e-4, t0, &ad, &sd) == AP_OK;
    CHECK(ok && memcmp(tw, t0, sizeof tw) == 0 && aw == ad && sw == sd, "NULL weights equal the unweighted search");
    weight[5] = 0.0;
    CHECK(ap_search_thresholds_weighted(conf, agree, weight, R, M, saved, 0.02, 0.05, 1e-4, tw, &aw, &sw) == AP_ERR_VALUE,
          "a zero weight -> AP_ERR_VALUE");
    weight[5] = NAN;
    CHECK(ap_evaluate_thresholds_weighted(conf, agree, weight, R, M, saved, t0, &aw, &sw, NULL) == AP_ERR_VALUE,
          "a NaN weight -> AP_ERR_VALUE");
    weight[5] = 3.0;

    /* the window keeps each sample's weight; its accuracy is weighted */
    ap_window *w = NULL;
    int32_t s0[1] = {0};
    float c[3] = {0.9f, 0.9f, 0.2f};
    uint8_t a[3] = {0, 1, 1};
    double wt[3] = {4.0, 1.0, 1.0}, got[3], thr[1] = {0.5}, acc = 0.0;
    int64_t m = 0;
    CHECK(ap_window_create(8, 2, &w) == AP_OK, "window for weights");
    CHECK(ap_window_push_weighted(w, s0, 1, c, a, wt, 3) == AP_OK && ap_window_size(w) == 3, "weighted push");
    CHECK(ap_window_gather_weights(w, s0, 1, -1, got, 3, &m) == AP_OK && m == 3 && got[0] == 4.0 && got[2] == 1.0,
          "gather_weights returns the pushed weights, oldest first");
    CHECK(ap_window_accuracy(w, s0, 1, thr, &acc, &m) == AP_OK && near(acc, 2.0 / 6.0, 1e-12),
          "weighted window accuracy: wrong exit of weight 4 of 6 -> %g", acc);
    CHECK(ap_window_push(w, s0, 1, c, a, 1) == AP_OK && ap_window_gather_weights(w, s0, 1, 1, got, 3, &m) == AP_OK &&
          m == 1 && got[0] == 1.0, "an unweighted push weighs 1");
    wt[1] = -1.0;
    CHECK(ap_window_push_weighted(w, s0, 1, c, a, wt, 3) == AP_ERR_VALUE && ap_window_size(w) == 4,
          "a negative weight -> AP_ERR_VALUE, window unchanged");
    ap_window_destroy(w);

    double exw[2] = {30.0, 12.5}, pw[2] = {70.0, 57.5}, sn[2] = {5.0, 2.0}, co[2] = {0.1, 0.5}, u[2];
    CHECK(ap_ramp_utility_weighted(exw, pw, 2, 100.0, sn, co, u) == AP_OK &&
          near(u[0], 0.3 * 5.0 - 0.7 * 0.1, 1e-12) && near(u[1], 0.125 * 2.0 - 0.575 * 0.5, 1e-12),
          "weighted utility = exit share * saved - pass share * cost");
    CHECK(ap_ramp_utility_weighted(exw, pw, 2, 0.0, sn, co, u) == AP_ERR_SIZE, "weighted utility: total 0 -> AP_ERR_SIZE");
}

int main(void) {
    test_version();
    test_confidence();
    test_exit_decisions();
    test_ramp_exits();
    test_batch_exits();
    test_window();
    test_evaluate();
    test_search();
    test_utility();
    test_weighted();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
