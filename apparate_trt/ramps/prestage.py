"""A ramp's learned per-position stage: a nonlinearity at every position *before* the pooling.

The model's own head typically applies a 1x1 convolution and an activation at every position of
its last feature map before it pools (or, in a transformer, a per-token feed-forward layer before
the masked mean). A ramp that pools first and applies its nonlinearity after cannot express that,
even one block before the head (issue 31: the deepest CV ramp agreed with the model on 90% of
inputs). The ``*_bottleneck_*`` and ``seq_token_*`` ramp kinds add this stage:

- feature map [N, C, H, W]: a fixed average pooling to at most :data:`MAX_POSITIONS` positions
  (``stride`` x ``stride`` tiles, floor mode, so a large early map costs little), then a 1x1
  convolution C -> B and a ReLU at each position;
- token sequence [N, S, H]: a dense layer H -> B and a ReLU at each token.

The pooling and the head of the kind follow. The stage is trained once by the compiler, end to end
with a temporary head (:func:`train_prestage`), on a bounded subsample of the bootstrap's site
activations; it is then frozen and becomes part of the ramp's fixed feature extractor: the ramp
graph's ``features`` output is what follows the stage and the pooling, so the head's training, the
runtime's refits and ``--save-ramps`` work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from apparate_trt._optional import require
from apparate_trt.ramps.steps import step_count

MAX_POSITIONS = 256
"""A feature map is average-pooled to at most this many positions (16 x 16) before the 1x1
convolution: it bounds the stage's cost (C x B multiply-adds per position) and the memory the
compiler's training subsample holds."""


