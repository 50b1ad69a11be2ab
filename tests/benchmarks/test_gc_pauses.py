"""``benchmarks/gc_pauses.py`` on the tiny ResNet engine: it prints one line of figures per system;
a missing engine directory, a stream too short, a bad rate or too few requests is a one-line error, exit 2."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from runtime_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gc_pauses.py"


def _script():
    return load_script(SCRIPT)


@pytest.mark.parametrize("freeze", [False, True])
def test_it_prints_each_systems_latency_and_collections(tiny_resnet_engine, capsys, freeze):
    engine_dir, eval_npz = tiny_resnet_engine
    argv = ["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--requests", "120", "--rate", "400"]
    assert _script().main(argv + (["--freeze"] if freeze else [])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["vanilla", "apparate"]
    assert all(" p99 " in line and " collections, " in line for line in lines)
    assert gc.get_freeze_count() == 0  # the script leaves the process's GC as it found it


def test_a_missing_engine_directory_is_one_line_and_exit_2(tmp_path, capsys):
    code = _script().main(["--engine-dir", str(tmp_path / "nothing"), "--data", str(tmp_path / "x.npz")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")


@pytest.mark.parametrize("argv", [["--rate", "0"], ["--rate", "nan"], ["--rate", "inf"], ["--requests", "63"]])
def test_a_bad_rate_or_too_few_requests_is_refused_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script().main(argv)
    assert exit_.value.code == 2
    assert "--rate must be a finite number > 0 and --requests >= 64" in capsys.readouterr().err


def test_more_requests_than_the_stream_has_is_one_line_and_exit_2(tiny_resnet_engine, capsys):
    engine_dir, eval_npz = tiny_resnet_engine  # 200 samples
    code = _script().main(["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--requests", "201"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "the stream" in err[0], err
