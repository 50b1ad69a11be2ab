"""The bootstrap rows a compile trains on: any number of samples in, at most ``max_samples`` used.

Ramps learn the original model's own outputs, so a user may hand ``apparate-compile --data`` any
number of unlabeled inputs (their history). The compile's memory grows with the rows it keeps
features of (about 4 bytes per pooled feature per row and site, ``training.collect_features``),
so above ``max_samples`` rows it uses a seeded random subsample of that size, spread over the whole
file (a file sorted by class or time is not cut to its start). The subsample is copied chunk by
chunk into a scratch ``.npy`` memory map, so neither the file nor the subsample is ever resident
at once: with an uncompressed ``.npz`` (``numpy.savez``, memory-mapped by ``data.load_inputs``) the
compile's peak memory does not depend on the file's size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from apparate_trt.data import num_samples

DEFAULT_MAX_SAMPLES = 20000
"""The bootstrap rows a compile uses by default (``--max-samples``). On the CV benchmark model
(EfficientNet-Lite0, 15 sites) ramp agreement rose by about 1 point and the share one ramp can
release at 0.3% disagreement by up to 10 points from 4,000 to 20,000 samples
(``benchmarks/ramp_diagnosis.py``); the compile held 5 GB at 20,000."""
CHUNK_ROWS = 1024


def subsample_index(n: int, max_samples: int, seed: int) -> np.ndarray:
    """Sorted, seeded indices of ``max_samples`` of ``n`` rows (all of them if ``n <= max_samples``)."""
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed + 104729).permutation(n)[:max_samples])


def bounded_bootstrap(
    data: Mapping[str, np.ndarray],
    max_samples: int,
    seed: int,
    scratch: Path,
    log: Callable[[str], None] = print,
) -> dict[str, np.ndarray]:
    """``data`` itself when it has at most ``max_samples`` rows; else a seeded subsample of that
    many rows, copied in chunks of :data:`CHUNK_ROWS` rows into read-only ``.npy`` memory maps
    under ``scratch`` (which must outlive their use)."""
    n = num_samples(dict(data))
    if n <= max_samples:
        return dict(data)
    index = subsample_index(n, max_samples, seed)
    scratch.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    for name, array in data.items():
        path = scratch / f"bootstrap_{len(out)}.npy"
        target = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=(index.size, *array.shape[1:]))
        for begin in range(0, index.size, CHUNK_ROWS):
            target[begin : begin + CHUNK_ROWS] = array[index[begin : begin + CHUNK_ROWS]]
        target.flush()
        del target
        out[name] = np.load(path, mmap_mode="r")
    log(f"  using a seeded random {index.size} of the {n} samples (--max-samples {max_samples})")
    return out
