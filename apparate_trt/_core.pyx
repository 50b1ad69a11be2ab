# cython: boundscheck=False, wraparound=False, cdivision=True
"""Python face of the C core in csrc/ (exit decisions, feedback window, threshold search, utility)."""

cdef extern from "apparate_core.h":
    int ap_api_version()


def api_version() -> int:
    """Version of the C core's public API (``AP_API_VERSION`` in csrc/apparate_core.h)."""
    return ap_api_version()
