"""Extra ramp-training inputs: label-free near-copies of the bootstrap images (DESIGN.md step 5).

Ramps learn to predict the ORIGINAL MODEL's output, not a ground-truth label, so any input the
model can score is a valid training example: its target is whatever the model says about it.
Mirrored and one-pixel-shifted copies of the bootstrap images are such inputs. They are close to
the served distribution, and training on them teaches a ramp where the model's answer is stable
under small changes, which is what an input needs to be released early with confidence. With a
thousand bootstrap samples the ramps' confident predictions are markedly cleaner with the copies
than without (``apparate-compile`` logs the held-out agreement either way; the held-out samples
are never copied).

Only a model with one float input of rank 4 ([N, C, H, W], the layout ONNX convolutions use) is
augmented; token ids, tabular rows and multi-input models are not (a mirrored sentence is not a
sentence).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from apparate_trt.compiler.ingest import TensorInfo

Transform = Callable[[np.ndarray], np.ndarray]


def _shift(dy: int, dx: int) -> Transform:
    """Shift an [N, C, H, W] batch by (dy, dx) pixels, repeating the edge rows and columns."""

    def shifted(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[2], x.shape[3]
        pad = ((0, 0), (0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
        padded = np.pad(x, pad, mode="edge")
        top, left = max(-dy, 0), max(-dx, 0)
        return padded[:, :, top : top + h, left : left + w]

    return shifted


def _mirror(x: np.ndarray) -> np.ndarray:
    return x[:, :, :, ::-1]


def _then(first: Transform, second: Transform) -> Transform:
    return lambda x: second(first(x))


#: The copies, in the order they are used: a mirror, the four one-pixel shifts, then two mixes.
TRANSFORMS: tuple[tuple[str, Transform], ...] = (
    ("mirror", _mirror),
    ("down 1 px", _shift(1, 0)),
    ("up 1 px", _shift(-1, 0)),
    ("right 1 px", _shift(0, 1)),
    ("left 1 px", _shift(0, -1)),
    ("mirror, down-right 1 px", _then(_mirror, _shift(1, 1))),
    ("up-left 1 px", _shift(-1, -1)),
)
MAX_COPIES = len(TRANSFORMS)
DEFAULT_IMAGE_COPIES = MAX_COPIES


def image_input(inputs: Sequence[TensorInfo]) -> TensorInfo | None:
    """The model's image input: its only input, if that is a float tensor of rank 4; else None."""
    if len(inputs) != 1:
        return None
    (spec,) = inputs
    if len(spec.shape) != 4 or np.dtype(spec.dtype).kind != "f":
        return None
    spatial = spec.shape[2:]
    if any(isinstance(d, int) and d < 2 for d in spatial):  # a 1-pixel axis cannot be shifted or mirrored
        return None
    return spec


def default_copies(inputs: Sequence[TensorInfo]) -> int:
    """Copies per bootstrap sample when the user gives none: all of them for an image model, else 0."""
    return DEFAULT_IMAGE_COPIES if image_input(inputs) is not None else 0


def augmented_inputs(inputs: dict[str, np.ndarray], spec: TensorInfo, copies: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """``copies`` transformed copies of every sample of ``inputs[spec.name]`` ([N, C, H, W]), stacked
    transform by transform: row ``k * N + i`` is transform ``k`` of sample ``i``. Returns (the copies
    as model inputs, the transforms' names)."""
    if not 0 <= copies <= MAX_COPIES:
        raise ValueError(f"copies must be in 0..{MAX_COPIES}, got {copies}")
    x = inputs[spec.name]
    chosen = TRANSFORMS[:copies]
    if not chosen:
        return {spec.name: x[:0]}, []
    stacked = np.concatenate([np.ascontiguousarray(t(x), dtype=x.dtype) for _, t in chosen])
    return {spec.name: stacked}, [name for name, _ in chosen]
