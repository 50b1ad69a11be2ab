/* apparate_core.h: the public C API of apparate_trt's host-side early-exit policy.
 * No Python here: a C or C++ service links libapparate_core directly. */
#ifndef APPARATE_CORE_H
#define APPARATE_CORE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this header's API, bumped on incompatible changes. */
#define AP_API_VERSION 1

/* Returns AP_API_VERSION of the compiled library. */
int ap_api_version(void);

#ifdef __cplusplus
}
#endif
#endif /* APPARATE_CORE_H */