@dataclass
class PreStage:
    """``y = relu(x W + b)`` at every position, after ``stride`` x ``stride`` average pooling
    (feature maps only; 1: none). ``weight`` float32 [C, B] (C: the site's channels or hidden
    size), ``bias`` float32 [B]."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int = 1

    @property
    def width(self) -> int:
        return int(self.weight.shape[1])


def prepool_stride(shape: Sequence[int | str | None], max_positions: int = MAX_POSITIONS) -> int:
    """The smallest tile size k for which a feature map of ``shape`` [N, C, H, W] pooled in k x k
    tiles (floor mode) has at most ``max_positions`` positions; 1 for dynamic H or W or another rank."""
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return 1
    h, w = int(shape[2]), int(shape[3])  # type: ignore[arg-type]
    k = 1
    while (h // k) * (w // k) > max_positions and k < min(h, w):
        k += 1
    return k


def prepooled_shape(shape: Sequence[int | str | None], stride: int) -> list[int | str | None]:
    """``shape`` after :func:`prepool` with ``stride`` (unchanged for stride 1)."""
    if stride == 1:
        return list(shape)
    return [shape[0], shape[1], int(shape[2]) // stride, int(shape[3]) // stride]  # type: ignore[arg-type]


def prepool(array: np.ndarray, stride: int) -> np.ndarray:
    """Average ``array`` [N, C, H, W] over ``stride`` x ``stride`` tiles, dropping the remainder
    rows and columns (what ONNX ``AveragePool`` with kernel = strides and no padding computes)."""
    if stride == 1 or array.ndim != 4:
        return array
    n, c, h, w = array.shape
    hk, wk = h // stride, w // stride
    tiles = array[:, :, : hk * stride, : wk * stride].reshape(n, c, hk, stride, wk, stride)
    return tiles.mean(axis=(3, 5), dtype=np.float64).astype(np.float32)


def apply_prestage(pre: PreStage, array: np.ndarray) -> np.ndarray:
    """The stage on a site activation: [N, C, H, W] -> [N, B, H/k, W/k] or [N, S, H] -> [N, S, B]
    (float32, the numpy reference of :func:`prestage_nodes`)."""
    w, b = pre.weight.astype(np.float32), pre.bias.astype(np.float32)
    if array.ndim == 4:
        x = prepool(array.astype(np.float32, copy=False), pre.stride)
        y = np.einsum("nchw,cb->nbhw", x, w, optimize=True) + b[None, :, None, None]
    elif array.ndim == 3:
        y = array.astype(np.float32, copy=False) @ w + b
    else:
        raise ValueError(f"a per-position stage needs a [N, C, H, W] or [N, S, H] site tensor, got rank {array.ndim}")
    return np.maximum(y, 0.0).astype(np.float32, copy=False)


def prestage_nodes(pre: PreStage, source: str, rank: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """ONNX nodes computing :func:`apply_prestage` on ``source`` (of rank 4 or 3); returns
    (nodes, initializers, output name). Initializers are ``ramp_pre_w`` and ``ramp_pre_b``, apart
    from the head's ``ramp_w{i}`` (what a refit replaces)."""
    node = helper.make_node
    nodes: list[onnx.NodeProto] = []
    x = source
    if rank == 4:
        if pre.stride > 1:
            k = [pre.stride, pre.stride]
            nodes.append(node("AveragePool", [x], ["ramp_prepool"], name="ramp_prepool", kernel_shape=k, strides=k))
            x = "ramp_prepool"
        kernel = np.ascontiguousarray(pre.weight.T[:, :, None, None], dtype=np.float32)  # [B, C, 1, 1]
        inits = [numpy_helper.from_array(kernel, "ramp_pre_w")]
        inputs = [x, "ramp_pre_w", "ramp_pre_b"]
        nodes.append(node("Conv", inputs, ["ramp_pre_lin"], name="ramp_pre_conv", kernel_shape=[1, 1]))
    elif rank == 3:
        inits = [numpy_helper.from_array(np.ascontiguousarray(pre.weight, dtype=np.float32), "ramp_pre_w")]
        nodes.append(node("MatMul", [x, "ramp_pre_w"], ["ramp_pre_mm"], name="ramp_pre_matmul"))
        nodes.append(node("Add", ["ramp_pre_mm", "ramp_pre_b"], ["ramp_pre_lin"], name="ramp_pre_add"))
    else:
        raise ValueError(f"a per-position stage needs a site tensor of rank 4 or 3, got {rank}")
    inits.append(numpy_helper.from_array(np.ascontiguousarray(pre.bias, dtype=np.float32), "ramp_pre_b"))
    nodes.append(node("Relu", ["ramp_pre_lin"], ["ramp_pre_out"], name="ramp_pre_relu"))
    return nodes, inits, "ramp_pre_out"


def read_prestage(model: onnx.ModelProto, stride: int | None = None) -> PreStage | None:
    """The stage of a ramp graph written with :func:`prestage_nodes`, or None if it has none."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if "ramp_pre_w" not in inits:
        return None
    w = inits["ramp_pre_w"]
    weight = w[:, :, 0, 0].T if w.ndim == 4 else w
    if stride is None:
        pools = [n for n in model.graph.node if n.name == "ramp_prepool"]
        stride = int(helper.get_attribute_value(pools[0].attribute[0])[0]) if pools else 1
    return PreStage(np.ascontiguousarray(weight, np.float32), inits["ramp_pre_b"].astype(np.float32), stride)


@dataclass
class PreStageTraining:
    """Hyper-parameters of a stage's end-to-end training with a temporary head. It takes
    ``epochs`` x ceil(rows / ``batch_size``) optimiser steps (``ramps.steps.step_count``), raised to
    ``min_steps`` and capped at ``max_steps``: the compiler's largest subsample (4,000 rows) trains
    for 600 steps, a 150-row one for 60. Each step draws a full batch of reshuffled rows (a partial
    batch at the end of a shuffle is skipped), so on few rows the passes are more than ``epochs``."""

    epochs: int = 30
    min_steps: int = 50
    max_steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    hidden: int = 64

    def __post_init__(self) -> None:
        counts = {name: getattr(self, name) for name in ("epochs", "min_steps", "max_steps", "batch_size", "hidden")}
        bad = {name: value for name, value in counts.items() if not (isinstance(value, int) and value >= 1)}
        if bad:
            raise ValueError(f"PreStageTraining needs integers >= 1; got {bad}")


def _channel_stats(x: np.ndarray, channel_axis: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float64) of ``x``, over valid tokens only with ``mask``."""
    moved = np.moveaxis(x, channel_axis, -1).reshape(-1, x.shape[channel_axis])
    if mask is not None:
        moved = moved[mask.reshape(-1) > 0]
    mean = moved.mean(axis=0, dtype=np.float64)
    std = moved.std(axis=0, dtype=np.float64)
    magnitude = float(np.sqrt(np.mean(np.square(moved, dtype=np.float64)))) if moved.size else 0.0
    return mean, np.maximum(std, 0.01 * magnitude) if magnitude > 0 else np.ones_like(std)


