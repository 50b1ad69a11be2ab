"""Ingest: load and check an ONNX classifier, infer shapes, prune and sort its graph.

Step 1 of DESIGN.md's offline pipeline. ``load_model`` turns a user's file into the canonical model
every later stage works on:

- checked (``onnx.checker``), with a one-line :class:`ApparateError` for every problem a user can
  fix (missing file, not ONNX, checker failure, missing external data, unsupported constructs);
- shape-inferred, keeping the symbolic batch dimension (a batch dimension fixed to 1 in the file is
  made symbolic, ``N``);
- pruned: nodes that do not contribute to a graph output, initializers nobody uses, and
  initializers listed as graph inputs (an old-IR idiom) are removed;
- topologically sorted (stable: the file's order wherever it is already valid).

This module also holds the small graph facts the site finder and the splitter share:
:func:`node_inputs` (with control-flow subgraphs' outer-scope references), :func:`constant_tensors`
and :func:`tensor_types`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, shape_inference

from apparate_trt.errors import ApparateError

#: Operator domains ONNX Runtime runs without custom-op libraries ("" is the default ai.onnx).
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
#: Symbol given to a batch dimension that the file fixes to 1.
BATCH_SYMBOL = "N"
#: Operators whose output is random: never treated as constants even without activation inputs.
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
_PROTO_LIMIT_BYTES = 2**31 - 1
FLOAT_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16"})


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: ``dtype`` is a numpy name (``float32``), ``shape`` holds ints for
    fixed dimensions and strings for symbolic ones (``"?"`` where even the symbol is unknown)."""

    name: str
    dtype: str
    shape: list[int | str]

    def to_json(self) -> dict:
        """The ``{name, dtype, shape}`` object of docs/ENGINE_DIR.md."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


# ----------------------------------------------------------------------------------------------
# Graph facts shared by sites.py and segments.py
# ----------------------------------------------------------------------------------------------


def _subgraph_outer_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes (not defined inside it)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(node_inputs(node))
        defined.update(o for o in node.output if o)
    used.update(o.name for o in graph.output)
    return used - defined


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (the branches/bodies of If, Loop, Scan)."""
    found: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.HasField("g"):
            found.append(attr.g)
        found.extend(attr.graphs)
    return found


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor name ``node`` reads: its non-empty inputs, then (for control-flow nodes such as
    If/Loop/Scan) the names its subgraphs take from the outer scope, in a stable order."""
    names = [name for name in node.input if name]
    for sub in subgraphs(node):
        names.extend(sorted(_subgraph_outer_refs(sub) - set(names)))
    return names


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value does not depend on any graph input: initializers, Constant outputs and
    the outputs of deterministic nodes that read only constants (nodes must be sorted)."""
    const = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in RANDOM_OPS:
            continue
        if all(name in const for name in node_inputs(node)):
            const.update(o for o in node.output if o)
    return const


SHAPE_OPS = frozenset(
    {
        "Shape",
        "Size",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Cast",
        "Slice",
        "Reshape",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Identity",
        "Expand",
        "ConstantOfShape",
        "Range",
        "Equal",
        "Where",
    }
)
"""Ops that shape arithmetic (``x.view(x.size(0), -1)``) is made of."""


def input_shape_tensors(graph: onnx.GraphProto, const: set[str]) -> set[str]:
    """Tensors computed from the graph inputs' *shapes* alone (``Shape``/``Size`` of a graph input,
    then shape arithmetic with constants), such as the batch size a model reshapes with. A segment
    recomputes them from its own inputs instead of receiving them: in skip mode a compacted batch
    must see its own size, and a scalar is no batch-first tensor to carry (nodes must be sorted)."""
    inputs = {vi.name for vi in graph.input}
    derived: set[str] = set()
    for node in graph.node:
        reads = node_inputs(node)
        if node.op_type in ("Shape", "Size") and reads and reads[0] in inputs:
            derived.update(o for o in node.output if o)
        elif (
            node.op_type in SHAPE_OPS
            and reads
            and all(r in derived or r in const for r in reads)
            and any(r in derived for r in reads)
        ):
            derived.update(o for o in node.output if o)
    return derived


