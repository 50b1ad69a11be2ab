"""The split worker: a large model's segments are cut in a child process, exactly as in-process."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from runtime_helpers import THREADS, assert_same_output

from apparate_trt.engine_dir import Manifest
from apparate_trt.errors import ApparateError
from apparate_trt.runtime import split_worker
from apparate_trt.runtime.executor import Executor


def _noop(*_args) -> None:
    pass


def test_the_executor_splits_a_large_model_out_of_process_and_stays_exact(bert, monkeypatch):
    sites = [s.id for s in bert.manifest.sites]
    calls = []
    real = split_worker.split_out_of_process

    def recorded(manifest, active, out_dir, timeout_s=split_worker.TIMEOUT_S, gate=None):
        calls.append((list(active), gate))
        return real(manifest, active, out_dir, timeout_s, gate)

    monkeypatch.setattr(split_worker, "OUT_OF_PROCESS_MIN_BYTES", 0)  # treat the tiny BERT as large
    monkeypatch.setattr("apparate_trt.runtime.executor.split_out_of_process", recorded)
    assert split_worker.should_split_out_of_process(bert.manifest)
    executor = Executor(bert.manifest, threads=THREADS)
    try:
        active = [sites[0], sites[-1]]  # a proper subset: not the finest split that is on disk
        executor.configure(active, [0.0, 0.0], wait=True)
        outcome = executor.run_batch(bert.batch(6), _noop)
        scratch = executor._builder._scratch_dir
        assert calls == [(active, executor._builder.gate)] and scratch is not None and any(scratch.rglob("seg_*.onnx"))
        assert outcome.segments_ms.shape == (3,)  # two active sites (side tensors flow through the files too)
        assert_same_output(outcome.final_logits, bert.reference[:6])
    finally:
        executor.close()
    assert not scratch.exists(), "close() removes the segment files"


def test_a_failing_worker_falls_back_to_splitting_in_process(bert, monkeypatch, caplog):
    sites = [s.id for s in bert.manifest.sites]

    def failing(manifest, active, out_dir, timeout_s=0, gate=None):
        raise ApparateError("the split worker for sites [0] failed with exit status 1: boom")

    monkeypatch.setattr(split_worker, "OUT_OF_PROCESS_MIN_BYTES", 0)
    monkeypatch.setattr("apparate_trt.runtime.executor.split_out_of_process", failing)
    executor = Executor(bert.manifest, threads=THREADS)
    try:
        with caplog.at_level(logging.WARNING):
            executor.configure([sites[0], sites[-1]], [0.0, 0.0], wait=True)
        assert "splitting in this process instead" in caplog.text and "boom" in caplog.text
        assert_same_output(executor.run_batch(bert.batch(4), _noop).final_logits, bert.reference[:4])
    finally:
        executor.close()


def test_worker_errors_say_what_failed(bert, tmp_path, monkeypatch):
    not_an_engine = tmp_path / "empty"
    not_an_engine.mkdir()
    manifest = Manifest.__new__(Manifest)
    manifest.root = not_an_engine
    with pytest.raises(
        ApparateError,
        match=r"split worker for sites \[0\] failed with exit status 2: error: .* is not an engine directory",
    ):
        split_worker.split_out_of_process(manifest, [0], tmp_path / "out")
    assert not split_worker.should_split_out_of_process(bert.manifest)  # a tiny model is split in-process
    monkeypatch.setattr(split_worker.sys, "executable", "")  # Python embedded in a service: no interpreter to start
    with pytest.raises(ApparateError, match="no Python interpreter"):
        split_worker.split_out_of_process(bert.manifest, [0], tmp_path / "out2")


def _state(pid: int) -> str:
    """The process state letter of ``pid`` (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _becomes(pid: int, stopped: bool, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (_state(pid) == "T") == stopped:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_the_gate_stops_a_held_worker_while_a_batch_runs():
    gate = split_worker.IdleGate()
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.005)"])
    try:
        with gate.holding(proc):
            gate.batch_started()
            assert _becomes(proc.pid, stopped=True)
            gate.batch_finished()
            assert _becomes(proc.pid, stopped=False)
            gate.batch_started()
            assert _becomes(proc.pid, stopped=True)
        assert _becomes(proc.pid, stopped=False)  # released from the gate: it runs even mid-batch
        gate.batch_finished()
        gate.batch_started()
        assert _becomes(proc.pid, stopped=False)  # no longer held
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_disabled_gate_lets_a_held_worker_run_through_batches():
    gate = split_worker.IdleGate()
    gate.enabled = False
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.005)"])
    try:
        with gate.holding(proc):
            gate.batch_started()
            time.sleep(0.2)
            assert _becomes(proc.pid, stopped=False)
            gate.batch_finished()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_split_waits_for_the_batches_to_end(bert, tmp_path):
    gate = split_worker.IdleGate()
    gate.batch_started()  # a batch "runs" the whole time: the worker gets no time at all
    with pytest.raises(ApparateError, match="did not finish"):
        split_worker.split_out_of_process(bert.manifest, [0], tmp_path / "busy", timeout_s=3.0, gate=gate)
    threading.Timer(1.0, gate.batch_finished).start()  # the batch ends after a second
    t0 = time.monotonic()
    files = split_worker.split_out_of_process(bert.manifest, [0], tmp_path / "idle", timeout_s=60.0, gate=gate)
    assert time.monotonic() - t0 >= 1.0 and len(files) == 2 and all(f.file.is_file() for f in files)
