"""The embedding API: submit one sample, receive the early then the final result; bad requests fail alone."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from runtime_helpers import THREADS, assert_same_output, reference_ramp_logits

from apparate_trt.engine_dir import TensorSpec
from apparate_trt.errors import ApparateError
from apparate_trt.runtime import api
from apparate_trt.runtime.api import (
    OverloadError,
    RequestTimeoutError,
    Result,
    load,
    validate_batch,
    validate_sample,
)

WAIT_S = 60.0


class FixedController:
    """Stands in for the adaptive controller: a fixed config, then one switch after the first batch."""

    events: list = []
    threshold_history: list = []
    events_dropped = history_dropped = 0
    last_observation = None
    audit_rate = 1.0  # skip mode: every released row is audited

    def __init__(self, switch_to=None) -> None:
        self.switch_to = switch_to
        self.observed: list[list[int]] = []

    def observe_batches(self, outcomes, t):
        first = not self.observed
        self.observed += [outcome.active_sites for outcome in outcomes]
        return self.switch_to if first else None


def _load(compiled, **kwargs) -> api.Engine:
    kwargs.setdefault("threads", THREADS)
    kwargs.setdefault("max_delay_ms", 20.0)
    return load(compiled.engine_dir, **kwargs)


def _fixed(engine: api.Engine, active, thresholds, switch_to=None) -> FixedController:
    """Replace the engine's controller with a fixed one and apply ``(active, thresholds)`` now."""
    engine.executor.configure(active, thresholds, wait=True)
    engine.controller = FixedController(switch_to)
    return engine.controller


def test_final_results_equal_the_original_model(resnet):
    with _load(resnet, max_batch=4) as engine:
        handles = [engine.submit(resnet.sample(i)) for i in range(resnet.n)]
        finals = [h.final.result(WAIT_S) for h in handles]
    assert [r.request_id for r in finals] == [h.request_id for h in handles]
    assert all(r.is_final and r.exit_site is None for r in finals)
    assert_same_output(np.stack([r.output for r in finals]), resnet.reference)
    assert [r.pred for r in finals] == np.argmax(resnet.reference, axis=1).tolist()
    assert all(r.latency_ms >= 0 and r.t_release >= r.t_arrival for r in finals)


def test_early_results_are_the_ramps_argmax_and_come_before_the_final(resnet):
    site = resnet.manifest.sites[0].id
    results: dict[int, list[Result]] = {}
    lock = threading.Lock()

    def on_result(result: Result) -> None:
        with lock:
            results.setdefault(result.request_id, []).append(result)

    count = 8
    with _load(resnet, max_batch=count, max_delay_ms=200.0) as engine:
        _fixed(engine, [site], [1.0])  # threshold 1: every input exits at the ramp
        handles = [engine.submit(resnet.sample(i), on_result=on_result) for i in range(count)]
        early = [h.early.result(WAIT_S) for h in handles]
        final = [h.final.result(WAIT_S) for h in handles]
    ramp = reference_ramp_logits(resnet.manifest, resnet.batch(count), site)
    for i, (e, f) in enumerate(zip(early, final)):
        assert e.exit_site == site and not e.is_final
        assert e.pred == int(np.argmax(ramp[i]))
        np.testing.assert_allclose(e.output, ramp[i], rtol=1e-4, atol=1e-4)
        assert e.t_release <= f.t_release, "the early result is released before the batch finishes"
        assert results[e.request_id] == [e, f], "on_result: the early result, then the final one"
    assert_same_output(np.stack([f.output for f in final]), resnet.reference[:count])


def test_early_future_gets_the_final_result_when_no_ramp_exits(resnet):
    with _load(resnet) as engine:
        _fixed(engine, [resnet.manifest.sites[0].id], [0.0])
        handle = engine.submit(resnet.sample(0))
        assert handle.early.result(WAIT_S) is handle.final.result(WAIT_S)


def test_vanilla_mode_equals_the_original_model(resnet):
    with _load(resnet, mode="vanilla", max_batch=8) as engine:
        handles = [engine.submit(resnet.sample(i)) for i in range(12)]
        finals = [h.result(WAIT_S) for h in handles]
        assert engine.stats()["active_sites"] == []
    assert_same_output(np.stack([r.output for r in finals]), resnet.reference[:12])
    assert all(h.early.result() is h.final.result() for h in handles)


