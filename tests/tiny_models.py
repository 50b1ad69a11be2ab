"""Tiny, deterministic ONNX classifiers and matching data, shared by the tests.

Every builder returns a :class:`TinyModel`: an opset-17 ``onnx.ModelProto`` with a symbolic batch
dimension ``N``, score output ``logits`` ``[N, classes]``, and the site tensors that
``find_sites`` must find:

- ``site_tensors``: the sites under ``find_sites``' default depth filter (0.05..0.9);
- ``all_boundaries``: the sites with the depth filter off (``min_depth=0, max_depth=1``).

The backbones have fixed random weights (``seed``); the final classifier is then fitted by least
squares on the backbone's features of noise-free class patterns, so that the model's argmax follows
the class pattern of the data generators below: the original model's predictions are spread over
the classes and learnable from early features, as ramp training needs.

Models (widths chosen so that every expected site lies far from the 0.05 / 0.9 depth limits):

- ``resnet_like``: stem Conv-BN-Relu, ``blocks`` basic residual blocks (Conv-BN-Relu-Conv-BN, Add,
  Relu; the first block of the second half halves the resolution and doubles the width, with a 1x1
  projection), GlobalAveragePool, Flatten, Gemm. Sites: after each block's final Relu but the last
  (past 0.9 of the MACs); the stem lies before 0.05.
- ``mbconv_like``: stem Conv-BN-Clip, four MBConv blocks (1x1 expand, depthwise 3x3, 1x1 project,
  each with BN, Clip as ReLU6; blocks 2 and 4 residual, 1 and 3 strided without a skip), head 1x1
  conv, pool, Gemm. Sites: the stem and blocks 1-3 (block 4 lies past 0.9), never inside the
  expanded blocks 1 and 3.
- ``vgg_like``: ``layers`` Conv-Relu layers, MaxPool after every second, GlobalAveragePool,
  Flatten, Gemm. Sites: after every Relu and every pool up to the last layer (past 0.9).
- ``bert_like``: inputs ``input_ids`` / ``attention_mask`` int64 ``[N, S]`` (``S`` symbolic; the
  data uses ``seq``), word + position embeddings and LayerNormalization, an extended mask
  ``(1 - mask) * -10000`` ``[N, 1, 1, S]`` computed once and added in every layer's attention,
  ``layers`` post-LN encoder layers (2 heads, erf GELU feed-forward), first-token pooler Gemm-Tanh
  and classifier Gemm. Sites: the output of each encoder layer but the last, with the extended
  mask as side tensor ``extended_mask`` (``TinyModel.side_tensors``).

Data: ``separable_images(kind, n, seed)`` ({"input": float32 [n, 3, 16, 16]}) and
``separable_tokens(n, seed)`` ({"input_ids", "attention_mask"} int64 [n, seq]);
``separable_inputs(tiny, n, seed)`` picks the one for a TinyModel. ``BUILDERS`` maps kinds to
builders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IMAGE_SHAPE = (3, 16, 16)
PATTERN_SEED = 1234  # class patterns are fixed; model and data seeds vary around them
CV_KINDS = ("resnet", "mbconv", "vgg")


@dataclass
class TinyModel:
    """A tiny model and the sites ``find_sites`` must find on it (tensor names, in order)."""

    model: onnx.ModelProto
    site_tensors: list[str]
    all_boundaries: list[str]
    side_tensors: list[str] = field(default_factory=list)
    output: str = "logits"
    num_classes: int = 10
    kind: str = ""


class _Graph:
    """Minimal graph builder: unique tensor names, numpy initializers, one node per call."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{len(self.nodes)}_{op_type}", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        w = (self.rng.randn(cout, cin // group, k, k) * np.sqrt(2.0 / (cin // group * k * k))).astype(np.float32)
        b = np.zeros(cout, np.float32)
        return self.op(
            "Conv",
            [x, self.const(w), self.const(b)],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
            group=group,
        )

    def bn(self, x: str, c: int) -> str:
        scale = (1.0 + 0.1 * self.rng.randn(c)).astype(np.float32)
        bias = (0.1 * self.rng.randn(c)).astype(np.float32)
        mean = (0.1 * self.rng.randn(c)).astype(np.float32)
        var = (1.0 + 0.1 * self.rng.rand(c)).astype(np.float32)
        return self.op("BatchNormalization", [x] + [self.const(v) for v in (scale, bias, mean, var)])

    def linear(self, x: str, k: int, n: int, out: str | None = None, gemm: bool = True) -> str:
        w = (self.rng.randn(k, n) / np.sqrt(k)).astype(np.float32)
        b = np.zeros(n, np.float32)
        if gemm:
            return self.op("Gemm", [x, self.const(w, "fc_w"), self.const(b, "fc_b")], out)
        return self.op("Add", [self.op("MatMul", [x, self.const(w)]), self.const(b)], out)

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tiny_models")
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *IMAGE_SHAPE])


