"""Loading and validating .npz inputs against a model's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apparate_trt.data import DataWarning, load_inputs
from apparate_trt.errors import ApparateError
from apparate_trt.graph.ingest import TensorInfo

INPUTS = [TensorInfo("input_ids", "int64", ["N", 8]), TensorInfo("pixels", "float32", ["N", 3, "H", 4])]


def _save(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _good(n: int = 5) -> dict[str, np.ndarray]:
    return {"input_ids": np.arange(n * 8, dtype=np.int64).reshape(n, 8), "pixels": np.ones((n, 3, 6, 4), np.float32)}


def _error(path: Path, min_samples: int = 1) -> str:
    with pytest.raises(ApparateError) as info:
        load_inputs(path, INPUTS, min_samples=min_samples)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_loads_and_keeps_values(tmp_path: Path) -> None:
    data = load_inputs(_save(tmp_path, **_good()), INPUTS)
    assert set(data) == {"input_ids", "pixels"}
    assert data["input_ids"].dtype == np.int64 and data["pixels"].shape == (5, 3, 6, 4)
    assert data["pixels"].flags.c_contiguous
    np.testing.assert_array_equal(data["input_ids"], _good()["input_ids"])


def test_same_kind_casts_are_applied(tmp_path: Path) -> None:
    good = _good()
    data = load_inputs(
        _save(tmp_path, input_ids=good["input_ids"].astype(np.int32), pixels=good["pixels"].astype(np.float64)), INPUTS
    )
    assert data["input_ids"].dtype == np.int64 and data["pixels"].dtype == np.float32


def test_cross_kind_cast_is_refused(tmp_path: Path) -> None:
    good = _good()
    message = _error(_save(tmp_path, input_ids=good["input_ids"].astype(np.float32), pixels=good["pixels"]))
    assert "input_ids" in message and "float32" in message and "int64" in message


def test_integer_overflow_is_refused(tmp_path: Path) -> None:
    inputs = [TensorInfo("ids", "int8", ["N", 2])]
    np.savez(tmp_path / "d.npz", ids=np.array([[1, 1000]], dtype=np.int64))
    with pytest.raises(ApparateError, match="do not fit"):
        load_inputs(tmp_path / "d.npz", inputs)


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope.npz")


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    path.write_text("hello")
    assert "not a readable .npz" in _error(path)
    np.save(tmp_path / "one.npy", np.zeros(3))
    assert "single .npy" in _error(tmp_path / "one.npy")


def test_missing_input_names_what_the_file_has(tmp_path: Path) -> None:
    message = _error(_save(tmp_path, input_ids=_good()["input_ids"], images=_good()["pixels"]))
    assert "'pixels'" in message and "images" in message


def test_extra_array_is_ignored_with_warning(tmp_path: Path) -> None:
    with pytest.warns(DataWarning, match="labels"):
        data = load_inputs(_save(tmp_path, labels=np.zeros(5), **_good()), INPUTS)
    assert "labels" not in data


def test_wrong_rank(tmp_path: Path) -> None:
    message = _error(_save(tmp_path, input_ids=_good()["input_ids"], pixels=np.ones((5, 3, 6), np.float32)))
    assert "pixels" in message and "rank 3" in message and "rank 4" in message


def test_wrong_fixed_dim(tmp_path: Path) -> None:
    message = _error(_save(tmp_path, input_ids=np.zeros((5, 9), np.int64), pixels=_good()["pixels"]))
    assert "axis 1 must be 8, not 9" in message


def test_nan_and_inf(tmp_path: Path) -> None:
    good = _good()
    good["pixels"][1, 0, 0, 0] = np.nan
    good["pixels"][2, 0, 0, 1] = np.inf
    message = _error(_save(tmp_path, **good))
    assert "pixels" in message and "1 NaN and 1 inf" in message and "2 samples" in message


def test_overflow_to_inf_after_conversion(tmp_path: Path) -> None:
    good = _good()
    pixels = good["pixels"].astype(np.float64)
    pixels[0, 0, 0, 0] = 1e300
    assert "inf" in _error(_save(tmp_path, input_ids=good["input_ids"], pixels=pixels))


def test_different_sample_counts(tmp_path: Path) -> None:
    message = _error(_save(tmp_path, input_ids=_good(5)["input_ids"], pixels=_good(4)["pixels"]))
    assert "different numbers of samples" in message and "input_ids 5" in message and "pixels 4" in message


def test_too_few_samples(tmp_path: Path) -> None:
    assert "has 5 samples but at least 10" in _error(_save(tmp_path, **_good()), min_samples=10)
