/* internal.h: helpers shared by the C core sources; not part of the public API. */
#ifndef APPARATE_INTERNAL_H
#define APPARATE_INTERNAL_H

#include <math.h>
#include <stdint.h>

/* Tolerance of the accuracy constraint and of "saved increased" in the threshold search. */
#define AP_EPS 1e-12

/* The exit rule: an input with confidence conf exits at a ramp with threshold thr. */
static inline int ap_exits(float conf, double thr) { return (1.0 - (double)conf) < thr; }

/* 1 when v is a number in [0, 1] (NaN fails). */
static inline int ap_is_fraction(double v) { return v >= 0.0 && v <= 1.0; }

static inline double ap_clamp01(double v) { return v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v); }

/* AP_OK when the `count` confidences are all in [0, 1], else AP_ERR_VALUE (NaN included). */
int ap_check_conf(const float *conf, int64_t count);

#endif /* APPARATE_INTERNAL_H */
