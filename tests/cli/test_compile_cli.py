"""apparate-compile end to end, and a one-line error with exit status 2 for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_models
from onnx import TensorProto, helper

from apparate_trt.cli.compile import main

N_OK = 40


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny VGG-like model and valid data, plus a set of bad models."""
    root = tmp_path_factory.mktemp("compile_cli")
    tiny = tiny_models.vgg_like()
    onnx.save(tiny.model, str(root / "model.onnx"))
    np.savez(root / "data.npz", **tiny_models.separable_images("vgg", N_OK, seed=3))

    two = onnx.ModelProto()
    two.CopyFrom(tiny.model)
    two.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 16]))
    onnx.save(two, str(root / "two_outputs.onnx"))

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 16, 16])
    relu = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "relu", [x], [y])
    onnx.save(
        helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        str(root / "not_scores.onnx"),
    )

    broken = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "broken", [x], [y])
    onnx.save(
        helper.make_model(broken, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(root / "broken.onnx")
    )

    (root / "text.onnx").write_text("this is not a model\n")
    return {"root": root, "model": root / "model.onnx", "data": root / "data.npz"}


def _data(root: Path, name: str, **arrays: np.ndarray) -> Path:
    path = root / name
    np.savez(path, **arrays)
    return path


def _run_main(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run ``main(args)``; assert exit status 2 and one 'error:' line on stderr; return that line."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _bad(
    files: dict[str, Path], *, model: Path | None = None, data: Path | None = None, out: str = "out", extra: tuple = ()
) -> list:
    return [
        model or files["model"],
        "--data",
        data or files["data"],
        "--out",
        files["root"] / out,
        "--max-batch",
        "2",
        *extra,
    ]


def test_end_to_end_console_command(files: dict[str, Path]) -> None:
    """The installed console script compiles a two-output model with --output and exits 0."""
    out = files["root"] / "engine"
    command = [
        sys.executable,
        "-c",
        "import sys; from apparate_trt.cli.compile import main; sys.exit(main())",
        str(files["root"] / "two_outputs.onnx"),
        "--data",
        str(files["data"]),
        "--out",
        str(out),
        "--output",
        "logits",
        "--max-batch",
        "2",
        "--threads",
        "1",
        "--seed",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compile time:" in done.stdout and "[8/8]" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["model"]["output"] == "logits"
    assert len(manifest["ramps"]) == len(manifest["sites"]) >= 2
    # an existing engine dir is replaced only with --force
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "--force" in again.stderr
    assert "Traceback" not in again.stderr


def test_console_script_reports_one_line_error(files: dict[str, Path]) -> None:
    done = subprocess.run(
        [
            "apparate-compile",
            str(files["root"] / "missing.onnx"),
            "--data",
            str(files["data"]),
            "--out",
            str(files["root"] / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ") and "does not exist" in done.stderr
    )


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--data",
        "--out",
        "--budget",
        "--max-batch",
        "--backend",
        "--seed",
        "--output",
        "--threads",
        "--augment",
        "--blends",
        "--fp16",
        "--force",
    ):
        assert flag in text
    assert "default: 0.02" in text and "default: 16" in text


def test_missing_model_file(files, capsys) -> None:
    assert "does not exist" in _run_main(capsys, _bad(files, model=files["root"] / "nope.onnx"))


def test_not_onnx(files, capsys) -> None:
    assert "not an ONNX model" in _run_main(capsys, _bad(files, model=files["root"] / "text.onnx"))


def test_checker_failure(files, capsys) -> None:
    assert "ONNX checker" in _run_main(capsys, _bad(files, model=files["root"] / "broken.onnx"))


def test_output_not_scores(files, capsys) -> None:
    assert "[batch, classes]" in _run_main(capsys, _bad(files, model=files["root"] / "not_scores.onnx"))


def test_several_outputs_need_output_flag(files, capsys) -> None:
    assert "--output" in _run_main(capsys, _bad(files, model=files["root"] / "two_outputs.onnx"))
    line = _run_main(capsys, _bad(files, model=files["root"] / "two_outputs.onnx", extra=("--output", "nope")))
    assert "no output 'nope'" in line


def test_npz_missing_input(files, capsys) -> None:
    data = _data(files["root"], "renamed.npz", image=np.zeros((20, 3, 16, 16), np.float32))
    assert "no array 'input'" in _run_main(capsys, _bad(files, data=data))


def test_npz_wrong_shape(files, capsys) -> None:
    data = _data(files["root"], "shape.npz", input=np.zeros((20, 3, 8, 8), np.float32))
    assert "axis 2 must be 16" in _run_main(capsys, _bad(files, data=data))


def test_npz_wrong_dtype(files, capsys) -> None:
    data = _data(files["root"], "dtype.npz", input=np.zeros((20, 3, 16, 16), np.int32))
    line = _run_main(capsys, _bad(files, data=data))
    assert "int32" in line and "float32" in line


def test_npz_nan(files, capsys) -> None:
    x = np.zeros((20, 3, 16, 16), np.float32)
    x[3, 0, 0, 0] = np.nan
    assert "1 NaN" in _run_main(capsys, _bad(files, data=_data(files["root"], "nan.npz", input=x)))


def test_npz_too_few_samples(files, capsys) -> None:
    data = _data(files["root"], "few.npz", input=np.zeros((5, 3, 16, 16), np.float32))
    assert "5 samples but at least 10" in _run_main(capsys, _bad(files, data=data))


def test_out_dir_not_an_engine_dir(files, capsys) -> None:
    (files["root"] / "busy").mkdir()
    (files["root"] / "busy" / "notes.txt").write_text("mine")
    assert "not an engine directory" in _run_main(capsys, _bad(files, out="busy", extra=("--force",)))
    assert (files["root"] / "busy" / "notes.txt").exists()


def test_out_dir_not_writable(files, capsys) -> None:
    (files["root"] / "plainfile").write_text("x")
    assert "cannot be written" in _run_main(capsys, _bad(files, out="plainfile/engine"))


def test_existing_engine_dir_needs_force(files, capsys) -> None:
    (files["root"] / "old").mkdir()
    (files["root"] / "old" / "manifest.json").write_text("{}")
    assert "--force" in _run_main(capsys, _bad(files, out="old"))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--budget", "1.5"), "--budget must be"),
        (("--budget", "0"), "--budget must be"),
        (("--max-batch", "0"), "--max-batch must be"),
        (("--threads", "0"), "--threads must be"),
        (("--augment", "8"), "--augment must be an integer from 0"),
        (("--augment", "-1"), "--augment must be an integer from 0"),
        (("--blends", "17"), "--blends must be an integer from 0"),
        (("--blends", "-1"), "--blends must be an integer from 0"),
        (("--backend", "tensorrt"), "--backend onnxruntime"),
        (("--backend", "cuda"), "invalid choice"),
        (("--backend", "onnxruntime-gpu"), "pip install onnxruntime-gpu"),
        (("--fp16",), "--fp16 applies to TensorRT engines only; add --backend tensorrt"),
        (("--budget", "lots"), "invalid float value"),
    ],
)
def test_bad_flags(files, capsys, extra, expected) -> None:
    assert expected in _run_main(capsys, _bad(files, extra=extra))


def test_missing_required_flag(files, capsys) -> None:
    assert "--data" in _run_main(capsys, [files["model"], "--out", files["root"] / "x"])
