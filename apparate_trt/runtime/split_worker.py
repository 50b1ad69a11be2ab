"""Split an engine's model at a set of active sites in a separate, low-priority process.

A ramp move needs the model split at the new active sites. Done inside the serving process, the
split (loading the model, cutting the graph, serialising each segment for ONNX Runtime) holds
Python's GIL in long, uninterruptible protobuf calls: on a 90 MB transformer that stalls the batch
thread for up to about 100 ms at a time, and queued requests pay for it. This module does that work
in a child process (``python -m apparate_trt.runtime.split_worker``, niced so that serving keeps
the cores) that writes one ONNX file per segment; the server then opens ONNX Runtime sessions from
those files, which does not hold the GIL.

Small models (below :data:`OUT_OF_PROCESS_MIN_BYTES`) are split in-process: their split takes
milliseconds, less than starting a process.

    python -m apparate_trt.runtime.split_worker ENGINE_DIR --sites 1,4 --out DIR

prints one JSON line: ``[{"file", "outputs", "ends_at_site"}, ...]`` in execution order.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from apparate_trt.engine_dir import Manifest, read_manifest
from apparate_trt.errors import ApparateError

OUT_OF_PROCESS_MIN_BYTES = 8 * 1024 * 1024
"""Models at least this large (bytes of ``model.onnx``) are split in a child process."""
NICE_INCREMENT = 10
"""How much lower the child's CPU priority is than the server's."""
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class SegmentFile:
    """One segment written by the worker: its ONNX file, output tensor names and the site it ends at."""

    file: Path
    outputs: list[str]
    ends_at_site: int | None


def split_out_of_process(manifest: Manifest, active: Sequence[int], out_dir: Path, timeout_s: float = TIMEOUT_S) -> list[SegmentFile]:
    """Run the worker on ``manifest``'s engine directory and return the segment files it wrote.

    Raises ApparateError if the worker fails (its last stderr line is in the message)."""
    if manifest.root is None:
        raise ApparateError("the manifest was not read from an engine directory; the split worker needs one")
    if not sys.executable:  # e.g. Python embedded in a C++ service: no interpreter to start
        raise ApparateError("no Python interpreter to start the split worker with (sys.executable is empty)")
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "apparate_trt.runtime.split_worker", str(manifest.root),
           "--sites", ",".join(str(int(s)) for s in active), "--out", str(out_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApparateError(f"the split worker for sites {list(active)} did not finish ({exc})") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise ApparateError(f"the split worker for sites {list(active)} failed with exit status {done.returncode}: {last}")
    try:
        rows = json.loads(done.stdout.strip().splitlines()[-1])
        return [SegmentFile(Path(r["file"]), list(r["outputs"]), r["ends_at_site"]) for r in rows]
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise ApparateError(f"the split worker for sites {list(active)} printed no segment list ({exc})") from exc


def should_split_out_of_process(manifest: Manifest) -> bool:
    """True when ``manifest``'s model is large enough to be worth a child process (and on disk)."""
    if manifest.root is None:
        return False
    try:
        return manifest.path(manifest.model.file).stat().st_size >= OUT_OF_PROCESS_MIN_BYTES
    except OSError:
        return False


def write_segments(engine_dir: Path, active: Sequence[int], out_dir: Path) -> list[dict]:
    """Split the engine's model at ``active`` and write ``seg_NNN.onnx`` files into ``out_dir``."""
    import onnx

    from apparate_trt.compiler.segments import split_model  # the compiler only in the worker process

    manifest = read_manifest(engine_dir)
    model = onnx.load(str(manifest.path(manifest.model.file)))
    rows = []
    for i, segment in enumerate(split_model(model, manifest.sites, list(active))):
        path = out_dir / f"seg_{i:03d}.onnx"
        onnx.save(segment.model, str(path))
        rows.append({"file": str(path), "outputs": list(segment.outputs), "ends_at_site": segment.ends_at_site})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the worker process."""
    p = argparse.ArgumentParser(prog="python -m apparate_trt.runtime.split_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("engine_dir", type=Path)
    p.add_argument("--sites", required=True, help="comma-separated active site ids")
    p.add_argument("--out", required=True, type=Path, help="directory for the segment files")
    args = p.parse_args(argv)
    try:
        os.nice(NICE_INCREMENT)
    except OSError:
        pass  # not allowed here: run at the server's priority
    active = [int(s) for s in args.sites.split(",") if s.strip()]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = write_segments(args.engine_dir, active, args.out)
    except (ApparateError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
