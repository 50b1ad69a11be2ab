"""benchmarks/gpu_check.py on a machine without a GPU: it runs what it can and reports every GPU step
as not run, with why, and exits 0 (on a GPU machine it is the check itself, not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apparate_trt.backends.tensorrt import unavailable_reason

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_says_what_it_could_not_run(tmp_path):
    if unavailable_reason() is None:  # pragma: no cover - a GPU machine runs the check for real
        pytest.skip("a GPU with TensorRT is here: run benchmarks/gpu_check.py itself")
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--out", str(out), "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    steps = {s["step"]: s for s in json.loads(out.read_text())["steps"]}
    assert steps["environment"]["status"] == "ran"
    compile_step = steps["compile with TensorRT engines"]
    assert compile_step["status"] == "not run" and "TensorRT cannot build here" in compile_step["why"]
    assert steps["chain benchmark"]["status"] == "not run" and "summary:" in done.stdout
