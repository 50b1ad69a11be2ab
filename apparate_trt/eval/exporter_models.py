"""Tiny PyTorch models in the shapes real code has, their data, brief training, and ONNX export.

These are the families of the model matrix (``apparate_trt.eval.model_matrix``): what users export
every day, at sizes that train in a second and compile in a few. Importing this module imports
torch (the ``train`` extra); the Hugging Face families also need ``transformers`` (``models``).

- sequence classifiers (token ids and an attention mask, first-token head): hand-built
  ``nn.MultiheadAttention`` encoders with and without a padding mask, ``nn.TransformerEncoder``,
  and Hugging Face BERT and DistilBERT from tiny configs;
- image classifiers (3x16x16): a ResNet whose head is ``torch.flatten``, a conv chain whose head is
  ``x.view(x.size(0), -1)`` (the batch-size scalar is live across every site), an MBConv network
  with squeeze-and-excitation, and the view CNN returning its features beside its scores.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGE_CLASSES = 4
IMAGE_SHAPE = (3, 16, 16)
TEXT_CLASSES = 2
SEQ_LEN = 12
VOCAB = 50
PAD_TOKEN = 0
KEYWORDS_PER_CLASS = 5
"""Token ids 1..10 are the keywords of the two text classes (1-5 class 0, 6-10 class 1)."""


# ------------------------------------------------------------------------------------- data
def image_data(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({"input": float32 [n, 3, 16, 16]}, labels int64 [n])``: a fixed pattern per class plus noise."""
    patterns = np.random.default_rng(1234).standard_normal((IMAGE_CLASSES, *IMAGE_SHAPE)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, IMAGE_CLASSES, n)
    images = patterns[labels] + rng.standard_normal((n, *IMAGE_SHAPE)).astype(np.float32) * 1.5
    return {"input": images.astype(np.float32)}, labels.astype(np.int64)


