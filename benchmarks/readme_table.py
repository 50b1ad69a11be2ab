"""Print the compact Markdown table of the top-level README from benchmark summaries.

    python benchmarks/readme_table.py benchmarks/results/summary.json benchmarks/results/nlp/summary.json

One row per workload and system: p50 / p99 latency (ms) and p50 against vanilla, saturation
throughput against vanilla, accuracy against the original model, share of 256-request windows
breaking the 1% constraint, and the share of requests released early. Every number is read from
the summaries that ``benchmarks/run_workloads.py`` wrote; nothing is computed anew.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(summary: dict) -> list[str]:
    """Markdown rows for every workload and system of one summary.json."""
    out = []
    for workload, systems in summary.items():
        if workload.startswith("_"):
            continue
        for system, s in systems.items():
            early = 1.0 - float(s.get("exit_share", {}).get("final", 1.0))
            out.append(
                f"| {workload} | {system} | {s['latency_ms']['p50']:.2f} | {s['latency_ms']['p99']:.1f} | "
                f"{s['latency_vs_vanilla']['p50']:.2f}x | {s['throughput_vs_vanilla']:.2f}x | "
                f"{100 * s['accuracy']['overall']:.2f}% | {100 * s['accuracy']['windows_violating']:.1f}% | {100 * early:.1f}% |"
            )
    return out


def main(paths: list[str]) -> int:
    print("| workload | system | p50 ms | p99 ms | p50 vs vanilla | throughput vs vanilla | accuracy | windows > 1% | early exits |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        for row in rows(json.loads(Path(path).read_text(encoding="utf-8"))):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["benchmarks/results/summary.json"]))
