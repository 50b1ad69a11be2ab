"""Ramps: one small classifier head per site, chosen by the site tensor's rank (DESIGN.md step 4).

A ramp is a fixed, parameter-free pooling followed by a trained head:

====================================  ==============  ===========================================
kind                                  site tensor     ramp
====================================  ==============  ===========================================
``conv_gap_mlp``                      [N, C, H, W]    global average pool, dense (32) + ReLU, linear
``conv_grid2_mlp``                    [N, C, H, W]    average pool to a 2 x 2 grid, dense (32) + ReLU, linear
``conv_grid4_mlp``                    [N, C, H, W]    average pool to a 4 x 4 grid, dense (32) + ReLU, linear
``seq_cls_dense_tanh_linear``         [N, S, H]       first token, dense (128) + tanh, linear
``seq_mean_dense_tanh_linear``        [N, S, H]       masked mean over tokens, dense (128) + tanh, linear
``dense_linear``                      [N, F]          linear
====================================  ==============  ===========================================

The ``conv_*_linear`` kinds (the same poolings, one linear layer) are what earlier compilers
trained; engine directories that hold them still load and run. On the CV benchmark model the
hidden layer (with distillation, ``training.TrainConfig.distill``) raised the ramp's agreement
with the model at 14 of 15 sites, by up to 3 points, and the share of the stream one threshold
can release at 0.3% disagreement by up to 14 points (one site lost 1): ``benchmarks/ramp_quality.py``.

Where a site has several candidate kinds, training keeps the one that agrees best with the model
on held-out samples. A feature map with static spatial sizes gets the grid-pooled ramps as
candidates wherever the grid divides the map at least twice along each axis (:func:`candidate_kinds`):
a grid keeps where in the image a feature fired, which a global average loses, and early feature
maps (edges, parts) need that to tell classes apart (``apparate-compile`` logs each candidate's
held-out agreement, so the choice can be checked per site). A sequence site gets
the masked-mean ramp as a second candidate when the model has an attention mask input
(:func:`find_mask_input`): the first token suits models with a [CLS] pooler, the masked mean
models such as sentence-transformers that pool by mean. A masked-mean ramp takes the mask as a
second input.

Because the pooling is fixed, training works on pooled features (:func:`pool_features`), and
:func:`build_ramp_onnx` turns the trained numpy weights into the ramp's own small ONNX model
(inputs: the site tensor, and the mask for the masked mean; output ``logits``) that computes
exactly :func:`ramp_forward` after the pooling, with the pooled features as a second output
(``features``). Feature maps of rank > 4 ([N, C, D, H, W]) are
pooled like rank 4 over all spatial axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from apparate_trt.backends import open_runner
from apparate_trt.errors import ApparateError
from apparate_trt.ramps.prestage import (
    PreStage,
    apply_prestage,
    prepool_stride,
    prepooled_shape,
    prestage_nodes,
    read_prestage,
)

CONV_GAP_LINEAR = "conv_gap_linear"
CONV_GRID2_LINEAR = "conv_grid2_linear"
CONV_GRID4_LINEAR = "conv_grid4_linear"
CONV_GAP_MLP = "conv_gap_mlp"
CONV_GRID2_MLP = "conv_grid2_mlp"
CONV_GRID4_MLP = "conv_grid4_mlp"
SEQ_CLS_DENSE_TANH_LINEAR = "seq_cls_dense_tanh_linear"
SEQ_MEAN_DENSE_TANH_LINEAR = "seq_mean_dense_tanh_linear"
DENSE_LINEAR = "dense_linear"
CONV_BOTTLENECK_GAP_MLP = "conv_bottleneck_gap_mlp"
CONV_BOTTLENECK_GRID2_MLP = "conv_bottleneck_grid2_mlp"
SEQ_TOKEN_MEAN_MLP = "seq_token_mean_mlp"
SEQ_TOKEN_AVG_MLP = "seq_token_avg_mlp"
RAMP_OUTPUT = "logits"
RAMP_FEATURES = "features"
"""The ramp graph's second output: its pooled features [N, D], what the head reads (the runtime keeps
them from served rows to refit the head, :mod:`apparate_trt.ramps.refit`)."""
RAMP_OPSET = 17
RAMP_IR_VERSION = 8  # readable by every onnxruntime this package supports


@dataclass(frozen=True)
class KindSpec:
    """How a ramp kind pools its site tensor and what head follows.

    ``pooling``: ``gap`` (global average), ``grid`` (average over ``cells`` x ``cells`` tiles),
    ``cls`` (first token), ``mean`` (masked mean over tokens) or ``none``; ``layers``: linear
    layers of the head; ``activation``: between consecutive layers (``tanh`` or ``relu``);
    ``hidden``: the width of a two-layer head's hidden layer (at most the pooled features');
    ``pre_width``: > 0 for kinds with a learned per-position stage of that many outputs before
    the pooling (:mod:`apparate_trt.ramps.prestage`; ``avg`` pooling: mean over all tokens).
    """

    pooling: str
    layers: int
    activation: str = "tanh"
    cells: int = 0
    hidden: int = 128
    pre_width: int = 0


KINDS: dict[str, KindSpec] = {
    # 32 hidden units: on the CV benchmark model, 128 released a few points more at 0.3%
    # disagreement but cost a 1-thread ramp 40% more time at batch 1 (0.020 vs 0.014 ms).
    CONV_GAP_MLP: KindSpec("gap", 2, "relu", hidden=32),
    CONV_GRID2_MLP: KindSpec("grid", 2, "relu", cells=2, hidden=32),
    CONV_GRID4_MLP: KindSpec("grid", 2, "relu", cells=4, hidden=32),
    CONV_GAP_LINEAR: KindSpec("gap", 1),
    CONV_GRID2_LINEAR: KindSpec("grid", 1, cells=2),
    CONV_GRID4_LINEAR: KindSpec("grid", 1, cells=4),
    SEQ_CLS_DENSE_TANH_LINEAR: KindSpec("cls", 2, "tanh"),
    SEQ_MEAN_DENSE_TANH_LINEAR: KindSpec("mean", 2, "tanh"),
    DENSE_LINEAR: KindSpec("none", 1),
    # A 1x1 convolution and a ReLU at every position before the pooling, as the model's own head does.
    CONV_BOTTLENECK_GAP_MLP: KindSpec("gap", 2, "relu", hidden=64, pre_width=128),
    CONV_BOTTLENECK_GRID2_MLP: KindSpec("grid", 2, "relu", cells=2, hidden=64, pre_width=64),
    # A dense layer and a ReLU at every token before the (masked) mean, like a feed-forward layer.
    SEQ_TOKEN_MEAN_MLP: KindSpec("mean", 2, "tanh", hidden=128, pre_width=128),
    SEQ_TOKEN_AVG_MLP: KindSpec("avg", 2, "tanh", hidden=128, pre_width=128),
}
#: Kinds whose ramp also reads the attention mask.
MASKED_KINDS = frozenset(kind for kind, spec in KINDS.items() if spec.pooling == "mean")
#: The grid-pooled kinds that candidate_kinds offers beside ``conv_gap_mlp`` (cells in ``KINDS``).
OFFERED_GRID_KINDS = (CONV_GRID2_MLP, CONV_GRID4_MLP)


def kind_spec(kind: str) -> KindSpec:
    """The :class:`KindSpec` of ``kind``; ValueError for an unknown kind."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown ramp kind {kind!r}; known kinds: {', '.join(KINDS)}") from None


