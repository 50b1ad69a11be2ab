"""What both real models share: seeds, threads, logging, one-line build errors, the head training,
the ONNX export and checks, ONNX Runtime timing and the stream splits."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

SEED = 0
TORCH_THREADS = 2
ORT_THREADS = 2
OPSET = 17
BOOTSTRAP_FRACTION = 0.10
BOOTSTRAP_MIN = 1000
INSTALL_HINT = "run `bash scripts/install_system.sh` (or `make install`)"


_T0 = time.perf_counter()


class BuildError(Exception):
    """A failure with a one-line, user-facing explanation."""


def log(msg: str) -> None:
    """Print one progress line prefixed with the seconds elapsed since the script started."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def require(module: str, package: str) -> Any:
    """Import ``module``, or raise BuildError naming the missing ``package`` and its install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BuildError(f"missing package {package} (import {module} failed: {exc}); {INSTALL_HINT}") from exc


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def run_stage(model: str, stage: str, due: bool, build: Callable[[], object], skipped: str = "outputs exist") -> bool:
    """Run one build stage of ``model`` when ``due`` (logged either way); True if it ran, so that the
    stages after it run too."""
    if not due:
        log(f"{model}: stage {stage}: {skipped}, skipped")
        return False
    log(f"{model}: stage {stage}")
    build()
    return True


def finish_meta(paths: dict[str, Path], t0: float) -> None:
    """Record the files' sizes and the run's seconds (since ``t0``, ``time.perf_counter()``) in meta.json."""
    update_json(paths["meta"], "files_bytes", file_sizes(list(paths.values())))
    update_json(paths["meta"], "last_run_seconds", round(time.perf_counter() - t0, 1))


def bootstrap_count(n_stream: int) -> int:
    """Number of leading stream samples used as bootstrap data: max(10% of the stream, 1,000)."""
    n = max(int(math.ceil(BOOTSTRAP_FRACTION * n_stream)), BOOTSTRAP_MIN)
    if n >= n_stream:
        raise BuildError(f"stream of {n_stream} samples is too short for a {n}-sample bootstrap")
    return n


def outputs_exist(paths: Sequence[Path]) -> bool:
    """True when every path exists (a stage whose outputs all exist is skipped without --force)."""
    return all(p.exists() for p in paths)


def read_json(path: Path) -> dict:
    """Read a JSON object, or {} when the file does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}


def update_json(path: Path, section: str, value: Any) -> None:
    """Set ``section`` of the JSON object in ``path`` to ``value`` (other sections kept)."""
    data = read_json(path)
    data[section] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sizes(paths: Sequence[Path]) -> dict[str, int]:
    """Sizes in bytes of the existing files among ``paths``, keyed by file name."""
    return {p.name: p.stat().st_size for p in paths if p.exists()}


def seeded_torch(seed: int) -> Any:
    """Import torch, fix its thread count (TORCH_THREADS) and seed it; return the module."""
    torch = require("torch", "torch==2.13.0")
    torch.set_num_threads(TORCH_THREADS)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    torch.manual_seed(seed)
    return torch


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    hidden: int | None,
    epochs: int,
    seed: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch: int = 128,
) -> Any:
    """Train a classifier head on frozen features with Adam and cross-entropy.

    features: float32 [N, F]; labels: int [N] in [0, n_classes). ``hidden`` None gives one linear
    layer, an int gives Linear(F, hidden) -> ReLU -> Linear(hidden, n_classes). Returns the head
    (torch.nn.Module, eval mode).
    """
    torch = seeded_torch(seed)
    nn = torch.nn
    dim = features.shape[1]
    layers = (
        [nn.Linear(dim, n_classes)]
        if hidden is None
        else [nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)]
    )
    head = nn.Sequential(*layers)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(head(x[idx]), y[idx]).backward()
            opt.step()
    return head.eval()


def head_accuracy(head: Any, features: np.ndarray, labels: np.ndarray) -> float:
    """Share (0..1) of ``features`` rows whose head argmax equals ``labels``."""
    torch = require("torch", "torch==2.13.0")
    with torch.no_grad():
        pred = head(torch.from_numpy(features.astype(np.float32))).argmax(1).numpy()
    return float((pred == labels).mean())


def export_onnx(
    module: Any, args: tuple, path: Path, input_names: list[str], output_names: list[str], kwargs: dict | None = None
) -> None:
    """Export ``module`` with torch.onnx.export (opset 17, TorchScript path, dynamic batch axis 0),
    then fold constants (see fold_constants) into ``path``."""
    torch = require("torch", "torch==2.13.0")
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():  # the legacy-exporter deprecation and folding notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            kwargs=kwargs,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    fold_constants(tmp, path)
    tmp.unlink()


def fold_constants(src: Path, dst: Path) -> None:
    """Write ``src`` to ``dst`` after ONNX Runtime's basic (standard-op, semantics-preserving)
    graph optimisations: constant folding, e.g. of the pad-size arithmetic that the exporter
    leaves around every "same" padding, Pad folded into Conv, identity/dead node removal.

    Only standard ONNX ops remain; opset imports of domains that no node uses are dropped.
    """
    ort = require("onnxruntime", "onnxruntime")
    onnx = require("onnx", "onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = ORT_THREADS
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst))
    used = {n.domain for n in model.graph.node}
    if used - {"", "ai.onnx"}:
        raise BuildError(f"{dst}: optimised graph uses non-standard op domains {sorted(used)}")
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    order = demand_order(model.graph)
    nodes = [model.graph.node[i] for i in order]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))


