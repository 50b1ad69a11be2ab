"""``apparate-run`` end to end (a real subprocess on a tiny engine) and its one-line errors.

Most bad inputs are checked in-process through ``main(argv)`` (the same code path as the console
script, without a second interpreter start); one is checked as a subprocess to cover the exit
status and the absence of a traceback at the process level.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apparate_trt.cli.run import main

RUN = [sys.executable, "-m", "apparate_trt.cli.run"]


def _run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def _assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status != 0
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_replay_end_to_end_writes_report_and_plots(tiny_resnet_engine, tmp_path):
    engine_dir, eval_npz = tiny_resnet_engine
    report_path, plot_dir = tmp_path / "report.json", tmp_path / "plots"
    proc = subprocess.run(
        [
            *RUN,
            "--engine-dir",
            str(engine_dir),
            "--data",
            str(eval_npz),
            "--arrivals",
            "fixed:400",
            "--limit",
            "120",
            "--max-batch",
            "4",
            "--threads",
            "1",
            "--report",
            str(report_path),
            "--plot",
            str(plot_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "p50" in proc.stdout and "exit share" in proc.stdout
    assert "replay finished: 120/120" in proc.stderr  # the progress line
    report = json.loads(report_path.read_text())
    for key in (
        "requests",
        "latency_ms",
        "throughput_rps",
        "accuracy",
        "exit_share",
        "events",
        "threshold_history",
        "mode",
        "windows_violating",
    ):
        assert key in report
    assert report["requests"] == 120 and report["mode"] == "apparate"
    assert set(report["latency_ms"]) >= {"p50", "p95", "p99"}
    assert set(report["accuracy"]) >= {"overall", "worst_window", "window_size"}
    assert all({"t", "kind", "reason"} <= set(e) for e in report["events"])
    for name in ("latency_cdf.png", "timeline.png"):
        png = plot_dir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_bad_input_in_a_subprocess_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [*RUN, "--engine-dir", str(tmp_path / "missing"), "--data", str(tmp_path / "x.npz")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    _assert_one_line_error(proc.returncode, proc.stderr, "does not exist")


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--engine-dir",
        "--data",
        "--arrivals",
        "--backend",
        "--max-batch",
        "--max-delay-ms",
        "--accuracy-constraint",
        "--mode",
        "--report",
        "--plot",
        "--threads",
        "--limit",
        "--seed",
        "--confidence",
        "--serve",
        "--model-name",
        "--http-port",
        "--grpc-port",
        "--queue-size",
        "--request-timeout-s",
        "--max-connections",
        "--max-inflight",
        "--tls-cert",
        "--tls-key",
        "--auth-token-file",
        "--no-refits",
        "--refit-every",
        "--save-ramps",
    ):
        assert flag in text
    assert "default: poisson:100" in text and "default: 0.01" in text


@pytest.fixture()
def engine_copy(tiny_resnet_engine, tmp_path) -> tuple[Path, Path]:
    engine_dir, eval_npz = tiny_resnet_engine
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    return copy, eval_npz


def _bad_engine(kind: str, engine: Path) -> None:
    manifest = engine / "manifest.json"
    if kind == "corrupt":
        manifest.write_text("{ not json", encoding="utf-8")
    elif kind == "version":
        data = json.loads(manifest.read_text())
        data["format_version"] = 99
        manifest.write_text(json.dumps(data), encoding="utf-8")
    elif kind == "no_manifest":
        manifest.unlink()
    elif kind == "ramp_replaced":  # random bytes in the last ramp, which no initial config activates
        data = json.loads(manifest.read_text())
        (engine / data["ramps"][-1]["file"]).write_bytes(bytes(range(256)) * 4)
    elif kind == "path_outside":
        data = json.loads(manifest.read_text())
        data["ramps"][0]["file"] = "../../../../etc/passwd"
        manifest.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("corrupt", "not valid JSON"),
        ("version", "format_version 99"),
        ("no_manifest", "not an engine directory"),
        ("ramp_replaced", "does not match its SHA-256"),
        ("path_outside", "ramps[0].file '../../../../etc/passwd' is outside"),
    ],
)
def test_bad_engine_directories(engine_copy, kind, fragment, capsys):
    engine, eval_npz = engine_copy
    _bad_engine(kind, engine)
    status, _, err = _run_in_process(["--engine-dir", str(engine), "--data", str(eval_npz), "--quiet"], capsys)
    _assert_one_line_error(status, err, fragment)


def _write_data(kind: str, path: Path, eval_npz: Path) -> None:
    with np.load(eval_npz) as npz:
        arrays = {name: npz[name] for name in npz.files}
    name = next(iter(arrays))
    if kind == "nan":
        bad = arrays[name].astype(np.float32)
        bad[3].flat[0] = np.nan
        arrays[name] = bad
    elif kind == "wrong_name":
        arrays = {"not_an_input": arrays[name]}
    elif kind == "wrong_shape":
        arrays[name] = arrays[name][:, :1]
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "kind, fragment",
    [("nan", "NaN"), ("wrong_name", "has no array"), ("wrong_shape", "shape")],
)
def test_data_not_matching_the_model(tiny_resnet_engine, tmp_path, kind, fragment, capsys):
    engine_dir, eval_npz = tiny_resnet_engine
    data = tmp_path / "bad.npz"
    _write_data(kind, data, eval_npz)
    status, _, err = _run_in_process(["--engine-dir", str(engine_dir), "--data", str(data), "--quiet"], capsys)
    _assert_one_line_error(status, err, fragment)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--arrivals", "poisson:fast"], "not a number"),
        (["--arrivals", "trace:/nonexistent.txt"], "does not exist"),
        (["--max-batch", "0"], "--max-batch"),
        (["--accuracy-constraint", "1.5"], "--accuracy-constraint"),
        (["--threads", "0"], "--threads"),
        (["--mode", "fast"], "invalid choice"),
        (["--max-delay-ms", "-1"], "--max-delay-ms"),
        (["--serve", "--max-connections", "0"], "--max-connections"),
        (["--serve", "--max-inflight", "0"], "--max-inflight"),
        (["--serve", "--tls-cert", "cert.pem"], "both --tls-cert and --tls-key"),
        (["--refit-every", "0"], "--refit-every must be at least 1"),
        (["--save-ramps", "saved", "--no-refits"], "drop --no-refits"),
        (["--save-ramps", "saved", "--mode", "vanilla"], "needs --mode apparate"),
        (
            ["--serve", "--http-port", "0", "--grpc-port", "0", "--auth-token-file", "/nonexistent/token"],
            "cannot read --auth-token-file",
        ),
    ],
)
def test_bad_flags(tiny_resnet_engine, extra, fragment, capsys):
    engine_dir, eval_npz = tiny_resnet_engine
    status, _, err = _run_in_process(
        ["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--quiet", *extra], capsys
    )
    _assert_one_line_error(status, err, fragment)


def test_data_is_required_without_serve(tiny_resnet_engine, capsys):
    status, _, err = _run_in_process(["--engine-dir", str(tiny_resnet_engine[0])], capsys)
    _assert_one_line_error(status, err, "--data")


@pytest.mark.parametrize("flag, unsplit", [([], True), (["--no-overload-fallback"], False)])
def test_burst_replay_reports_the_overload_fallback(tiny_resnet_engine, tmp_path, flag, unsplit, capsys):
    engine_dir, eval_npz = tiny_resnet_engine
    trace, report_path = tmp_path / "burst.txt", tmp_path / "report.json"
    trace.write_text("\n".join(["0"] * 48) + "\n")  # 48 requests at once: a backlog of full batches
    status, out, err = _run_in_process(
        [
            "--engine-dir",
            str(engine_dir),
            "--data",
            str(eval_npz),
            "--arrivals",
            f"trace:{trace}",
            "--max-batch",
            "4",
            "--threads",
            "1",
            "--quiet",
            "--report",
            str(report_path),
            *flag,
        ],
        capsys,
    )
    assert status == 0, err
    report = json.loads(report_path.read_text())
    batches = report["batches"]
    assert batches["run"] >= 12 and report["settings"]["overload_fallback"] is unsplit
    assert (batches["unsplit"] > 0) is unsplit and batches["unsplit"] < batches["run"]
    assert report["completed"] == 48 and report["accuracy"]["overall"] is not None
    assert f"{batches['run']} run, {batches['unsplit']} unsplit" in out


def test_skip_mode_replay_reports_skipped_rows_judged_offline(tiny_resnet_engine, tmp_path, capsys):
    engine_dir, eval_npz = tiny_resnet_engine
    report_path = tmp_path / "report.json"
    status, out, err = _run_in_process(
        [
            "--engine-dir",
            str(engine_dir),
            "--data",
            str(eval_npz),
            "--arrivals",
            "poisson:400",
            "--threads",
            "1",
            "--quiet",
            "--accuracy-constraint",
            "0.05",
            "--exit-mode",
            "skip",
            "--audit-rate",
            "0.05",
            "--report",
            str(report_path),
        ],
        capsys,
    )
    assert status == 0, err
    report = json.loads(report_path.read_text())
    assert report["exit_mode"] == "skip" and report["settings"]["exit_mode"] == "skip"
    assert report["rows"]["skipped"] > 0 and report["rows"]["released"] >= report["rows"]["skipped"]
    assert report["accuracy"]["judged"] == report["completed"] and report["accuracy"]["reference"] == "offline"
    assert "skip mode" in out and "left the batch" in out


@pytest.mark.parametrize(
    "extra, fragment", [(["--audit-rate", "0.01"], "--audit-rate"), (["--exit-mode", "drop"], "invalid choice")]
)
def test_bad_skip_flags(tiny_resnet_engine, extra, fragment, capsys):
    engine_dir, eval_npz = tiny_resnet_engine
    status, _, err = _run_in_process(
        ["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--quiet", *extra], capsys
    )
    _assert_one_line_error(status, err, fragment)


def test_a_gpu_backend_this_machine_lacks_is_one_clear_error(tiny_resnet_engine, capsys):
    from apparate_trt.backends.tensorrt import unavailable_reason

    if unavailable_reason() is None:  # pragma: no cover - a GPU machine with TensorRT
        pytest.skip("TensorRT is available here")
    engine_dir, eval_npz = tiny_resnet_engine
    argv = ["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--quiet", "--backend", "tensorrt"]
    _assert_one_line_error(*_run_in_process(argv, capsys)[::2], "tensorrt backend needs an NVIDIA GPU with TensorRT")


def test_compare_vanilla_replays_the_same_arrivals_and_prints_the_ratio(tiny_resnet_engine, tmp_path, capsys):
    engine_dir, eval_npz = tiny_resnet_engine
    report_path = tmp_path / "report.json"
    argv = ["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--arrivals", "fixed:200", "--threads", "1"]
    status, out, err = _run_in_process([*argv, "--quiet", "--compare-vanilla", "--report", str(report_path)], capsys)
    assert status == 0, err
    assert "Apparate beside vanilla on the same arrivals" in out
    table = [line for line in out.splitlines() if line.startswith("| apparate |") or line.startswith("| vanilla |")]
    assert len(table) == 2 and "1.00x" in table[1]  # vanilla against itself
    report = json.loads(report_path.read_text())
    assert report["vanilla"]["mode"] == "vanilla" and report["vanilla"]["requests"] == report["requests"]
    status, _, err = _run_in_process([*argv, "--mode", "vanilla", "--compare-vanilla"], capsys)
    _assert_one_line_error(status, err, "--compare-vanilla")


def test_help_states_the_learning_defaults(capsys):
    from apparate_trt.runtime.learning.learner import REFIT_EVERY
    from apparate_trt.runtime.learning.reservoir import RESERVOIR_BYTES, RESERVOIR_SAMPLES, TOTAL_BYTES

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"newest {RESERVOIR_SAMPLES} samples" in text and f"every {REFIT_EVERY} new samples" in text
    assert f"{RESERVOIR_BYTES // 2**20} MiB per ramp, {TOTAL_BYTES // 2**20} MiB in all" in text
    assert f"(default {REFIT_EVERY})" in text


def test_save_ramps_refuses_a_directory_that_holds_files(tiny_resnet_engine, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "manifest.json").write_text("{}")
    engine_dir, eval_npz = tiny_resnet_engine
    status, _, err = _run_in_process(
        ["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--save-ramps", str(taken)], capsys
    )
    _assert_one_line_error(status, err, "exists and is not empty")


def test_replay_refits_ramps_reports_them_and_saves_an_engine_directory(tiny_resnet_engine, tmp_path, capsys):
    pytest.importorskip("torch")
    import tiny_models

    from apparate_trt.engine_dir import read_manifest

    engine_dir, _ = tiny_resnet_engine
    stream = tmp_path / "stream.npz"
    np.savez(stream, **tiny_models.separable_images("resnet", 640, seed=7))
    report_path, saved = tmp_path / "report.json", tmp_path / "saved"
    argv = ["--engine-dir", str(engine_dir), "--data", str(stream), "--arrivals", "fixed:200", "--max-batch", "4"]
    argv += ["--threads", "1", "--refit-every", "256", "--save-ramps", str(saved), "--report", str(report_path)]
    status, out, err = _run_in_process([*argv, "--quiet"], capsys)
    assert status == 0, err
    learning = json.loads(report_path.read_text())["learning"]
    assert learning["status"] == "on" and learning["refits"] >= 1, learning
    assert learning["reservoir_samples"] > 256 and learning["reservoir_bytes"] > 0
    assert "ramp learning   " in out and f"{learning['refits']} refits" in out
    assert f"engine directory written to {saved}" in out
    manifest = read_manifest(saved)  # checks every file
    refitted = [r.site for r in manifest.ramps if r.refit]
    assert len(refitted) == learning["refits_accepted"]
    status, _, err = _run_in_process(
        ["--engine-dir", str(saved), "--data", str(stream), "--limit", "40", "--no-refits", "--quiet"], capsys
    )
    assert status == 0, err
