"""apparate_trt: early-exit serving for ONNX classifiers (Apparate, SOSP 2024).

``apparate-compile`` turns an ONNX classifier into an engine directory of segments and trained
ramps; ``apparate-run`` serves it, releasing each input's result at its first confident ramp while
the batch runs on, and adapts thresholds and ramps from that free feedback.
"""

__version__ = "0.1.0"

try:
    from apparate_trt import _core  # noqa: F401  (the C core; everything at run time depends on it)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "apparate_trt's C extension (apparate_trt._core) is not built or does not load "
        f"({exc}); build it with `pip install -e .` (or `make install`) from the repository root"
    ) from exc
