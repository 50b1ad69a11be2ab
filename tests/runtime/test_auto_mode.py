"""Exit mode ``auto``: a batch runs in skip mode while requests wait behind it, in release mode otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import THREADS
from test_api import FixedController
from test_skip_mode import Calls

from apparate_trt.cli.run import main
from apparate_trt.runtime.api import load
from apparate_trt.runtime.compaction import AUTO_SKIP_QUEUE_DEPTH, compacts, skips_batch
from apparate_trt.runtime.executor import Executor

WAIT_S = 60.0


def test_only_auto_decides_per_batch_and_only_on_a_waiting_request():
    assert AUTO_SKIP_QUEUE_DEPTH == 1
    assert skips_batch("skip", 0) and skips_batch("skip", 5)
    assert not skips_batch("release", 0) and not skips_batch("release", 100)
    assert not skips_batch("auto", 0) and skips_batch("auto", 1) and skips_batch("auto", 40)
    assert compacts("skip") and compacts("auto") and not compacts("release")


def test_an_auto_executor_compacts_only_the_batches_marked_skip(resnet):
    first = resnet.manifest.sites[0].id
    executor = Executor(resnet.manifest, threads=THREADS, exit_mode="auto", audit_seed=3)
    try:
        executor.configure([first], [1.0], wait=True)  # every row exits at the first ramp
        executor.set_audit_rate(0.25)
        batch = resnet.batch(8)
        released = executor.run_batch(batch, Calls())
        skipped = executor.run_batch(batch, Calls(), skip=True)
    finally:
        executor.close()
    assert released.skipped is None and (released.final_pred >= 0).all(), "unmarked: every row runs on"
    assert skipped.skipped is not None and 0 < skipped.skipped_count < 8, "marked: released rows leave"


def _auto_engine(resnet):
    first = resnet.manifest.sites[0].id
    engine = load(resnet.engine_dir, threads=THREADS, exit_mode="auto", max_batch=4, max_delay_ms=2.0, audit_rate=0.05)
    engine.executor.configure([first], [1.0], wait=True)
    engine.controller = FixedController(None)
    engine.controller.audit_rate = 0.05  # the engine sets the executor's after every batch
    engine.executor.set_audit_rate(0.05)
    return engine


def test_an_auto_engine_releases_when_idle_and_skips_under_a_backlog(resnet):
    engine = _auto_engine(resnet)
    try:
        assert engine.exit_mode == "auto" and engine.overload_fallback is False, "auto sheds like skip"
        for i in range(6):  # one at a time: nothing waits behind any batch
            assert engine.submit(resnet.sample(i)).final.result(WAIT_S).is_final
        idle = engine.stats()
        handles = [engine.submit(resnet.sample(i % 24)) for i in range(48)]  # a burst: 44 wait behind the first
        finals = [h.final.result(WAIT_S) for h in handles]
    finally:
        engine.close()
    assert idle["skip_mode_batches"] == 0 and idle["skipped_rows"] == 0
    stats = engine.stats()
    assert stats["skip_mode_batches"] > 0 and stats["skipped_rows"] == sum(f.skipped for f in finals) > 0
    assert stats["audit_rate"] == pytest.approx(0.05)


def test_apparate_run_replays_in_auto_mode_and_reports_its_skip_mode_batches(tiny_resnet_engine, tmp_path, capsys):
    import json

    engine_dir, eval_npz = tiny_resnet_engine
    report = tmp_path / "report.json"
    args = ["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--exit-mode", "auto", "--quiet"]
    assert main([*args, "--arrivals", "fixed:100000", "--limit", "48", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "in skip mode (a request waited behind them)" in out
    data = json.loads(report.read_text())
    assert data["exit_mode"] == "auto" and data["settings"]["exit_mode"] == "auto"
    assert 0 < data["batches"]["skip_mode"] <= data["batches"]["run"], "48 requests in 0.5 ms: a backlog"
    assert np.isfinite(data["latency_ms"]["p50"])
