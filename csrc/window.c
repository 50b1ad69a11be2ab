/* The feedback window: a ring buffer of per-sample (confidence, agreement) at each site, and one
 * weight per sample (1 unless pushed with weights: an audited row of skip mode weighs 1 / p). */
#include <stdlib.h>
#include <string.h>

#include "apparate_core.h"
#include "internal.h"

struct ap_window {
    int64_t capacity;  /* samples */
    int64_t max_sites; /* site ids are in [0, max_sites) */
    int64_t head;      /* slot the next sample is written to */
    int64_t size;      /* stored samples */
    /* [max_sites, capacity] each: site s of slot t at s * capacity + t. */
    float *conf;
    uint8_t *agree;
    uint8_t *has; /* 1 when the sample in that slot was observed at that site */
    double *weight; /* [capacity]: the sample's weight (> 0) */
};

int ap_window_create(int64_t capacity, int64_t max_sites, ap_window **out) {
    if (!out) return AP_ERR_NULL;
    *out = NULL;
    if (capacity < 1 || max_sites < 1) return AP_ERR_SIZE;
    if ((uint64_t)capacity > (uint64_t)SIZE_MAX / sizeof(float) / (uint64_t)max_sites)
        return AP_ERR_SIZE;
    size_t cells = (size_t)capacity * (size_t)max_sites;
    ap_window *w = calloc(1, sizeof *w);
    if (!w) return AP_ERR_NOMEM;
    w->capacity = capacity;
    w->max_sites = max_sites;
    w->conf = malloc(cells * sizeof(float));
    w->agree = malloc(cells);
    w->has = calloc(cells, 1);
    w->weight = malloc((size_t)capacity * sizeof(double));
    if (!w->conf || !w->agree || !w->has || !w->weight) {
        ap_window_destroy(w);
        return AP_ERR_NOMEM;
    }
    *out = w;
    return AP_OK;
}

void ap_window_destroy(ap_window *w) {
    if (!w) return;
    free(w->conf);
    free(w->agree);
    free(w->has);
    free(w->weight);
    free(w);
}

/* AP_OK when the r site ids are in [0, max_sites) and distinct. */
static int check_sites(const ap_window *w, const int32_t *site_ids, int64_t r) {
    if (r < 0 || r > w->max_sites) return r < 0 ? AP_ERR_SIZE : AP_ERR_SITE;
    if (r > 0 && !site_ids) return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++) {
        if (site_ids[i] < 0 || site_ids[i] >= w->max_sites) return AP_ERR_SITE;
        for (int64_t q = 0; q < i; q++)
            if (site_ids[q] == site_ids[i]) return AP_ERR_SITE;
    }
    return AP_OK;
}

int ap_window_push(ap_window *w, const int32_t *site_ids, int64_t r, const float *conf,
                   const uint8_t *agree, int64_t n) {
    return ap_window_push_weighted(w, site_ids, r, conf, agree, NULL, n);
}

int ap_window_push_weighted(ap_window *w, const int32_t *site_ids, int64_t r, const float *conf,
                            const uint8_t *agree, const double *weight, int64_t n) {
    if (!w) return AP_ERR_NULL;
    if (n < 0) return AP_ERR_SIZE;
    int st = check_sites(w, site_ids, r);
    if (st != AP_OK) return st;
    if (r > 0 && n > 0 && (!conf || !agree)) return AP_ERR_NULL;
    st = ap_check_conf(conf, r * n);
    if (st != AP_OK) return st;
    if (weight)
        for (int64_t j = 0; j < n; j++)
            if (!(weight[j] > 0.0) || !isfinite(weight[j])) return AP_ERR_VALUE;
    const int64_t cap = w->capacity;
    /* Samples older than the last `capacity` would be evicted by this very push. */
    int64_t first = n > cap ? n - cap : 0;
    for (int64_t j = first; j < n; j++) {
        int64_t slot = w->head;
        for (int64_t s = 0; s < w->max_sites; s++) w->has[s * cap + slot] = 0;
        for (int64_t i = 0; i < r; i++) {
            int64_t cell = (int64_t)site_ids[i] * cap + slot;
            w->conf[cell] = conf[i * n + j];
            w->agree[cell] = (uint8_t)(agree[i * n + j] != 0);
            w->has[cell] = 1;
        }
        w->weight[slot] = weight ? weight[j] : 1.0;
        w->head = (slot + 1) % cap;
        if (w->size < cap) w->size++;
    }
    return AP_OK;
}

int ap_window_remove_site(ap_window *w, int32_t site) {
    if (!w) return AP_ERR_NULL;
    if (site < 0 || site >= w->max_sites) return AP_ERR_SITE;
    memset(w->has + (int64_t)site * w->capacity, 0, (size_t)w->capacity);
    return AP_OK;
}

