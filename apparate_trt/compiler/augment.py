"""Extra ramp-training inputs: label-free near-copies of the bootstrap samples (DESIGN.md step 5).

Ramps learn to predict the ORIGINAL MODEL's output, not a ground-truth label, so any input the
model can score is a valid training example: its target is whatever the model says about it.
Near-copies of the bootstrap samples are such inputs. They are close to the served distribution,
and training on them teaches a ramp where the model's answer is stable under small changes, which
is what an input needs to be released early with confidence (the held-out samples are never
copied; ``apparate-compile`` logs the held-out agreement either way).

- An image model (one float input of rank 4, [N, C, H, W], the layout ONNX convolutions use) gets
  mirrored and one-pixel-shifted copies (:func:`augmented_inputs`). With a thousand bootstrap
  samples the ramps' confident predictions are markedly cleaner with them than without.
- An image model also gets blends (:func:`blended_inputs`): each train image mixed with another
  one, mostly itself (weight 0.5-0.9). The model's answer on a blend shows a ramp how the answer
  moves between two inputs, which a thousand samples alone show poorly. On the EfficientNet-Lite0 /
  Fashion-MNIST benchmark model, 8 blends on top of the 7 copies raised the share of the served
  stream a ramp can release at 0.3% disagreement (``benchmarks/ramp_quality.py``). A blend names
  both samples it was made from, so that it is trained on only together with both.
- A token-sequence model (an attention mask input and only integer [N, S] inputs) gets copies
  with a few tokens deleted or the end cut off, the first and last real token kept
  (:func:`token_copies`). On the MiniLM / Rotten Tomatoes benchmark model they raised the share of
  the served stream that a ramp can release at 0.3% disagreement at all five sites, by 2.5 to 7.7
  points (``benchmarks/ramp_quality.py``).

Tabular rows and other multi-input models are not copied (no edit is known to keep their meaning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from apparate_trt.graph.ingest import TensorInfo

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


def default_copies(inputs: Sequence[TensorInfo], mask: TensorInfo | None = None) -> int:
    """Copies per bootstrap sample when the user gives none: all of them for an image model or a
    token-sequence model (``mask``: its attention mask input, ``ramps.find_mask_input``), else 0."""
    if image_input(inputs) is not None or token_inputs(inputs, mask) is not None:
        return MAX_COPIES
    return 0


def augmented_inputs(
    inputs: dict[str, np.ndarray], spec: TensorInfo, copies: int
) -> tuple[dict[str, np.ndarray], list[str]]:
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


# --------------------------------------------------------------------------- blends
MAX_BLENDS = 16
DEFAULT_BLENDS = 8
BLEND_WEIGHT = (0.5, 0.9)
"""The weight of a blend's own sample, drawn uniformly from this range (the partner gets the rest)."""


def default_blends(inputs: Sequence[TensorInfo]) -> int:
    """Blends per bootstrap sample when the user gives none: :data:`DEFAULT_BLENDS` for an image
    model (:func:`image_input`), else 0 (token ids and tabular rows cannot be mixed)."""
    return DEFAULT_BLENDS if image_input(inputs) is not None else 0


