"""Progress of long work, fitted to where it is read.

On a terminal a :class:`Progress` is a tqdm bar redrawn in place. Anywhere else (a log file, a
pipe, CI) it writes a line only when the work has crossed another tenth of its total or
:data:`QUIET_INTERVAL_S` have passed since the last line, so a long stage writes about ten lines.
Either way :meth:`Progress.close` ends the stage with one summary line.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

QUIET_INTERVAL_S = 30.0
"""Seconds between two lines at most when the stream is not a terminal."""

STEPS = 10
"""When the stream is not a terminal: a line each time the work crosses another 1/STEPS of its total."""


def is_terminal(stream: IO[str]) -> bool:
    """True if ``stream`` is an interactive terminal (where a bar can redraw in place)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """``done`` out of ``total`` units of one stage, shown as a bar or as throttled lines.

    Args:
        desc: what the stage does, e.g. ``"replay"`` (the bar's label and each line's start).
        total: units of work in the stage (> 0).
        unit: the unit's name, e.g. ``"req"`` or ``"samples"``.
        stream: where to write (stderr by default).
        bar: True for a tqdm bar, False for lines; None (default) picks a bar on a terminal.
    """

    def __init__(
        self, desc: str, total: int, unit: str = "it", stream: IO[str] | None = None, bar: bool | None = None
    ) -> None:
        self.desc = desc
        self.total = max(int(total), 1)
        self.unit = unit
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        self.done = 0
        self._t0 = time.monotonic()
        self._last_line_t = self._t0
        self._step = 0  # the last 1/STEPS of the total that a line was written for
        self._bar: Any = None
        if bar if bar is not None else is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=False)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the stage began."""
        return time.monotonic() - self._t0

    def update(self, done: int, status: str = "") -> None:
        """Record that ``done`` units (a running total, not an increment) are finished; ``status``
        is a short figure to show beside the count (e.g. ``"p50 8.1 ms"``)."""
        done = min(max(int(done), 0), self.total)
        if self._bar is not None:
            self._bar.update(done - self.done)
            if status:
                self._bar.set_postfix_str(status, refresh=False)
            self.done = done
            return
        self.done = done
        now = time.monotonic()
        step = done * STEPS // self.total  # integers: a float sum of tenths would miss 30%
        if step > self._step or now - self._last_line_t >= QUIET_INTERVAL_S:
            self._step = step
            self._last_line_t = now
            self._write(self.line(status))

    def line(self, status: str = "") -> str:
        """``desc: done/total unit (pct), status, elapsed``: one progress line."""
        pct = 100.0 * self.done / self.total
        extra = f", {status}" if status else ""
        return f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%){extra}, {self.elapsed_s:.1f} s"

    def close(self, summary: str | None = None) -> None:
        """End the stage: the bar is cleared and ``summary`` (if given) is written as one line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if summary:
            self._write(summary)

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