class SiteLike(Protocol):
    """What ramps need of a site (``compiler.sites.Site`` fits)."""

    id: int
    tensor: str
    shape: Sequence[int | str | None]


@dataclass
class RampWeights:
    """A ramp head: ``layers[i] = (W [in, out], b [out])`` float32; ``y = act(x W0 + b0) W1 + b1``
    with ``activation`` (``tanh`` or ``relu``) between consecutive layers."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    activation: str = "tanh"
    pre: PreStage | None = None
    """The frozen per-position stage before the pooling, for kinds with one (``KindSpec.pre_width``)."""

    @property
    def num_classes(self) -> int:
        return int(self.layers[-1][1].shape[0])


def ramp_kind(shape: Sequence[int | str | None]) -> str | None:
    """The default ramp kind for a site tensor of this shape, or None if no ramp fits (rank < 2)."""
    rank = len(shape)
    if rank == 2:
        return DENSE_LINEAR
    if rank == 3:
        return SEQ_CLS_DENSE_TANH_LINEAR
    if rank >= 4:
        return CONV_GAP_MLP
    return None


def grid_fits(shape: Sequence[int | str | None], cells: int) -> bool:
    """True if ``shape`` is [N, C, H, W] with static H and W that ``cells`` divides into cells of
    at least 2 x 2 (a grid as fine as the map itself would be no pooling at all)."""
    if len(shape) != 4:
        return False
    spatial = shape[2:]
    return all(isinstance(d, int) and d >= 2 * cells and d % cells == 0 for d in spatial)


def candidate_kinds(shape: Sequence[int | str | None], mask: str | None) -> list[str]:
    """Ramp kinds worth training at a site (best first on ties); empty if no ramp fits."""
    kind = ramp_kind(shape)
    if kind is None:
        return []
    if kind == SEQ_CLS_DENSE_TANH_LINEAR:
        return [kind, SEQ_MEAN_DENSE_TANH_LINEAR, SEQ_TOKEN_MEAN_MLP] if mask is not None else [kind, SEQ_TOKEN_AVG_MLP]
    if kind == CONV_GAP_MLP:
        grids = [grid for grid in OFFERED_GRID_KINDS if grid_fits(shape, KINDS[grid].cells)]
        if len(shape) != 4:
            return [kind, *grids]
        bottlenecks = [CONV_BOTTLENECK_GAP_MLP]
        if grid_fits(prepooled_shape(shape, prepool_stride(shape)), KINDS[CONV_BOTTLENECK_GRID2_MLP].cells):
            bottlenecks.append(CONV_BOTTLENECK_GRID2_MLP)
        return [kind, *grids, *bottlenecks]
    return [kind]


def grid_pool(array: np.ndarray, cells: int) -> np.ndarray:
    """Average ``array`` [N, C, H, W] over ``cells`` x ``cells`` equal tiles -> [N, C * cells * cells]
    (channel-major, then row, then column: the order ONNX ``Flatten`` gives ``AveragePool``'s output)."""
    n, c, h, w = array.shape
    if h % cells or w % cells:
        raise ValueError(f"a {cells} x {cells} grid does not divide a {h} x {w} feature map")
    tiles = array.reshape(n, c, cells, h // cells, cells, w // cells)
    return tiles.mean(axis=(3, 5), dtype=np.float64).reshape(n, c * cells * cells)


class InputLike(Protocol):
    """A model input (``ingest.TensorInfo`` fits)."""

    name: str
    dtype: str
    shape: Sequence[int | str]


def find_mask_input(model_inputs: Sequence[InputLike]) -> InputLike | None:
    """The model's attention mask: an integer or bool input of rank 2 named like ``*mask*``, or None."""
    for spec in model_inputs:
        if "mask" in spec.name.lower() and len(spec.shape) == 2 and np.dtype(spec.dtype).kind in "iub":
            return spec
    return None


def pool_features(
    kind: str, array: np.ndarray, mask: np.ndarray | None = None, pre: PreStage | None = None
) -> np.ndarray:
    """The fixed feature extractor of a ramp: site activation (and mask [N, S]) -> float32
    features [N, D]; for a kind with a per-position stage, ``pre`` runs before the pooling."""
    spec = kind_spec(kind)
    if spec.pre_width:
        if pre is None:
            raise ValueError(f"{kind} ramps need their per-position stage (RampWeights.pre)")
        array = apply_prestage(pre, array)
    if spec.pooling == "gap":
        pooled = array.reshape(array.shape[0], array.shape[1], -1).mean(axis=2, dtype=np.float64)
    elif spec.pooling == "grid":
        pooled = grid_pool(array, spec.cells)
    elif spec.pooling == "cls":
        pooled = array[:, 0, :]
    elif spec.pooling == "mean":
        if mask is None:
            raise ValueError(f"{kind} pooling needs the attention mask")
        m = mask.astype(np.float32)[:, :, None]
        pooled = (array * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    elif spec.pooling == "avg":
        pooled = array.mean(axis=1, dtype=np.float64)
    else:
        pooled = array
    return np.ascontiguousarray(pooled, dtype=np.float32)


def ramp_forward(weights: RampWeights, features: np.ndarray) -> np.ndarray:
    """The ramp head on pooled features [N, D] -> logits [N, classes] (float32, numpy reference)."""
    x = features.astype(np.float32, copy=False)
    for i, (w, b) in enumerate(weights.layers):
        if i:
            x = np.tanh(x) if weights.activation == "tanh" else np.maximum(x, 0.0)
        x = x @ w + b
    return x.astype(np.float32, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable (float64 inside, float32 out)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _dim(d: int | str | None, fallback: str) -> onnx.TensorShapeProto.Dimension:
    dim = onnx.TensorShapeProto.Dimension()
    if isinstance(d, int) and d > 0:
        dim.dim_value = d
    else:
        dim.dim_param = d if isinstance(d, str) and d else fallback
    return dim


def _value_info(
    name: str, shape: Sequence[int | str | None], batch: str, elem_type: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    info = helper.make_tensor_value_info(name, elem_type, None)
    dims = info.type.tensor_type.shape
    for axis, d in enumerate(shape):
        dims.dim.append(_dim(d, batch if axis == 0 else f"d{axis}"))
    return info


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _pooling_nodes(
    kind: str, source: str, mask: str | None, shape: Sequence[int | str | None]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes that pool ``source`` (of ``shape``) to [N, D]; returns (nodes, initializers, pooled name)."""
    node = helper.make_node
    spec = kind_spec(kind)
    if spec.pooling == "grid":
        cells = spec.cells
        if not grid_fits(shape, cells):
            raise ValueError(
                f"{kind} ramps need a feature map whose static height and width {cells} divides, got {list(shape)}"
            )
        tile = [int(shape[2]) // cells, int(shape[3]) // cells]
        return (
            [
                node("AveragePool", [source], ["ramp_grid"], name="ramp_grid", kernel_shape=tile, strides=tile),
                node("Flatten", ["ramp_grid"], ["ramp_pooled"], name="ramp_flatten", axis=1),
            ],
            [],
            "ramp_pooled",
        )
    if spec.pooling == "gap":
        return (
            [
                node("GlobalAveragePool", [source], ["ramp_gap"], name="ramp_gap"),
                node("Flatten", ["ramp_gap"], ["ramp_pooled"], name="ramp_flatten", axis=1),
            ],
            [],
            "ramp_pooled",
        )
    if spec.pooling == "cls":
        gather = node("Gather", [source, "ramp_first_index"], ["ramp_pooled"], name="ramp_first_token", axis=1)
        return [gather], [_const("ramp_first_index", np.array(0, dtype=np.int64))], "ramp_pooled"
    if spec.pooling == "mean":
        nodes = [
            node("Cast", [mask], ["ramp_mask_f"], name="ramp_mask_cast", to=TensorProto.FLOAT),
            node("Unsqueeze", ["ramp_mask_f", "ramp_axis2"], ["ramp_mask_3d"], name="ramp_mask_unsqueeze"),
            node("Mul", [source, "ramp_mask_3d"], ["ramp_masked"], name="ramp_mask_mul"),
            node("ReduceSum", ["ramp_masked", "ramp_axis1"], ["ramp_sum"], name="ramp_sum", keepdims=0),
            node("ReduceSum", ["ramp_mask_3d", "ramp_axis1"], ["ramp_count"], name="ramp_count", keepdims=0),
            node("Max", ["ramp_count", "ramp_one"], ["ramp_count_1"], name="ramp_count_at_least_1"),
            node("Div", ["ramp_sum", "ramp_count_1"], ["ramp_pooled"], name="ramp_mean"),
        ]
        inits = [
            _const("ramp_axis1", np.array([1], np.int64)),
            _const("ramp_axis2", np.array([2], np.int64)),
            _const("ramp_one", np.array(1.0, np.float32)),
        ]
        return nodes, inits, "ramp_pooled"
    if spec.pooling == "avg":
        mean = node("ReduceMean", [source], ["ramp_pooled"], name="ramp_mean", axes=[1], keepdims=0)
        return [mean], [], "ramp_pooled"
    return [], [], source


def build_ramp_onnx(site: SiteLike, kind: str, weights: RampWeights, mask: InputLike | None = None) -> onnx.ModelProto:
    """The ramp at ``site`` as its own checked ONNX model: inputs ``site.tensor`` (and ``mask.name``
    for a masked-mean ramp), outputs ``logits`` and ``features`` (the pooled features the head reads)."""
    spec = kind_spec(kind)
    if len(weights.layers) != spec.layers:
        raise ValueError(f"{kind} ramps have {spec.layers} layers, got {len(weights.layers)}")
    if spec.layers > 1 and weights.activation != spec.activation:
        raise ValueError(f"{kind} ramps use {spec.activation} between layers, got weights for {weights.activation}")
    if (kind in MASKED_KINDS) != (mask is not None):
        raise ValueError(f"{kind} ramps take {'a' if kind in MASKED_KINDS else 'no'} mask input")
    batch = site.shape[0] if site.shape and isinstance(site.shape[0], str) and site.shape[0] else "batch"
    inputs = [_value_info(site.tensor, site.shape, batch)]
    if mask is not None:
        mask_type = helper.np_dtype_to_tensor_dtype(np.dtype(mask.dtype))
        inputs.append(_value_info(mask.name, [batch, *list(mask.shape)[1:]], batch, mask_type))
    source, shape, nodes, inits = site.tensor, list(site.shape), [], []
    if spec.pre_width:
        if weights.pre is None:
            raise ValueError(f"{kind} ramps need their per-position stage (RampWeights.pre)")
        nodes, inits, source = prestage_nodes(weights.pre, site.tensor, len(site.shape))
        shape = prepooled_shape(shape, weights.pre.stride)
    pooling, pool_inits, x = _pooling_nodes(kind, source, mask.name if mask is not None else None, shape)
    nodes += pooling
    inits += pool_inits
    nodes.append(helper.make_node("Identity", [x], [RAMP_FEATURES], name="ramp_features"))
    for i, (w, b) in enumerate(weights.layers):
        if i:
            op = "Tanh" if weights.activation == "tanh" else "Relu"
            nodes.append(helper.make_node(op, [x], [f"ramp_{op.lower()}{i}"], name=f"ramp_{op.lower()}{i}"))
            x = f"ramp_{op.lower()}{i}"
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(w, dtype=np.float32), f"ramp_w{i}"),
            numpy_helper.from_array(np.ascontiguousarray(b, dtype=np.float32), f"ramp_b{i}"),
        ]
        out = RAMP_OUTPUT if i == len(weights.layers) - 1 else f"ramp_dense{i}"
        nodes.append(helper.make_node("Gemm", [x, f"ramp_w{i}", f"ramp_b{i}"], [out], name=f"ramp_gemm{i}"))
        x = out
    graph = helper.make_graph(
        nodes,
        f"ramp_site{site.id}",
        inputs,
        [
            _value_info(RAMP_OUTPUT, [batch, weights.num_classes], batch),
            _value_info(RAMP_FEATURES, [batch, int(weights.layers[0][0].shape[0])], batch),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", RAMP_OPSET)], producer_name="apparate_trt")
    model.ir_version = RAMP_IR_VERSION
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug, not a user error; keep the detail
        raise ApparateError(
            f"internal error: the ramp for site {site.id} is not a valid ONNX model ({exc}); please report it"
        ) from exc
    return model


def check_ramp(
    model: onnx.ModelProto,
    kind: str,
    weights: RampWeights,
    activation: np.ndarray,
    mask: np.ndarray | None = None,
    threads: int | None = 1,
    rtol: float = 1e-2,
) -> float:
    """Run the ramp's ONNX model on ``activation`` (a site tensor batch, and the mask rows for a
    masked-mean ramp) and compare it with numpy.

    Returns the max abs difference of the logits; raises ApparateError (an internal error) if it
    exceeds ``rtol`` times the logits' scale (at least 1): float32 round-off in ORT's and numpy's
    differently ordered sums stays far below that, a wrong graph far above.
    """
    names = [i.name for i in model.graph.input]
    feeds = {names[0]: activation.astype(np.float32)}
    if kind in MASKED_KINDS:
        feeds[names[1]] = mask
    outputs = [o.name for o in model.graph.output]
    ran = open_runner(model, threads=threads, name=f"ramp {model.graph.name}").run(feeds)
    got = ran[RAMP_OUTPUT]
    pooled = pool_features(kind, activation, mask, weights.pre)
    want = ramp_forward(weights, pooled)
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    if RAMP_FEATURES in outputs and pooled.size:
        scale = max(1.0, float(np.max(np.abs(pooled))))
        diff = max(diff, float(np.max(np.abs(ran[RAMP_FEATURES] - pooled))) / scale)
    if not diff <= rtol * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0):
        raise ApparateError(
            f"internal error: ramp {model.graph.name} in ONNX differs from its trained weights by {diff:.3g}; "
            f"please report it"
        )
    return diff


def head_weights(model: onnx.ModelProto, kind: str) -> RampWeights:
    """The head of a ramp graph written by :func:`build_ramp_onnx` (its ``ramp_w{i}`` and
    ``ramp_b{i}`` initializers) as :class:`RampWeights`."""
    spec = kind_spec(kind)
    inits = {t.name: t for t in model.graph.initializer}
    try:
        layers = [
            (numpy_helper.to_array(inits[f"ramp_w{i}"]).astype(np.float32), numpy_helper.to_array(inits[f"ramp_b{i}"]))
            for i in range(spec.layers)
        ]
    except KeyError as exc:
        raise ApparateError(
            f"ramp graph {model.graph.name} has no head weight {exc}; it was not written by apparate-compile"
        ) from None
    pre = read_prestage(model) if spec.pre_width else None
    return RampWeights([(w, b.astype(np.float32)) for w, b in layers], spec.activation, pre)


def with_head_weights(model: onnx.ModelProto, weights: RampWeights) -> onnx.ModelProto:
    """A copy of the ramp graph ``model`` whose head is ``weights`` (same layer shapes; the pooling
    and the inputs stay): how a refitted head becomes a ramp file without the site's specs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    replace = {}
    for i, (w, b) in enumerate(weights.layers):
        replace[f"ramp_w{i}"] = np.ascontiguousarray(w, dtype=np.float32)
        replace[f"ramp_b{i}"] = np.ascontiguousarray(b, dtype=np.float32)
    for index, tensor in enumerate(out.graph.initializer):
        if tensor.name in replace:
            new = replace.pop(tensor.name)
            if tuple(tensor.dims) != new.shape:
                raise ValueError(f"head weight {tensor.name} has shape {list(tensor.dims)}, got {list(new.shape)}")
            out.graph.initializer[index].CopyFrom(numpy_helper.from_array(new, tensor.name))
    if replace:
        raise ValueError(f"ramp graph {model.graph.name} has no head weights {sorted(replace)}")
    return out
