"""Skip mode in the executor: released rows leave the batch, audited rows reach the end."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import THREADS, assert_same_output, reference_ramp_logits, trace_runs

from apparate_trt.errors import ApparateError
from apparate_trt.runtime import serving_backend as serving_backend_module
from apparate_trt.runtime.compaction import compact, draw_audits
from apparate_trt.runtime.executor import Executor


class Calls:
    """Every on_release call: (index, row, pred, site, last)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, np.ndarray, int, int | None, bool]] = []

    def __call__(self, index, row, pred, site, t_release, last=False) -> None:
        self.calls.append((index, np.array(row), pred, site, last))

    def of(self, index: int) -> list[tuple[int, np.ndarray, int, int | None, bool]]:
        return [c for c in self.calls if c[0] == index]


def _skip_executor(compiled, active, thresholds, rate, seed=0) -> Executor:
    executor = Executor(compiled.manifest, threads=THREADS, exit_mode="skip", audit_seed=seed)
    executor.configure(active, thresholds, wait=True)
    executor.set_audit_rate(rate)
    return executor


def _traced_batch_sizes(monkeypatch) -> list[tuple[str, int]]:
    """Record (runner name, batch rows) for every ONNX Runtime run."""
    seen: list[tuple[str, int]] = []

    def traced(runner, feeds):
        rows = {int(np.shape(feeds[name])[0]) for name in runner.input_names if np.ndim(feeds[name])}
        seen.append((runner.name, max(rows)))

    trace_runs(monkeypatch, serving_backend_module, traced)
    return seen


@pytest.mark.parametrize("engine", ["resnet", "bert", "view_resnet"])
def test_skipped_rows_really_skip_the_later_segments(engine, request, monkeypatch):
    compiled = request.getfixturevalue(engine)
    sites = [s.id for s in compiled.manifest.sites]
    first, last = sites[0], sites[-1]
    seen = _traced_batch_sizes(monkeypatch)
    executor = _skip_executor(compiled, [first, last], [1.0, 0.0], rate=0.25, seed=3)  # every row exits at `first`
    calls = Calls()
    n = 8
    batch = compiled.batch(n)
    try:
        outcome = executor.run_batch(batch, calls)
    finally:
        executor.close()
    audited = np.flatnonzero(~outcome.skipped)
    assert 0 < audited.size < n, "seed 3 at rate 0.25 audits some but not all rows"
    segments = [rows for name, rows in seen if name.startswith("segment")]
    assert segments[0] == n and all(rows == audited.size for rows in segments[1:]), segments
    assert outcome.rows_run.tolist() == [n, audited.size, audited.size]
    ramp = reference_ramp_logits(compiled.manifest, batch, first)
    for i in range(n):
        mine = calls.of(i)
        np.testing.assert_allclose(mine[0][1], ramp[i], rtol=1e-4, atol=1e-4)  # the ramp's answer first
        assert mine[0][3] == first
        if outcome.skipped[i]:
            assert len(mine) == 1 and mine[0][4] is True, "a skipped row's early result is its last"
            assert outcome.final_pred[i] == -1 and outcome.weights[i] == 0.0
        else:
            assert len(mine) == 2 and mine[1][3] is None and not mine[0][4], "an audited row gets its final too"
            assert outcome.weights[i] == pytest.approx(4.0)
    assert_same_output(outcome.final_logits[audited], compiled.reference[:n][audited])
    assert outcome.audited == audited.size and outcome.skipped_count == n - audited.size
    assert outcome.compute_saved_ms > 0.0


def test_wait_final_rows_are_never_skipped(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    executor = _skip_executor(resnet, [sites[0]], [1.0], rate=0.05, seed=1)
    wait = np.array([True, False, True, False, False, True])
    calls = Calls()
    try:
        outcome = executor.run_batch(resnet.batch(6), calls, wait_final=wait)
        with pytest.raises(ApparateError, match="one per input"):
            executor.run_batch(resnet.batch(6), Calls(), wait_final=[True])
    finally:
        executor.close()
    assert not outcome.skipped[wait].any()
    for i in np.flatnonzero(wait):
        assert [c[3] for c in calls.of(i)] == [sites[0], None]
    assert (outcome.weights[wait] == 1.0).all(), "a row kept for sure weighs 1"
    assert_same_output(outcome.final_logits[wait], resnet.reference[:6][wait])


def test_rows_that_do_not_exit_reach_the_end_and_everyone_exiting_ends_the_batch(resnet, monkeypatch):
    sites = [s.id for s in resnet.manifest.sites]
    seen = _traced_batch_sizes(monkeypatch)
    executor = _skip_executor(resnet, [sites[0]], [0.0], rate=0.1)
    try:
        outcome = executor.run_batch(resnet.batch(4), Calls())  # threshold 0: nobody exits
        assert not outcome.skipped.any() and (outcome.weights == 1.0).all() and outcome.compute_saved_ms == 0.0
        assert_same_output(outcome.final_logits, resnet.reference[:4])
        executor.configure([sites[0]], [1.0])
        executor.set_audit_rate(1e-9)  # practically no audits: every row leaves at the ramp
        seen.clear()
        outcome = executor.run_batch(resnet.batch(4), Calls())
    finally:
        executor.close()
    assert outcome.skipped.all() and outcome.rows_run.tolist() == [4, 0]
    assert len([name for name, _ in seen if name.startswith("segment")]) == 1, "no row left for the last segment"


def test_release_mode_is_unchanged_and_rejects_bad_rates(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    executor = Executor(resnet.manifest, threads=THREADS)
    executor.configure([sites[0]], [1.0], wait=True)
    try:
        outcome = executor.run_batch(resnet.batch(3), Calls())
        assert outcome.skipped is None and outcome.weights is None
        assert_same_output(outcome.final_logits, resnet.reference[:3])
        for bad in (1.5, -1, float("nan")):
            with pytest.raises(ApparateError, match="audit rate"):
                executor.set_audit_rate(bad)
        executor.set_audit_rate(0.0)  # no audits: a fixed policy that needs no feedback (the oracle)
    finally:
        executor.close()
    with pytest.raises(ApparateError, match="exit mode"):
        Executor(resnet.manifest, threads=THREADS, exit_mode="drop")


def test_compact_gathers_only_batch_tensors_and_audits_follow_the_rate():
    env = {"x": np.arange(12).reshape(4, 3), "mask": np.ones((4, 2)), "scalar": np.array(4), "w": np.zeros((4, 4))}
    out = compact(env, np.array([0, 2]), {"x", "mask", "scalar"}, 4)
    assert out["x"].tolist() == [[0, 1, 2], [6, 7, 8]] and out["mask"].shape == (2, 2)
    assert out["scalar"] is env["scalar"] and out["w"] is env["w"], "tensors without a batch axis pass unchanged"
    rng = np.random.default_rng(0)
    exiting = np.arange(20000)
    kept = draw_audits(rng, exiting, np.zeros(20000, bool), 0.2)
    assert abs(kept.mean() - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 20000)
    assert draw_audits(rng, np.array([1, 2]), np.array([False, True, False]), 1e-12).tolist() == [True, False]
