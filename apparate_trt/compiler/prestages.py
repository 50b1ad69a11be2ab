"""Learning the ramps' per-position stages on a bounded subsample (before the features pass).

Ramp kinds with a learned stage before their pooling (:mod:`apparate_trt.ramps.prestage`) cannot
be trained on pooled features alone: the stage needs each site's activation at every position. One
pass of the model over a seeded subsample of the bootstrap keeps those activations, pre-pooled to at
most ``prestage.MAX_POSITIONS`` positions, within :data:`SUBSAMPLE_BYTES` in all; each site's
stage is trained on them end to end, then frozen. The features pass (``training.collect_features``)
then runs every bootstrap sample through the frozen stages, so the heads train on all of them.

The subsample's rows are reported in ``PreStages.rows``: the compiler keeps them out of the
held-out statistics (nothing that trained a stage is used to measure it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from apparate_trt.backends import open_runner
from apparate_trt.data import num_samples, take
from apparate_trt.graph.split import with_extra_outputs
from apparate_trt.ramps.fit import target_probabilities
from apparate_trt.ramps.model import MASKED_KINDS, SiteLike, kind_spec
from apparate_trt.ramps.prestage import PreStage, PreStageTraining, prepool, prepool_stride, train_prestage

Log = Callable[[str], None]

SUBSAMPLE_BYTES = 1 << 30
"""The memory (bytes) that the subsample's pre-pooled site activations may hold in all (1 GiB),
shared equally among the sites that have a stage to learn."""
MAX_ROWS = 4000
"""At most this many bootstrap samples train the stages (and at most half of the bootstrap)."""


@dataclass
class PreStages:
    """The frozen stages, keyed by (site position, kind), and the bootstrap rows that trained them."""

    stages: dict[tuple[int, str], PreStage] = field(default_factory=dict)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def get(self, site: int, kind: str) -> PreStage | None:
        return self.stages.get((site, kind))


def subsample_rows(n: int, seed: int, max_rows: int = MAX_ROWS) -> np.ndarray:
    """A seeded subsample of ``n`` bootstrap rows (sorted): at most ``max_rows`` and half of ``n``."""
    take_n = min(max_rows, n // 2)
    return np.sort(np.random.default_rng(seed + 7919).permutation(n)[:take_n])


def rows_per_site(per_sample_bytes: Sequence[int], available: int, budget: int = SUBSAMPLE_BYTES) -> list[int]:
    """How many subsample rows each site keeps: ``available``, capped so that every site's rows
    take at most an equal share of ``budget`` bytes (at least 32 rows each)."""
    if not per_sample_bytes:
        return []
    share = budget // len(per_sample_bytes)
    return [max(32, min(available, share // max(1, b))) for b in per_sample_bytes]


def learn_prestages(
    model: onnx.ModelProto,
    sites: Sequence[SiteLike],
    candidates: Sequence[Sequence[str]],
    inputs: Mapping[str, np.ndarray],
    score_name: str,
    *,
    mask: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    threads: int | None = None,
    config: PreStageTraining = PreStageTraining(),
    log: Log = print,
) -> PreStages:
    """Train the per-position stage of every candidate kind that has one, on a subsample of ``inputs``."""
    wanted = [(i, kind) for i, kinds in enumerate(candidates) for kind in kinds if kind_spec(kind).pre_width]
    n = num_samples(inputs)
    rows = subsample_rows(n, seed)
    if not wanted or rows.size < 8:
        return PreStages()
    site_ids = sorted({i for i, _ in wanted})
    strides = {i: prepool_stride(sites[i].shape) for i in site_ids}
    sample_bytes = []
    for i in site_ids:
        dims = [d if isinstance(d, int) and d > 0 else 64 for d in sites[i].shape[1:]]
        if strides[i] > 1:
            dims = [dims[0], dims[1] // strides[i], dims[2] // strides[i]]
        sample_bytes.append(4 * int(np.prod(dims)))
    keep = dict(zip(site_ids, rows_per_site(sample_bytes, rows.size)))
    used = rows[: max(keep.values())]
    tensors = list(dict.fromkeys(sites[i].tensor for i in site_ids))
    runner = open_runner(with_extra_outputs(model, tensors), threads=threads, name="the model with site outputs")
    kept: dict[int, list[np.ndarray]] = {i: [] for i in site_ids}
    scores: list[np.ndarray] = []
    start = time.perf_counter()
    for begin in range(0, used.size, batch_size):
        batch = take(inputs, used[begin : begin + batch_size])
        out = runner.run(dict(batch), outputs=[score_name, *tensors])
        scores.append(np.asarray(out[score_name], dtype=np.float32).reshape(out[score_name].shape[0], -1))
        for i in site_ids:
            if begin < keep[i]:
                act = np.asarray(out[sites[i].tensor], dtype=np.float32)
                kept[i].append(prepool(act, strides[i])[: keep[i] - begin].copy())
    probs = target_probabilities(np.concatenate(scores))
    mask_rows = np.asarray(take(inputs, used)[mask]) if mask is not None else None
    log(
        f"  per-position stages: {len(wanted)} to learn at {len(site_ids)} sites from {used.size} of {n} samples "
        f"({time.perf_counter() - start:.1f} s to collect; those samples are kept out of the held-out statistics)"
    )
    result = PreStages(rows=used)
    for i, kind in wanted:
        spec = kind_spec(kind)
        acts = np.concatenate(kept[i])
        m = acts.shape[0]
        row_mask = mask_rows[:m] if mask_rows is not None and kind in MASKED_KINDS else None
        if acts.ndim == 3 and row_mask is not None and row_mask.shape[1] != acts.shape[1]:
            continue  # the site's sequence is not the mask's: the masked kind does not fit here
        t0 = time.perf_counter()
        result.stages[(i, kind)] = train_prestage(
            acts,
            probs[:m],
            spec.pre_width,
            spec.pooling,
            stride=strides[i],
            cells=spec.cells,
            mask=row_mask,
            config=config,
            seed=seed * 1000 + i,
        )
        log(f"  stage for site {i + 1} ({kind}, {m} rows): {time.perf_counter() - t0:.1f} s")
    return result