def blended_inputs(
    inputs: dict[str, np.ndarray], spec: TensorInfo, copies: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``copies`` blends of every sample of ``inputs[spec.name]`` ([N, C, H, W]) with a partner
    drawn at random from the same inputs, stacked like :func:`augmented_inputs`: row ``k * N + i``
    is ``w * x[i] + (1 - w) * x[partner]`` with ``w`` uniform in :data:`BLEND_WEIGHT`. Seeded.
    Returns (the blends as model inputs, each row's partner: int64 [copies * N], positions in x)."""
    if not 0 <= copies <= MAX_BLENDS:
        raise ValueError(f"blends must be in 0..{MAX_BLENDS}, got {copies}")
    x = inputs[spec.name]
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    parts, partners = [], []
    for _ in range(copies):
        partner = rng.permutation(n)
        w = rng.uniform(*BLEND_WEIGHT, size=(n,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        parts.append(w * x + (1 - w) * x[partner])
        partners.append(partner)
    if not parts:
        return {spec.name: x[:0]}, np.zeros(0, dtype=np.int64)
    return {spec.name: np.concatenate(parts).astype(x.dtype, copy=False)}, np.concatenate(partners).astype(np.int64)


# --------------------------------------------------------------------------- token sequences
#: Copies of a token sequence, in the order they are used: ``("drop", k)`` deletes ``k`` tokens at
#: random positions (a fresh draw per copy), ``("cut", f)`` deletes the last fraction ``f`` of them.
#: The first and the last real token (``[CLS]`` and ``[SEP]`` in BERT-style inputs) always stay.
TOKEN_EDITS: tuple[tuple[str, tuple[str, float]], ...] = (  # as many as TRANSFORMS (MAX_COPIES)
    ("drop 1 token", ("drop", 1)),
    ("drop 2 tokens", ("drop", 2)),
    ("cut the last quarter", ("cut", 0.25)),
    ("drop 1 token (second draw)", ("drop", 1)),
    ("drop 3 tokens", ("drop", 3)),
    ("drop 2 tokens (second draw)", ("drop", 2)),
    ("cut the last half", ("cut", 0.5)),
)


def token_inputs(inputs: Sequence[TensorInfo], mask: TensorInfo | None) -> list[TensorInfo] | None:
    """The inputs to edit for a token-sequence model, or None when the model is not one.

    A token-sequence model has an attention mask (``ramps.find_mask_input``) and every input is an
    integer [N, S] tensor (token ids, token types, the mask): those are edited together.
    """
    if mask is None:
        return None
    if all(len(i.shape) == 2 and np.dtype(i.dtype).kind in "iu" for i in inputs):
        return list(inputs)
    return None


def _right_padded_lengths(mask: np.ndarray) -> np.ndarray:
    """Real tokens per row of a right-padded mask ([N, S]); -1 for a row that is not right-padded."""
    real = mask != 0
    lengths = real.sum(axis=1)
    padded_right = (real == (np.arange(mask.shape[1])[None, :] < lengths[:, None])).all(axis=1)
    return np.where(padded_right, lengths, -1)


def _edit_rows(
    arrays: dict[str, np.ndarray], lengths: np.ndarray, edit: tuple[str, float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Apply ``edit`` to every row: delete positions, shift the rest left, pad with the row's pad value."""
    out = {name: a.copy() for name, a in arrays.items()}
    width = next(iter(arrays.values())).shape[1]
    for row, length in enumerate(lengths):
        inner = int(length) - 2  # positions 1 .. length-2 may go
        if inner < 2:
            continue  # too short to edit; the copy equals the sample
        kind, amount = edit
        if kind == "drop":
            gone = rng.choice(np.arange(1, length - 1), size=min(int(amount), inner - 1), replace=False)
        else:
            count = min(max(1, int(round(inner * amount))), inner - 1)
            gone = np.arange(length - 1 - count, length - 1)
        keep = np.setdiff1d(np.arange(width), gone, assume_unique=True)
        for name, a in arrays.items():
            pad = a[row, length] if length < width else 0
            out[name][row] = np.concatenate([a[row, keep], np.full(gone.size, pad, dtype=a.dtype)])
    return out


def token_copies(
    inputs: dict[str, np.ndarray], edited: Sequence[TensorInfo], mask: TensorInfo, copies: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``copies`` edited copies of every sample (``TOKEN_EDITS``), stacked edit by edit like
    :func:`augmented_inputs`: row ``k * N + i`` is edit ``k`` of sample ``i``. Rows whose mask is
    not right-padded (ones, then zeros) are copied unedited. Seeded: the same inputs give the same
    copies. Returns (the copies as model inputs, the edits' names)."""
    if not 0 <= copies <= MAX_COPIES:
        raise ValueError(f"copies must be in 0..{MAX_COPIES}, got {copies}")
    arrays = {spec.name: np.asarray(inputs[spec.name]) for spec in edited}
    chosen = TOKEN_EDITS[:copies]
    if not chosen:
        return {name: a[:0] for name, a in arrays.items()}, []
    lengths = _right_padded_lengths(arrays[mask.name])
    rng = np.random.default_rng(seed)
    parts = [_edit_rows(arrays, lengths, edit, rng) for _, edit in chosen]
    return {name: np.concatenate([p[name] for p in parts]) for name in arrays}, [name for name, _ in chosen]
