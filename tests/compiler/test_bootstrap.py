"""The bootstrap rows a compile uses: a seeded, spread-out subsample above --max-samples."""

from __future__ import annotations

import numpy as np

from apparate_trt.compiler.bootstrap import bounded_bootstrap, subsample_index


def test_small_bootstraps_are_used_whole(tmp_path) -> None:
    data = {"x": np.arange(20, dtype=np.float32).reshape(10, 2)}
    assert bounded_bootstrap(data, 10, 0, tmp_path, log=lambda line: None)["x"] is data["x"]
    assert not list(tmp_path.iterdir())


def test_large_bootstraps_are_subsampled_over_the_whole_file_into_memory_maps(tmp_path) -> None:
    n = 5000
    data = {"image": np.arange(n * 6, dtype=np.float32).reshape(n, 1, 2, 3), "ids": np.arange(n, dtype=np.int64)}
    lines: list[str] = []
    out = bounded_bootstrap(data, 1500, 3, tmp_path / "scratch", log=lines.append)
    index = subsample_index(n, 1500, 3)
    assert index.size == 1500 and np.all(np.diff(index) > 0)
    assert index.min() < 500 and index.max() > 4500  # spread over the file, not its start
    for name, array in out.items():
        assert isinstance(array, np.memmap) and not array.flags.writeable
        np.testing.assert_array_equal(array, data[name][index])
    assert np.array_equal(out["ids"], index)  # the rows of every input stay together
    assert "1500 of the 5000 samples" in lines[0]
    assert np.array_equal(subsample_index(n, 1500, 3), index)  # seeded