def _bad_requests(sample: dict[str, np.ndarray]) -> dict[str, dict]:
    (name, value), *_ = sample.items()
    nan = value.astype(np.float32).copy()
    nan.flat[0] = np.nan
    return {
        "missing input": {},
        "unknown input": {**sample, "extra": value},
        "batch axis": {**sample, name: value[None]},
        "wrong shape": {**sample, name: value[..., :1]},
        "wrong dtype": {**sample, name: value.astype(str)},
        "NaN": {**sample, name: nan},
        "not a dict": [value],
    }


def test_bad_requests_fail_alone_while_others_are_served(resnet):
    with _load(resnet, max_batch=4) as engine:
        good = [engine.submit(resnet.sample(i)) for i in range(3)]
        for what, request in _bad_requests(resnet.sample(0)).items():
            with pytest.raises(ApparateError) as info:
                engine.submit(request)
            assert "\n" not in str(info.value), what
        good += [engine.submit(resnet.sample(i)) for i in range(3, 6)]
        finals = [h.result(WAIT_S) for h in good]
    assert_same_output(np.stack([r.output for r in finals]), resnet.reference[:6])


def test_safe_casts_are_accepted(resnet):
    (name, value), *_ = resnet.sample(0).items()
    with _load(resnet) as engine:
        result = engine.submit({name: value.astype(np.float64)}).result(WAIT_S)
    assert_same_output(result.output[None], resnet.reference[:1])


def test_a_request_failing_inside_a_batch_fails_alone(resnet, monkeypatch):
    poison = 2
    with _load(resnet, max_batch=6, max_delay_ms=500.0) as engine:
        run_batch = engine.executor.run_batch
        marker = next(iter(resnet.sample(poison).values()))

        def flaky(batch, on_release):
            if any(np.array_equal(row, marker) for row in next(iter(batch.values()))):
                raise RuntimeError("device lost")
            return run_batch(batch, on_release)

        monkeypatch.setattr(engine.executor, "run_batch", flaky)
        handles = [engine.submit(resnet.sample(i)) for i in range(6)]
        for i, handle in enumerate(handles):
            if i == poison:
                with pytest.raises(ApparateError, match="device lost"):
                    handle.final.result(WAIT_S)
                with pytest.raises(ApparateError):
                    handle.early.result(WAIT_S)
            else:
                assert_same_output(handle.final.result(WAIT_S).output[None], resnet.reference[i : i + 1])
        assert engine.stats()["failed"] == 1


def test_overload_is_refused_at_once_and_nothing_accepted_is_lost(resnet):
    gate = threading.Event()
    entered = threading.Event()

    def blocking(result: Result) -> None:  # runs on the worker: holds it while we fill the queue
        entered.set()
        gate.wait(WAIT_S)

    with _load(resnet, max_batch=1, max_delay_ms=0.0, queue_size=4) as engine:
        first = engine.submit(resnet.sample(0), on_result=blocking)
        assert entered.wait(WAIT_S)
        queued = [engine.submit(resnet.sample(i)) for i in range(1, 5)]
        with pytest.raises(OverloadError):
            engine.submit(resnet.sample(5))
        assert engine.stats()["queue_depth"] == 4 and engine.stats()["refused"] == 1
        gate.set()
        finals = [h.result(WAIT_S) for h in [first, *queued]]
    assert_same_output(np.stack([r.output for r in finals]), resnet.reference[:5])


def test_requests_past_their_timeout_fail_and_cancelled_ones_are_skipped(resnet):
    gate = threading.Event()
    entered = threading.Event()

    def blocking(result: Result) -> None:
        entered.set()
        gate.wait(WAIT_S)

    with _load(resnet, max_batch=1, max_delay_ms=0.0) as engine:
        first = engine.submit(resnet.sample(0), on_result=blocking)
        assert entered.wait(WAIT_S)
        late = engine.submit(resnet.sample(1), timeout_ms=1.0)
        gone = engine.submit(resnet.sample(2))
        assert gone.final.cancel()
        kept = engine.submit(resnet.sample(3), timeout_ms=600_000.0)
        threading.Event().wait(0.05)  # let the 1 ms timeout pass while the worker is held
        gate.set()
        with pytest.raises(RequestTimeoutError, match="timeout"):
            late.final.result(WAIT_S)
        assert_same_output(kept.result(WAIT_S).output[None], resnet.reference[3:4])
        first.result(WAIT_S)
        assert engine.stats()["expired"] == 1