def train_prestage(
    activations: np.ndarray,
    probs: np.ndarray,
    width: int,
    pool: str,
    *,
    stride: int = 1,
    cells: int = 0,
    mask: np.ndarray | None = None,
    config: PreStageTraining = PreStageTraining(),
    seed: int = 0,
) -> PreStage:
    """Train a stage of ``width`` outputs end to end with a temporary two-layer head to predict the
    model's probabilities ``probs`` [M, K] from already pre-pooled ``activations`` ([M, C, h, w]
    or [M, S, H]), pooled after the stage by ``pool`` (``gap``, ``grid`` with ``cells``, or
    ``mean``: masked by ``mask`` [M, S] when given). Standardisation is folded into the returned
    weights, which take raw activations; ``stride`` is recorded for the ONNX graph. Needs torch."""
    torch = require("torch", extra="train", purpose="ramp training")
    torch.manual_seed(seed)
    rank = activations.ndim
    channel_axis = 1 if rank == 4 else 2
    mean, std = _channel_stats(activations, channel_axis, mask if rank == 3 else None)
    if rank == 4:  # [M, C, h, w] -> [M, h, w, C]: a 1x1 convolution is a dense layer over channels
        x_np = np.moveaxis(activations, 1, -1)
    else:
        x_np = activations
    x = torch.from_numpy(((x_np - mean) / std).astype(np.float32))
    p = torch.from_numpy(probs.astype(np.float32))
    m = torch.from_numpy(mask.astype(np.float32)) if mask is not None and rank == 3 else None
    channels = int(x.shape[-1])
    pooled_width = width * (cells * cells if pool == "grid" else 1)
    stage = torch.nn.Linear(channels, width)
    head = torch.nn.Sequential(
        torch.nn.Linear(pooled_width, config.hidden), torch.nn.ReLU(), torch.nn.Linear(config.hidden, p.shape[1])
    )

    def forward(idx: object) -> object:
        y = torch.relu(stage(x[idx]))
        if rank == 4:
            if pool == "grid":
                n, h, w, b = y.shape
                y = y.reshape(n, cells, h // cells, cells, w // cells, b).mean(dim=(2, 4))  # [n, ci, cj, b]
                y = y.permute(0, 3, 1, 2).reshape(n, -1)  # channel-major, as ONNX Flatten orders it
            else:
                y = y.mean(dim=(1, 2))
        elif m is not None:
            mm = m[idx][:, :, None]
            y = (y * mm).sum(dim=1) / mm.sum(dim=1).clamp(min=1.0)
        else:
            y = y.mean(dim=1)
        return head(y)

    params = [*stage.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    n = x.shape[0]
    batch = min(config.batch_size, n)
    steps = step_count(n, batch, config.epochs, config.min_steps, config.max_steps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch]
        pos += batch
        loss = -(p[idx] * torch.log_softmax(forward(idx), dim=1)).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    w = stage.weight.detach().numpy().T.astype(np.float64)  # [C, B] on standardised inputs
    b = stage.bias.detach().numpy().astype(np.float64)
    raw_w = w / std[:, None]
    raw_b = b - (mean / std) @ w
    return PreStage(raw_w.astype(np.float32), raw_b.astype(np.float32), stride)
