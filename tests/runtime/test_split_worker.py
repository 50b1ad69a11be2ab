"""The split worker: a large model's segments are cut in a child process, exactly as in-process."""
from __future__ import annotations

import logging

import pytest

from apparate_trt.errors import ApparateError
from apparate_trt.runtime import split_worker
from apparate_trt.runtime.executor import Executor
from apparate_trt.engine_dir import Manifest

from runtime_helpers import THREADS, assert_same_output


def _noop(*_args) -> None:
    pass


def test_the_executor_splits_a_large_model_out_of_process_and_stays_exact(bert, monkeypatch):
    sites = [s.id for s in bert.manifest.sites]
    calls = []
    real = split_worker.split_out_of_process

    def recorded(manifest, active, out_dir, timeout_s=split_worker.TIMEOUT_S):
        calls.append(list(active))
        return real(manifest, active, out_dir, timeout_s)

    monkeypatch.setattr(split_worker, "OUT_OF_PROCESS_MIN_BYTES", 0)  # treat the tiny BERT as large
    monkeypatch.setattr("apparate_trt.runtime.executor.split_out_of_process", recorded)
    assert split_worker.should_split_out_of_process(bert.manifest)
    executor = Executor(bert.manifest, threads=THREADS)
    try:
        active = [sites[0], sites[-1]]  # a proper subset: not the finest split that is on disk
        executor.configure(active, [0.0, 0.0], wait=True)
        outcome = executor.run_batch(bert.batch(6), _noop)
        scratch = executor._builder._scratch_dir
        assert calls == [active] and scratch is not None and any(scratch.rglob("seg_*.onnx"))
        assert outcome.segments_ms.shape == (3,)  # two active sites (side tensors flow through the files too)
        assert_same_output(outcome.final_logits, bert.reference[:6])
    finally:
        executor.close()
    assert not scratch.exists(), "close() removes the segment files"


def test_a_failing_worker_falls_back_to_splitting_in_process(bert, monkeypatch, caplog):
    sites = [s.id for s in bert.manifest.sites]

    def failing(manifest, active, out_dir, timeout_s=0):
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
    with pytest.raises(ApparateError, match=r"split worker for sites \[0\] failed with exit status 2: error: .* is not an engine directory"):
        split_worker.split_out_of_process(manifest, [0], tmp_path / "out")
    assert not split_worker.should_split_out_of_process(bert.manifest)  # a tiny model is split in-process
    monkeypatch.setattr(split_worker.sys, "executable", "")  # Python embedded in a service: no interpreter to start
    with pytest.raises(ApparateError, match="no Python interpreter"):
        split_worker.split_out_of_process(bert.manifest, [0], tmp_path / "out2")