def test_close_answers_every_accepted_request(resnet):
    engine = _load(resnet, max_batch=4, max_delay_ms=60_000.0)  # only close() can flush a partial batch
    handles = [engine.submit(resnet.sample(i)) for i in range(6)]
    engine.close()
    assert all(h.final.done() for h in handles)
    assert_same_output(np.stack([h.final.result().output for h in handles]), resnet.reference[:6])
    with pytest.raises(ApparateError, match="closed"):
        engine.submit(resnet.sample(0))


def test_controller_changes_swap_segments_between_batches_and_results_stay_exact(resnet):
    sites = [s.id for s in resnet.manifest.sites]
    new = ([sites[0], sites[-1]], [0.0, 0.0])
    with _load(resnet, max_batch=4, max_delay_ms=0.0) as engine:
        controller = _fixed(engine, [sites[0]], [0.0], switch_to=new)
        finals = [engine.submit(resnet.sample(i)).result(WAIT_S) for i in range(2)]
        assert engine.sync_controller(WAIT_S)  # the controller runs on its own thread
        engine.executor.wait_ready(WAIT_S)
        finals += [engine.submit(resnet.sample(i)).result(WAIT_S) for i in range(2, 4)]
        stats = engine.stats()
    assert controller.observed[0] == [sites[0]]
    assert controller.observed[-1] == new[0]
    assert stats["active_sites"] == new[0] and stats["thresholds"] == {sites[0]: 0.0, sites[-1]: 0.0}
    assert_same_output(np.stack([r.output for r in finals]), resnet.reference[:4])


def test_adaptive_controller_is_wired_in(resnet):
    with _load(resnet, max_batch=8) as engine:
        handles = [engine.submit(resnet.sample(i)) for i in range(resnet.n)]
        finals = [h.result(WAIT_S) for h in handles]
        assert engine.controller is not None and engine.controller.events
        assert engine.stats()["batches"] >= 1
    assert_same_output(np.stack([r.output for r in finals]), resnet.reference)


def test_bert_requests_with_side_tensors(bert):
    with _load(bert, max_batch=4) as engine:
        finals = [engine.submit(bert.sample(i)).result(WAIT_S) for i in range(bert.n)]
    assert_same_output(np.stack([r.output for r in finals]), bert.reference)


@pytest.mark.parametrize(
    "kwargs, message", [({"mode": "fast"}, "mode"), ({"max_batch": 0}, "batch"), ({"confidence": "x"}, "confidence")]
)
def test_bad_load_options_are_refused(resnet, kwargs, message):
    with pytest.raises(ApparateError, match=message):
        load(resnet.engine_dir, **kwargs)


