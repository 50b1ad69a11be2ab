"""Defaults shared by the compiler, the Python API, the server and ``apparate-run`` (one place to change them).

A light module (no numpy, no ONNX Runtime) so that command-line help can show the defaults
without loading the runtime.
"""

from __future__ import annotations

DEFAULT_MAX_BATCH = 8
"""Largest batch the dynamic batcher forms."""
DEFAULT_MAX_DELAY_MS = 5.0
"""Longest the oldest queued request waits for a batch to fill (ms)."""
DEFAULT_QUEUE_SIZE = 1024
"""Most samples waiting for a batch; past it a new request is refused at once (overload)."""
DEFAULT_MAX_CONNECTIONS = 4096
"""The server's default limit of REST connections open at once (one more gets 503). A connection
is a few kilobytes on the server's event loop, not a thread: idle and slow ones cost no worker."""
DEFAULT_ACCURACY_CONSTRAINT = 0.01
"""Allowed share (fraction) of released results that disagree with the original model over a window."""
DEFAULT_AUDIT_RATE = 0.25
"""Skip mode: the probability that a row a ramp releases still runs to the end as feedback."""
MIN_AUDIT_RATE = 0.05
"""Skip mode: the lowest audit rate a user may set (feedback never stops)."""
DEFAULT_EXIT_MODES = {"onnxruntime": "release", "onnxruntime-gpu": "release", "tensorrt": "release"}
"""The exit mode ``load(exit_mode=None)`` and ``apparate-run`` use per backend (see ``default_exit_mode``)."""
DEFAULT_TARGET_FRACTION = 0.3
"""The share (fraction) of the accuracy constraint the threshold search aims at, leaving the rest as a
margin against drift (the controller's "Threshold tuning"; the compiler's initial thresholds too)."""
BUDGET_SLACK = 0.25
"""How far (a fraction of the budget) the profiled ramp costs may exceed the ramp budget and still fit
it, in the compiler's initial choice and the controller's probes alike. Profiled costs on a CPU vary
between compiles of one model (a ramp measured at 1.95% to 2.35% of the model against a 2% budget
was active in one compile and not in the next, issue 32); with this margin the same model compiles
to the same initial sites, and a budget of 2% admits ramps profiled at up to 2.5%."""
PROBE_BACKOFF_DOUBLINGS = 6
"""How many times the wait of an engine with no paying ramp doubles (from ``adjust_every`` batches),
one doubling per probe in a row that ended with no ramp paying; a change of the stream's final
outputs (:mod:`apparate_trt.runtime.control.shift`) or a ramp that pays starts it over (issue 32)."""
SEARCH_MIN_STEP = 1e-6
"""Smallest threshold step of the search. Over-confident ramps (NLP ramps often give
1 - p_max around 1e-4) need thresholds far below the C core's default step of 1e-3."""


def default_exit_mode(backend: str) -> str:
    """The default exit mode for an engine profiled on ``backend`` (``release`` when unknown)."""
    return DEFAULT_EXIT_MODES.get(backend, "release")


DEFAULT_REFIT_EVERY = 1024
"""Ramps that keep learning: new samples an active ramp gathers before its next refit."""
