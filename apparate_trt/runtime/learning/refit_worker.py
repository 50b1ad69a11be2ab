"""Refit one ramp head in a separate, low-priority process (the runtime's ramp learning).

Training a head takes torch about a second of CPU and holds the GIL while it does; in the serving
process that would stall the batch thread. So, as plan builds do (``runtime.split_worker``), the
learner writes a job directory and runs this module as a niced child process (optionally held
stopped while a batch runs by an :class:`~apparate_trt.runtime.split_worker.IdleGate`):

    python -m apparate_trt.runtime.learning.refit_worker JOB_DIR

``JOB_DIR/job.json`` names the ramp's kind, its current ONNX file, the target disagreement, the
least gain and the seed; ``JOB_DIR/samples.npz`` holds ``features``, ``probs``, ``weights`` and
``heldout`` (:mod:`.reservoir`). The worker refits (:func:`apparate_trt.ramps.refit.refit_head`),
writes ``JOB_DIR/ramp.onnx`` (the current graph with the new head) when the new head is accepted,
and prints one JSON line: :meth:`RefitResult.summary` plus ``file`` (or null). Exit status 3: torch
is missing (the ``train`` extra); 2: the job is unusable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apparate_trt.errors import ApparateError, MissingExtraError

NICE_INCREMENT = 10
"""How much lower the worker's CPU priority is than the server's."""
JOB_FILE = "job.json"
SAMPLES_FILE = "samples.npz"
OUTPUT_FILE = "ramp.onnx"
EXIT_NO_TORCH = 3


def write_job(job_dir: Path, job: dict, features: np.ndarray, probs: np.ndarray, weights, heldout) -> None:
    """Write a job for the worker: ``job`` (kind, ramp_file, target, min_gain, seed) and the samples."""
    job_dir.mkdir(parents=True, exist_ok=True)
    np.savez(job_dir / SAMPLES_FILE, features=features, probs=probs, weights=weights, heldout=heldout)
    (job_dir / JOB_FILE).write_text(json.dumps(job))


def run_job(job_dir: Path, threads: int = 1) -> dict:
    """Refit as the job says; write the new ramp graph if accepted; return the summary."""
    import onnx

    from apparate_trt._optional import require
    from apparate_trt.ramps.model import head_weights, with_head_weights
    from apparate_trt.ramps.refit import refit_head

    torch = require("torch", extra="train", purpose="ramp refits")
    torch.set_num_threads(max(1, int(threads)))
    job = json.loads((job_dir / JOB_FILE).read_text())
    with np.load(job_dir / SAMPLES_FILE, allow_pickle=False) as npz:
        features, probs, weights, heldout = (npz[k] for k in ("features", "probs", "weights", "heldout"))
    model = onnx.load(str(job["ramp_file"]))
    result = refit_head(
        job["kind"],
        head_weights(model, job["kind"]),
        features,
        probs,
        float(job["target"]),
        weights=weights,
        heldout=heldout,
        min_gain=float(job["min_gain"]),
        seed=int(job["seed"]),
    )
    summary = result.summary()
    summary["file"] = None
    if result.accepted and result.weights is not None:
        out = job_dir / OUTPUT_FILE
        onnx.save(with_head_weights(model, result.weights), str(out))
        summary["file"] = str(out)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the worker process."""
    p = argparse.ArgumentParser(
        prog="python -m apparate_trt.runtime.learning.refit_worker", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("job_dir", type=Path)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    try:
        os.nice(NICE_INCREMENT)
    except OSError:
        pass  # not allowed here: run at the server's priority
    try:
        summary = run_job(args.job_dir, args.threads)
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_TORCH
    except (ApparateError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