def test_missing_engine_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ApparateError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_import_works_without_tensorrt_and_the_backend_says_how_to_fix_it():
    code = (
        "import sys, apparate_trt, apparate_trt.runtime.api\n"
        "assert 'tensorrt' not in sys.modules\n"
        "from apparate_trt.backends import tensorrt as t\n"
        "from apparate_trt.errors import ApparateError\n"
        "try:\n"
        "    import tensorrt\n"
        "    print('has tensorrt')\n"
        "except ImportError:\n"
        "    assert not t.is_available()\n"
        "    try:\n"
        "        t.require_tensorrt()\n"
        "    except ApparateError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    if "has tensorrt" in out:
        pytest.skip("TensorRT is installed here")
    assert "needs an NVIDIA GPU with TensorRT" in out and "--backend onnxruntime" in out


SPECS = [
    TensorSpec("ids", "int32", ["batch", "seq"]),
    TensorSpec("mask", "float32", ["batch", "seq"]),
    TensorSpec("x", "float32", ["batch", 3]),
]


def test_validation_casts_safely_and_checks_symbolic_dims():
    sample = validate_sample(
        SPECS, {"ids": np.arange(5, dtype=np.int64), "mask": np.ones(5, np.float64), "x": [1, 2, 3]}
    )
    assert {k: v.dtype for k, v in sample.items()} == {"ids": np.int32, "mask": np.float32, "x": np.float32}
    with pytest.raises(ApparateError, match="dimension 'seq'"):
        validate_sample(SPECS, {"ids": np.arange(5), "mask": np.ones(4, np.float32), "x": np.zeros(3, np.float32)})
    with pytest.raises(ApparateError, match="outside the range"):
        validate_sample(SPECS, {"ids": np.array([2**40]), "mask": np.ones(1, np.float32), "x": np.zeros(3, np.float32)})
    with pytest.raises(ApparateError, match="the model takes int32"):
        validate_sample(
            SPECS, {"ids": np.ones(2, np.float32), "mask": np.ones(2, np.float32), "x": np.zeros(3, np.float32)}
        )
    with pytest.raises(ApparateError, match="axis 0 must be 3"):
        validate_sample(
            SPECS, {"ids": np.ones(2, np.int32), "mask": np.ones(2, np.float32), "x": np.zeros(4, np.float32)}
        )


def test_batch_validation_is_the_one_check_and_its_samples_are_views():
    ids, mask, x = (
        np.arange(10, dtype=np.int32).reshape(2, 5),
        np.ones((2, 5), np.float32),
        np.zeros((2, 3), np.float32),
    )
    arrays, n = validate_batch(SPECS, {"ids": ids, "mask": mask, "x": x})
    assert n == 2 and arrays["ids"] is ids  # already the model's dtype and C-contiguous: no copy
    with pytest.raises(ApparateError, match="empty batch"):
        validate_batch(SPECS, {"ids": ids[:0], "mask": mask[:0], "x": x[:0]})
    with pytest.raises(ApparateError, match="disagree on the batch size"):
        validate_batch(SPECS, {"ids": ids, "mask": mask[:1], "x": x})
    with pytest.raises(ApparateError, match="infinite"):
        validate_batch(SPECS, {"ids": ids, "mask": np.full((2, 5), np.inf, np.float32), "x": x})
    with pytest.raises(ApparateError, match="input 'mask' is missing"):
        validate_batch(SPECS, {"ids": ids, "x": x})
    with pytest.raises(ApparateError, match="has samples of shape \\[4\\]"):
        validate_batch(SPECS, {"ids": ids, "mask": mask, "x": np.zeros((2, 4), np.float32)})


def test_submit_batch_queues_all_samples_or_none(resnet):
    with _load(resnet, max_batch=3, queue_size=3) as engine:
        batch = resnet.batch(3)
        handles = engine.submit_batch(batch, tags=[0, 1, 2])
        for i, handle in enumerate(handles):
            assert_same_output(handle.final.result(WAIT_S).output[None], resnet.reference[i : i + 1])
        with pytest.raises(ApparateError, match="can never fit the queue of 3") as refused:
            engine.submit_batch(resnet.batch(4))  # more than the queue holds: nothing is queued
        assert not isinstance(refused.value, OverloadError)  # not "retry later": it would never fit
        assert engine.stats()["queue_depth"] == 0
        with pytest.raises(ApparateError, match="one tag per sample"):
            engine.submit_batch(batch, tags=[0])


def _burst(engine: api.Engine, compiled, count: int) -> list[tuple[Result, Result]]:
    """Submit ``count`` samples at once while the worker is held, so that they queue; each one's
    (first released, final) result."""
    gate, entered = threading.Event(), threading.Event()

    def hold(result: Result) -> None:
        entered.set()
        gate.wait(WAIT_S)

    first = engine.submit(compiled.sample(0), on_result=hold)
    assert entered.wait(WAIT_S)
    handles = [first] + [engine.submit(compiled.sample(i % compiled.n)) for i in range(1, count)]
    gate.set()
    return [(h.early.result(WAIT_S), h.final.result(WAIT_S)) for h in handles]


@pytest.mark.parametrize("fallback", [True, False])
def test_overload_fallback_runs_queued_full_batches_unsplit_and_exact(resnet, fallback):
    site = resnet.manifest.sites[0].id
    with _load(resnet, max_batch=2, max_delay_ms=0.0, overload_fallback=fallback) as engine:
        controller = _fixed(engine, [site], [1.0])  # threshold 1: every input that meets the ramp exits
        results = _burst(engine, resnet, 9)  # 1 held, then 8 queued: batches of 2 with 6, 4, 2, 0 waiting
        assert engine.sync_controller(WAIT_S)
        stats = engine.stats()
    expected = np.stack([resnet.reference[i % resnet.n] for i in range(9)])
    assert_same_output(np.stack([final.output for _, final in results]), expected)
    assert all(final.is_final for _, final in results)
    early = sum(first.exit_site == site for first, _ in results)
    if fallback:
        # the batches dispatched with >= 2 waiting (6, 4, 2 left) ran unsplit: final results only, no feedback
        assert stats["unsplit_batches"] == 3 and early == 9 - 6
        assert len(controller.observed) == stats["batches"] - 3
    else:
        assert stats["unsplit_batches"] == 0 and early == 9, "every input met the ramp and exited there"


def test_no_fallback_without_a_backlog(resnet):
    site = resnet.manifest.sites[0].id
    with _load(resnet, max_batch=2, max_delay_ms=0.0) as engine:
        _fixed(engine, [site], [1.0])
        early = [engine.submit(resnet.sample(i)).early.result(WAIT_S) for i in range(4)]
        assert engine.stats()["unsplit_batches"] == 0
    assert all(r.exit_site == site for r in early)


def test_skip_mode_results_say_which_answer_is_last_and_wait_final_gets_the_model(resnet):
    first = resnet.manifest.sites[0].id
    engine = _load(resnet, exit_mode="skip", audit_rate=0.05, accuracy_constraint=0.05, overload_fallback=False)
    try:
        assert engine.exit_mode == "skip"
        _fixed(engine, [first], [1.0])  # every request exits at the first ramp
        engine.executor.set_audit_rate(0.05)
        n = 24
        wait = [i % 2 == 0 for i in range(n)]
        handles = [engine.submit(resnet.sample(i), wait_final=wait[i]) for i in range(n)]
        finals = [h.final.result(WAIT_S) for h in handles]
        earlies = [h.early.result(WAIT_S) for h in handles]
    finally:
        engine.close()  # joins the batch loop: a batch's row counters land after its results resolve
    stats = engine.stats()
    for i, (early, final) in enumerate(zip(earlies, finals)):
        assert early.exit_site == first and not early.is_final
        if wait[i]:
            assert final.is_final and not final.skipped
            assert_same_output(final.output[None, :], resnet.reference[i : i + 1])
        elif final.skipped:
            assert final is early and final.is_last and not final.is_final
    skipped = sum(f.skipped for f in finals)
    assert skipped > 0, "at a 5% audit rate most requests that do not wait for the final leave the batch"
    assert stats["skipped_rows"] == skipped and stats["released_rows"] == n and stats["compute_saved_ms"] > 0
    assert stats["exit_mode"] == "skip"


def test_skip_mode_replay_judges_skipped_requests_against_a_reference(resnet):
    from apparate_trt.eval.replay import offline_predictions, replay
    from apparate_trt.eval.report import build_report

    first = resnet.manifest.sites[0].id
    engine = _load(resnet, exit_mode="skip", audit_rate=0.05, overload_fallback=False)
    try:
        _fixed(engine, [first], [1.0])
        engine.executor.set_audit_rate(0.05)
        inputs = resnet.batch(20)
        reference = offline_predictions(resnet.manifest, inputs, threads=THREADS)
        np.testing.assert_array_equal(reference, np.argmax(resnet.reference[:20], axis=1))
        judged = replay(engine, inputs, np.zeros(20), progress=False, reference_pred=reference)
        alone = replay(engine, inputs, np.zeros(20), progress=False)
    finally:
        engine.close()
    assert judged.skipped.any() and judged.completed.all()
    report = build_report(judged, 0.01)
    assert report["accuracy"]["judged"] == 20 and report["accuracy"]["reference"] == "offline"
    assert report["exit_mode"] == "skip" and report["rows"]["skipped"] == int(judged.skipped.sum())
    ramp = reference_ramp_logits(resnet.manifest, inputs, first).argmax(axis=1)
    assert report["accuracy"]["overall"] == pytest.approx(float(np.mean(ramp == reference)))
    assert build_report(alone, 0.01)["accuracy"]["judged"] == int((~alone.skipped).sum())