def text_data(n: int, seed: int, with_mask: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Token ids int64 [n, 12] (and an attention mask, a third of the rows padded after 9 tokens):
    random filler with two keywords of the row's class; labels int64 [n]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, TEXT_CLASSES, n)
    ids = rng.integers(1 + TEXT_CLASSES * KEYWORDS_PER_CLASS, VOCAB, (n, SEQ_LEN))
    mask = np.ones((n, SEQ_LEN), np.int64)
    mask[::3, 9:] = 0
    for row, label in enumerate(labels):
        where = rng.choice(9, 2, replace=False)
        ids[row, where] = 1 + label * KEYWORDS_PER_CLASS + rng.integers(0, KEYWORDS_PER_CLASS, 2)
    ids[mask == 0] = PAD_TOKEN
    inputs = {"input_ids": ids.astype(np.int64)}
    if with_mask:
        inputs["attention_mask"] = mask
    return inputs, labels.astype(np.int64)


# ------------------------------------------------------------------------------ sequence models
class MhaEncoder(nn.Module):
    """Hand-built encoder layers of ``nn.MultiheadAttention`` (post-norm, ReLU MLP), a learned
    positional embedding added to the token embedding, and a first-token classifier; with
    ``padding_mask`` the attention takes ``key_padding_mask = attention_mask == 0``."""

    def __init__(self, layers: int = 3, d: int = 16, padding_mask: bool = True) -> None:
        super().__init__()
        self.padding_mask = padding_mask
        self.emb = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(1, SEQ_LEN, d) * 0.02)
        self.attn = nn.ModuleList([nn.MultiheadAttention(d, 2, batch_first=True) for _ in range(layers)])
        self.ff = nn.ModuleList([nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, d)) for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(2 * layers)])
        self.cls = nn.Linear(d, TEXT_CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.emb(input_ids) + self.pos[:, : input_ids.shape[1]]
        pad = None if attention_mask is None or not self.padding_mask else attention_mask == 0
        for i, (attn, ff) in enumerate(zip(self.attn, self.ff)):
            h = self.norms[2 * i](h + attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
            h = self.norms[2 * i + 1](h + ff(h))
        return self.cls(h[:, 0])


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer`` with a padding mask."""

    def __init__(self, layers: int = 3, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(1, SEQ_LEN, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.cls = nn.Linear(d, TEXT_CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids) + self.pos[:, : input_ids.shape[1]]
        return self.cls(self.enc(h, src_key_padding_mask=attention_mask == 0)[:, 0])


class HfClassifier(nn.Module):
    """A Hugging Face ``*ForSequenceClassification`` from a tiny config (3 layers, width 16):
    ``arch`` is ``bert`` or ``distilbert``. Returns the logits tensor only."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        import transformers

        if arch == "bert":
            config = transformers.BertConfig(
                vocab_size=VOCAB,
                hidden_size=16,
                num_hidden_layers=3,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=32,
                num_labels=TEXT_CLASSES,
            )
            self.model = transformers.BertForSequenceClassification(config)
        elif arch == "distilbert":
            config = transformers.DistilBertConfig(
                vocab_size=VOCAB,
                dim=16,
                n_layers=3,
                n_heads=2,
                hidden_dim=32,
                max_position_embeddings=32,
                num_labels=TEXT_CLASSES,
            )
            self.model = transformers.DistilBertForSequenceClassification(config)
        else:
            raise ValueError(f"unknown Hugging Face architecture '{arch}'; use bert or distilbert")
        self.model.config.return_dict = True

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


# --------------------------------------------------------------------------------- image models
def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResNetFlatten(nn.Module):
    """A stem and four residual blocks; the head is ``torch.flatten(pool(x), 1)``."""

    def __init__(self, blocks: int = 4, width: int = 8) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, width)
        self.blocks = nn.Sequential(*[BasicBlock(width) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, IMAGE_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class ViewCnn(nn.Module):
    """Five conv-BN-ReLU layers; the head is ``n = x.size(0)`` (taken first) then ``view(n, -1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_conv_bn_relu(3 if i == 0 else 8, 8) for i in range(5)])
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, IMAGE_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        for block in self.blocks:
            x = block(x)
        return self.pool(x).view(n, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class TwoOutputCnn(ViewCnn):
    """The view CNN returning ``(features, scores)``: the score output is picked by name."""

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        features = self.features(x)
        return features, self.fc(features)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.expand(torch.nn.functional.silu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * scale


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, squeeze-and-excitation, 1x1 project, skip."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
            SqueezeExcite(hidden, max(1, channels // 2)),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MbConvSe(nn.Module):
    """A stem and four MBConv blocks with squeeze-and-excitation (EfficientNet's building block)."""

    def __init__(self, blocks: int = 4, width: int = 8) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, width)
        self.blocks = nn.Sequential(*[MBConv(width) for _ in range(blocks)])
        self.fc = nn.Linear(width, IMAGE_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


# ------------------------------------------------------------------------------ train and export
def train_briefly(
    module: nn.Module, inputs: dict[str, np.ndarray], labels: np.ndarray, steps: int = 80, seed: int = 0
) -> nn.Module:
    """A few Adam steps (batch 64) on ``inputs``, so the outputs depend on the input; returns it in eval mode.
    A module with several outputs is trained on its last one (the scores)."""
    torch.manual_seed(seed)
    module.train()
    optimiser = torch.optim.Adam(module.parameters(), lr=3e-3)
    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
    target = torch.from_numpy(labels)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = torch.from_numpy(rng.integers(0, len(labels), 64))
        out = module(*[t[rows] for t in tensors.values()])
        logits = out[-1] if isinstance(out, tuple) else out
        loss = nn.functional.cross_entropy(logits, target[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return module.eval()


@contextlib.contextmanager
def _quiet_exporter():
    """Silences the exporters' warnings, progress prints and log lines (torchvision not installed...)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export(
    module: nn.Module,
    example: dict[str, np.ndarray],
    path: Path,
    *,
    exporter: str,
    opset: int,
    output_names: Sequence[str] = ("logits",),
    dynamic: bool = True,
) -> Path:
    """``torch.onnx.export`` of ``module`` at ``opset`` to ``path``.

    ``exporter``: ``torchscript`` (``dynamo=False``, ``dynamic_axes``) or ``dynamo``
    (``torch.export`` with ``dynamic_shapes``). ``dynamic``: the batch axis (and a token input's
    sequence axis) is dynamic; False fixes every axis at the example's sizes.
    """
    names = list(example)
    args = tuple(torch.from_numpy(example[name]) for name in names)
    sequence = {name: example[name].ndim == 2 for name in names}
    with _quiet_exporter():
        if exporter == "torchscript":
            axes = None
            if dynamic:
                axes = {name: ({0: "batch", 1: "seq"} if sequence[name] else {0: "batch"}) for name in names}
                axes.update({name: {0: "batch"} for name in output_names})
            torch.onnx.export(
                module,
                args,
                str(path),
                opset_version=opset,
                dynamo=False,
                input_names=names,
                output_names=list(output_names),
                dynamic_axes=axes,
            )
        elif exporter == "dynamo":
            shapes = None
            if dynamic:
                batch = torch.export.Dim("batch", min=1, max=4096)
                seq = torch.export.Dim("seq", min=2, max=SEQ_LEN)
                shapes = tuple({0: batch, 1: seq} if sequence[name] else {0: batch} for name in names)
            torch.onnx.export(
                module,
                args,
                str(path),
                opset_version=opset,
                dynamo=True,
                input_names=names,
                output_names=list(output_names),
                dynamic_shapes=shapes,
                verbose=False,
            )
        else:
            raise ValueError(f"unknown exporter '{exporter}'; use torchscript or dynamo")
    return path