def _logits(classes: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])


# ----------------------------------------------------------------------------------------------
# Fitting the classifier so that the argmax follows the data's class pattern
# ----------------------------------------------------------------------------------------------


def _features(model: onnx.ModelProto, tensor: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run([tensor], feeds)[0].reshape(len(next(iter(feeds.values()))), -1)


def _fit_classifier(
    model: onnx.ModelProto, tensor: str, feeds: dict[str, np.ndarray], labels: np.ndarray, classes: int
) -> onnx.ModelProto:
    """Set the final Gemm (``fc_w``/``fc_b`` initializers of the last node) by ridge regression of
    one-hot labels on the features ``tensor``; scaled so that logits are confident."""
    feats = _features(model, tensor, feeds).astype(np.float64)
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mean) / std
    targets = np.eye(classes)[labels] * 2.0 - 1.0
    coef = np.linalg.solve(z.T @ z + 1.0 * np.eye(z.shape[1]), z.T @ (targets - targets.mean(0)))
    w = coef / std[:, None] * 4.0
    b = (targets.mean(0) - (mean / std) @ coef) * 4.0
    last = model.graph.node[-1]
    w_name, b_name = last.input[1], last.input[2]
    for init in model.graph.initializer:
        if init.name == w_name:
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), w_name))
        elif init.name == b_name:
            init.CopyFrom(numpy_helper.from_array(b.astype(np.float32), b_name))
    return model


# ----------------------------------------------------------------------------------------------
# CV models
# ----------------------------------------------------------------------------------------------


