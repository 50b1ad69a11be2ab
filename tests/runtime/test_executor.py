"""The executor: segments only at active sites, early release between segments, exact final outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from runtime_helpers import THREADS, assert_same_output, reference_ramp_logits, trace_runs

from apparate_trt.backends import open_runner
from apparate_trt.errors import ApparateError
from apparate_trt.runtime import executor as executor_module
from apparate_trt.runtime import serving_backend as serving_backend_module
from apparate_trt.runtime.executor import Executor


@dataclass
class Releases:
    """Records every on_release call in order."""

    calls: list[tuple[int, np.ndarray, int, int | None, float]] = field(default_factory=list)

    def __call__(self, index, row, pred, site, t_release) -> None:
        self.calls.append((index, np.array(row), pred, site, t_release))

    def early(self) -> list[tuple[int, np.ndarray, int, int | None, float]]:
        return [c for c in self.calls if c[3] is not None]

    def final(self) -> list[tuple[int, np.ndarray, int, int | None, float]]:
        return [c for c in self.calls if c[3] is None]


def _executor(compiled, active, thresholds) -> Executor:
    executor = Executor(compiled.manifest, threads=THREADS)
    executor.configure(active, thresholds, wait=True)
    return executor


def test_final_outputs_equal_the_original_model_for_every_active_set(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    batch = resnet.batch(8)
    executor = Executor(resnet.manifest, threads=THREADS)
    try:
        for active in ([], [sites[0]], [sites[0], sites[-1]], sites):
            executor.configure(active, [0.0] * len(active), wait=True)
            releases = Releases()
            outcome = executor.run_batch(batch, releases)
            assert outcome.active_sites == active
            assert_same_output(outcome.final_logits, resnet.reference[:8])
            assert [c[0] for c in releases.final()] == list(range(8))
            assert not releases.early(), "threshold 0 (probation) must never release early"
            assert (outcome.exit_site == -1).all()
    finally:
        executor.close()


def test_segments_are_split_only_at_active_sites(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    executor = _executor(resnet, [sites[-1]], [0.0])
    try:
        outcome = executor.run_batch(resnet.batch(2), Releases())
        assert outcome.segments_ms.shape == (2,), "one active site: two segments, whatever the site count"
        assert outcome.ramps_ms.shape == (1,)
    finally:
        executor.close()


def test_rebuild_plan_builds_anew_and_leaves_the_running_plan(resnet, monkeypatch):
    sites = [s.id for s in resnet.manifest.sites]
    executor = _executor(resnet, [sites[-1]], [0.0])
    built: list[tuple[int, ...]] = []
    original = executor_module._PlanBuilder._stages
    monkeypatch.setattr(
        executor_module._PlanBuilder, "_stages", lambda self, active: built.append(active) or original(self, active)
    )
    try:
        executor.rebuild_plan([sites[0]])
        executor.rebuild_plan([sites[0]])
        assert built == [(sites[0],), (sites[0],)]  # made anew each time, not fetched from the cache
        assert executor.active_sites == [sites[-1]]  # the running plan is unchanged
        executor.configure([sites[0]], [0.0])  # the rebuilt plan is cached: swapped in without a build
        assert built == [(sites[0],), (sites[0],)] and executor.active_sites == [sites[0]]
        assert executor.run_batch(resnet.batch(2), Releases()).active_sites == [sites[0]]
        with pytest.raises(ApparateError, match="unknown ramp site"):
            executor.rebuild_plan([len(sites)])
    finally:
        executor.close()


def test_early_results_are_the_ramps_argmax_and_come_before_the_next_segment(resnet, monkeypatch):
    sites = [s.id for s in resnet.manifest.sites]
    first, last = sites[0], sites[-1]
    events: list[str] = []
    trace_runs(monkeypatch, serving_backend_module, lambda runner, feeds: events.append(f"run {runner.name}"))
    executor = _executor(resnet, [first, last], [1.0, 1.0])  # threshold 1: every input exits at once
    releases = Releases()

    def on_release(index, row, pred, site, t_release):
        events.append(f"release {site}")
        releases(index, row, pred, site, t_release)

    batch = resnet.batch(6)
    try:
        outcome = executor.run_batch(batch, on_release)
    finally:
        executor.close()
    early = releases.early()
    assert sorted(c[0] for c in early) == list(range(6)), "each input is released early exactly once"
    assert {c[3] for c in early} == {first}
    ramp = reference_ramp_logits(resnet.manifest, batch, first)
    for index, row, pred, _, _ in early:
        np.testing.assert_allclose(row, ramp[index], rtol=1e-4, atol=1e-4)
        assert pred == int(np.argmax(ramp[index]))
    # the releases at the first ramp precede every later segment's run: the batch went on afterwards
    first_release = events.index(f"release {first}")
    later_runs = [i for i, e in enumerate(events) if e.startswith("run segment")]
    assert later_runs[-1] > first_release, "the batch must run on to the end after the exits"
    assert max(c[4] for c in early) <= min(c[4] for c in releases.final())
    # exits never shrink the batch: the last ramp still saw every input and the final is exact
    assert outcome.confidence.shape == (2, 6)
    assert (outcome.exit_site == first).all()
    assert_same_output(outcome.final_logits, resnet.reference[:6])
    assert [c[0] for c in releases.final()] == list(range(6))


def test_outcome_feedback_arrays(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    active = sites[:2]
    executor = _executor(resnet, active, [0.0, 0.0])
    try:
        outcome = executor.run_batch(resnet.batch(5), Releases())
    finally:
        executor.close()
    assert outcome.site_ids.dtype == np.int32 and outcome.active_sites == active
    assert outcome.confidence.dtype == np.float32 and outcome.confidence.shape == (2, 5)
    assert ((outcome.confidence > 0) & (outcome.confidence <= 1)).all()
    assert outcome.ramp_pred.dtype == np.int32
    assert outcome.agree.dtype == np.uint8
    np.testing.assert_array_equal(outcome.agree, (outcome.ramp_pred == outcome.final_pred).astype(np.uint8))
    np.testing.assert_array_equal(outcome.final_pred, np.argmax(resnet.reference[:5], axis=1))
    assert outcome.total_ms > 0 and outcome.t_end >= outcome.t_start
    np.testing.assert_array_equal(outcome.thresholds, [0.0, 0.0])


def test_thresholds_change_at_once_and_only_exit_confident_inputs(resnet):
    site = resnet.manifest.sites[0].id
    executor = _executor(resnet, [site], [0.0])
    batch = resnet.batch(12)
    try:
        probe = executor.run_batch(batch, Releases())
        conf = probe.confidence[0]
        threshold = float(1.0 - np.median(conf)) + 1e-6  # about half of the inputs are confident enough
        executor.configure([site], [threshold])
        releases = Releases()
        outcome = executor.run_batch(batch, releases)
    finally:
        executor.close()
    expected = np.flatnonzero(1.0 - conf.astype(np.float64) < threshold)
    assert 0 < expected.size < 12
    assert sorted(c[0] for c in releases.early()) == expected.tolist()
    np.testing.assert_array_equal(np.flatnonzero(outcome.exit_site == site), expected)


def test_new_active_set_is_built_off_the_critical_path_and_swapped_between_batches(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    old, new = [sites[0]], [sites[0], sites[-1]]
    executor = _executor(resnet, old, [0.0])
    batch = resnet.batch(4)
    try:
        executor.configure(new, [0.0, 0.0])  # returns at once; the plan builds in the background
        during = executor.run_batch(batch, Releases())
        assert during.active_sites in (old, new), "a batch runs whole with either the old or the new plan"
        executor.wait_ready(timeout_s=60)
        assert executor.ready
        after = executor.run_batch(batch, Releases())
        assert after.active_sites == new
        assert_same_output(after.final_logits, resnet.reference[:4])
        executor.configure(old, [0.0])  # a revisited set is cached: in effect for the next batch
        assert executor.ready and executor.active_sites == old
        back = executor.run_batch(batch, Releases())
        assert back.active_sites == old
        assert_same_output(back.final_logits, resnet.reference[:4])
    finally:
        executor.close()


def test_ramp_leaving_the_active_set_never_exits_while_its_replacement_builds(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    executor = _executor(resnet, [sites[0]], [1.0])
    try:
        executor.configure([sites[-1]], [1.0])
        releases = Releases()
        outcome = executor.run_batch(resnet.batch(3), releases)
        if outcome.active_sites == [sites[0]]:  # the old plan ran: its removed ramp is in probation
            assert not releases.early()
            np.testing.assert_array_equal(outcome.thresholds, [0.0])
    finally:
        executor.close()


def test_a_failed_build_keeps_the_running_plan(resnet, monkeypatch, caplog):
    sites = [s.id for s in resnet.manifest.sites]
    if len(sites) < 3:
        pytest.skip("needs a proper subset of at least two sites (split_model is used only then)")
    executor = _executor(resnet, [sites[0]], [0.0])

    def broken_split(model, manifest, active):
        raise ApparateError("cannot split here")

    monkeypatch.setattr(executor_module, "_split_segments", broken_split)
    try:
        executor.run_batch(resnet.batch(2), Releases())
        executor.configure([sites[0], sites[-1]], [0.0, 0.0])
        executor.wait_ready(timeout_s=60)
        assert executor.ready and executor.active_sites == [sites[0]]
        assert "cannot split here" in caplog.text
        outcome = executor.run_batch(resnet.batch(2), Releases())
        assert outcome.active_sites == [sites[0]]
        assert_same_output(outcome.final_logits, resnet.reference[:2])
    finally:
        executor.close()


def test_side_tensors_flow_to_later_segments(bert):
    sites = [s.id for s in bert.manifest.sites]
    assert any(s.side_tensors for s in bert.manifest.sites), "the tiny BERT keeps its attention mask live"
    executor = Executor(bert.manifest, threads=THREADS)
    try:
        for active in ([sites[0], sites[-1]], sites):
            executor.configure(active, [1.0] + [0.0] * (len(active) - 1), wait=True)
            releases = Releases()
            outcome = executor.run_batch(bert.batch(6), releases)
            assert_same_output(outcome.final_logits, bert.reference[:6])
            assert len(releases.early()) == 6
    finally:
        executor.close()


def test_an_unconfigured_executor_is_vanilla_the_original_model_in_one_session(resnet):
    vanilla = Executor(resnet.manifest, threads=THREADS)
    releases = Releases()
    outcome = vanilla.run_batch(resnet.batch(7), releases)
    assert_same_output(outcome.final_logits, resnet.reference[:7])
    assert not releases.early() and len(releases.final()) == 7
    assert outcome.site_ids.size == 0 and outcome.confidence.shape == (0, 7)
    assert vanilla.active_sites == [] and len(vanilla._plan.stages) == 1
    assert vanilla._plan.stages[0].runner.name.startswith("model")
    vanilla.close()


@pytest.mark.parametrize(
    "active, thresholds, message",
    [
        ([0], [0.1, 0.2], "one threshold per site"),
        ([0, 0], [0.1, 0.1], "twice"),
        ([999], [0.1], "unknown ramp site"),
        ([0], [1.5], "[0, 1]"),
    ],
)
def test_bad_configurations_are_refused(resnet, active, thresholds, message):
    executor = Executor(resnet.manifest, threads=THREADS)
    try:
        with pytest.raises(ApparateError, match=message.replace("[", r"\[").replace("]", r"\]")):
            executor.configure(active, thresholds)
    finally:
        executor.close()


def test_unknown_confidence_kind_is_refused(resnet):
    with pytest.raises(ApparateError, match="maxprob"):
        Executor(resnet.manifest, confidence="softmax")


def test_unsplit_batch_runs_the_original_model_without_ramps(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    executor = _executor(resnet, sites[:2], [1.0, 1.0])  # threshold 1: every input would exit at once
    try:
        releases = Releases()
        outcome = executor.run_batch(resnet.batch(6), releases, unsplit=True)
        assert executor.active_sites == sites[:2], "the configured plan stays in place for the next batch"
        split = executor.run_batch(resnet.batch(6), Releases())
    finally:
        executor.close()
    assert releases.early() == [] and [c[0] for c in releases.final()] == list(range(6))
    assert outcome.active_sites == [] and outcome.confidence.shape == (0, 6) and (outcome.exit_site == -1).all()
    assert len(outcome.segments_ms) == 1, "one piece: the unsplit model"
    assert_same_output(outcome.final_logits, resnet.reference[:6])
    assert split.active_sites == sites[:2] and (split.exit_site == sites[0]).all()


def test_a_model_onnx_runtime_cannot_run_fails_in_one_line_naming_the_node() -> None:
    """A graph that loads but fails at run time (here a Reshape to an impossible shape) raises
    ApparateError naming the node and its op, without ONNX Runtime's C++ signature."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    runner = open_runner(model, threads=1, name="the toy model")
    with pytest.raises(ApparateError) as err:
        runner.run({"x": np.zeros((3, 6), np.float32)})
    message = str(err.value)
    assert message.startswith("ONNX Runtime fails to run the toy model: node 'bad_reshape' (Reshape): ")
    assert "\n" not in message and "onnxruntime::" not in message and "re-export" in message


def test_the_plan_cache_keeps_the_most_recent_sets_only(resnet, monkeypatch):
    monkeypatch.setattr(executor_module, "PLANS_KEPT", 2)
    sites = [s.id for s in resnet.manifest.sites]
    ex = Executor(resnet.manifest, threads=THREADS)
    try:
        for active in ([sites[0]], [sites[1]], [sites[0], sites[1]]):
            ex.configure(active, [0.0] * len(active), wait=True)
        cached = list(ex._builder._plans)
        # the unsplit plan, the one running when the last was built, and the last: [sites[0]] dropped
        assert cached == [(), (sites[1],), (sites[0], sites[1])]
        ex.configure([sites[1]], [0.0], wait=True)  # an evicted set comes back: built anew
        ex.configure([sites[0], sites[1]], [0.0, 0.0], wait=True)  # back to a cached one
        outcome = ex.run_batch(resnet.batch(3), Releases())  # the running plan is still whole
        assert_same_output(outcome.final_logits, resnet.reference[:3])
    finally:
        ex.close()
