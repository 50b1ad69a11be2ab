"""Serving defaults shared by the Python API, the server and ``apparate-run`` (one place to change them).

A light module (no numpy, no ONNX Runtime) so that command-line help can show the defaults
without loading the runtime.
"""
from __future__ import annotations

DEFAULT_MAX_BATCH = 8
"""Largest batch the dynamic batcher forms."""
DEFAULT_MAX_DELAY_MS = 5.0
"""Longest the oldest queued request waits for a batch to fill (ms)."""
DEFAULT_ACCURACY_CONSTRAINT = 0.01
"""Allowed share (fraction) of released results that disagree with the original model over a window."""
DEFAULT_AUDIT_RATE = 0.25
"""Skip mode: the probability that a row a ramp releases still runs to the end as feedback."""
MIN_AUDIT_RATE = 0.05
"""Skip mode: the lowest audit rate a user may set (feedback never stops)."""
DEFAULT_EXIT_MODES = {"onnxruntime": "release", "tensorrt": "release"}
"""The exit mode ``load(exit_mode=None)`` and ``apparate-run`` use per backend (see ``default_exit_mode``)."""


def default_exit_mode(backend: str) -> str:
    """The default exit mode for an engine profiled on ``backend`` (``release`` when unknown)."""
    return DEFAULT_EXIT_MODES.get(backend, "release")
