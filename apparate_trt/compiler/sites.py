"""Candidate ramp sites: the live-tensor sweep of DESIGN.md step 2.

The graph must be topologically sorted (``ingest.load_model`` output). Position ``p`` is the cut
just after node ``p``. At each position the *live set* is every non-constant tensor produced at or
before ``p`` (graph inputs count as produced before node 0) and read after ``p`` (a graph output is
read at the end). Initializers, Constant outputs and tensors computed only from constants are
excluded: every segment recomputes those itself. Control-flow nodes (If/Loop/Scan) are atomic; what
their subgraphs read from the outer scope counts as read by the node.

Rules, applied in this order:

1. **Side tensors.** A tensor whose read span (from its producer, or -1 for a graph input, to its
   last node reader) covers more than ``side_span`` (default half) of the graph's positions is a
   side tensor: an attention mask or its extended form, shape scalars computed once, a second input
   read only at the end. So is a graph output (other than the score) after its last node reader:
   it only waits for the end. Side tensors do not count against a cut; later segments receive them.
2. **Candidates.** A position is a candidate when the live set minus side tensors is exactly one
   float tensor of rank >= 2 whose first dimension is the batch symbol of the model's inputs,
   produced by a node (not a graph input), and at least one node follows.
3. **One site per tensor.** When several consecutive positions have the same main tensor (the nodes
   between them only made constants or side tensors), the last position is kept.
   **Quantized activations.** When only a QuantizeLinear -> DequantizeLinear pair lies between two
   candidates (the fake-quantized activation of a QDQ model), the later one is dropped: the cut
   stays before the pair, so the next segment keeps it with the node that reads it, which ONNX
   Runtime fuses into its int8 kernel (a cut after the pair leaves that node a float one, and the
   chain no longer matches the model).
4. **Layer ends (elementwise chains).** A candidate is dropped when every node between it and the
   next candidate (or the end of the graph) is cheap, i.e. not one of the ``LAYER_OPS``
   (convolutions, matrix products, pooling, resize, recurrent and control-flow nodes). So
   Conv -> BatchNormalization -> Relu gives one site, after Relu, and a residual Add -> Relu gives
   one, after Relu.
5. **Transformer layers.** Call a side tensor *auxiliary* when it is computed from the graph
   inputs without any ``LAYER_OPS`` node (an attention mask and its extended form, shape values),
   unlike, say, a long skip connection. A candidate is dropped when auxiliary side tensors are read
   between the previous kept candidate and it, but not between it and the end of the next layer
   (the first rule-2 candidate past a ``LAYER_OPS`` node): that is the middle of a transformer
   layer, after self-attention (which reads the mask) and before the feed-forward part (which does
   not). So each encoder layer gives one site, at its end. Without auxiliary side tensors (e.g. a
   ViT without a mask) the rule is inert and both sub-layer ends stay sites.
6. **Inverted bottlenecks.** A run of consecutive candidates whose channel counts (dim 1 of a rank-4
   NCHW map, the last dim otherwise) are all greater than those of the candidates on both sides is
   dropped: those are the expanded interior of an MBConv/inverted-residual block without a skip
   connection, so each MBConv block gives one site, at its end. Chain CNNs (VGG, MobileNetV1) have
   non-decreasing widths and keep every layer.
7. **Depth.** Sites whose estimated depth lies outside ``[min_depth, max_depth]`` are dropped. The
   estimate is the share of the model's multiply-accumulates (MACs, from Conv/ConvTranspose/MatMul/
   Gemm/Einsum shapes; every other node costs its output element count) spent at or before the
   position, per sample: a symbolic leading (batch) dimension counts 1, other symbolic dimensions
   (e.g. the sequence length) count ``symbolic_dim``. The
   estimate is stored in ``Site.est_depth``; ``Site.depth`` is left for profiling to fill (the
   measured latency share, docs/ENGINE_DIR.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from apparate_trt.graph.ingest import FLOAT_DTYPES, batch_symbol, dims_of, dtype_name, node_inputs, tensor_types
from apparate_trt.graph.liveness import Liveness, is_side_at, live_sets, liveness, side_tensors

#: Operators that end an elementwise chain (rule 4): the "layers" of a network.
LAYER_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "ConvInteger",
        "QLinearConv",
        "DeformConv",
        "MatMul",
        "MatMulInteger",
        "QLinearMatMul",
        "Gemm",
        "Einsum",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "MaxRoiPool",
        "RoiAlign",
        "Resize",
        "Upsample",
        "RNN",
        "LSTM",
        "GRU",
        "Attention",
        "MultiHeadAttention",
        "If",
        "Loop",
        "Scan",
    }
)


@dataclass
class Site:
    """A candidate ramp location: the cut just after node ``node_index`` of the sorted graph.

    ``tensor`` is the cut's main activation (shape ``shape``, batch first), ``side_tensors`` the
    other live tensors that later segments read. ``depth`` is the measured share (0..1) of the
    model's latency before the site, filled by profiling; ``est_depth`` the MAC-based estimate used
    to filter sites (not serialised).
    """

    id: int
    tensor: str
    side_tensors: list[str]
    shape: list[int | str]
    node_index: int
    depth: float | None = None
    est_depth: float | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        """The ``sites`` entry of docs/ENGINE_DIR.md."""
        return {
            "id": self.id,
            "tensor": self.tensor,
            "side_tensors": list(self.side_tensors),
            "shape": list(self.shape),
            "node_index": self.node_index,
            "depth": self.depth,
        }

    @classmethod
    def from_json(cls, obj: dict) -> Site:
        """Inverse of :meth:`to_json`."""
        depth = obj.get("depth")
        return cls(
            id=int(obj["id"]),
            tensor=str(obj["tensor"]),
            side_tensors=[str(s) for s in obj.get("side_tensors", [])],
            shape=[d if isinstance(d, str) else int(d) for d in obj["shape"]],
            node_index=int(obj["node_index"]),
            depth=None if depth is None else float(depth),
        )


# ----------------------------------------------------------------------------------------------
# Cost estimate
# ----------------------------------------------------------------------------------------------


def _numel(dims: Sequence[int | str] | None, batch: str, symbolic_dim: int) -> float:
    """Elements per sample: a symbolic leading dimension (or the batch symbol anywhere) counts 1,
    other symbolic dimensions ``symbolic_dim``."""
    if dims is None:
        return 0.0
    total = 1.0
    for i, d in enumerate(dims):
        if isinstance(d, int):
            total *= d
        else:
            total *= 1 if (i == 0 or d == batch) else symbolic_dim
    return total


def node_costs(model: onnx.ModelProto, batch: str, symbolic_dim: int = 128) -> np.ndarray:
    """Estimated MACs per node for one sample (see rule 7 in the module docstring)."""
    types = tensor_types(model)

    def shape(name: str) -> list[int | str] | None:
        return dims_of(types[name]) if name in types else None

    def last(dims: Sequence[int | str] | None, k: int) -> float:
        """Size of the k-th last dimension (a contraction length)."""
        if not dims or len(dims) < k:
            return 1.0
        d = dims[-k]
        return float(d) if isinstance(d, int) else 1.0 if d == batch else float(symbolic_dim)

    costs = np.zeros(len(model.graph.node))
    for index, node in enumerate(model.graph.node):
        outs = [o for o in node.output if o]
        out_elems = sum(_numel(shape(o), batch, symbolic_dim) for o in outs)
        ins = list(node.input)
        op = node.op_type
        cost = out_elems
        if op in ("Conv", "ConvInteger", "QLinearConv") and len(ins) > 1:
            w = shape(ins[3] if op == "QLinearConv" else ins[1])
            if w and len(w) > 1:
                cost = out_elems * _numel(w[1:], batch, symbolic_dim)
        elif op == "ConvTranspose" and len(ins) > 1:
            w = shape(ins[1])
            if w and len(w) > 1:
                cost = _numel(shape(ins[0]), batch, symbolic_dim) * _numel(w[1:], batch, symbolic_dim)
        elif op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            cost = out_elems * last(shape(ins[0]), 1)
        elif op == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            a = shape(ins[0])
            k = last(a, 2) if trans_a else last(a, 1)
            cost = out_elems * k
        elif op == "Einsum":
            cost = out_elems * max((last(shape(i), 1) for i in ins if i), default=1.0)
        costs[index] = max(cost, 0.0)
    return costs


def estimated_depths(model: onnx.ModelProto, batch: str, symbolic_dim: int = 128) -> np.ndarray:
    """Share (0..1) of the estimated MACs spent at or before each node position; node-count
    fractions when no node has a known cost."""
    costs = node_costs(model, batch, symbolic_dim)
    n = len(costs)
    if n == 0:
        return costs
    total = float(costs.sum())
    if total <= 0:
        return np.arange(1, n + 1, dtype=float) / n
    return np.cumsum(costs) / total


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------


def channels(shape: Sequence[int | str]) -> int | None:
    """Channel count of an activation: dim 1 of a rank-4 (NCHW) map, the last dim otherwise."""
    if len(shape) < 2:
        return None
    dim = shape[1] if len(shape) == 4 else shape[-1]
    return dim if isinstance(dim, int) else None


@dataclass
class _Candidate:
    position: int
    tensor: str
    sides: list[str]
    shape: list[int | str]


def _candidates(model: onnx.ModelProto, lv: Liveness, sides: set[str]) -> list[_Candidate]:
    """Rules 2-3: positions whose live set minus side tensors is one batch-first float tensor."""
    batch = batch_symbol(model)
    if batch is None:
        return []
    types = tensor_types(model)
    found: list[_Candidate] = []
    for p, live in enumerate(live_sets(lv)[:-1]):
        main = [t for t in live if not is_side_at(lv, sides, t, p)]
        if len(main) != 1 or main[0] not in types or lv.produced[main[0]] < 0:
            continue
        type_proto = types[main[0]]
        shape = dims_of(type_proto)
        if (
            shape is None
            or len(shape) < 2
            or shape[0] != batch
            or dtype_name(type_proto.tensor_type.elem_type) not in FLOAT_DTYPES
        ):
            continue
        cand = _Candidate(p, main[0], [t for t in live if t != main[0]], shape)
        if found and found[-1].tensor == cand.tensor and found[-1].position == p - 1:
            found[-1] = cand
        else:
            found.append(cand)
    return found


QUANTIZE_PAIR_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
"""The nodes of a fake-quantized activation: a cut never goes between them and their reader."""


def _cut_before_quantization(model: onnx.ModelProto, cands: list[_Candidate]) -> list[_Candidate]:
    """Rule 3, quantized activations: drop a candidate when only QuantizeLinear/DequantizeLinear
    nodes lie between the previous kept candidate and it."""
    nodes = model.graph.node
    kept: list[_Candidate] = []
    for cand in cands:
        between = range(kept[-1].position + 1, cand.position + 1) if kept else range(0)
        if between and all(nodes[i].op_type in QUANTIZE_PAIR_OPS for i in between):
            continue
        kept.append(cand)
    return kept


def _merge_elementwise_chains(model: onnx.ModelProto, cands: list[_Candidate]) -> list[_Candidate]:
    """Rule 4: drop a candidate when only cheap nodes lie between it and the next one (or the end
    of the graph)."""
    nodes = model.graph.node
    kept = []
    for cand, nxt in zip(cands, cands[1:] + [None]):
        stop = nxt.position if nxt is not None else len(nodes) - 1
        if all(nodes[i].op_type not in LAYER_OPS for i in range(cand.position + 1, stop + 1)):
            continue
        kept.append(cand)
    return kept


def auxiliary_tensors(model: onnx.ModelProto, names: set[str]) -> set[str]:
    """Those of ``names`` computed from the graph inputs without any ``LAYER_OPS`` node (masks,
    shape values): side tensors that are not activations of the main data path."""
    layered: set[str] = set()
    for node in model.graph.node:
        if node.op_type in LAYER_OPS or any(name in layered for name in node_inputs(node)):
            layered.update(o for o in node.output if o)
    return {name for name in names if name not in layered}


def _merge_transformer_sublayers(
    model: onnx.ModelProto, cands: list[_Candidate], raw: list[_Candidate], aux: set[str]
) -> list[_Candidate]:
    """Rule 5: drop a candidate preceded, but not followed, by reads of auxiliary side tensors.

    "Preceded": since the previous kept candidate. "Followed": up to the next candidate of ``raw``
    (before rule 4) that lies past at least one layer node, i.e. to the end of the next layer."""
    nodes = model.graph.node

    def reads_aux(first: int, last: int) -> bool:
        return any(name in aux for i in range(first, last + 1) for name in node_inputs(nodes[i]))

    def has_layer(first: int, last: int) -> bool:
        return any(nodes[i].op_type in LAYER_OPS for i in range(first, last + 1))

    if not aux:
        return cands
    kept = []
    for i, cand in enumerate(cands):
        before = cands[i - 1].position if i > 0 else -1
        nxt = next(
            (r.position for r in raw if r.position > cand.position and has_layer(cand.position + 1, r.position)), None
        )
        if nxt is not None and reads_aux(before + 1, cand.position) and not reads_aux(cand.position + 1, nxt):
            continue
        kept.append(cand)
    return kept


def _drop_bulges(cands: list[_Candidate]) -> list[_Candidate]:
    """Rule 6: drop runs of candidates wider than the candidates on both sides of the run."""
    widths = [channels(c.shape) for c in cands]
    drop = [False] * len(cands)
    for a in range(len(cands)):
        if widths[a] is None:
            continue
        run_min = None
        for b in range(a + 1, len(cands)):
            if widths[b] is None:
                break
            if run_min is not None and run_min > max(widths[a], widths[b]):
                for k in range(a + 1, b):
                    drop[k] = True
            if widths[b] <= widths[a]:
                break
            run_min = widths[b] if run_min is None else min(run_min, widths[b])
    return [c for c, d in zip(cands, drop) if not d]


def find_sites(
    model: onnx.ModelProto,
    min_depth: float = 0.05,
    max_depth: float = 0.9,
    side_span: float = 0.5,
    symbolic_dim: int = 128,
) -> list[Site]:
    """Candidate ramp sites of a sorted, shape-inferred model, in execution order (ids 0..k-1).

    ``min_depth``/``max_depth`` bound the MAC-estimated depth (0..1) of a kept site;
    ``side_span`` is the share of positions a tensor must be live across to be a side tensor;
    ``symbolic_dim`` the size assumed for symbolic non-batch dimensions (e.g. the sequence length)
    in the cost estimate. Returns [] when the model has no usable cut.
    """
    lv = liveness(model)
    sides = side_tensors(lv, side_span)
    raw = _cut_before_quantization(model, _candidates(model, lv, sides))
    cands = _merge_elementwise_chains(model, raw)
    cands = _merge_transformer_sublayers(model, cands, raw, auxiliary_tensors(model, sides))
    cands = _drop_bulges(cands)
    depths = estimated_depths(model, batch_symbol(model) or "", symbolic_dim)
    sites: list[Site] = []
    for cand in cands:
        depth = float(depths[cand.position])
        if min_depth <= depth <= max_depth:
            sites.append(Site(len(sites), cand.tensor, list(cand.sides), list(cand.shape), cand.position, None, depth))
    return sites
