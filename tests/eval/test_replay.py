"""Real replays on the tiny compiled engines: real time arrivals, real execution, the report.

Timing is never asserted (shared CI cores); only orderings that hold by construction are
(p50 <= p95 <= p99, every latency positive).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from apparate_trt.data import load_inputs
from apparate_trt.engine_dir import read_manifest
from apparate_trt.eval.arrivals import parse_arrivals
from apparate_trt.eval.replay import replay
from apparate_trt.eval.report import (
    build_report,
    comparison_table,
    exit_shares,
    format_report,
    window_accuracies,
    write_report,
)
from apparate_trt.runtime import api

THREADS = 1
CONSTRAINT = 0.01


def _inputs(engine, repeat: int = 1):
    engine_dir, eval_npz = engine
    inputs = load_inputs(eval_npz, read_manifest(engine_dir).model.inputs)
    return {name: np.concatenate([a] * repeat) for name, a in inputs.items()}


def _replay(engine, inputs, arrivals, **load_kwargs):
    with api.load(engine[0], threads=THREADS, accuracy_constraint=CONSTRAINT, **load_kwargs) as eng:
        return replay(eng, inputs, arrivals, progress=False)


def test_report_helpers():
    np.testing.assert_allclose(window_accuracies(np.array([1, 1, 0, 1, 1, 1, 0]), 3), [2 / 3, 1.0])
    np.testing.assert_allclose(window_accuracies(np.array([1, 0]), 3), [0.5])
    assert exit_shares(np.array([3, -1, 3, 0])) == {"0": 0.25, "3": 0.5, "final": 0.25}


@pytest.mark.parametrize("which", ["tiny_resnet_engine", "tiny_bert_engine"])
def test_report_of_a_real_replay_has_sane_keys(which, request, tmp_path):
    engine = request.getfixturevalue(which)
    inputs = _inputs(engine)
    arrivals = parse_arrivals("fixed:400", 160)
    result = _replay(engine, inputs, arrivals, max_batch=4, max_delay_ms=5.0)
    report = build_report(result, CONSTRAINT, window_size=64)
    assert report["requests"] == report["completed"] == 160 and report["failed"] == 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert np.all(result.latency_ms > 0) and np.all(result.latency_ms <= result.final_latency_ms + 1e-9)
    assert report["throughput_rps"] > 0
    acc = report["accuracy"]
    assert 0.0 <= acc["overall"] <= 1.0 and acc["window_size"] == 64
    assert acc["worst_window"] == min(acc["windows"])
    assert len(acc["windows"]) == 2 and 0.0 <= report["windows_violating"] <= 1.0
    assert sum(report["exit_share"].values()) == pytest.approx(1.0)
    assert set(report["exit_share"]) <= {"final", *(str(s) for s in range(len(read_manifest(engine[0]).sites)))}
    assert report["mode"] == "apparate" and report["events"][0]["kind"] == "initial"
    assert all({"t", "kind", "reason"} <= set(e) for e in report["events"])
    history = report["threshold_history"]
    assert history and all({"t", "active_sites", "thresholds", "window_accuracy"} <= set(h) for h in history)
    assert [h["t"] for h in history] == sorted(h["t"] for h in history)
    # per-window figures: accuracy as in accuracy.windows, the exit share, the sites in force
    windows = report["windows"]
    assert [w["start"] for w in windows] == [0, 64, 128]
    assert [w["accuracy"] for w in windows[:2]] == pytest.approx(acc["windows"])
    released = result.exit_site >= 0
    assert windows[0]["exit_share"] == pytest.approx(released[:64].mean())
    assert all(set(w["active_sites"]) <= {h_site for h in history for h_site in h["active_sites"]} for w in windows)
    # the final result is the original model's argmax; the released one agrees where it is final
    final_only = result.exit_site < 0
    np.testing.assert_array_equal(result.released_pred[final_only], result.final_pred[final_only])
    path = write_report(report, tmp_path / "r.json")
    assert json.loads(path.read_text())["latency_ms"]["p50"] == pytest.approx(lat["p50"])
    assert "p50" in format_report(report)


def test_vanilla_and_apparate_on_the_same_arrivals(tiny_resnet_engine):
    inputs = _inputs(tiny_resnet_engine)
    arrivals = parse_arrivals("poisson:500", 200, seed=1)
    vanilla = _replay(tiny_resnet_engine, inputs, arrivals, mode="vanilla", max_batch=4)
    # the tiny engine holds only 60 held-out bootstrap samples: a short window tunes within 200 requests
    apparate = _replay(
        tiny_resnet_engine,
        inputs,
        arrivals,
        mode="apparate",
        max_batch=4,
        controller_options={"window_size": 128, "min_tune_samples": 100},
    )
    reports = {"vanilla": build_report(vanilla, CONSTRAINT), "apparate": build_report(apparate, CONSTRAINT)}
    v, a = reports["vanilla"], reports["apparate"]
    assert v["exit_share"] == {"final": 1.0} and v["accuracy"]["overall"] == 1.0 and v["events"] == []
    np.testing.assert_array_equal(vanilla.arrivals_s, apparate.arrivals_s)
    np.testing.assert_array_equal(vanilla.final_pred, apparate.final_pred)  # both: the original model
    assert a["exit_share"]["final"] < 1.0  # the tiny ResNet's ramps do release early
    table = comparison_table(reports)
    assert table.count("\n") == 3 and "| vanilla |" in table and "1.00x" in table


def test_accuracy_within_constraint_after_tuning_on_a_stationary_stream(tiny_resnet_engine):
    # the eval set ten times: a stationary stream long enough that, however late the first tune
    # comes on a loaded machine, well over 300 requests are served with tuned thresholds
    inputs = _inputs(tiny_resnet_engine, repeat=10)
    arrivals = parse_arrivals("fixed:1000", 2000)
    result = _replay(tiny_resnet_engine, inputs, arrivals, max_batch=8)
    tunes = [e for e in result.events if e["kind"] == "tune"]
    assert tunes, "the controller never tuned"
    after = result.t_release > tunes[0]["t"]  # served with tuned thresholds
    correct = (result.released_pred == result.final_pred)[after & result.completed]
    assert correct.size > 300, [(round(e["t"] - result.t_start, 2), e["kind"], e["reason"]) for e in result.events]
    assert correct.mean() >= 1.0 - CONSTRAINT
    assert np.mean(result.exit_site[after] >= 0) > 0.1  # not vacuous: inputs do exit early


def test_refused_requests_fail_alone_and_are_reported(tiny_resnet_engine):
    inputs = _inputs(tiny_resnet_engine)
    arrivals = np.zeros(60)  # a burst far beyond a one-slot queue
    result = _replay(tiny_resnet_engine, inputs, arrivals, max_batch=1, max_delay_ms=0.0, queue_size=1)
    report = build_report(result, CONSTRAINT)
    assert report["failed"] > 0 and report["completed"] > 0
    assert report["failed"] + report["completed"] == 60
    assert any("queue full" in message for message in report["errors"])


def test_controller_lines_say_what_changed_and_quiet_tunes_are_counted() -> None:
    from apparate_trt.eval.report import describe_change, format_report

    tune = {"t": 1.0, "kind": "tune", "reason": "periodic (every 16 batches)", "active_sites": [1, 5]}
    moved = {**tune, "old_thresholds": [0.01, 0.2], "thresholds": [0.02, 0.2]}
    still = {**tune, "old_thresholds": [0.02, 0.2], "thresholds": [0.02, 0.2]}
    added = {"t": 2.0, "kind": "add_ramp", "reason": "spare budget", "site": 3, "active_sites": [1, 3, 5]}
    cut = {"t": 3.0, "kind": "emergency", "reason": "ramp 1: 7 wrong exits", "site": 1, "old_threshold": 0.02}
    assert describe_change(moved) == "site 1 0.01 -> 0.02"
    assert describe_change(added) == "active sites now [1, 3, 5]" and describe_change(cut) == "site 1 0.02 -> 0"
    report = {
        "mode": "apparate",
        "requests": 1,
        "completed": 1,
        "failed": 0,
        "latency_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0},
        "throughput_rps": 1.0,
        "accuracy": {"overall": 1.0, "worst_window": 1.0, "window_size": 256, "constraint": 0.01},
        "windows_violating": 0.0,
        "exit_share": {"final": 1.0},
        "events": [moved, still, still, added, cut],
    }
    text = format_report(report)
    assert "periodic (every 16 batches): site 1 0.01 -> 0.02" in text
    assert "2 tunes that changed no threshold" in text and "active sites now [1, 3, 5]" in text
