"""Loading and validating .npz inputs against a model's inputs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
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


def test_savez_file_is_memory_mapped(tmp_path: Path) -> None:
    path = _save(tmp_path, **_good())
    data = load_inputs(path, INPUTS)
    with np.load(path) as expected:
        for name in ("input_ids", "pixels"):
            assert isinstance(data[name], np.memmap) and data[name].mode == "r"
            assert not data[name].flags.writeable and data[name].flags.c_contiguous
            np.testing.assert_array_equal(data[name], expected[name])
    np.testing.assert_array_equal(np.ascontiguousarray(data["input_ids"][2:4]), _good()["input_ids"][2:4])


def test_savez_compressed_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez_compressed(path, **_good())
    data = load_inputs(path, INPUTS)
    assert not isinstance(data["pixels"], np.memmap) and isinstance(data["pixels"], np.ndarray)
    np.testing.assert_array_equal(data["input_ids"], _good()["input_ids"])


def test_float64_file_is_converted_in_memory(tmp_path: Path) -> None:
    good = _good()
    data = load_inputs(_save(tmp_path, input_ids=good["input_ids"], pixels=good["pixels"].astype(np.float64)), INPUTS)
    assert data["pixels"].dtype == np.float32 and not isinstance(data["pixels"], np.memmap)
    assert isinstance(data["input_ids"], np.memmap)
    np.testing.assert_array_equal(data["pixels"], good["pixels"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_only_in_second_chunk_is_refused(tmp_path: Path, dtype: type) -> None:
    n = 5000  # more than one 4096-row chunk
    good = _good(n)
    pixels = good["pixels"].astype(dtype)
    pixels[4500, 1, 2, 3] = np.nan
    message = _error(_save(tmp_path, input_ids=good["input_ids"], pixels=pixels))
    assert "pixels" in message and "1 NaN and 0 inf" in message and "1 samples" in message


def test_integer_overflow_in_second_chunk_is_refused(tmp_path: Path) -> None:
    inputs = [TensorInfo("ids", "int8", ["N", 2])]
    ids = np.zeros((5000, 2), dtype=np.int64)
    ids[4999, 1] = 1000
    np.savez(tmp_path / "d.npz", ids=ids)
    with pytest.raises(ApparateError, match="values 0..1000 that do not fit"):
        load_inputs(tmp_path / "d.npz", inputs)


def test_truncated_savez_file_is_one_line_error(tmp_path: Path) -> None:
    path = _save(tmp_path, **_good(50))
    path.write_bytes(path.read_bytes()[:-200])
    assert "not a readable .npz" in _error(path)


def test_member_running_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    """A zip directory intact but an array whose .npy header promises more rows than the file holds."""
    good = _good()
    path = tmp_path / "data.npz"
    header = np.lib.format.header_data_from_array_1_0(good["input_ids"])
    header["shape"] = (1_000_000, 8)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("input_ids.npy", "w") as fp:
            np.lib.format.write_array_header_1_0(fp, header)
            fp.write(good["input_ids"].tobytes())
        with zf.open("pixels.npy", "w") as fp:
            np.lib.format.write_array(fp, good["pixels"])
    message = _error(path)
    assert "truncated" in message and "input_ids" in message


def test_corrupt_stored_member_is_one_line_error(tmp_path: Path) -> None:
    path = _save(tmp_path, **_good())
    raw = bytearray(path.read_bytes())
    at = raw.index(np.arange(40, dtype=np.int64)[7:8].tobytes())  # a byte of input_ids' data
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    message = _error(path)
    assert "cannot be read" in message and "CRC" in message


def test_corrupt_compressed_member_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez_compressed(path, **_good(200))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("pixels.npy")
    at = info.header_offset + 30 + len(info.filename) + 60  # inside the deflate stream
    raw[at : at + 20] = bytes(20)
    path.write_bytes(bytes(raw))
    assert "cannot be read" in _error(path)


_PEAK_SCRIPT = """
import resource, sys
import numpy as np
from apparate_trt.data import load_inputs
from apparate_trt.graph.ingest import TensorInfo

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = load_inputs(sys.argv[1], [TensorInfo("x", "float32", ["N", 256, 256])])
x = data["x"]
assert isinstance(x, np.memmap) and x.shape == (1600, 256, 256), (type(x), x.shape)
row = np.ascontiguousarray(x[1234])
assert row.shape == (256, 256) and float(row[0, 0]) == 1.0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024)
"""


def test_peak_memory_of_a_large_savez_file_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    # ~400 MB of float32, written from a broadcast view so the test itself holds no full copy
    np.savez(path, x=np.broadcast_to(np.float32(1.0), (1600, 256, 256)))
    assert path.stat().st_size > 400e6
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr
    growth_mb = int(done.stdout.strip().splitlines()[-1])
    assert growth_mb < 150, f"load_inputs grew the resident set by {growth_mb} MB"
