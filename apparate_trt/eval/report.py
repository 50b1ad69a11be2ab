"""The replay report: a JSON-ready dict (keys documented in docs/REPORT.md) and its stdout table.

Accuracy means agreement with the original model: a request is correct when the argmax of the
result released first (a ramp's early result, or the final one) equals the argmax of its final
result. Windows are ``window_size`` consecutive completed requests in arrival order; a window
violates the constraint when its accuracy is below ``1 - accuracy_constraint``. Times in events and
the threshold history are seconds since the replay's start (negative: before the first arrival,
e.g. the ``initial`` event at load time).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt.errors import ApparateError
from apparate_trt.eval.replay import ReplayResult

DEFAULT_WINDOW = 256
"""Requests per accuracy window (issue 4's benchmarks use windows of 256 requests)."""
MAX_EVENTS_SHOWN = 15
"""Controller events listed in the stdout table (all of them are in the JSON)."""


def latency_summary(latency_ms: np.ndarray) -> dict[str, float | None]:
    """p50, p95, p99, mean and max (ms) of the finite latencies (None when there are none)."""
    values = np.asarray(latency_ms, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


def window_accuracies(correct: np.ndarray, window_size: int) -> np.ndarray:
    """Accuracy (fraction) of each run of ``window_size`` consecutive entries of ``correct``.

    The trailing partial window is dropped, unless there is no full window: then the accuracy of
    all entries is the one window (none for an empty input).
    """
    correct = np.asarray(correct, dtype=bool)
    if window_size < 1:
        raise ApparateError(f"accuracy window must hold at least 1 request, got {window_size}")
    full = correct.shape[0] // window_size
    if full == 0:
        return np.asarray([correct.mean()]) if correct.size else np.zeros(0)
    return correct[: full * window_size].reshape(full, window_size).mean(axis=1)


def window_figures(
    result: ReplayResult, window_size: int, history: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per run of ``window_size`` consecutive requests (arrival order; a trailing partial window
    kept): its first request's index, accuracy against the model over its judged requests, early-
    exit share (fraction of its completed requests released by a ramp) and the active sites in force
    at its last request's arrival (from ``history``, the controller's records with ``t`` in seconds
    after the replay's start; [] when none). Recovery after a drift can be read off these."""
    n = result.requests
    correct = result.released_pred == result.final_pred
    done, judged = result.completed, result.judged
    times = np.asarray([float(h["t"]) for h in history], dtype=np.float64)
    out = []
    for begin in range(0, n, window_size):
        part = slice(begin, min(n, begin + window_size))
        ok, seen = done[part], judged[part]
        last = float(result.arrivals_s[part][-1])
        at = int(np.searchsorted(times, last, side="right")) - 1 if times.size else -1
        sites = history[max(at, 0)].get("active_sites", []) if times.size else []
        out.append(
            {
                "start": begin,
                "accuracy": float(correct[part][seen].mean()) if seen.any() else None,
                "exit_share": float((result.exit_site[part][ok] >= 0).mean()) if ok.any() else None,
                "active_sites": [int(x) for x in sites],
            }
        )
    return out


def exit_shares(exit_site: np.ndarray) -> dict[str, float]:
    """Share (0..1) of requests released by each ramp site (keys: site ids as text) and ``final``."""
    sites = np.asarray(exit_site)
    if sites.size == 0:
        return {"final": 0.0}
    counts = Counter(int(s) for s in sites)
    shares = {str(site): counts[site] / sites.size for site in sorted(s for s in counts if s >= 0)}
    shares["final"] = counts.get(-1, 0) / sites.size
    return shares


def throughput_rps(result: ReplayResult) -> float:
    """Completed requests per second, from the replay's start to the last final release."""
    done = result.completed
    if not done.any():
        return 0.0
    span = float(np.nanmax(result.t_final[done])) - result.t_start
    return float(done.sum() / span) if span > 0 else float("inf")


def build_report(
    result: ReplayResult,
    accuracy_constraint: float,
    window_size: int = DEFAULT_WINDOW,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of one replay as a JSON-ready dict (see docs/REPORT.md for every key)."""
    done = result.completed
    judged = result.judged
    correct = (result.released_pred == result.final_pred)[judged]
    windows = window_accuracies(correct, window_size)
    floor = 1.0 - accuracy_constraint
    history = [_relative(h, result.t_start) for h in result.threshold_history]
    lag = result.submit_lag_ms[np.isfinite(result.submit_lag_ms)]
    return {
        "mode": result.mode,
        "requests": result.requests,
        "completed": int(done.sum()),
        "failed": len(result.errors),
        "errors": _error_summary(result.errors),
        "duration_s": result.t_end - result.t_start,
        "latency_ms": latency_summary(result.latency_ms[done]),
        "final_latency_ms": latency_summary(result.final_latency_ms[done]),
        "throughput_rps": throughput_rps(result),
        "offered_rps": _offered_rate(result.arrivals_s),
        "accuracy": {
            "overall": float(correct.mean()) if correct.size else None,
            "worst_window": float(windows.min()) if windows.size else None,
            "window_size": int(window_size),
            "windows": [float(w) for w in windows],
            "constraint": float(accuracy_constraint),
            "judged": int(judged.sum()),
            "reference": "offline" if result.reference_used else "final outputs",
        },
        "exit_mode": result.exit_mode,
        "rows": _rows(result),
        "windows_violating": float(np.mean(windows < floor - 1e-12)) if windows.size else 0.0,
        "exit_share": exit_shares(result.exit_site[done]),
        "batches": {"run": result.batches, "unsplit": result.unsplit_batches, "skip_mode": result.skip_mode_batches},
        "events": [_relative(e, result.t_start) for e in result.events],
        "threshold_history": history,
        "windows": window_figures(result, window_size, history),
        "records_dropped": dict(result.records_dropped),
        "learning": dict(result.learning) if result.learning is not None else None,
        "submit_lag_ms": {
            "p99": float(np.percentile(lag, 99)) if lag.size else None,
            "max": float(lag.max()) if lag.size else None,
        },
        "settings": dict(settings or result.settings),
    }


def _rows(result: ReplayResult) -> dict[str, Any]:
    """Early releases, audits and skips (skip mode) over the replay, and the profiled compute saved."""
    rows = dict(result.rows)
    skipped = 0 if result.skipped is None else int(np.count_nonzero(result.skipped))
    return {
        "released": int(rows.get("released_rows", 0)),
        "audited": int(rows.get("audited_rows", 0)),
        "skipped": skipped,
        "compute_saved_ms": float(rows.get("compute_saved_ms", 0.0)),
    }


def _offered_rate(arrivals_s: np.ndarray) -> float | None:
    if arrivals_s.shape[0] < 2 or arrivals_s[-1] <= arrivals_s[0]:
        return None
    return float((arrivals_s.shape[0] - 1) / (arrivals_s[-1] - arrivals_s[0]))


def _error_summary(errors: Mapping[int, str]) -> dict[str, int]:
    """Distinct error messages and how many requests each one hit."""
    return dict(Counter(errors.values()).most_common())


def _relative(entry: Mapping[str, Any], t_start: float) -> dict[str, Any]:
    out = dict(entry)
    out["t"] = round(float(entry["t"]) - t_start, 6)
    return out


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON (NaN and inf become null)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_json_safe(report), indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ApparateError(f"cannot write the report to '{path}' ({exc}); pass a writable --report path") from None
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


# ------------------------------------------------------------------------------ text
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f}%"


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a short text table for stdout."""
    lat, acc = report["latency_ms"], report["accuracy"]
    shares = "  ".join(
        f"{'final' if k == 'final' else 'site ' + k}: {_pct(v, 1)}" for k, v in report["exit_share"].items()
    )
    kinds = Counter(e["kind"] for e in report["events"])
    lines = [
        f"mode {report['mode']}: {report['requests']} requests, {report['completed']} completed, "
        f"{report['failed']} failed",
        f"  latency ms      p50 {_ms(lat['p50'])}   p95 {_ms(lat['p95'])}   p99 {_ms(lat['p99'])}   (first release "
        f"- arrival)",
        f"  throughput      {report['throughput_rps']:.1f} req/s",
        f"  accuracy        overall {_pct(acc['overall'])}   worst window {_pct(acc['worst_window'])} "
        f"(windows of {acc['window_size']})   windows below {_pct(1 - acc['constraint'], 1)}: "
        f"{_pct(report['windows_violating'], 1)}",
        f"  exit share      {shares}",
    ]
    rows = report.get("rows") or {}
    if report.get("exit_mode") in ("skip", "auto"):
        lines.append(
            f"  skip mode       {rows.get('released', 0)} released early: {rows.get('skipped', 0)} left the batch, "
            f"{rows.get('audited', 0)} audited to the end; {rows.get('compute_saved_ms', 0.0):.0f} ms of segment "
            f"time saved "
            f"(profile); accuracy judged on {acc.get('judged', '-')} requests ({acc.get('reference', 'final outputs')})"
        )
    batches = report.get("batches") or {}
    if batches.get("run"):
        line = (
            f"  batches         {batches['run']} run, {batches['unsplit']} unsplit (overload fallback: a full "
            f"batch was waiting)"
        )
        if report.get("exit_mode") == "auto":
            line += f", {batches.get('skip_mode', 0)} in skip mode (a request waited behind them)"
        lines.append(line)
    for message, count in report.get("errors", {}).items():
        lines.append(f"  failed          {count} x {message}")
    if report["events"]:
        summary = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
        lines.append(f"  controller      {len(report['events'])} events: {summary}")
        changing = [e for e in report["events"] if not _changed_nothing(e)]
        shown = _events_to_show(changing)
        for event in shown:
            change = describe_change(event)
            lines.append(
                f"    t={event['t']:8.2f}s  {event['kind']:<11} {event['reason']}{': ' + change if change else ''}"
            )
        quiet = len(report["events"]) - len(changing)
        more = len(changing) - len(shown)
        if quiet or more:
            parts = ([f"{more} more"] if more else []) + ([f"{quiet} tunes that changed no threshold"] if quiet else [])
            lines.append(f"    ... {' and '.join(parts)} (all of them in the JSON report)")
    learning = report.get("learning")
    if learning:
        lines.append(f"  ramp learning   {describe_learning(learning)}")
    dropped = report.get("records_dropped") or {}
    if dropped:
        lines.append(
            "  controller      its bounded logs dropped older records: "
            + ", ".join(f"{count} {name}" for name, count in dropped.items())
            + " (load with eval.replay.replay_controller_options(requests) to keep them)"
        )
    return "\n".join(lines)


def describe_learning(learning: Mapping[str, Any]) -> str:
    """The ramp learner's figures in one line: refits run and accepted, time spent, reservoir size."""
    if learning.get("status") != "on":
        return f"off: {learning.get('status')}"
    last = learning.get("last_refit_s")
    last_text = f", the last {last:.1f} s" if last is not None else ""
    return (
        f"{learning.get('refits', 0)} refits, {learning.get('refits_accepted', 0)} accepted; "
        f"{learning.get('refit_seconds', 0.0):.1f} s refitting (wall, paused time included{last_text}); "
        f"reservoirs {learning.get('reservoir_samples', 0)} samples, "
        f"{learning.get('reservoir_bytes', 0) / 2**20:.1f} MiB"
    )


def _threshold_changes(event: Mapping[str, Any]) -> list[str]:
    old, new = event.get("old_thresholds") or [], event.get("thresholds") or []
    sites = event.get("active_sites") or []
    return [f"site {s} {a:.4g} -> {b:.4g}" for s, a, b in zip(sites, old, new) if abs(a - b) > 1e-12]


def _changed_nothing(event: Mapping[str, Any]) -> bool:
    """A tune whose thresholds all stayed as they were."""
    return event.get("kind") == "tune" and "old_thresholds" in event and not _threshold_changes(event)


def describe_change(event: Mapping[str, Any]) -> str:
    """What a controller event changed, in a few words: the thresholds a tune moved, the active
    sites a ramp change left, an initial configuration's thresholds (empty when nothing to add)."""
    kind = event.get("kind")
    if kind == "tune":
        return ", ".join(_threshold_changes(event))
    if kind == "emergency" and "old_threshold" in event:
        return f"site {event.get('site')} {event['old_threshold']:.4g} -> 0"
    if kind in ("add_ramp", "remove_ramp") and event.get("active_sites") is not None:
        return f"active sites now {list(event['active_sites'])}"
    if kind == "initial" and event.get("thresholds"):
        return "thresholds " + ", ".join(f"{t:.4g}" for t in event["thresholds"])
    return ""


def _events_to_show(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every event but periodic tunes first, then the earliest, up to MAX_EVENTS_SHOWN, in time order."""
    ranked = sorted(range(len(events)), key=lambda i: ("periodic" in events[i]["reason"], i))
    keep = sorted(ranked[:MAX_EVENTS_SHOWN])
    return [events[i] for i in keep]


def comparison_table(reports: Mapping[str, Mapping[str, Any]], baseline: str = "vanilla") -> str:
    """A Markdown table of several reports side by side; latency ratios are against ``baseline``."""
    base = reports.get(baseline)
    header = (
        "| system | p50 ms | p95 ms | p99 ms | p50 vs base | throughput req/s | accuracy | worst window | "
        "windows violating |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, rep in reports.items():
        lat, acc = rep["latency_ms"], rep["accuracy"]
        ratio = "-"
        if base is not None and base["latency_ms"]["p50"] and lat["p50"] is not None:
            ratio = f"{lat['p50'] / base['latency_ms']['p50']:.2f}x"
        lines.append(
            f"| {name} | {_ms(lat['p50'])} | {_ms(lat['p95'])} | {_ms(lat['p99'])} | {ratio} | "
            f"{rep['throughput_rps']:.1f} | {_pct(acc['overall'])} | {_pct(acc['worst_window'])} | "
            f"{_pct(rep['windows_violating'], 1)} |"
        )
    return "\n".join(lines)
