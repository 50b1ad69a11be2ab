"""PNG plots of replays (``apparate-run --plot DIR``): a latency CDF and the controller's timeline.

matplotlib is optional (the ``plot`` extra) and imported only here, lazily, with the Agg backend
(no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt._optional import require
from apparate_trt.errors import ApparateError


def ensure_matplotlib() -> None:
    """Raise MissingExtraError now (before a long replay) if matplotlib is not installed."""
    _pyplot()


def _pyplot() -> Any:
    matplotlib = require("matplotlib", extra="plot", purpose="--plot (latency CDF and timeline PNGs)")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _output_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ApparateError(
            f"cannot create the plot directory '{directory}' ({exc}); pass a writable --plot DIR"
        ) from None
    return directory


def plot_latency_cdf(latencies_ms: Mapping[str, np.ndarray], path: str | Path, title: str = "Latency CDF") -> Path:
    """One CDF curve (ms, log x axis) per labelled run, with its median marked; writes ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in latencies_ms.items():
        v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
        if v.size == 0:
            continue
        ax.plot(v, np.arange(1, v.size + 1) / v.size, label=f"{label} (p50 {np.median(v):.2f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms): first release - arrival")
    ax.set_ylabel("share of requests")
    ax.set_ylim(0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_timeline(report: Mapping[str, Any], path: str | Path, arrivals_s: np.ndarray | None = None) -> Path:
    """Thresholds per site, active ramps and window accuracy over time (seconds since the start).

    Accuracy shows the controller's window accuracy (current thresholds on its feedback window) and,
    when ``arrivals_s`` (per completed request, arrival order) is given, the served requests'
    accuracy per report window, placed at the arrival of each window's last request.
    """
    plt = _pyplot()
    history = report.get("threshold_history", [])
    fig, (ax_thr, ax_sites, ax_acc) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    times = np.asarray([h["t"] for h in history], dtype=np.float64)
    sites = sorted({s for h in history for s in h["active_sites"]})
    for site in sites:
        thr = np.asarray([dict(zip(h["active_sites"], h["thresholds"])).get(site, np.nan) for h in history])
        ax_thr.step(times, thr, where="post", label=f"site {site}")
        active = np.where(np.isnan(thr), np.nan, site)
        ax_sites.plot(times, active, linewidth=6, solid_capstyle="butt")
    ax_thr.set_ylabel("threshold (1 - conf <)")
    if sites:
        ax_thr.legend(loc="upper right", fontsize=8, ncol=min(4, len(sites)))
    ax_sites.set_ylabel("active ramp sites")
    ax_sites.set_yticks(sites or [0])
    constraint = report["accuracy"]["constraint"]
    if history:
        ax_acc.plot(times, [h["window_accuracy"] for h in history], label="controller window (feedback)", alpha=0.8)
    windows = report["accuracy"].get("windows", [])
    size = report["accuracy"]["window_size"]
    if arrivals_s is not None and windows:
        ends = np.asarray(arrivals_s)[np.minimum(np.arange(1, len(windows) + 1) * size, len(arrivals_s)) - 1]
        ax_acc.plot(ends, windows, "o-", markersize=3, label=f"served requests (windows of {size})")
    ax_acc.axhline(
        1.0 - constraint, color="red", linestyle="--", linewidth=1, label=f"1 - constraint ({1 - constraint:.3f})"
    )
    ax_acc.set_ylabel("accuracy vs original")
    ax_acc.set_xlabel("time since start (s)")
    ax_acc.legend(loc="lower left", fontsize=8)
    for event in report.get("events", []):
        if event["kind"] in ("emergency", "remove_ramp", "add_ramp"):
            color = {"emergency": "red", "remove_ramp": "gray", "add_ramp": "green"}[event["kind"]]
            for ax in (ax_thr, ax_sites, ax_acc):
                ax.axvline(event["t"], color=color, alpha=0.3, linewidth=1)
    for ax in (ax_thr, ax_sites, ax_acc):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"controller timeline ({report['mode']}; events: red emergency, gray remove, green add)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_plots(
    directory: str | Path, report: Mapping[str, Any], latency_ms: np.ndarray, arrivals_s: np.ndarray | None = None
) -> list[Path]:
    """Write ``latency_cdf.png`` and ``timeline.png`` into ``directory``; return their paths."""
    out = _output_dir(directory)
    return [
        plot_latency_cdf({report["mode"]: latency_ms}, out / "latency_cdf.png"),
        plot_timeline(report, out / "timeline.png", arrivals_s),
    ]