def _image_patterns(classes: int) -> np.ndarray:
    """One fixed smooth [3, 16, 16] pattern per class (unit RMS)."""
    rng = np.random.RandomState(PATTERN_SEED + classes)
    coarse = rng.randn(classes, 3, 4, 4)
    patterns = coarse.repeat(4, axis=2).repeat(4, axis=3)
    return (patterns / patterns.std(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


def separable_images(model_kind: str, n: int, seed: int, classes: int = 10) -> dict[str, np.ndarray]:
    """``{"input": float32 [n, 3, 16, 16]}``: each sample is one class's fixed pattern, scaled by a
    random 0.7..1.3, plus Gaussian noise (std 0.5). Classes are drawn uniformly. ``model_kind`` is
    one of ``resnet``, ``mbconv``, ``vgg`` (all take the same images)."""
    if model_kind not in CV_KINDS:
        raise ValueError(f"model_kind must be one of {CV_KINDS}, not {model_kind!r}")
    return {"input": _images(n, seed, classes)[0]}


def _images(n: int, seed: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, classes, size=n)
    scale = rng.uniform(0.7, 1.3, size=(n, 1, 1, 1))
    x = _image_patterns(classes)[labels] * scale + 0.5 * rng.randn(n, *IMAGE_SHAPE)
    return x.astype(np.float32), labels


def _fit_cv(g: _Graph, features: str, width: int, classes: int, name: str) -> onnx.ModelProto:
    g.linear(features, width, classes, out="logits")
    model = g.model([_image_input()], [_logits(classes)], name)
    x, labels = _images(400, PATTERN_SEED, classes)
    return _fit_classifier(model, features, {"input": x}, labels, classes)


def _head(g: _Graph, x: str) -> str:
    return g.op("Flatten", [g.op("GlobalAveragePool", [x])], "features")


def _head_view(g: _Graph, x: str, batch: str) -> str:
    """``x.view(n, -1)`` after global pooling, ``n`` taken from the input's shape at the start
    (``n = x.size(0)`` in PyTorch, exported as Shape -> Gather -> Unsqueeze -> Concat -> Reshape)."""
    size = g.op("Unsqueeze", [batch, g.const(np.array([0], np.int64), "axes")])
    shape = g.op("Concat", [size, g.const(np.array([-1], np.int64), "rest")], axis=0)
    return g.op("Reshape", [g.op("GlobalAveragePool", [x]), shape], "features")


def resnet_like(
    blocks: int = 4, classes: int = 10, seed: int = 0, width: int = 16, view_early: bool = False
) -> TinyModel:
    """A ResNet-style classifier (see the module docstring); sites after blocks 1..blocks-1. With
    ``view_early`` the head flattens with the batch size read from the input's shape before the
    stem, a scalar live across every site (the PyTorch ``n = x.size(0); ...; x.view(n, -1)``)."""
    g = _Graph(seed)
    batch = (
        g.op("Gather", [g.op("Shape", ["input"]), g.const(np.array(0, np.int64), "zero")], axis=0) if view_early else ""
    )
    x = g.op("Relu", [g.bn(g.conv("input", 3, width, 3), width)], "stem_out")
    c = width
    outs = []
    for i in range(blocks):
        stride, cout = (2, 2 * c) if blocks > 1 and i == blocks // 2 else (1, c)
        h = g.op("Relu", [g.bn(g.conv(x, c, cout, 3, stride), cout)])
        h = g.bn(g.conv(h, cout, cout, 3), cout)
        skip = x if stride == 1 else g.bn(g.conv(x, c, cout, 1, stride), cout)
        x = g.op("Relu", [g.op("Add", [h, skip])], f"block{i + 1}_out")
        outs.append(x)
        c = cout
    model = _fit_cv(g, _head_view(g, x, batch) if view_early else _head(g, x), c, classes, "resnet_like")
    return TinyModel(model, outs[:-1], ["stem_out", *outs, "features"], kind="resnet", num_classes=classes)


def mbconv_like(classes: int = 10, seed: int = 0) -> TinyModel:
    """An EfficientNet/MobileNetV2-style classifier of four MBConv blocks (module docstring)."""
    g = _Graph(seed)

    def relu6(v: str) -> str:
        return g.op("Clip", [v, g.const(np.float32(0.0), "lo"), g.const(np.float32(6.0), "hi")])

    x = relu6(g.bn(g.conv("input", 3, 16, 3), 16))
    stem = g.op("Identity", [x], "stem_out")
    x, c = stem, 16
    outs = []
    for i, (cout, stride) in enumerate([(24, 2), (24, 1), (32, 2), (32, 1)]):
        e = 4 * c
        h = relu6(g.bn(g.conv(x, c, e, 1), e))
        h = relu6(g.bn(g.conv(h, e, e, 3, stride, group=e), e))
        h = g.bn(g.conv(h, e, cout, 1), cout)
        if stride == 1 and cout == c:
            h = g.op("Add", [h, x])
        x = g.op("Identity", [h], f"block{i + 1}_out")
        outs.append(x)
        c = cout
    x = relu6(g.bn(g.conv(x, c, 64, 1), 64))
    model = _fit_cv(g, _head(g, x), 64, classes, "mbconv_like")
    return TinyModel(model, [stem, *outs[:3]], [stem, *outs, x, "features"], kind="mbconv", num_classes=classes)


def vgg_like(layers: int = 4, classes: int = 10, seed: int = 0, width: int = 8) -> TinyModel:
    """A VGG-style chain: Conv-Relu layers, MaxPool after every second; sites after each Relu and
    pool, except those past 0.9 of the MACs (the last layer and pool)."""
    g = _Graph(seed)
    x, c, boundaries = "input", 3, []
    for i in range(layers):
        cout = width * 2 ** (i // 2)
        x = g.op("Relu", [g.conv(x, c, cout, 3)], f"relu{i + 1}")
        boundaries.append(x)
        c = cout
        if i % 2 == 1:
            x = g.op("MaxPool", [x], f"pool{(i + 1) // 2}", kernel_shape=[2, 2], strides=[2, 2])
            boundaries.append(x)
    model = _fit_cv(g, _head(g, x), c, classes, "vgg_like")
    # The last conv layer (and its pool) lie past 0.9 of the MACs.
    last = [i for i, name in enumerate(boundaries) if name.startswith("relu")][-1]
    return TinyModel(model, boundaries[:last], boundaries + ["features"], kind="vgg", num_classes=classes)


# ----------------------------------------------------------------------------------------------
# BERT-like transformer
# ----------------------------------------------------------------------------------------------


def _layer_norm(g: _Graph, x: str, hidden: int, out: str | None = None) -> str:
    scale = (1.0 + 0.05 * g.rng.randn(hidden)).astype(np.float32)
    bias = (0.05 * g.rng.randn(hidden)).astype(np.float32)
    return g.op("LayerNormalization", [x, g.const(scale), g.const(bias)], out, axis=-1, epsilon=1e-12)


def _gelu(g: _Graph, x: str) -> str:
    erf = g.op("Erf", [g.op("Div", [x, g.const(np.float32(np.sqrt(2.0)))])])
    half = g.op("Mul", [x, g.const(np.float32(0.5))])
    return g.op("Mul", [half, g.op("Add", [erf, g.const(np.float32(1.0))])])


def _attention(g: _Graph, h: str, mask: str, hidden: int, heads: int) -> str:
    hd = hidden // heads
    split = g.const(np.array([0, 0, heads, hd], np.int64), "shape")
    q, k, v = (g.op("Reshape", [g.linear(h, hidden, hidden, gemm=False), split]) for _ in range(3))
    q = g.op("Transpose", [q], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [k], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.float32(1.0 / np.sqrt(hd)))])
    probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const(np.array([0, 0, hidden], np.int64), "shape")])
    return g.linear(ctx, hidden, hidden, gemm=False)


