"""Segments: split the sorted model at chosen sites into consecutive standalone ONNX models.

Step 3 of DESIGN.md. A cut at a site (after node ``site.node_index``) leaves exactly the site tensor
and its side tensors live (``sites.py``), so segment ``k`` holds the nodes between cut ``k-1`` and
cut ``k`` and:

- its **inputs** are the non-constant tensors its nodes read that come from the graph inputs or
  from earlier segments (side tensors included), the previous site's tensor first;
- its **outputs** are the tensors it produces that later segments or the graph outputs read, the
  site tensor first (the last segment: the graph outputs it produces, in graph order);
- constants (initializers, Constant outputs, tensors computed only from constants) are never passed
  between segments: each segment carries the initializers it reads and a copy of the constant
  nodes it needs; so are tensors computed from the graph inputs' shapes alone (the batch size of
  ``x.view(x.size(0), -1)``, ``ingest.input_shape_tensors``): a segment that reads one gets a copy
  of the shape nodes and the graph input they read, so a compacted batch sees its own size;
- it keeps the opset imports, IR version, local functions and value_info (symbolic batch kept), and
  passes ``onnx.checker``.

The runtime chains segments through a ``{tensor name: array}`` environment: a tensor produced by
segment ``i`` stays available to every later segment (this is how side tensors such as an attention
mask reach every layer), so a segment lists only what it reads itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from apparate_trt.errors import ApparateError
from apparate_trt.graph.ingest import constant_tensors, input_shape_tensors, node_inputs, tensor_types
from apparate_trt.graph.liveness import Liveness, liveness


@dataclass
class Segment:
    """One consecutive piece of the model: a standalone ONNX model with its input and output tensor
    names; ``ends_at_site`` is the id of the site it ends at, None for the last segment."""

    model: onnx.ModelProto
    inputs: list[str]
    outputs: list[str]
    ends_at_site: int | None


# ----------------------------------------------------------------------------------------------
# Splitting
# ----------------------------------------------------------------------------------------------


def _chosen_sites(sites: Sequence[Any], cut_ids: Sequence[int], num_nodes: int) -> list[Any]:
    """The sites with ids in ``cut_ids``, in graph order; ValueError on an unknown id or a site
    outside the graph."""
    by_id = {int(s.id): s for s in sites}
    unknown = [i for i in cut_ids if int(i) not in by_id]
    if unknown:
        raise ValueError(f"split_model: no site with id {unknown[0]} (known: {sorted(by_id)})")
    chosen = sorted({int(i): by_id[int(i)] for i in cut_ids}.values(), key=lambda s: s.node_index)
    for site in chosen:
        if not 0 <= site.node_index < num_nodes - 1:
            raise ValueError(
                f"split_model: site {site.id} cuts after node {site.node_index}, outside the "
                f"model's {num_nodes} nodes; was it found on another model?"
            )
    positions = [s.node_index for s in chosen]
    if len(set(positions)) != len(positions):
        raise ValueError("split_model: two chosen sites cut at the same node position")
    return chosen


@dataclass
class _GraphIndex:
    """Facts about the model computed once per split."""

    reads: list[list[str]]
    producer: dict[str, int]
    const: set[str]
    derived: set[str]  # computed from graph input shapes alone: recomputed in each segment that reads them
    initializers: dict[str, onnx.TensorProto]
    types: dict[str, onnx.TypeProto]
    lv: Liveness
    graph_inputs: list[str]
    graph_outputs: list[str]


def _index(model: onnx.ModelProto) -> _GraphIndex:
    graph = model.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    const = constant_tensors(graph)
    return _GraphIndex(
        reads=[node_inputs(node) for node in graph.node],
        producer=producer,
        const=const,
        derived=input_shape_tensors(graph, const),
        initializers={t.name: t for t in graph.initializer},
        types=tensor_types(model),
        lv=liveness(model),
        graph_inputs=[vi.name for vi in graph.input],
        graph_outputs=[vi.name for vi in graph.output],
    )


def _constant_closure(names: set[str], idx: _GraphIndex) -> set[int]:
    """Indices of the nodes that compute the constant or input-shape tensors ``names``."""
    copied = idx.const | idx.derived
    found: set[int] = set()
    stack = [n for n in names if n in idx.producer]
    while stack:
        node = idx.producer[stack.pop()]
        if node in found:
            continue
        found.add(node)
        stack.extend(n for n in idx.reads[node] if n in idx.producer and n in copied)
    return found


def _value_info(name: str, idx: _GraphIndex, site_desc: str) -> onnx.ValueInfoProto:
    if name not in idx.types:
        raise ApparateError(
            f"cannot split the model at {site_desc}: tensor '{name}' has no known type after shape "
            "inference; re-export the model with full type information"
        )
    return helper.make_value_info(name, idx.types[name])


def _ordered(names: set[str], idx: _GraphIndex, first: str | None = None) -> list[str]:
    """``names`` with ``first`` first, then graph inputs in graph order, then by producer position."""
    inputs = {name: i for i, name in enumerate(idx.graph_inputs)}

    def key(name: str) -> tuple[int, int, str]:
        if name == first:
            return (0, 0, name)
        if name in inputs:
            return (1, inputs[name], name)
        return (2, idx.producer.get(name, 0), name)

    return sorted(names, key=key)


def _segment(
    model: onnx.ModelProto,
    idx: _GraphIndex,
    lo: int,
    hi: int,
    number: int,
    site: Any | None,
    prev_site: Any | None,
    last: bool,
) -> Segment:
    """The segment of nodes ``lo..hi`` (inclusive) of the sorted graph."""
    graph = model.graph
    copied = idx.const | idx.derived
    active = [i for i in range(lo, hi + 1) if not all(o in copied for o in graph.node[i].output if o)]
    reads = {name for i in active for name in idx.reads[i]}
    wanted_consts = {n for n in reads if n in copied}
    if last:
        wanted_consts |= {n for n in idx.graph_outputs if n in copied}
    nodes = sorted(set(active) | _constant_closure(wanted_consts, idx))
    reads |= {name for i in nodes for name in idx.reads[i]}
    produced = {o for i in nodes for o in graph.node[i].output if o}

    inputs = _ordered(
        {n for n in reads if n not in produced and n not in idx.const},
        idx,
        prev_site.tensor if prev_site is not None else None,
    )
    crossing = {
        o for i in active for o in graph.node[i].output if o and o not in copied and idx.lv.last_use.get(o, -1) > hi
    }
    if last:
        outputs = [n for n in idx.graph_outputs if n in produced]
    else:
        outputs = _ordered(crossing, idx, site.tensor)
        if outputs[:1] != [site.tensor]:
            raise ValueError(
                f"split_model: site {site.id}'s tensor '{site.tensor}' is not produced before "
                f"its cut (node {site.node_index}); the sites do not belong to this model"
            )
    desc = f"site {site.id}" if site is not None else "the last segment"
    seg_graph = helper.make_graph(
        nodes=[graph.node[i] for i in nodes],
        name=f"{graph.name or 'model'}_seg{number:03d}",
        inputs=[_value_info(n, idx, desc) for n in inputs],
        outputs=[_value_info(n, idx, desc) for n in outputs],
        initializer=[idx.initializers[n] for n in sorted(reads) if n in idx.initializers],
        value_info=[
            helper.make_value_info(n, idx.types[n]) for n in sorted(produced) if n in idx.types and n not in outputs
        ],
    )
    seg_model = helper.make_model(
        seg_graph,
        opset_imports=list(model.opset_import),
        functions=list(model.functions),
        producer_name="apparate_trt",
        doc_string=f"segment {number} of {graph.name}",
    )
    seg_model.ir_version = model.ir_version
    return Segment(seg_model, inputs, outputs, None if site is None else int(site.id))


def split_model(model: onnx.ModelProto, sites: Sequence[Any], cut_ids: Sequence[int]) -> list[Segment]:
    """Split the sorted model (``ingest.load_model`` output, the one the sites were found on) at the
    sites whose ids are in ``cut_ids`` (any subset, any order): ``len(chosen) + 1`` segments in
    execution order (module docstring). ``sites`` may be :class:`~apparate_trt.compiler.sites.Site`
    objects or any objects with ``id``, ``tensor`` and ``node_index`` (manifest entries).
    """
    sites, cut_ids = list(sites), list(cut_ids)
    n = len(model.graph.node)
    chosen = _chosen_sites(sites, cut_ids, n)
    idx = _index(model)
    bounds = [-1] + [s.node_index for s in chosen] + [n - 1]
    segments = []
    for k in range(len(bounds) - 1):
        site = chosen[k] if k < len(chosen) else None
        prev_site = chosen[k - 1] if k > 0 else None
        segments.append(_segment(model, idx, bounds[k] + 1, bounds[k + 1], k, site, prev_site, last=site is None))
    return segments


# ----------------------------------------------------------------------------------------------
# Extra outputs and the chain check
# ----------------------------------------------------------------------------------------------


def with_extra_outputs(model: onnx.ModelProto, tensor_names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the given intermediate tensors (after its own
    outputs, in the given order; names already outputs are not repeated)."""
    types = tensor_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {vi.name for vi in out.graph.output}
    for name in tensor_names:
        if name in present:
            continue
        present.add(name)
        if name in types:
            out.graph.output.append(helper.make_value_info(name, types[name]))
        else:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out