def tensor_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Type (element type and shape, where known) of every tensor the graph declares: graph inputs,
    outputs, value_info and initializers."""
    graph = model.graph
    types: dict[str, onnx.TypeProto] = {}
    for init in graph.initializer:
        types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type
    return types


def dims_of(type_proto: onnx.TypeProto) -> list[int | str] | None:
    """Shape of a tensor type as ints and symbol strings (``"?"`` for an unnamed unknown
    dimension), or None when the rank itself is unknown."""
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append("?")
    return dims


def dtype_name(elem_type: int) -> str:
    """Numpy name of an ONNX element type (``"float32"``, ``"int64"``, ``"bfloat16"``)."""
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name


# ----------------------------------------------------------------------------------------------
# Loading and checking
# ----------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _parse(path: Path) -> onnx.ModelProto:
    """Parse ``path`` as an ONNX protobuf without its external data."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, UnicodeDecodeError, ... depending on the bytes
        raise ApparateError(
            f"'{path}' is not an ONNX model (it does not parse: {_first_line(exc)}); "
            "pass the .onnx file exported from your framework (e.g. torch.onnx.export)"
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise ApparateError(
            f"'{path}' is not an ONNX model (no IR version or no graph nodes); "
            "pass the .onnx file exported from your framework (e.g. torch.onnx.export)"
        )
    return model


def _all_tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    """Initializers and tensor attributes (Constant values) of ``graph`` and its subgraphs."""
    yield from graph.initializer
    for node in _all_nodes(graph):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
        for sub in subgraphs(node):
            yield from sub.initializer


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read initializers kept in external files next to ``path``; error if a file is missing."""
    tensors = [t for t in _all_tensors(model.graph) if external_data_helper.uses_external_data(t)]
    if not tensors:
        return
    base = path.parent
    for tensor in tensors:
        info = external_data_helper.ExternalDataInfo(tensor)
        if not (base / info.location).is_file():
            raise ApparateError(
                f"model '{path}' keeps weight '{tensor.name}' in external data file "
                f"'{info.location}', which is missing next to it; copy that file into '{base}'"
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise ApparateError(
            f"cannot read the external weights of '{path}': {_first_line(exc)}; "
            "re-export the model with its weights inside the .onnx file"
        ) from None
    if model.ByteSize() > _PROTO_LIMIT_BYTES:
        raise ApparateError(
            f"model '{path}' is larger than 2 GB with its weights; apparate_trt handles models under "
            "2 GB (protobuf's limit), use a smaller or quantized model"
        )


def _check(model: onnx.ModelProto, path: Path) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ApparateError(
            f"model '{path}' fails the ONNX checker: {_first_line(exc)}; "
            "fix or re-export the model (onnx.checker.check_model must pass)"
        ) from None


def _is_tensor(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type")


def _check_supported(model: onnx.ModelProto, path: Path) -> None:
    """Reject constructs the compiler cannot handle, with the fix."""
    graph = model.graph
    if len(graph.sparse_initializer):
        raise ApparateError(
            f"model '{path}' has sparse initializers, which apparate_trt does not support; "
            "convert them to dense initializers (onnx.numpy_helper) and re-save"
        )
    initializers = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in initializers]
    if not inputs:
        raise ApparateError(f"model '{path}' has no inputs; a classifier takes at least one batched input")
    if not graph.output:
        raise ApparateError(f"model '{path}' has no outputs; export it with its score output")
    for kind, values in (("input", inputs), ("output", list(graph.output))):
        for vi in values:
            if not _is_tensor(vi):
                raise ApparateError(
                    f"model '{path}' {kind} '{vi.name}' is not a dense tensor "
                    f"({vi.type.WhichOneof('value')}); apparate_trt needs tensor inputs and outputs"
                )
    for vi in inputs:
        dims = dims_of(vi.type)
        if dims is not None and len(dims) == 0:
            raise ApparateError(
                f"model '{path}' input '{vi.name}' is a scalar; every input needs a batch axis "
                "first (re-export with a dynamic batch axis)"
            )
    local_functions = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(graph):
        if node.domain not in KNOWN_DOMAINS and (node.domain, node.op_type) not in local_functions:
            raise ApparateError(
                f"model '{path}' uses operator '{node.op_type}' of custom domain '{node.domain}', "
                "which ONNX Runtime cannot run without its custom-op library; export with standard "
                "ONNX operators"
            )


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    """Nodes of ``graph`` and of every subgraph nested in them."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from _all_nodes(sub)


# ----------------------------------------------------------------------------------------------
# Canonicalisation
# ----------------------------------------------------------------------------------------------


def _drop_initializer_inputs(graph: onnx.GraphProto) -> None:
    """Remove initializers from ``graph.input`` (old-IR models list weights as inputs)."""
    initializers = {t.name for t in graph.initializer}
    kept = [vi for vi in graph.input if vi.name not in initializers]
    if len(kept) != len(graph.input):
        del graph.input[:]
        graph.input.extend(kept)


def prune_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs reach no graph output, then initializers no node reads, and
    value_info of tensors that no longer exist. In place; node order is kept."""
    needed = {o.name for o in graph.output}
    kept_reversed: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            kept_reversed.append(node)
            needed.update(node_inputs(node))
    kept = list(reversed(kept_reversed))
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    used_inits = [t for t in graph.initializer if t.name in needed]
    if len(used_inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(used_inits)
    existing = needed | {o for n in graph.node for o in n.output}
    value_info = [vi for vi in graph.value_info if vi.name in existing]
    if len(value_info) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(value_info)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Sort ``graph.node`` so that every node follows the producers of what it reads (subgraph
    outer references included). Stable: among ready nodes, the earliest in the file goes first.
    Raises ApparateError on a cycle."""
    import heapq

    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = index
    deps = [{producer[name] for name in node_inputs(node) if name in producer} - {i} for i, node in enumerate(nodes)]
    users: list[list[int]] = [[] for _ in nodes]
    for i, dep in enumerate(deps):
        for d in dep:
            users[d].append(i)
    waiting = [len(dep) for dep in deps]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i in range(len(nodes)) if waiting[i] > 0)
        raise ApparateError(
            f"the model's graph has a cycle (node '{stuck.name or stuck.op_type}'); "
            "ONNX graphs must be acyclic, re-export the model"
        )
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def _symbolic_shape_inference_class() -> type | None:
    """``onnxruntime.tools.symbolic_shape_infer.SymbolicShapeInference``, loaded from its file:
    importing the ``onnxruntime.tools`` package would import torch (seconds) for nothing."""
    import importlib.util
    import sys

    name = "apparate_trt._ort_symbolic_shape_infer"
    if name not in sys.modules:
        try:
            import onnxruntime

            path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except Exception:
            return None
        sys.modules[name] = module
    return getattr(sys.modules[name], "SymbolicShapeInference", None)


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic shape inference (keeps symbols such as the batch through Resize,
    Pad, Reshape and shape arithmetic, where ONNX's own inference invents ``unk__`` symbols), or
    None where it cannot handle the model."""
    import contextlib
    import io
    import logging

    SymbolicShapeInference = _symbolic_shape_inference_class()
    if SymbolicShapeInference is None:  # pragma: no cover - ORT without its tools (or sympy)
        return None
    logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
    except Exception:
        return None
    finally:
        logger.setLevel(previous)


def _infer_shapes(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Shapes of every tensor, batch symbol kept: ONNX Runtime's symbolic inference where it
    works, then ONNX's inference (which fills what is left and is the fallback)."""
    del model.graph.value_info[:]
    model = _symbolic_shapes(model) or model
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ApparateError(
            f"ONNX shape inference fails on '{path}': {_first_line(exc)}; "
            "the model's shapes are inconsistent, re-export it"
        ) from None


def _batch_symbol(inputs: list[onnx.ValueInfoProto]) -> str:
    """The symbol the file uses for the batch dimension, or ``BATCH_SYMBOL``."""
    for vi in inputs:
        dims = dims_of(vi.type)
        if dims and isinstance(dims[0], str) and dims[0] != "?":
            return dims[0]
    return BATCH_SYMBOL


def _make_batch_symbolic(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """If some inputs fix the batch dimension to 1, make it symbolic and re-infer shapes.

    Raises ApparateError when the graph itself hard-codes batch 1 (an output keeps a fixed 1)."""
    graph = model.graph
    fixed = [vi for vi in graph.input if (dims_of(vi.type) or [None])[0] == 1]
    if not fixed:
        return model
    symbol = _batch_symbol(list(graph.input))
    for vi in fixed:
        vi.type.tensor_type.shape.dim[0].dim_param = symbol
    for vi in graph.output:
        if vi.type.tensor_type.HasField("shape") and len(vi.type.tensor_type.shape.dim):
            vi.type.tensor_type.shape.dim[0].Clear()
    model = _infer_shapes(model, path)
    for vi in model.graph.output:
        dims = dims_of(vi.type)
        if dims and dims[0] == 1:
            names = ", ".join(f"'{v.name}'" for v in fixed)
            raise ApparateError(
                f"model '{path}' fixes the batch size to 1 (input {names}) and its graph depends on "
                f"it (output '{vi.name}' keeps batch 1); re-export with a dynamic batch axis, e.g. "
                "torch.onnx.export(..., dynamic_axes={'input': {0: 'N'}})"
            )
    return model


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load, check and canonicalise the ONNX classifier at ``path`` (see the module docstring).

    Raises ApparateError (one line: what is wrong and how to fix it) for a missing file, a file
    that is not ONNX, missing external data, a checker failure or an unsupported construct.
    """
    path = Path(path)
    if not path.exists():
        raise ApparateError(f"model file '{path}' does not exist; check the path")
    if not path.is_file():
        raise ApparateError(f"model path '{path}' is not a file; pass the .onnx file itself")
    model = _parse(path)
    _load_external_data(model, path)
    _check_supported(model, path)
    graph = model.graph
    topological_sort(graph)  # before the checker, which rejects unsorted (but valid) graphs
    _check(model, path)
    del model.training_info[:]
    _drop_initializer_inputs(graph)
    prune_dead_nodes(graph)
    model = _infer_shapes(model, path)
    model = _make_batch_symbolic(model, path)
    return model


# ----------------------------------------------------------------------------------------------
# Inputs, outputs and the score output
# ----------------------------------------------------------------------------------------------


def batch_symbol(model: onnx.ModelProto) -> str | None:
    """The symbol of the graph inputs' first (batch) dimension, or None if none is symbolic."""
    const = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in const:
            continue
        dims = dims_of(vi.type)
        if dims and isinstance(dims[0], str) and dims[0] != "?":
            return dims[0]
    return None


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = vi.type.tensor_type
    return TensorInfo(vi.name, dtype_name(tensor_type.elem_type), dims_of(vi.type) or [])


def model_io(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The model's (inputs, outputs) in graph order; graph inputs that are initializers are not
    inputs."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_tensor_info(vi) for vi in model.graph.input if vi.name not in initializers]
    outputs = [_tensor_info(vi) for vi in model.graph.output]
    return inputs, outputs


def score_output(model: onnx.ModelProto, name: str | None = None) -> tuple[str, int]:
    """The ``[batch, classes]`` float score output used for exit decisions, and its class count.

    With several outputs, ``name`` must pick one (the CLI's ``--output NAME``). Raises
    ApparateError when the choice is ambiguous or unknown, or when the output is not a rank-2 float
    tensor with a known class count of at least 2.
    """
    _, outputs = model_io(model)
    names = ", ".join(o.name for o in outputs)
    if name is None:
        if len(outputs) != 1:
            raise ApparateError(
                f"the model has {len(outputs)} outputs ({names}); pick the [batch, classes] score "
                "output with --output NAME"
            )
        chosen = outputs[0]
    else:
        matches = [o for o in outputs if o.name == name]
        if not matches:
            raise ApparateError(f"the model has no output '{name}'; its outputs are: {names}")
        chosen = matches[0]
    if chosen.dtype not in FLOAT_DTYPES:
        raise ApparateError(
            f"output '{chosen.name}' is {chosen.dtype}, not float scores; apparate_trt needs a "
            "[batch, classes] float score output (logits or probabilities), pick it with --output NAME"
        )
    shape = chosen.shape
    if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] < 2:
        raise ApparateError(
            f"output '{chosen.name}' has shape {shape}, not [batch, classes] with a known class "
            "count >= 2; export the classifier's score output (pick it with --output NAME)"
        )
    return chosen.name, int(shape[1])
