"""benchmarks/ramp_ceiling.py on the tiny CNN and the tiny BERT: every head family trains and is measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.runtime_helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


def _data_dir(engine: tuple[Path, Path], root: Path) -> Path:
    source = engine[0].parent
    root.mkdir()
    shutil.copy(source / "model.onnx", root / "model.onnx")
    shutil.copy(source / "bootstrap.npz", root / "history.npz")  # an unlabeled history
    shutil.copy(source / "eval.npz", root / "eval.npz")
    return root


@pytest.mark.parametrize("fixture", ["tiny_resnet_engine", "tiny_bert_engine"])
def test_every_head_family_is_trained_and_measured(fixture, request, tmp_path, capsys):
    pytest.importorskip("torch")
    script = load_script(ROOT / "benchmarks" / "ramp_ceiling.py")
    data = _data_dir(request.getfixturevalue(fixture), tmp_path / "data")
    out = tmp_path / "ceiling.json"
    args = ["--data-dir", str(data), "--sites", "0,1", "--sizes", "32,64", "--epochs", "2", "--eval-samples", "32"]
    assert script.main([*args, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    heads = {r["head"] for r in rows}
    assert {"pool_mlp", "stage256_pool_mlp", "stage1024_pool_mlp"} <= heads
    assert {r["site"] for r in rows} == {0, 1} and {r["size"] for r in rows} <= {32, 64}
    for r in rows:
        assert 0.0 <= r["agreement"] <= 1.0 and 0.0 <= r["train_agreement"] <= 1.0 and r["params"] > 0
        assert all(0.0 <= s <= 1.0 for s in r["releasable"])


def test_a_site_out_of_range_is_one_error_line(tiny_resnet_engine, tmp_path):
    script = load_script(ROOT / "benchmarks" / "ramp_ceiling.py")
    data = _data_dir(tiny_resnet_engine, tmp_path / "data")
    with pytest.raises(SystemExit, match=r"--sites \[99\] not in 0\.\.\d+"):
        script.main(["--data-dir", str(data), "--sites", "99", "--sizes", "32"])
