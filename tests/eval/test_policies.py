"""The fixed baseline policies (static EE, patience, oracle) served through the real engine.

References are computed independently: ramp logits by chaining the segment files on disk and
running each ramp's ONNX file (``reference_ramp_logits``), the final output by running
``model.onnx`` directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import THREADS, reference_ramp_logits

from apparate_trt import _core
from apparate_trt.errors import ApparateError
from apparate_trt.eval import policies
from apparate_trt.latency import LatencyModel
from apparate_trt.runtime.api import load

WAIT_S = 60.0


def _softmax_max(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return p.max(axis=1), np.argmax(logits, axis=1)


def _serve(compiled, policy, tags=None):
    """Submit every eval sample (tagged with ``tags[i]``), return (early results, final results)."""
    with load(compiled.engine_dir, policy=policy, threads=THREADS, max_batch=4, max_delay_ms=20.0) as engine:
        assert engine.controller is None and engine.mode == policy.name
        handles = [engine.submit(compiled.sample(i), tag=None if tags is None else tags[i]) for i in range(compiled.n)]
        early = [h.early.result(WAIT_S) for h in handles]
        final = [h.final.result(WAIT_S) for h in handles]
    return early, final


def _reference_ramps(compiled) -> tuple[np.ndarray, np.ndarray]:
    """(confidence [S, n], argmax [S, n]) of every ramp, from the files on disk."""
    pairs = [
        _softmax_max(reference_ramp_logits(compiled.manifest, compiled.inputs, s.id)) for s in compiled.manifest.sites
    ]
    return np.stack([c for c, _ in pairs]), np.stack([p for _, p in pairs]).astype(np.int32)


# ------------------------------------------------------------------------------ pure helpers
def test_patience_exit_index_counts_consecutive_agreeing_ramps():
    ramp_pred = np.array([[1, 1, 2, 3], [1, 2, 2, 4], [1, 2, 5, 4], [0, 2, 5, 4]], dtype=np.int32)
    np.testing.assert_array_equal(policies.patience_exit_index(ramp_pred, 1), [0, 0, 0, 0])
    np.testing.assert_array_equal(policies.patience_exit_index(ramp_pred, 2), [1, 2, 1, 2])
    np.testing.assert_array_equal(policies.patience_exit_index(ramp_pred, 3), [2, 3, -1, 3])
    np.testing.assert_array_equal(policies.patience_exit_index(ramp_pred, 5), [-1, -1, -1, -1])


def test_tune_patience_picks_the_smallest_patience_within_the_constraint():
    final = np.array([1, 2, 5, 4], dtype=np.int32)
    ramp_pred = np.array([[1, 1, 2, 3], [1, 2, 2, 4], [1, 2, 5, 4], [0, 2, 5, 4]], dtype=np.int32)
    # t=1: 1 of 4 right at ramp 0 -> 25%; t=2: exits [1,2,1,2] -> preds [1,2,2,4]: 3/4; t=3: [1,2,final,4]: all right
    assert policies.patience_accuracy(ramp_pred, final, 2) == pytest.approx(0.75)
    assert policies.tune_patience(ramp_pred, final, 0.01) == (3, 1.0)
    assert policies.tune_patience(ramp_pred, final, 0.3)[0] == 2


def test_tune_shared_threshold_is_the_largest_grid_value_meeting_the_constraint():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, size=(3, 400)).astype(np.float32)
    agree = (rng.uniform(size=(3, 400)) < conf).astype(np.uint8)  # confident ramps agree more
    saved = np.array([3.0, 2.0, 1.0])
    t, acc, saved_ms = policies.tune_shared_threshold(conf, agree, saved, 0.05)
    assert acc >= 0.95 and saved_ms > 0
    grid = policies.SHARED_GRID
    for larger in grid[grid > t]:
        acc_l, saved_l, _ = _core.evaluate_thresholds(conf, agree, saved, np.full(3, larger))
        assert acc_l < 0.95 or saved_l <= saved_ms


def test_oracle_sites_is_the_earliest_agreeing_site():
    ramp_pred = np.array([[0, 1, 2], [5, 1, 2], [5, 7, 3]], dtype=np.int32)
    final = np.array([5, 1, 9], dtype=np.int32)
    np.testing.assert_array_equal(policies.oracle_sites(ramp_pred, final, [0, 1, 2]), [1, 0, -1])


# ------------------------------------------------------------------------------ served policies
def test_static_shared_policy_exits_where_the_threshold_says(resnet):
    policy = policies.static_shared_policy(resnet.manifest, 0.01)
    sites = [s.id for s in resnet.manifest.sites]
    assert policy.sites == sites and len(set(policy.thresholds)) == 1
    policy.thresholds = [0.5] * len(sites)  # a threshold that exits some and keeps others on these samples
    conf, pred = _reference_ramps(resnet)
    exits = _core.exit_decisions(conf.astype(np.float32), np.asarray(policy.thresholds))
    assert (exits >= 0).any(), "the test threshold should release some samples early"
    early, final = _serve(resnet, policy)
    got = np.array([-1 if r.exit_site is None else r.exit_site for r in early])
    np.testing.assert_array_equal(got, [sites[e] if e >= 0 else -1 for e in exits])
    for i, r in enumerate(early):
        expected = pred[exits[i], i] if exits[i] >= 0 else np.argmax(resnet.reference[i])
        assert r.pred == expected
    assert [r.pred for r in final] == np.argmax(resnet.reference, axis=1).tolist()


def test_static_per_ramp_policy_is_tuned_within_the_constraint_on_bootstrap(bert):
    policy = policies.static_per_ramp_policy(bert.manifest, 0.01)
    view = policies.bootstrap_view(bert.manifest)
    acc, _, _ = _core.evaluate_thresholds(
        view.confidence,
        view.agree,
        LatencyModel(bert.manifest).exit_saved_ms(policy.sites, 1),
        np.asarray(policy.thresholds),
    )
    assert acc >= 0.99 and acc == pytest.approx(policy.bootstrap_accuracy)
    early, final = _serve(bert, policy)
    assert all(r.is_final for r in final)
    assert len(early) == bert.n


def test_patience_policy_serves_the_patience_rule(bert):
    policy = policies.PatiencePolicy("patience", [s.id for s in bert.manifest.sites], patience=2)
    _, pred = _reference_ramps(bert)
    index = policies.patience_exit_index(pred, 2)
    assert (index >= 0).any()
    early, _ = _serve(bert, policy)
    got = np.array([-1 if r.exit_site is None else r.exit_site for r in early])
    np.testing.assert_array_equal(got, [policy.sites[k] if k >= 0 else -1 for k in index])
    released = [r.pred for r in early]
    expected = [pred[k, i] if k >= 0 else int(np.argmax(bert.reference[i])) for i, k in enumerate(index)]
    assert released == expected


def test_patience_policy_tuned_on_bootstrap_meets_the_constraint_there(resnet):
    policy = policies.patience_policy(resnet.manifest, 0.01)
    view = policies.bootstrap_view(resnet.manifest)
    assert 1 <= policy.patience <= len(policy.sites) + 1
    assert policies.patience_accuracy(view.ramp_pred, view.final_pred, policy.patience) >= 0.99


def test_patience_rule_rejects_zero():
    with pytest.raises(ApparateError, match="patience"):
        policies.PatienceRule(0)


def test_stream_ramps_are_every_ramps_argmax_and_max_probability(resnet):
    outputs = policies.stream_ramps(resnet.manifest, resnet.inputs, batch_size=5, threads=THREADS)
    conf, pred = _reference_ramps(resnet)
    np.testing.assert_array_equal(outputs.ramp_pred, pred)
    np.testing.assert_allclose(outputs.confidence, conf, rtol=1e-5, atol=1e-6)
    assert outputs.confidence.dtype == np.float64
    np.testing.assert_array_equal(outputs.final_pred, np.argmax(resnet.reference, axis=1))


def test_oracle_releases_each_tagged_input_at_its_earliest_agreeing_site(resnet):
    oracle = policies.stream_oracle(resnet.manifest, resnet.inputs, batch_size=5, threads=THREADS)
    _, pred = _reference_ramps(resnet)
    final_pred = np.argmax(resnet.reference, axis=1)
    np.testing.assert_array_equal(oracle.final_pred, final_pred)
    np.testing.assert_array_equal(oracle.ramp_pred, pred)
    assert (oracle.site >= 0).any()
    tags = list(range(resnet.n))
    tags[0] = None  # an untagged request is released by the final output
    early, final = _serve(resnet, policies.OraclePolicy(oracle), tags=tags)
    assert early[0].exit_site is None
    for i in range(1, resnet.n):
        expected_site = None if oracle.site[i] < 0 else int(oracle.site[i])
        assert early[i].exit_site == expected_site
        assert early[i].pred == final_pred[i] == final[i].pred


def test_oracle_refuses_a_tag_outside_the_stream(resnet):
    oracle = policies.stream_oracle(resnet.manifest, resnet.batch(4), threads=THREADS)
    with load(resnet.engine_dir, policy=policies.OraclePolicy(oracle), threads=THREADS, max_batch=1) as engine:
        handle = engine.submit(resnet.sample(0), tag=99)
        with pytest.raises(ApparateError, match="outside the stream"):
            handle.final.result(WAIT_S)


def test_the_skip_oracle_releases_at_the_same_sites_and_its_rows_leave_the_batch(resnet):
    oracle = policies.stream_oracle(resnet.manifest, resnet.inputs, batch_size=5, threads=THREADS)
    policy = policies.OraclePolicy(oracle, name="oracle-skip", exit_mode="skip")
    with load(resnet.engine_dir, policy=policy, threads=THREADS, max_batch=4, max_delay_ms=20.0) as engine:
        assert engine.exit_mode == "skip" and engine.executor.audit_rate == 0.0
        handles = [engine.submit(resnet.sample(i), tag=i) for i in range(resnet.n)]
        early = [h.early.result(WAIT_S) for h in handles]
        final = [h.final.result(WAIT_S) for h in handles]
    stats = engine.stats()  # after close: the last batch's rows are counted once its run returns
    for i in range(resnet.n):
        exits = oracle.site[i] >= 0
        assert early[i].exit_site == (int(oracle.site[i]) if exits else None)
        assert final[i].skipped == exits  # no audits: every released row left the batch
        assert early[i].pred == oracle.final_pred[i]
    assert stats["skipped_rows"] == int((oracle.site >= 0).sum()) and stats["audited_rows"] == 0


def test_patience_in_skip_mode_exits_where_it_does_in_release_mode(bert):
    sites = [s.id for s in bert.manifest.sites]
    release = policies.PatiencePolicy("patience", sites, patience=2)
    skip = policies.PatiencePolicy("patience-skip", sites, patience=2, exit_mode="skip", audit_rate=0.0)
    early_release, _ = _serve(bert, release)
    early_skip, final_skip = _serve(bert, skip)
    assert [r.exit_site for r in early_skip] == [r.exit_site for r in early_release]
    assert [r.pred for r in early_skip] == [r.pred for r in early_release]
    assert any(r.skipped for r in final_skip)  # rows left the batch: the rule followed them by index
