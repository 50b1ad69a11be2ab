/* Library-wide pieces of the C core: version and status strings. */
#include "apparate_core.h"
#include "internal.h"

int ap_api_version(void) { return AP_API_VERSION; }

const char *ap_strerror(int status) {
    switch (status) {
    case AP_OK: return "ok";
    case AP_ERR_NULL: return "a required pointer argument is NULL";
    case AP_ERR_SIZE: return "a count or size is out of range, or an output buffer is too small";
    case AP_ERR_VALUE: return "a value is NaN or out of range (threshold, constraint, step or confidence)";
    case AP_ERR_KIND: return "unknown confidence kind (use AP_CONF_MAXPROB or AP_CONF_ENTROPY)";
    case AP_ERR_SITE: return "a site id is outside [0, max_sites) or repeated";
    case AP_ERR_NOMEM: return "out of memory";
    default: return "unknown status code";
    }
}

int ap_check_conf(const float *conf, int64_t count) {
    for (int64_t t = 0; t < count; t++)
        if (!ap_is_fraction((double)conf[t])) return AP_ERR_VALUE;
    return AP_OK;
}
