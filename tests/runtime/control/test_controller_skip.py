"""The controller in skip mode: audited feedback weighted by 1 / p stays unbiased; the audit rate follows the state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from test_controller import NUM_SITES, Stream, make_manifest, run_batch

from apparate_trt import _core
from apparate_trt.errors import ApparateError
from apparate_trt.latency import LatencyModel
from apparate_trt.runtime.control.controller import Controller


@dataclass
class WeightedOutcome:
    """The BatchOutcome fields the controller reads, with skip mode's weights."""

    site_ids: np.ndarray
    confidence: np.ndarray
    agree: np.ndarray
    exit_site: np.ndarray
    weights: np.ndarray


def run_skip_batch(config, conf, agree, rate, rng):
    """Apply the configuration like the executor in skip mode: exits are audited with ``rate``."""
    outcome, correct = run_batch(config, conf, agree)
    done = outcome.exit_site >= 0
    weights = np.where(done, np.where(rng.random(done.size) < rate, 1.0 / rate, 0.0), 1.0)
    return WeightedOutcome(outcome.site_ids, outcome.confidence, outcome.agree, outcome.exit_site, weights), correct


def test_window_accuracy_from_audited_rows_matches_full_feedback():
    """On a long stream, the accuracy the weighted window estimates from audited rows equals the one
    from full feedback within four standard errors of the inverse-probability estimate."""
    stream = Stream(seed=7)
    rng = np.random.default_rng(11)
    n, rate = 60_000, 0.2
    conf, agree = stream.sample(n)
    sites = np.asarray([2, 5], np.int32)
    thresholds = np.asarray([0.12, 0.2])
    outcome, correct = run_skip_batch(([2, 5], list(thresholds)), conf, agree, rate, rng)
    full = _core.FeedbackWindow(n, NUM_SITES)
    full.push(sites, conf[sites], agree[sites])
    audited = _core.FeedbackWindow(n, NUM_SITES)
    kept = outcome.weights > 0
    audited.push(sites, conf[sites][:, kept].copy(), agree[sites][:, kept].copy(), outcome.weights[kept].copy())
    truth = full.accuracy_with(sites, thresholds)
    assert truth == pytest.approx(correct.mean())
    estimate = audited.accuracy_with(sites, thresholds)
    wrong = int(np.count_nonzero(~correct))
    assert wrong > 100, "the stream must have wrong exits for the test to mean anything"
    stderr = np.sqrt(wrong * (1 - rate) / rate) / n
    assert abs(estimate - truth) < 4 * stderr, (estimate, truth, stderr)
    # an estimate from the kept rows without the weights is biased: exits are under-represented
    naive = _core.evaluate_thresholds(
        conf[sites][:, kept].copy(), agree[sites][:, kept].copy(), np.ones(2), thresholds
    )[0]
    assert abs(naive - truth) > 4 * stderr
    # the controller's window receives exactly the kept rows with their weights
    controller = Controller(
        make_manifest([2, 5]), window_size=n, initial_thresholds="never", exit_mode="skip", audit_rate=rate
    )
    controller.observe(outcome, t=0.0)
    assert len(controller.window) == int(kept.sum())
    np.testing.assert_allclose(controller.window.gather_weights(sites), outcome.weights[kept])
    assert controller.window.accuracy_with(sites, thresholds) == pytest.approx(estimate)


def test_skip_mode_holds_the_constraint_on_every_row():
    """Served in skip mode at a 20% audit rate, the released results of every row (skipped ones
    included) stay within the constraint, and rows exit."""
    stream = Stream(seed=3)
    rng = np.random.default_rng(5)
    controller = Controller(make_manifest([2, 5]), bootstrap=stream.bootstrap(2000), exit_mode="skip", audit_rate=0.2)
    config = controller.initial_config()
    correct, exits = [], []
    for b in range(3000):
        conf, agree = stream.sample(8)
        outcome, ok = run_skip_batch(config, conf, agree, controller.audit_rate, rng)
        correct.append(ok)
        exits.append(outcome.exit_site)
        new = controller.observe(outcome, t=float(b))
        config = new or config
    correct, exits = np.concatenate(correct), np.concatenate(exits)
    assert (exits >= 0).mean() > 0.1  # it does exit (the test is not vacuous)
    assert correct.mean() >= 0.99
    # windows of 512 served rows, after the first tune: the winner's-curse discount scaled by the
    # audited exits' weight keeps them within the constraint as in release mode
    first_tune = next(e["batch"] for e in controller.events if e["kind"] == "tune")
    after = correct[first_tune * 8 :]
    windows = after[: len(after) // 512 * 512].reshape(-1, 512).mean(axis=1)
    assert windows.size >= 40 and np.mean(windows < 0.99) < 0.05
    assert controller.window_size == 1024 * 5, "skip mode keeps window_size / audit_rate samples"
    assert controller.audit_rate == pytest.approx(0.2)


def test_audit_rate_is_full_while_the_window_is_thin_or_a_ramp_is_in_probation():
    stream = Stream(seed=1)
    rng = np.random.default_rng(2)
    controller = Controller(
        make_manifest([5]),
        initial_thresholds="never",
        exit_mode="skip",
        audit_rate=0.1,
        window_size=256,
        adjust_every_batches=4,
    )
    assert controller.audit_rate == 1.0, "an empty window: every exit is audited"
    config = controller.initial_config()
    rates = []
    for b in range(600):
        conf, agree = stream.sample(8)
        outcome, _ = run_skip_batch(config, conf, agree, controller.audit_rate, rng)
        config = controller.observe(outcome, t=float(b)) or config
        rates.append(controller.audit_rate)
    assert 0.1 in rates
    events = [e for e in controller.events if e["kind"] in ("audit", "add_ramp")]
    assert events[0]["kind"] == "audit" and "steady" in events[0]["reason"] and events[0]["rate"] == 0.1
    added = [i for i, e in enumerate(events) if e["kind"] == "add_ramp"]
    assert added, "the slow loop probes a ramp within 600 batches"
    after = events[added[0] + 1]
    assert after["kind"] == "audit" and after["rate"] == 1.0 and "probation" in after["reason"]
    assert all("audit_rate" in h for h in controller.threshold_history)


def test_skip_saving_adds_the_compute_a_row_leaves_behind():
    latency = LatencyModel(make_manifest([1, 4]))
    # 10 ms per segment at batch 1, 40 ms at batch 8 (linear in between): one row fewer at batch 8
    # saves 30/7 ms per later segment, for each of the 8 rows
    row = latency.row_saved_ms([1, 4], 8)
    per_segment = 8 * (40.0 - (10.0 + 30.0 * 6 / 7))
    np.testing.assert_allclose(row, [per_segment * 7 + 8 * (2.0 - (0.5 + 1.5 * 6 / 7)), per_segment * 4], rtol=1e-6)
    release = Controller(make_manifest([1, 4]), initial_thresholds="never")
    skip = Controller(make_manifest([1, 4]), initial_thresholds="never", exit_mode="skip", audit_rate=0.25)
    assert (skip.chain_ms([1, 4])[0] > release.chain_ms([1, 4])[0]).all()
    for bad in (0.0, 0.01, 1.5):
        with pytest.raises(ApparateError, match="audit rate"):
            Controller(make_manifest([1]), exit_mode="skip", audit_rate=bad)
    with pytest.raises(ApparateError, match="exit mode"):
        Controller(make_manifest([1]), exit_mode="fast")
