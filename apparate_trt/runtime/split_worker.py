"""Split an engine's model at a set of active sites in a separate, low-priority process.

A ramp move needs the model split at the new active sites. Done inside the serving process, the
split (loading the model, cutting the graph, serialising each segment for ONNX Runtime) holds
Python's GIL in long, uninterruptible protobuf calls: on a 90 MB transformer that stalls the batch
thread for up to about 100 ms at a time, and queued requests pay for it. This module does that work
in a child process (``python -m apparate_trt.runtime.split_worker``, niced) that writes one ONNX
file per segment; the server then opens ONNX Runtime sessions from those files, which does not hold
the GIL.

A lower CPU priority is not enough: the worker streams the whole model through memory, and a
memory-bound model served beside it slows down anyway. So the executor holds the worker stopped
while a batch runs (:class:`IdleGate`: SIGSTOP when a batch starts, SIGCONT when it ends): the split
uses only the time between batches. Under saturation that time is short and the split waits; the
engine's overload fallback serves unsplit meanwhile. ``benchmarks/bench_plan_builds.py`` measures
what the gate buys: the median and p99 latency of the MiniLM model served at half load while plans
are rebuilt back to back, with and without it (``benchmarks/results/plan_builds.json``).

Small models (below :data:`OUT_OF_PROCESS_MIN_BYTES`) are split in-process: their split takes
milliseconds, less than starting a process.

    python -m apparate_trt.runtime.split_worker ENGINE_DIR --sites 1,4 --out DIR

prints one JSON line: ``[{"file", "outputs", "ends_at_site"}, ...]`` in execution order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from apparate_trt.engine_dir import Manifest, read_manifest
from apparate_trt.errors import ApparateError

OUT_OF_PROCESS_MIN_BYTES = 8 * 1024 * 1024
"""Models at least this large (bytes of ``model.onnx``) are split in a child process."""
NICE_INCREMENT = 10
"""How much lower the child's CPU priority is than the server's."""
TIMEOUT_S = 600.0
"""Wall-clock seconds a split may take, stopped time included."""
_STOP = getattr(signal, "SIGSTOP", None)  # None where processes cannot be stopped (Windows)
_CONT = getattr(signal, "SIGCONT", None)


class IdleGate:
    """Keeps background worker processes stopped while a batch runs (POSIX SIGSTOP / SIGCONT).

    The batch thread calls :meth:`batch_started` and :meth:`batch_finished` around each batch; a
    worker runs inside :meth:`holding`. Where processes cannot be stopped (no SIGSTOP), the gate
    does nothing and workers run at their (niced) priority.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pids: set[int] = set()
        self._busy = 0
        self.enabled = True
        """False: batches no longer stop the workers (an ablation; a worker already stopped is let go
        at the next :meth:`batch_finished`)."""

    def batch_started(self) -> None:
        """A batch is about to run: stop every held worker."""
        if not self.enabled:
            return
        with self._lock:
            self._busy += 1
            if self._busy == 1:
                self._signal_all(_STOP)

    def batch_finished(self) -> None:
        """The batch ended: let the held workers run until the next one."""
        with self._lock:
            self._busy = max(0, self._busy - 1)
            if self._busy == 0:
                self._signal_all(_CONT)

    @contextmanager
    def holding(self, proc: subprocess.Popen):
        """Hold the worker ``proc`` under the gate for the ``with`` block; if it still runs after,
        it is left running (a reaped process is not signalled: its pid may be reused)."""
        with self._lock:
            self._pids.add(proc.pid)
            if self._busy:
                self._send(proc.pid, _STOP)
        try:
            yield
        finally:
            with self._lock:
                self._pids.discard(proc.pid)
                if proc.poll() is None:
                    self._send(proc.pid, _CONT)

    def _signal_all(self, sig: signal.Signals | None) -> None:
        for pid in self._pids:
            self._send(pid, sig)

    @staticmethod
    def _send(pid: int, sig: signal.Signals | None) -> None:
        if sig is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # it has just exited


@dataclass(frozen=True)
class SegmentFile:
    """One segment written by the worker: its ONNX file, output tensor names and the site it ends at."""

    file: Path
    outputs: list[str]
    ends_at_site: int | None


def split_out_of_process(
    manifest: Manifest, active: Sequence[int], out_dir: Path, timeout_s: float = TIMEOUT_S, gate: IdleGate | None = None
) -> list[SegmentFile]:
    """Run the worker on ``manifest``'s engine directory and return the segment files it wrote.

    ``gate``: the executor's :class:`IdleGate`, which stops the worker while batches run (None:
    it runs freely). Raises ApparateError if the worker fails (its last stderr line is in the
    message) or takes over ``timeout_s`` seconds."""
    if manifest.root is None:
        raise ApparateError("the manifest was not read from an engine directory; the split worker needs one")
    if not sys.executable:  # e.g. Python embedded in a C++ service: no interpreter to start
        raise ApparateError("no Python interpreter to start the split worker with (sys.executable is empty)")
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "apparate_trt.runtime.split_worker",
        str(manifest.root),
        "--sites",
        ",".join(str(int(s)) for s in active),
        "--out",
        str(out_dir),
    ]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise ApparateError(f"the split worker for sites {list(active)} did not start ({exc})") from exc
    try:
        with gate.holding(proc) if gate is not None else nullcontext():
            stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise ApparateError(f"the split worker for sites {list(active)} did not finish ({exc})") from exc
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["no error output"])[-1]
        raise ApparateError(
            f"the split worker for sites {list(active)} failed with exit status {proc.returncode}: {last}"
        )
    try:
        rows = json.loads(stdout.strip().splitlines()[-1])
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

    from apparate_trt.graph.split import split_model  # ONNX splitting only in the worker process

    manifest = read_manifest(engine_dir, verify=False)  # the serving process checked every file at load
    model = onnx.load(str(manifest.path(manifest.model.file)))
    rows = []
    for i, segment in enumerate(split_model(model, manifest.sites, list(active))):
        path = out_dir / f"seg_{i:03d}.onnx"
        onnx.save(segment.model, str(path))
        rows.append({"file": str(path), "outputs": list(segment.outputs), "ends_at_site": segment.ends_at_site})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the worker process."""
    p = argparse.ArgumentParser(
        prog="python -m apparate_trt.runtime.split_worker", description=__doc__.split("\n\n")[0]
    )
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
