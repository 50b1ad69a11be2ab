"""Arrival processes for workload replay: when each request arrives, in seconds from the start.

``parse_arrivals(spec, n, seed)`` turns a spec string into ``n`` non-decreasing arrival times:

- ``fixed:RATE``   one request every ``1/RATE`` seconds (a camera at RATE frames per second);
- ``poisson:RATE`` exponential gaps with mean ``1/RATE`` seconds (independent users), seeded;
- ``trace:FILE``   one arrival time in seconds per line of FILE (blank lines and ``#`` comments
  skipped); times are shifted so that the first arrival is at 0 and must not decrease. A trace
  shorter than ``n`` requests limits the replay to the trace's length.

RATE is in requests per second and must be a positive, finite number.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from apparate_trt.errors import ApparateError

ARRIVAL_KINDS = ("fixed", "poisson", "trace")
_SPEC_HELP = "use fixed:RATE, poisson:RATE (RATE in requests per second, e.g. poisson:100) or trace:FILE"


def parse_arrivals(spec: str, n: int, seed: int = 0) -> np.ndarray:
    """Arrival times (seconds from the start, float64, non-decreasing) of up to ``n`` requests.

    Returns exactly ``n`` times for ``fixed`` and ``poisson``; for ``trace`` the first
    ``min(n, lines in the file)`` times. Raises ApparateError for a malformed spec or file.
    """
    if n < 0:
        raise ApparateError(f"number of requests must be >= 0, got {n}")
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ARRIVAL_KINDS or not arg.strip():
        raise ApparateError(f"arrival process '{spec}' is not understood; {_SPEC_HELP}")
    if kind == "trace":
        return read_trace(arg.strip())[:n]
    rate = parse_rate(arg, spec)
    if kind == "fixed":
        return fixed_arrivals(rate, n)
    return poisson_arrivals(rate, n, seed)


def parse_rate(text: str, spec: str) -> float:
    """A positive, finite rate (requests per second) from ``text``; ``spec`` is quoted in errors."""
    try:
        rate = float(text)
    except ValueError:
        raise ApparateError(f"arrival rate '{text}' in '{spec}' is not a number; {_SPEC_HELP}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ApparateError(f"arrival rate in '{spec}' must be a positive number of requests per second, got {text}")
    return rate


def fixed_arrivals(rate: float, n: int) -> np.ndarray:
    """``n`` arrivals exactly ``1/rate`` seconds apart, the first at 0."""
    return np.arange(n, dtype=np.float64) / rate


def poisson_arrivals(rate: float, n: int, seed: int) -> np.ndarray:
    """``n`` arrivals of a Poisson process of ``rate`` per second, the first at 0 (seeded)."""
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def read_trace(path: str | Path) -> np.ndarray:
    """Arrival times from a trace file (one time in seconds per line), shifted to start at 0."""
    path = Path(path)
    if not path.is_file():
        raise ApparateError(
            f"arrival trace '{path}' does not exist or is not a file; pass trace:FILE with one arrival time in "
            f"seconds per line"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApparateError(
            f"cannot read arrival trace '{path}' ({exc}); it must be a text file with one time in seconds per line"
        ) from None
    times: list[float] = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise ApparateError(
                f"arrival trace '{path}' line {number}: '{text}' is not a time in seconds; each line must hold one "
                f"number"
            ) from None
        if not math.isfinite(value):
            raise ApparateError(
                f"arrival trace '{path}' line {number}: time '{text}' is not finite; use a number of seconds"
            )
        if times and value < times[-1]:
            raise ApparateError(
                f"arrival trace '{path}' line {number}: time {value} is earlier than the previous one ({times[-1]}); "
                "arrival times must not decrease (sort the file)"
            )
        times.append(value)
    if not times:
        raise ApparateError(f"arrival trace '{path}' holds no arrival times; write one time in seconds per line")
    array = np.asarray(times, dtype=np.float64)
    return array - array[0]
