"""Print the compact Markdown table of the top-level README from benchmark summaries.

    python benchmarks/readme_table.py [--systems vanilla,apparate,...] [SUMMARY.json ...]

One row per workload and system: p50 / p99 latency (ms) and p50 against vanilla, saturation
throughput against vanilla, accuracy against the original model, share of 256-request windows
breaking the 1% constraint, the share of requests released early, and the share that left the
batch at their ramp (exit mode skip). Every number is read from
the summaries that ``benchmarks/run_workloads.py`` wrote; nothing is computed anew. Where several
summaries hold the same workload, the last one given wins (e.g. a full-stream rerun of one
workload).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def merged_workloads(paths: list[str]) -> dict[str, dict[str, Any]]:
    """{workload: {system: summary}} over the given summary.json files, later files winning."""
    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        for workload, systems in json.loads(Path(path).read_text(encoding="utf-8")).items():
            if not workload.startswith("_"):
                merged[workload] = systems
    return merged


def row(workload: str, system: str, s: dict[str, Any]) -> str:
    """One Markdown row."""
    early = 1.0 - float(s.get("exit_share", {}).get("final", 1.0))
    skipped = float((s.get("rows") or {}).get("skipped") or 0.0)
    return (
        f"| {workload} | {system} | {s['latency_ms']['p50']:.2f} | {s['latency_ms']['p99']:.1f} | "
        f"{s['latency_vs_vanilla']['p50']:.2f}x | {s['throughput_vs_vanilla']:.2f}x | "
        f"{100 * s['accuracy']['overall']:.2f}% | {100 * s['accuracy']['windows_violating']:.1f}% | "
        f"{100 * early:.1f}% | {100 * skipped:.1f}% |"
    )


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Print the README's Markdown table from benchmark summaries.")
    parser.add_argument("summaries", nargs="*", default=["benchmarks/results/summary.json"], help="summary.json files")
    parser.add_argument("--systems", default=None, help="comma-separated systems to show (default: all)")
    args = parser.parse_args(argv)
    wanted = None if args.systems is None else set(args.systems.split(","))
    print(
        "| workload | system | p50 ms | p99 ms | p50 vs vanilla | saturation throughput vs vanilla | accuracy "
        "| windows > 1% | early exits | left the batch |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workload, systems in merged_workloads(args.summaries).items():
        for system, s in systems.items():
            if wanted is None or system in wanted:
                print(row(workload, system, s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
