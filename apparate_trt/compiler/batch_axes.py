"""Batch axes that ONNX shape inference lost, established by running the model.

Site finding needs every candidate activation typed batch-first (its first dimension the inputs'
batch symbol). ONNX's own shape inference often loses that symbol in real exports: a learned
positional embedding added to the token embedding, or the Reshape of
``torch.nn.MultiheadAttention``, leave activations typed ``['unk__3', 'unk__4', 32]``, and no cut
qualifies. :func:`restore_batch_axes` runs the model on bootstrap samples at two batch sizes with
every such tensor as an extra output, and where a tensor's first axis followed the batch size in
both runs, it writes the batch symbol into the tensor's declared type.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from apparate_trt.backends import open_runner
from apparate_trt.compiler.sites import batch_symbol
from apparate_trt.graph.ingest import constant_tensors, dims_of
from apparate_trt.graph.split import with_extra_outputs

PROBE_BATCHES = (2, 3)
"""The two batch sizes the model is run at: a first axis equal to both is the batch axis."""


def lost_batch_axes(model: onnx.ModelProto, batch: str) -> list[str]:
    """Tensors declared with rank >= 1 whose first dimension is not ``batch`` (and that are not
    constants): the ones whose batch axis shape inference may have lost."""
    const = constant_tensors(model.graph)
    names = []
    for vi in model.graph.value_info:
        dims = dims_of(vi.type)
        if vi.name not in const and dims and dims[0] != batch and not (isinstance(dims[0], int) and dims[0] > 1):
            names.append(vi.name)
    return names


def restore_batch_axes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int | None = 1) -> list[str]:
    """Probe the tensors of :func:`lost_batch_axes` at ``PROBE_BATCHES`` samples of ``feeds`` and
    write the batch symbol into the first dimension of each one whose first axis followed the batch
    (in ``model`` itself). Returns their names (empty: nothing was lost, or no batch symbol)."""
    batch = batch_symbol(model)
    if batch is None:
        return []
    names = lost_batch_axes(model, batch)
    if not names:
        return []
    probe = open_runner(with_extra_outputs(model, names), threads=threads, name="the model (batch-axis probe)")
    runs = [probe.run({k: np.ascontiguousarray(v[:b]) for k, v in feeds.items()}, names) for b in PROBE_BATCHES]
    by_name = {vi.name: vi for vi in model.graph.value_info}
    restored = []
    for name in names:
        shapes = [np.shape(run[name]) for run in runs]
        rank = len(by_name[name].type.tensor_type.shape.dim)
        if all(len(s) == rank and s[0] == b for s, b in zip(shapes, PROBE_BATCHES)):
            dim = by_name[name].type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = batch
            restored.append(name)
    return restored