void ap_window_clear(ap_window *w) {
    if (!w) return;
    memset(w->has, 0, (size_t)w->capacity * (size_t)w->max_sites);
    w->head = 0;
    w->size = 0;
}

int64_t ap_window_size(const ap_window *w) { return w ? w->size : 0; }
int64_t ap_window_capacity(const ap_window *w) { return w ? w->capacity : 0; }
int64_t ap_window_max_sites(const ap_window *w) { return w ? w->max_sites : 0; }

/* Slot of the t-th oldest stored sample. */
static inline int64_t slot_of(const ap_window *w, int64_t t) {
    return (w->head - w->size + t + w->capacity) % w->capacity;
}

static inline int holds_all(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t slot) {
    for (int64_t i = 0; i < r; i++)
        if (!w->has[(int64_t)site_ids[i] * w->capacity + slot]) return 0;
    return 1;
}

static int64_t count_holding(const ap_window *w, const int32_t *site_ids, int64_t r) {
    int64_t c = 0;
    for (int64_t t = 0; t < w->size; t++) c += holds_all(w, site_ids, r, slot_of(w, t));
    return c;
}

int ap_window_count(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t *count) {
    if (!w || !count) return AP_ERR_NULL;
    int st = check_sites(w, site_ids, r);
    if (st != AP_OK) return st;
    *count = count_holding(w, site_ids, r);
    return AP_OK;
}

int ap_window_gather(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t last,
                     float *conf, uint8_t *agree, int64_t stride, int64_t *m) {
    if (!w || !m) return AP_ERR_NULL;
    int st = check_sites(w, site_ids, r);
    if (st != AP_OK) return st;
    int64_t total = count_holding(w, site_ids, r);
    int64_t skip = (last >= 0 && total > last) ? total - last : 0;
    int64_t want = total - skip;
    if (stride < want) return AP_ERR_SIZE;
    if (r > 0 && want > 0 && (!conf || !agree)) return AP_ERR_NULL;
    int64_t col = 0, seen = 0;
    for (int64_t t = 0; t < w->size && col < want; t++) {
        int64_t slot = slot_of(w, t);
        if (!holds_all(w, site_ids, r, slot)) continue;
        if (seen++ < skip) continue;
        for (int64_t i = 0; i < r; i++) {
            int64_t cell = (int64_t)site_ids[i] * w->capacity + slot;
            conf[i * stride + col] = w->conf[cell];
            agree[i * stride + col] = w->agree[cell];
        }
        col++;
    }
    *m = col;
    return AP_OK;
}

int ap_window_gather_weights(const ap_window *w, const int32_t *site_ids, int64_t r, int64_t last,
                             double *weight, int64_t stride, int64_t *m) {
    if (!w || !m) return AP_ERR_NULL;
    int st = check_sites(w, site_ids, r);
    if (st != AP_OK) return st;
    int64_t total = count_holding(w, site_ids, r);
    int64_t skip = (last >= 0 && total > last) ? total - last : 0;
    int64_t want = total - skip;
    if (stride < want) return AP_ERR_SIZE;
    if (want > 0 && !weight) return AP_ERR_NULL;
    int64_t col = 0, seen = 0;
    for (int64_t t = 0; t < w->size && col < want; t++) {
        int64_t slot = slot_of(w, t);
        if (!holds_all(w, site_ids, r, slot)) continue;
        if (seen++ < skip) continue;
        weight[col++] = w->weight[slot];
    }
    *m = col;
    return AP_OK;
}

int ap_window_accuracy(const ap_window *w, const int32_t *site_ids, int64_t r,
                       const double *thresholds, double *accuracy, int64_t *m) {
    if (!w || !accuracy) return AP_ERR_NULL;
    int st = check_sites(w, site_ids, r);
    if (st != AP_OK) return st;
    if (r > 0 && !thresholds) return AP_ERR_NULL;
    for (int64_t i = 0; i < r; i++)
        if (!ap_is_fraction(thresholds[i])) return AP_ERR_VALUE;
    int64_t used = 0;
    double total = 0.0, wrong = 0.0;
    for (int64_t t = 0; t < w->size; t++) {
        int64_t slot = slot_of(w, t);
        if (!holds_all(w, site_ids, r, slot)) continue;
        used++;
        total += w->weight[slot];
        for (int64_t i = 0; i < r; i++) {
            int64_t cell = (int64_t)site_ids[i] * w->capacity + slot;
            if (ap_exits(w->conf[cell], thresholds[i])) {
                if (!w->agree[cell]) wrong += w->weight[slot];
                break;
            }
        }
    }
    *accuracy = used > 0 ? (total - wrong) / total : 1.0;
    if (m) *m = used;
    return AP_OK;
}
