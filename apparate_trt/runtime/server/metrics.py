"""Server metrics in the Prometheus text exposition format (``GET /metrics`` on the HTTP port).

Counted by the server: requests by protocol and outcome, request durations, per-sample release and
final latencies, releases per exit site (and their shares). Read from the engine on each scrape
(``Engine.stats()`` and its controller): queue depth, batches, refused and expired requests, active
ramps, thresholds and the controller's window accuracy. Latencies are in seconds, as Prometheus
expects. Thread-safe; no dependency beyond the standard library.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histograms' buckets; +Inf is implied."""


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in labels.items():
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}"


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """A cumulative-bucket histogram (not locked: its owner locks)."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: Mapping[str, str]) -> list[str]:
        """Exposition lines: ``_bucket`` (cumulative), ``_sum`` and ``_count``."""
        out, running = [], 0
        for bound, count in zip(self.bounds + (math.inf,), self.counts):
            running += count
            out.append(f"{name}_bucket{_labels({**labels, 'le': _num(bound)})} {running}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


def _site_label(site: int | None) -> str:
    return "final" if site is None else str(site)


class Metrics:
    """Counters and histograms of one server, rendered with the engine's gauges on each scrape."""

    def __init__(self, model: str, engine_gauges: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.model = model
        self._engine_gauges = engine_gauges
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._durations: dict[str, Histogram] = {}
        self._release = Histogram()
        self._final = Histogram()
        self._exits: dict[str, int] = defaultdict(int)
        self._failed = 0
        self._inflight = 0

    # ----------------------------------------------------------------------------- recording
    def request_done(self, protocol: str, code: str, duration_s: float | None) -> None:
        """Count one protocol request by outcome ``code`` (``ok``, ``bad_request``, ``overloaded``,
        ``timeout``, ``unavailable``, ``error``, ``disconnected``, ``unauthenticated``) and its duration in seconds."""
        with self._lock:
            self._requests[(protocol, code)] += 1
            if duration_s is not None and code == "ok":
                self._durations.setdefault(protocol, Histogram()).observe(duration_s)

    def set_inflight(self, count: int) -> None:
        """The number of requests in flight now."""
        self._inflight = count

    def watch(self, handle: Any) -> None:
        """Count ``handle``'s released result (exit site, latency) and its final latency."""
        handle.early.add_done_callback(lambda fut: self._on_result(fut, final=False))
        handle.final.add_done_callback(lambda fut: self._on_result(fut, final=True))

    def _on_result(self, fut: Any, final: bool) -> None:
        if fut.cancelled() or fut.exception() is not None:
            if final:
                with self._lock:
                    self._failed += 1
            return
        result = fut.result()
        latency_s = max(0.0, float(result.t_release - result.t_arrival))
        with self._lock:
            if final:
                self._final.observe(latency_s)
            else:
                self._release.observe(latency_s)
                self._exits[_site_label(None if result.is_final else result.exit_site)] += 1

    # ------------------------------------------------------------------------------ rendering
    def render(self) -> str:
        """All metrics in the Prometheus text format (version 0.0.4)."""
        lines: list[str] = []
        model = {"model": self.model}
        with self._lock:
            self._render_counters(lines, model)
        self._render_engine(lines, model)
        return "\n".join(lines) + "\n"

    def _render_counters(self, lines: list[str], model: dict[str, str]) -> None:
        _header(lines, "apparate_requests_total", "counter", "Infer requests by protocol and outcome.")
        for (protocol, code), count in sorted(self._requests.items()):
            lines.append(f"apparate_requests_total{_labels({**model, 'protocol': protocol, 'code': code})} {count}")
        _header(lines, "apparate_inflight_requests", "gauge", "Infer requests accepted and not yet answered.")
        lines.append(f"apparate_inflight_requests{_labels(model)} {self._inflight}")
        _header(
            lines,
            "apparate_request_duration_seconds",
            "histogram",
            "Successful infer requests: receipt to answer, seconds.",
        )
        for protocol, hist in sorted(self._durations.items()):
            lines.extend(hist.lines("apparate_request_duration_seconds", {**model, "protocol": protocol}))
        _header(
            lines,
            "apparate_release_latency_seconds",
            "histogram",
            "Per sample: arrival to the first released result (early or final), seconds.",
        )
        lines.extend(self._release.lines("apparate_release_latency_seconds", model))
        _header(
            lines,
            "apparate_final_latency_seconds",
            "histogram",
            "Per sample: arrival to the final result (a skipped sample's early one, its last), seconds.",
        )
        lines.extend(self._final.lines("apparate_final_latency_seconds", model))
        _header(lines, "apparate_failed_samples_total", "counter", "Samples the engine failed or expired.")
        lines.append(f"apparate_failed_samples_total{_labels(model)} {self._failed}")
        total = sum(self._exits.values())
        exits = sorted(self._exits.items(), key=lambda kv: (kv[0] == "final", kv[0]))
        _header(lines, "apparate_exits_total", "counter", "Released results by exit site ('final': the full model).")
        lines.extend(f"apparate_exits_total{_labels({**model, 'site': site})} {count}" for site, count in exits)
        _header(lines, "apparate_exit_share", "gauge", "Share of released results by exit site, since start.")
        lines.extend(
            f"apparate_exit_share{_labels({**model, 'site': site})} {_num(count / total)}" for site, count in exits
        )

    def _render_engine(self, lines: list[str], model: dict[str, str]) -> None:
        gauges = dict(self._engine_gauges()) if self._engine_gauges is not None else {}
        scalars = (
            ("queue_depth", "apparate_queue_depth", "gauge", "Requests waiting in the engine's queue."),
            ("batches", "apparate_batches_total", "counter", "Batches the engine ran."),
            (
                "unsplit_batches",
                "apparate_unsplit_batches_total",
                "counter",
                "Batches run on the unsplit model, without ramps, because a full batch was waiting (overload fallback).",
            ),
            ("refused", "apparate_refused_total", "counter", "Samples refused because the queue was full."),
            ("expired", "apparate_expired_total", "counter", "Samples dropped after waiting past their timeout."),
            (
                "window_accuracy",
                "apparate_window_accuracy",
                "gauge",
                "The controller's accuracy over its feedback window (0..1).",
            ),
            (
                "released_rows",
                "apparate_released_rows_total",
                "counter",
                "Rows a ramp released early (batch feedback; overload-fallback batches excluded).",
            ),
            (
                "audited_rows",
                "apparate_audited_rows_total",
                "counter",
                "Skip mode: released rows that ran on to the end as the audit sample.",
            ),
            (
                "skipped_rows",
                "apparate_skipped_rows_total",
                "counter",
                "Skip mode: released rows that left the batch at their ramp (no final result).",
            ),
            (
                "compute_saved_s",
                "apparate_compute_saved_seconds_total",
                "counter",
                "Skip mode: segment time the skipped rows did not cost, from the profile, seconds.",
            ),
            (
                "audit_rate",
                "apparate_audit_rate",
                "gauge",
                "Skip mode: probability that a released row runs on to the end as feedback.",
            ),
        )
        for key, name, kind, text in scalars:
            value = gauges.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _header(lines, name, kind, text)
                lines.append(f"{name}{_labels(model)} {_num(float(value))}")
        active = gauges.get("active_sites")
        if active is not None:
            _header(lines, "apparate_active_ramps", "gauge", "Ramps active now.")
            lines.append(f"apparate_active_ramps{_labels(model)} {len(active)}")
        thresholds = gauges.get("thresholds") or {}
        _header(lines, "apparate_threshold", "gauge", "Exit threshold of each active ramp (0: never exits).")
        for site, value in sorted(thresholds.items()):
            lines.append(f"apparate_threshold{_labels({**model, 'site': str(site)})} {_num(float(value))}")


def _header(lines: list[str], name: str, kind: str, text: str) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")


def engine_gauges(engine: Any) -> dict[str, Any]:
    """The engine's current gauges: ``Engine.stats()`` plus the controller's window accuracy."""
    stats: dict[str, Any] = dict(engine.stats()) if hasattr(engine, "stats") else {}
    if isinstance(stats.get("compute_saved_ms"), (int, float)):
        stats["compute_saved_s"] = float(stats["compute_saved_ms"]) / 1000.0
    if "window_accuracy" not in stats:
        controller = getattr(engine, "controller", None)
        last = controller.last_observation if controller is not None else None  # O(1): no history copy
        value = last.get("window_accuracy") if last else None
        if value is not None:
            stats["window_accuracy"] = value
    return stats
