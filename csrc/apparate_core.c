#include "apparate_core.h"

int ap_api_version(void) { return AP_API_VERSION; }