def _word_embeddings(rng: np.random.RandomState, vocab: int, hidden: int, classes: int) -> np.ndarray:
    """Random embeddings (std 0.5) in which each class's keywords (see ``separable_tokens``) share
    a random direction of norm 2, so that the class shows in every layer."""
    emb = 0.5 * rng.randn(vocab, hidden)
    directions = rng.randn(classes, hidden)
    directions *= 2.0 / np.linalg.norm(directions, axis=1, keepdims=True)
    for c, ids in enumerate(_keywords(classes)):
        emb[ids] += directions[c]
    return emb.astype(np.float32)


def _keywords(classes: int) -> list[np.ndarray]:
    """Token ids of each class's 8 keywords (ids 0 and 1 are [PAD] and [CLS])."""
    return np.array_split(np.arange(2, 2 + 8 * classes), classes)


def bert_like(
    layers: int = 4, hidden: int = 32, seq: int = 16, vocab: int = 100, classes: int = 2, seed: int = 0, heads: int = 2
) -> TinyModel:
    """A post-LN BERT encoder classifier (module docstring); sites after layers 1..layers-1."""
    g = _Graph(seed)
    m = g.op("Unsqueeze", ["attention_mask", g.const(np.array([1, 2], np.int64), "axes")])
    m = g.op("Cast", [m], to=TensorProto.FLOAT)
    ext = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0)), m]), g.const(np.float32(-10000.0))], "extended_mask")
    words = g.op("Gather", [g.const(_word_embeddings(g.rng, vocab, hidden, classes), "word_emb"), "input_ids"])
    length = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.int64(1), "one")], axis=0)
    positions = g.op("Range", [g.const(np.int64(0), "zero"), length, g.const(np.int64(1), "step")])
    pos = g.op("Gather", [g.const((0.1 * g.rng.randn(seq, hidden)).astype(np.float32), "pos_emb"), positions])
    x = _layer_norm(g, g.op("Add", [words, pos]), hidden, "embeddings_out")
    outs = []
    for i in range(layers):
        a = _layer_norm(g, g.op("Add", [_attention(g, x, ext, hidden, heads), x]), hidden)
        f = g.linear(_gelu(g, g.linear(a, hidden, 4 * hidden, gemm=False)), 4 * hidden, hidden, gemm=False)
        x = g.op("Identity", [_layer_norm(g, g.op("Add", [f, a]), hidden)], f"layer{i + 1}_out")
        outs.append(x)
    cls = g.op("Gather", [x, g.const(np.int64(0), "first")], "cls", axis=1)
    pooled = g.op("Tanh", [g.linear(cls, hidden, hidden)], "pooled")
    g.linear(pooled, hidden, classes, out="logits")
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "S"]) for n in ("input_ids", "attention_mask")]
    model = g.model(inputs, [_logits(classes)], "bert_like")
    feeds, labels = _tokens(400, PATTERN_SEED, seq, vocab, classes)
    model = _fit_classifier(model, pooled, feeds, labels, classes)
    all_boundaries = ["embeddings_out", *outs[:-1], "cls", "pooled"]
    return TinyModel(model, outs[:-1], all_boundaries, side_tensors=[ext], kind="bert", num_classes=classes)


