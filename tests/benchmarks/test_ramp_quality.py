"""``benchmarks/ramp_quality.py``: the releasable share per ramp, on a real compiled tiny engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runtime_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ramp_quality.py"


def _script():
    return load_script(SCRIPT)


def test_runs_on_a_compiled_engine_and_writes_json(tiny_resnet_engine, tmp_path, capsys) -> None:
    engine_dir, eval_npz = tiny_resnet_engine
    out = tmp_path / "quality.json"
    assert (
        _script().main(["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--samples", "40", "--out", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert result["samples"] == 40 and [r["site"] for r in result["rows"]] == [s["id"] for s in manifest["sites"]]
    for row in result["rows"]:
        assert 0.0 <= row["agreement"] <= 1.0
        low, high = row["confident_share"]["0.003"], row["confident_share"]["0.01"]
        assert 0.0 <= low <= high <= 1.0  # a looser target never releases less
    assert "releasable" in capsys.readouterr().out


def test_bad_input_gets_one_error_line_and_a_non_zero_exit(tiny_resnet_engine, tmp_path, capsys) -> None:
    engine_dir, eval_npz = tiny_resnet_engine
    script = _script()
    assert script.main(["--engine-dir", str(tmp_path), "--data", str(eval_npz)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not an engine directory" in err
    assert script.main(["--engine-dir", str(engine_dir), "--data", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for errors, message in (("lots", "comma-separated fractions"), ("0.5,2", "fractions in [0, 1]")):
        with pytest.raises(SystemExit) as info:
            script.main(["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--errors", errors])
        assert info.value.code == 2 and message in capsys.readouterr().err
