"""CI run of ``benchmarks/run_workloads.py --quick`` on the tiny models (no real model needed).

It checks that every workload is served by every system and that every output file is written,
not the goals (tiny models say nothing about them).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "run_workloads.py"


def _script():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("run_workloads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data_dir(root: Path, engine: tuple[Path, Path], engines: Path, name: str, drift: bool) -> None:
    """``root/name`` laid out like scripts/build_real_models.py's output, and the engine cached."""
    engine_dir, eval_npz = engine
    target = root / name
    target.mkdir(parents=True)
    for file in ("model.onnx", "bootstrap.npz", "eval.npz"):
        shutil.copy(engine_dir.parent / file, target / file)
    if drift:  # the eval samples reversed, in two phases
        with np.load(eval_npz) as npz:
            np.savez(target / "drift.npz", **{k: v[::-1].copy() for k, v in npz.items()})
            n = int(next(iter(npz.values())).shape[0])
        phases = [{"name": "a", "start": 0, "end": n // 2}, {"name": "b", "start": n // 2, "end": n}]
        (target / "drift_meta.json").write_text(json.dumps({"phases": phases}))
    shutil.copytree(engine_dir, engines / name)  # compiled by the fixture: reused, not recompiled


def test_quick_run_serves_every_system_and_writes_every_file(tmp_path, tiny_resnet_engine, tiny_bert_engine):
    run = _script()
    data, engines, out = tmp_path / "data", tmp_path / "engines", tmp_path / "out"
    _data_dir(data, tiny_resnet_engine, engines, "cv", drift=True)
    _data_dir(data, tiny_bert_engine, engines, "nlp", drift=False)
    results_before = sorted(p.name for p in run.RESULTS.glob("*")) if run.RESULTS.exists() else []
    assert (
        run.main(
            [
                "--quick",
                "--out",
                str(out),
                "--data",
                str(data),
                "--engines",
                str(engines),
                "--requests",
                "120",
                "--burst",
                "40",
                "--threads",
                "1",
                "--max-delay-ms",
                "2",
            ]
        )
        == 0
    )

    summary = json.loads((out / "summary.json").read_text())
    workloads = [w.name for w in run.WORKLOADS]
    assert set(workloads) <= set(summary)
    for w in workloads:
        assert set(summary[w]) == set(run.SYSTEMS), w
        for system, entry in summary[w].items():
            assert set(entry["latency_ms"]) == {"p50", "p95", "p99"} and entry["latency_ms"]["p50"] > 0, (w, system)
            assert entry["throughput_rps"] > 0 and entry["failed"] == 0, (w, system)
            assert {"overall", "worst_window", "windows_violating"} <= set(entry["accuracy"]), (w, system)
            assert entry["accuracy"]["overall"] is not None
            assert len(entry["burst_rps"]) == run.BURST_ROUNDS, (w, system)  # one repeat in --quick
        assert summary[w]["vanilla"]["throughput_vs_vanilla"] == 1.0
        assert summary[w]["oracle"]["accuracy"]["overall"] == 1.0  # the oracle releases the final answer early
        assert summary[w]["vanilla"]["exit_share"] == {"final": 1.0}
    assert "windows_violating_after_changes" in summary["drift"]["apparate"]["accuracy"]
    assert summary["_goals"] and all({"goal", "met", "detail"} <= set(g) for g in summary["_goals"])

    assert summary["_meta"]["max_delay_ms"] == 2.0
    assert all(summary["_meta"]["workloads"][w]["repeats"] == 1 for w in workloads)  # --quick: one repeat everywhere
    assert all(0.0 <= summary[w]["apparate"]["unsplit_batch_share"] <= 1.0 for w in workloads)

    md = (out / "summary.md").read_text()
    assert "max queueing delay 2 ms" in md
    assert "| apparate |" in md and "## Goals" in md and "Machine:" in md and "Command:" in md
    for w in workloads:
        assert (out / f"latency_cdf_{w}.png").stat().st_size > 0
        assert (out / f"apparate_timeline_{w}.png").stat().st_size > 0
        runs = json.loads((out / "runs" / f"{w}.json").read_text())
        assert {r["system"] for r in runs["runs"]} == set(run.SYSTEMS)
        for r in runs["runs"]:  # the first repeat of vanilla and apparate keeps every request's latency
            if r["system"] in run.PER_REQUEST_SYSTEMS and r["repeat"] == 0:
                requests = r["requests"]
                assert len(requests["latency_ms"]) == len(requests["arrival_s"]) > 0
                assert np.all(np.diff(requests["arrival_s"]) >= 0) and min(requests["latency_ms"]) > 0
            else:
                assert "requests" not in r
    assert (out / "drift_timeline.png").stat().st_size > 0
    after = sorted(p.name for p in run.RESULTS.glob("*")) if run.RESULTS.exists() else []
    assert after == results_before  # the committed results are never touched


def test_quick_refuses_to_write_over_the_committed_results():
    run = _script()
    with pytest.raises(SystemExit):
        run.parse_args(["--quick"])
    with pytest.raises(SystemExit):
        run.parse_args(["--quick", "--out", str(run.RESULTS)])


def test_a_negative_batching_delay_is_refused():
    run = _script()
    with pytest.raises(SystemExit):
        run.parse_args(["--max-delay-ms", "-1"])
    assert run.parse_args(["--max-delay-ms", "0"]).max_delay_ms == 0.0


def test_one_command_runs_every_workload_with_its_own_stream_bound_and_repeats():
    run = _script()
    args = run.parse_args([])
    assert (
        [w.name for w in args.workloads] == [w.name for w in run.WORKLOADS]
        and args.repeats is None
        and args.max_stream_s is None
    )
    drift = next(w for w in run.WORKLOADS if w.name == "drift")
    assert drift.max_stream_s == 0 and drift.repeats == 1  # every phase of the drift stream, once
    assert all(w.max_stream_s == 30.0 and w.repeats == 2 for w in run.WORKLOADS if w is not drift)
    assert run.parse_args(["--quick", "--out", "x"]).repeats == 1
    for flag, value in (("--repeats", "0"), ("--max-stream-s", "-1")):
        with pytest.raises(SystemExit):
            run.parse_args([flag, value])


def test_only_apparate_has_the_overload_fallback_and_the_ablation_can_be_named(tiny_resnet_engine):
    run = _script()
    assert "apparate-no-fallback" not in run.parse_args([]).systems, "the ablation runs only when named"
    assert run.parse_args(["--systems", "apparate,apparate-no-fallback"]).systems == [
        "vanilla",
        "apparate",
        "apparate-no-fallback",
    ]
    engine_dir, _ = tiny_resnet_engine
    from apparate_trt.engine_dir import read_manifest

    factory = run.SystemFactory(engine_dir, read_manifest(engine_dir), 1)
    expected = {
        "apparate": True,
        "apparate-no-fallback": False,
        "static-shared": False,
        "apparate-skip": False,
        "apparate-skip-fallback": True,
    }
    for system, fallback in expected.items():
        with factory.load(system) as engine:
            assert engine.overload_fallback is fallback, system
    assert factory.describe("apparate-no-fallback")["overload_fallback"] is False
    assert factory.describe("apparate-skip")["exit_mode"] == "skip"
    with factory.load("apparate-skip") as engine:
        assert engine.exit_mode == "skip"


def test_throughput_ratios_pair_bursts_of_the_same_round():
    run = _script()
    # the machine slows down by half in round 2: paired, the system is 0.9x vanilla in every round
    assert run.paired_ratio([90.0, 45.0, 90.0], [100.0, 50.0, 100.0]) == pytest.approx(0.9)
    assert run.paired_ratio([90.0, float("nan")], [100.0, 50.0]) == pytest.approx(0.9)
    assert run.paired_ratio([], []) is None


def test_bursts_last_about_the_same_time_on_every_model():
    _script()  # puts benchmarks/ on the path
    import workloads

    burst_size, BURST_S, MAX_BATCH, BURST_MAX = (
        workloads.burst_size,
        workloads.BURST_S,
        workloads.MAX_BATCH,
        workloads.BURST_MAX,
    )
    assert burst_size(455.0) == round(455.0 * BURST_S)  # the CV model: about 800 requests
    assert burst_size(103.0) == round(103.0 * BURST_S)  # the NLP model: about 180
    assert burst_size(5.0) == 4 * MAX_BATCH  # at least four full batches
    assert burst_size(10_000.0) == BURST_MAX  # never more than the queue takes


def test_bench_plan_builds_refuses_bad_settings_and_a_missing_engine(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_plan_builds", ROOT / "benchmarks" / "bench_plan_builds.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--engine-dir", str(tmp_path), "--data", "x.npz", "--rounds", "0"])
    assert exit_info.value.code == 2 and "--rounds >= 1" in capsys.readouterr().err
    from apparate_trt.errors import ApparateError

    with pytest.raises(ApparateError, match="engine"):
        bench.main(["--engine-dir", str(tmp_path / "missing"), "--data", "x.npz"])