def _tokens(n: int, seed: int, seq: int, vocab: int, classes: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, classes, size=n)
    keywords = _keywords(classes)
    filler = np.arange(2 + 8 * classes, vocab)
    ids = rng.choice(filler, size=(n, seq))
    is_keyword = rng.rand(n, seq) < 0.4
    for i in range(n):
        ids[i, is_keyword[i]] = rng.choice(keywords[labels[i]], size=int(is_keyword[i].sum()))
    ids[:, 0] = 1  # [CLS]
    lengths = rng.randint(seq // 2, seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, 0).astype(np.int64)  # 0 = [PAD]
    return {"input_ids": ids, "attention_mask": mask}, labels


def separable_tokens(n: int, seed: int, seq: int = 16, vocab: int = 100, classes: int = 2) -> dict[str, np.ndarray]:
    """``{"input_ids", "attention_mask"}`` int64 ``[n, seq]``: token 0 is [CLS] (id 1), 40% of the
    other tokens are keywords of the sample's class (8 ids per class), the rest filler ids; a random
    tail (up to half) is padding (id 0, mask 0)."""
    return _tokens(n, seed, seq, vocab, classes)[0]


#: Every builder by kind, for tests parametrised over the tiny models.
BUILDERS = {"resnet": resnet_like, "mbconv": mbconv_like, "vgg": vgg_like, "bert": bert_like}


def separable_inputs(tiny: TinyModel, n: int, seed: int) -> dict[str, np.ndarray]:
    """The data generator matching ``tiny``'s kind (images or tokens), as a dict of input arrays."""
    if tiny.kind == "bert":
        return separable_tokens(n, seed, classes=tiny.num_classes)
    return separable_images(tiny.kind, n, seed, classes=tiny.num_classes)


def dense_layer(name: str, inp: str, out: str, k: int, n: int, seed: int = 0, relu: bool = False) -> onnx.ModelProto:
    """A one-layer model ``out = inp @ W`` (optionally then Relu) over a batch axis ``N``: [N, k] -> [N, n].
    Chains of them are the smallest segment chains (the backend and profiler tests)."""
    w = np.random.default_rng(seed).normal(size=(k, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", [inp, f"{name}_w"], [f"{name}_mm" if relu else out])]
    if relu:
        nodes.append(helper.make_node("Relu", [f"{name}_mm"], [out]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(w, f"{name}_w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
