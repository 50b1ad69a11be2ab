"""Liveness of the sorted graph: where each tensor is produced and last read, what is live at a cut.

Position ``p`` is the cut just after node ``p``. At each position the *live set* is every
non-constant tensor produced at or before ``p`` (graph inputs count as produced before node 0) and
read after ``p`` (a graph output is read at the end). Constants (initializers, Constant outputs,
tensors computed only from constants) are never live: every segment recomputes them. Control-flow
nodes are atomic; what their subgraphs read from the outer scope counts as read by the node.
Used by site finding (``compiler/sites.py``) and by splitting (``graph/split.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from apparate_trt.graph.ingest import constant_tensors, node_inputs


@dataclass
class Liveness:
    """Per non-constant tensor: position of its producer (-1: graph input), of its last node
    reader (-1: none) and of its last use (``num_nodes`` for a graph output, read at the end)."""

    num_nodes: int
    produced: dict[str, int]
    last_read: dict[str, int]
    last_use: dict[str, int]
    outputs: set[str]

    def read_span(self, name: str) -> int:
        """Number of positions from ``name``'s producer to its last node reader."""
        return self.last_read[name] - max(self.produced[name], 0)


def liveness(model: onnx.ModelProto) -> Liveness:
    """Producer and last-reader positions of every non-constant tensor of the sorted graph."""
    graph = model.graph
    const = constant_tensors(graph)
    produced: dict[str, int] = {vi.name: -1 for vi in graph.input if vi.name not in const}
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node_inputs(node):
            if name not in const:
                readers.setdefault(name, []).append(index)
        for out in node.output:
            if out and out not in const:
                produced[out] = index
    n = len(graph.node)
    last_read = {name: max(readers.get(name, [-1])) for name in produced}
    outputs = {vi.name for vi in graph.output if vi.name in produced}
    last_use = {name: n if name in outputs else last_read[name] for name in produced}
    return Liveness(n, produced, last_read, last_use, outputs)


def live_sets(lv: Liveness) -> list[list[str]]:
    """Live tensors after each node position, each list in production order."""
    starts: dict[int, list[str]] = {}
    for name, pos in lv.produced.items():
        if lv.last_use[name] > pos:
            starts.setdefault(pos, []).append(name)
    live: dict[str, None] = {name: None for name in starts.get(-1, [])}
    result: list[list[str]] = []
    for p in range(lv.num_nodes):
        for name in starts.get(p, []):
            live[name] = None
        for name in [t for t in live if lv.last_use[t] <= p]:
            del live[name]
        result.append(list(live))
    return result


def side_tensors(lv: Liveness, side_span: float = 0.5) -> set[str]:
    """Tensors read by nodes across more than ``side_span`` of the graph's positions (rule 1)."""
    limit = side_span * lv.num_nodes
    return {name for name in lv.produced if lv.last_read[name] >= 0 and lv.read_span(name) > limit}


def is_side_at(lv: Liveness, sides: set[str], name: str, position: int) -> bool:
    """Whether live tensor ``name`` is a side tensor at ``position``: a long-lived one, or a graph
    output that no later node reads (it is only passed on to the end)."""
    return name in sides or (name in lv.outputs and lv.last_read[name] <= position)