def demand_order(graph: Any) -> list[int]:
    """Node indices of an onnx GraphProto in a topological order where every node comes as late
    as its first consumer allows: a depth-first post-order from the graph outputs, visiting each
    node's inputs in order (so the main chain comes first and side computations, e.g. a pooling
    mask or a resize size, sit right before their consumer instead of at the top of the file;
    fewer tensors are live across the model's blocks)."""
    producer = {t: i for i, n in enumerate(graph.node) for t in n.output if t}
    order: list[int] = []
    done: set[int] = set()
    for out in graph.output:
        if out.name not in producer:
            continue
        stack = [(producer[out.name], 0)]
        while stack:
            idx, k = stack.pop()
            if idx in done:
                continue
            inputs = [t for t in graph.node[idx].input if t in producer]
            if k < len(inputs):
                stack.append((idx, k + 1))
                if producer[inputs[k]] not in done:
                    stack.append((producer[inputs[k]], 0))
            else:
                done.add(idx)
                order.append(idx)
    return order


def check_onnx(path: Path) -> dict:
    """Run onnx.checker (full check) and shape inference on ``path``; return graph facts.

    Returns {"nodes": int, "op_counts": {op: int}, "inputs": {name: [dims]}, "outputs": {...}},
    where a dimension is an int or a symbolic name such as "batch".
    """
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)

    def dims(value_info: Any) -> list:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    ops: dict[str, int] = {}
    for node in inferred.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    inits = {i.name for i in inferred.graph.initializer}
    return {
        "nodes": len(inferred.graph.node),
        "op_counts": dict(sorted(ops.items())),
        "inputs": {v.name: dims(v) for v in inferred.graph.input if v.name not in inits},
        "outputs": {v.name: dims(v) for v in inferred.graph.output},
    }


def ort_session(path: Path) -> Any:
    """ONNX Runtime CPU session with ORT_THREADS intra-op threads, 1 inter-op, no spinning."""
    ort = require("onnxruntime", "onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = ORT_THREADS
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(session: Any, arrays: dict[str, np.ndarray], batch: int = 64, progress: str = "") -> np.ndarray:
    """Run ``session`` over all samples of ``arrays`` (name -> [N, ...]) in batches of ``batch``;
    returns the first output, [N, C] logits."""
    n = len(next(iter(arrays.values())))
    out = []
    for start in range(0, n, batch):
        feed = {k: v[start : start + batch] for k, v in arrays.items()}
        out.append(session.run(None, feed)[0])
        if progress and (start // batch) % 40 == 0:
            log(f"{progress}: {min(start + batch, n)}/{n}")
    return np.concatenate(out)


def ort_latency_ms(session: Any, arrays: dict[str, np.ndarray], batch: int, repeats: int) -> dict[str, float]:
    """Median wall latency (ms) of one ORT run at ``batch``, and that divided by ``batch``."""
    feed = {k: np.ascontiguousarray(v[:batch]) for k, v in arrays.items()}
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    med = float(np.median(times))
    return {"batch": batch, "ms_per_batch": round(med, 3), "ms_per_sample": round(med / batch, 3)}


def stream_accuracy(logits: np.ndarray, labels: np.ndarray, n_boot: int) -> dict[str, float]:
    """Accuracy (0..1) of argmax(logits) vs true labels: overall, bootstrap part, eval part."""
    correct = logits.argmax(1) == labels
    return {
        "stream": round(float(correct.mean()), 4),
        "bootstrap": round(float(correct[:n_boot].mean()), 4),
        "eval": round(float(correct[n_boot:].mean()), 4),
    }


def evaluate_stage(
    model_path: Path, inputs: dict[str, np.ndarray], labels: np.ndarray, n_boot: int, meta_path: Path, name: str
) -> dict:
    """ORT pass over the whole stream (accuracy vs true labels, class shares of the model's
    predictions) plus batch-1 / batch-8 latency; stored under "evaluation" in meta.json."""
    sess = ort_session(model_path)
    logits = ort_logits(sess, inputs, progress=f"{name}: ORT over the stream")
    pred = logits.argmax(1)
    result = {
        "test_accuracy": stream_accuracy(logits, labels, n_boot),
        "prediction_counts": np.bincount(pred, minlength=logits.shape[1]).tolist(),
        "ort_threads": ORT_THREADS,
        "latency_batch1": ort_latency_ms(sess, inputs, 1, repeats=200),
        "latency_batch8": ort_latency_ms(sess, inputs, 8, repeats=50),
    }
    update_json(meta_path, "evaluation", result)
    log(
        f"{name}: test accuracy {result['test_accuracy']}; latency b1 "
        f"{result['latency_batch1']['ms_per_sample']} ms/sample, b8 "
        f"{result['latency_batch8']['ms_per_sample']} ms/sample"
    )
    return result


def ort_vs_torch(model_path: Path, feeds: dict[str, np.ndarray], reference: np.ndarray) -> float:
    """Max abs difference between ORT outputs on ``feeds`` and the torch ``reference`` logits."""
    got = ort_session(model_path).run(None, feeds)[0]
    return float(np.abs(got - reference).max())
