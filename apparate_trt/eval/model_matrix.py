"""The model matrix: what compiles, measured. Each entry builds a tiny PyTorch model, trains it
briefly, exports it as users do (TorchScript or dynamo exporter, an opset, a variant such as
external-data weights or int8 weights), compiles it with the real pipeline, checks the engine
directory's chain against the exported model, and replays a workload with exits.

``python -m apparate_trt.eval.model_matrix --out docs/MODELS.md`` writes the table;
``tests/eval/test_model_matrix.py`` runs every entry and holds it to :func:`shortfalls`.
Needs the ``train`` extra (torch) and, for the Hugging Face families, ``models`` (transformers);
the dynamo exporter also needs ``onnxscript`` (in ``train``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from apparate_trt._optional import require
from apparate_trt.errors import ApparateError

if TYPE_CHECKING:
    from apparate_trt.engine_dir import Manifest

Log = Callable[[str], None]

TRAIN_SAMPLES = 512
BOOTSTRAP_SAMPLES = 300
REPLAY_REQUESTS = 600
REPLAY_RATE = 1000.0
"""Requests per second of the replay (Poisson arrivals): well below the tiny models' capacity."""
CHAIN_SAMPLES = 64
CHAIN_TOLERANCE = 1e-4
"""Largest absolute difference allowed between the chained engine directory and the exported model."""
NEWEST_TORCHSCRIPT_OPSET = 23
"""The TorchScript exporter of torch 2.13 stops at opset 23; newer opsets come from the dynamo exporter."""


@dataclass(frozen=True)
class Entry:
    """One row of the matrix.

    ``model``: a key of :data:`MODELS`; ``exporter``: ``torchscript`` or ``dynamo``; ``variant``:
    ``""`` (as exported), ``external-data`` (weights in a side file), ``weight-only-int8``
    (MatMul weights stored int8, dequantized by Cast and Mul), ``qdq-int8`` (ONNX Runtime's static
    quantizer) or ``fixed-batch`` (exported without dynamic axes: the compiler must refuse it in one
    line containing each string of ``expect_error``). ``min_sites``: the sites its architecture has
    (one after each block or layer but the last).
    """

    name: str
    family: str
    model: str
    exporter: str
    opset: int
    min_sites: int
    variant: str = ""
    output: str | None = None
    output_names: tuple[str, ...] = ("logits",)
    expect_error: tuple[str, ...] = ()


@dataclass
class Row:
    """What one entry measured. ``status``: ``ok``, ``refused: <error>`` (an expected refusal) or
    ``error: <error>``."""

    entry: Entry
    status: str = "ok"
    sites: int = 0
    probed_sites: int = 0
    ramps: int = 0
    chain_equal: int = 0
    chain_samples: int = 0
    chain_max_abs_diff: float = float("nan")
    compaction: tuple[int, int, int] = (0, 0, 0)  # skip mode: rows answered, rows, rows skipped
    requests: int = 0
    exits: int = 0
    failed_requests: int = 0  # of both replays
    agreement: float = float("nan")
    adaptive_exits: int = 0
    adaptive_agreement: float = float("nan")
    compile_s: float = 0.0
    log: list[str] = field(default_factory=list, repr=False)


MODELS: dict[str, tuple[str, str, dict]] = {
    # key: (kind of data, class in exporter_models, its keyword arguments)
    "mha-encoder": ("text", "MhaEncoder", {}),
    "mha-encoder-nomask": ("text-nomask", "MhaEncoder", {"padding_mask": False}),
    "transformer-encoder": ("text", "TorchEncoder", {}),
    "hf-bert": ("text", "HfClassifier", {"arch": "bert"}),
    "hf-distilbert": ("text", "HfClassifier", {"arch": "distilbert"}),
    "resnet-flatten": ("image", "ResNetFlatten", {}),
    "cnn-view": ("image", "ViewCnn", {}),
    "mbconv-se": ("image", "MbConvSe", {}),
    "cnn-two-outputs": ("image", "TwoOutputCnn", {}),
}


def _entries() -> list[Entry]:
    newest = onnx.defs.onnx_opset_version()
    mha = "nn.MultiheadAttention encoder, padding mask"
    nomask = "nn.MultiheadAttention encoder, no mask"
    rows = [
        Entry("mha-encoder/torchscript-17", mha, "mha-encoder", "torchscript", 17, 2),
        Entry("mha-encoder/dynamo-18", mha, "mha-encoder", "dynamo", 18, 2),
        Entry("mha-encoder/torchscript-14", mha + " (LayerNorm decomposed)", "mha-encoder", "torchscript", 14, 2),
        # At opset 23+ the dynamo exporter writes the ONNX Attention op; ONNX Runtime 1.32's CPU
        # kernel refuses its broadcast padding mask, so the model does not run as exported.
        Entry(
            "mha-encoder/dynamo-24",
            mha + " (ONNX Attention op: ONNX Runtime cannot run its mask)",
            "mha-encoder",
            "dynamo",
            24,
            0,
            expect_error=("fails to run", "Attention"),
        ),
        # Past opset 24 torch 2.13's dynamo exporter converts with the onnx C API and writes an
        # Attention node under opset 18, an invalid model: the compiler must say so in one line.
        Entry(
            f"mha-encoder/dynamo-{newest}",
            mha + " (the exporter writes an invalid model)",
            "mha-encoder",
            "dynamo",
            newest,
            0,
            expect_error=("fails the ONNX checker", "Attention"),
        ),
        Entry("mha-encoder-nomask/torchscript-17", nomask, "mha-encoder-nomask", "torchscript", 17, 2),
        Entry("mha-encoder-nomask/dynamo-18", nomask, "mha-encoder-nomask", "dynamo", 18, 2),
        Entry("mha-encoder-nomask/dynamo-24", nomask + " (ONNX Attention op)", "mha-encoder-nomask", "dynamo", 24, 2),
        Entry(
            "transformer-encoder/torchscript-17", "nn.TransformerEncoder", "transformer-encoder", "torchscript", 17, 2
        ),
        Entry("transformer-encoder/dynamo-18", "nn.TransformerEncoder", "transformer-encoder", "dynamo", 18, 2),
        Entry("hf-bert/torchscript-17", "Hugging Face BERT", "hf-bert", "torchscript", 17, 2),
        Entry("hf-bert/dynamo-18", "Hugging Face BERT", "hf-bert", "dynamo", 18, 2),
        Entry("hf-distilbert/torchscript-17", "Hugging Face DistilBERT", "hf-distilbert", "torchscript", 17, 2),
        Entry("hf-distilbert/dynamo-18", "Hugging Face DistilBERT", "hf-distilbert", "dynamo", 18, 2),
        Entry("cnn-view/torchscript-17", "CNN, head view(x.size(0), -1)", "cnn-view", "torchscript", 17, 4),
        Entry("cnn-view/dynamo-18", "CNN, head view(x.size(0), -1)", "cnn-view", "dynamo", 18, 4),
        Entry("mbconv-se/torchscript-17", "MBConv with squeeze-excitation", "mbconv-se", "torchscript", 17, 3),
        Entry("mbconv-se/dynamo-18", "MBConv with squeeze-excitation", "mbconv-se", "dynamo", 18, 3),
        Entry(
            "cnn-two-outputs/torchscript-17",
            "CNN with (features, scores) outputs, --output scores",
            "cnn-two-outputs",
            "torchscript",
            17,
            4,
            output="scores",
            output_names=("features", "scores"),
        ),
        Entry(
            "resnet-flatten/external-data",
            "ResNet, external-data weights",
            "resnet-flatten",
            "torchscript",
            17,
            3,
            variant="external-data",
        ),
        Entry(
            "mha-encoder/weight-only-int8",
            "nn.MultiheadAttention encoder, int8 weights (Cast+Mul)",
            "mha-encoder",
            "torchscript",
            17,
            2,
            variant="weight-only-int8",
        ),
        Entry(
            "resnet-flatten/qdq-int8",
            "ResNet, QDQ int8 (onnxruntime quantize_static)",
            "resnet-flatten",
            "torchscript",
            17,
            3,
            variant="qdq-int8",
        ),
        Entry(
            "cnn-view/fixed-batch",
            "CNN exported without dynamic axes",
            "cnn-view",
            "torchscript",
            17,
            0,
            variant="fixed-batch",
            expect_error=("fixes the batch size to 1", "dynamic_axes"),
        ),
    ]
    for opset in range(13, newest + 1):  # the opset sweep: one family at every opset
        exporter = "torchscript" if opset <= NEWEST_TORCHSCRIPT_OPSET else "dynamo"
        rows.append(
            Entry(
                f"resnet-flatten/{exporter}-{opset}", "ResNet, head torch.flatten", "resnet-flatten", exporter, opset, 3
            )
        )
    return rows


ENTRIES: list[Entry] = _entries()
"""Every entry of the matrix, in table order."""


def entry(name: str) -> Entry:
    """The entry called ``name``."""
    for candidate in ENTRIES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no matrix entry '{name}'; entries: {', '.join(e.name for e in ENTRIES)}")


# --------------------------------------------------------------------------------------- build
def _data(kind: str, n: int, seed: int):
    from apparate_trt.eval import exporter_models as zoo

    if kind == "image":
        return zoo.image_data(n, seed)
    return zoo.text_data(n, seed, with_mask=kind == "text")


def _build_module(e: Entry):
    from apparate_trt.eval import exporter_models as zoo

    kind, cls, kwargs = MODELS[e.model]
    zoo.torch.manual_seed(0)
    module = getattr(zoo, cls)(**kwargs)
    inputs, labels = _data(kind, TRAIN_SAMPLES, seed=0)
    return zoo.train_briefly(module, inputs, labels)


def weight_only_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store each float MatMul weight (a 2-D initializer) as int8 with one float scale per output
    column, dequantized in the graph by ``Cast`` to float and ``Mul`` by the scales before the
    MatMul: the weight-only quantized graphs that export tools write."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    new_nodes, replaced = [], set()
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        if (
            weight in inits
            and weight not in replaced
            and inits[weight].data_type == onnx.TensorProto.FLOAT
            and len(inits[weight].dims) == 2
        ):
            values = numpy_helper.to_array(inits[weight])
            scale = (np.abs(values).max(axis=0, keepdims=True) / 127.0).astype(np.float32)
            scale[scale == 0] = 1.0
            q = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
            graph.initializer.remove(inits[weight])
            graph.initializer.extend(
                [numpy_helper.from_array(q, f"{weight}_int8"), numpy_helper.from_array(scale, f"{weight}_scale")]
            )
            new_nodes += [
                helper.make_node("Cast", [f"{weight}_int8"], [f"{weight}_cast"], to=onnx.TensorProto.FLOAT),
                helper.make_node("Mul", [f"{weight}_cast", f"{weight}_scale"], [weight]),
            ]
            replaced.add(weight)
        new_nodes.append(node)
    if not replaced:
        raise ValueError("the model has no MatMul with a float 2-D initializer weight to quantize")
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model


def _qdq_int8(source: Path, target: Path, calibration: dict[str, np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{k: v[i : i + 8] for k, v in calibration.items()} for i in range(0, 64, 8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(source),
        str(target),
        Batches(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


def build_onnx(e: Entry, workdir: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train, export and transform entry ``e``'s model under ``workdir``: ``(model path, bootstrap, eval data)``."""
    from apparate_trt.eval import exporter_models as zoo

    kind = MODELS[e.model][0]
    bootstrap, _ = _data(kind, BOOTSTRAP_SAMPLES, seed=1)
    evaluation, _ = _data(kind, REPLAY_REQUESTS, seed=2)
    module = _build_module(e)
    exported = workdir / "exported.onnx"
    example = {name: value[:2] for name, value in bootstrap.items()}
    if e.variant == "fixed-batch":
        example = {name: value[:1] for name, value in bootstrap.items()}
    zoo.export(
        module,
        example,
        exported,
        exporter=e.exporter,
        opset=e.opset,
        output_names=e.output_names,
        dynamic=e.variant != "fixed-batch",
    )
    if e.variant in ("", "fixed-batch"):
        return exported, bootstrap, evaluation
    if e.variant == "external-data":
        source = workdir / "source"
        source.mkdir(exist_ok=True)
        onnx.save_model(
            onnx.load(str(exported)),
            str(source / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.data",
            size_threshold=0,
        )
        return source / "model.onnx", bootstrap, evaluation
    if e.variant == "weight-only-int8":
        onnx.save(weight_only_int8(onnx.load(str(exported))), str(workdir / "int8.onnx"))
        return workdir / "int8.onnx", bootstrap, evaluation
    if e.variant == "qdq-int8":
        _qdq_int8(exported, workdir / "qdq.onnx", bootstrap)
        return workdir / "qdq.onnx", bootstrap, evaluation
    raise ValueError(f"unknown variant '{e.variant}'")


# ------------------------------------------------------------------------------------ measure
def chain_check(
    manifest: Manifest, model_path: Path, inputs: dict[str, np.ndarray], batch: int = 4
) -> tuple[int, int, float]:
    """Run the engine directory of ``manifest`` with every site active and no ramp exiting, batch by
    batch, against the exported model at ``model_path``: ``(argmax equal, samples, max abs
    difference of the scores)``."""
    from apparate_trt.backends import open_runner
    from apparate_trt.runtime.executor import Executor

    output = manifest.model.output
    reference = open_runner(model_path, threads=1, name="the exported model")
    executor = Executor(manifest, threads=1)
    n = int(next(iter(inputs.values())).shape[0])
    chained = np.zeros((n, manifest.model.num_classes), np.float32)
    expected = np.zeros_like(chained)
    try:
        sites = [s.id for s in manifest.sites]
        executor.configure(sites, [0.0] * len(sites), wait=True)  # 0: the ramps run and never exit
        for start in range(0, n, batch):
            feeds = {name: value[start : start + batch] for name, value in inputs.items()}

            def keep(i: int, logits: np.ndarray, pred: int, site: int | None, t: float, **_: object) -> None:
                if site is None:
                    chained[start + i] = logits

            executor.run_batch(feeds, keep)
            expected[start : start + batch] = reference.run(feeds, [output])[output]
    finally:
        executor.close()
    equal = int((chained.argmax(1) == expected.argmax(1)).sum())
    return equal, n, float(np.abs(chained - expected).max())


def compaction_check(manifest: Manifest, inputs: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """Skip mode with every site active and every row exiting at the first ramp, half of them
    audited: the later segments run on the compacted batch, side tensors (masks, shapes) included.
    ``(rows answered, rows, rows skipped)``; a correct chain answers every row and skips some."""
    from apparate_trt.runtime.executor import Executor

    sites = [s.id for s in manifest.sites]
    executor = Executor(manifest, threads=1, exit_mode="skip", audit_seed=1)
    answered: set[int] = set()
    try:
        executor.configure(sites, [1.0] + [0.0] * (len(sites) - 1), wait=True)  # 1: every row exits at the first ramp
        executor.set_audit_rate(0.5)
        outcome = executor.run_batch(inputs, lambda i, *rest, **kw: answered.add(i))
    finally:
        executor.close()
    return len(answered), int(next(iter(inputs.values())).shape[0]), int(outcome.skipped_count)


def replay_with_exits(manifest: Manifest, inputs: dict[str, np.ndarray], policy: str) -> tuple[int, int, int, float]:
    """Replay ``inputs`` at Poisson arrivals (release mode) through the engine directory of
    ``manifest``: ``(requests, early exits, failed requests, agreement of the released answers with
    the final ones)``.

    ``policy``: ``static`` serves every site with per-ramp thresholds searched once on the
    bootstrap statistics at a 1% constraint (the static baseline: proves the chain releases
    early); ``adaptive`` is Apparate itself, which on a model this small may rightly keep every
    ramp off (a ramp can cost as much as the model it would shorten).
    """
    from apparate_trt.eval.arrivals import poisson_arrivals
    from apparate_trt.eval.policies import static_per_ramp_policy
    from apparate_trt.eval.replay import replay
    from apparate_trt.runtime.api import load

    n = int(next(iter(inputs.values())).shape[0])
    fixed = static_per_ramp_policy(manifest) if policy == "static" else None
    engine = load(manifest.root, max_batch=4, max_delay_ms=2.0, threads=1, policy=fixed)
    try:
        result = replay(engine, inputs, poisson_arrivals(REPLAY_RATE, n, seed=0), progress=False)
    finally:
        engine.close()
    judged = result.judged
    agreement = (
        float((result.released_pred[judged] == result.final_pred[judged]).mean()) if judged.any() else float("nan")
    )
    return n, int((result.exit_site >= 0).sum()), len(result.errors), agreement


def run_entry(e: Entry, workdir: Path, log: Log = lambda line: None) -> Row:
    """Build, compile, chain-check and replay entry ``e`` in ``workdir`` (created; left in place)."""
    from apparate_trt.compiler.pipeline import compile_model
    from apparate_trt.compiler.profiling import ProfileSettings
    from apparate_trt.compiler.training import TrainConfig
    from apparate_trt.ramps.prestage import PreStageTraining

    require("torch", extra="train", purpose="the model matrix")
    workdir.mkdir(parents=True, exist_ok=True)
    row = Row(e)
    model_path, bootstrap, evaluation = build_onnx(e, workdir)
    np.savez(workdir / "bootstrap.npz", **bootstrap)
    engine_dir = workdir / "engine"

    def keep(line: str) -> None:
        row.log.append(line)
        log(line)

    t0 = time.perf_counter()
    try:
        manifest = compile_model(
            model_path,
            workdir / "bootstrap.npz",
            engine_dir,
            max_batch=4,
            threads=1,
            seed=0,
            budget=0.5,
            output=e.output,
            force=True,
            log=keep,
            # fast ramps (see render()): no near-copies or blends, at most 200 steps (30 for a stage)
            train_config=TrainConfig(
                max_steps=200, augment_copies=0, blend_copies=0, prestage=PreStageTraining(min_steps=10, max_steps=30)
            ),
            profile_settings=ProfileSettings(budget_ms=10.0, min_repeats=3, max_repeats=50),
        )
    except ApparateError as exc:
        row.compile_s = time.perf_counter() - t0
        message = str(exc).replace(str(workdir), "<workdir>")  # the table reads the same from any directory
        row.status = f"refused: {message}" if e.expect_error else f"error: {message}"
        return row
    row.compile_s = time.perf_counter() - t0
    if e.expect_error:
        row.status = "error: compiled, but the compiler should have refused it"
        return row
    row.sites, row.ramps = len(manifest.sites), len(manifest.ramps)
    row.probed_sites = sum("(batch axis: probed)" in line for line in row.log)
    chain_inputs = {name: value[:CHAIN_SAMPLES] for name, value in evaluation.items()}
    row.chain_equal, row.chain_samples, row.chain_max_abs_diff = chain_check(manifest, model_path, chain_inputs)
    if e.variant == "external-data":
        shutil.rmtree(model_path.parent)  # checked against the source; the rest runs on the engine directory alone
    row.compaction = compaction_check(manifest, {name: value[:8] for name, value in evaluation.items()})
    row.requests, row.exits, row.failed_requests, row.agreement = replay_with_exits(manifest, evaluation, "static")
    _, row.adaptive_exits, adaptive_failed, row.adaptive_agreement = replay_with_exits(manifest, evaluation, "adaptive")
    row.failed_requests += adaptive_failed
    return row


def shortfalls(row: Row) -> list[str]:
    """What keeps ``row`` from passing (empty: it passes): the entry's expectations, one line each."""
    e = row.entry
    if e.expect_error:
        ok = (
            row.status.startswith("refused: ")
            and all(s in row.status for s in e.expect_error)
            and "\n" not in row.status
        )
        return [] if ok else [f"expected a one-line refusal naming {' and '.join(e.expect_error)}, got: {row.status}"]
    if row.status != "ok":
        return [row.status]
    problems = []
    if row.sites < e.min_sites:
        problems.append(f"{row.sites} sites, expected at least {e.min_sites}")
    if row.ramps != row.sites:
        problems.append(f"{row.ramps} ramps for {row.sites} sites")
    if row.chain_equal != row.chain_samples or not row.chain_max_abs_diff <= CHAIN_TOLERANCE:
        problems.append(
            f"chain: {row.chain_equal}/{row.chain_samples} argmax equal, max abs diff {row.chain_max_abs_diff:.3g}"
        )
    answered, rows, skipped = row.compaction
    if answered != rows or not 0 < skipped < rows:
        problems.append(
            f"skip mode: {answered} of {rows} rows answered, {skipped} skipped (want all answered, some skipped)"
        )
    if row.failed_requests:
        problems.append(f"{row.failed_requests} of 2 x {row.requests} replayed requests failed")
    if row.exits == 0:
        problems.append(f"no request of {row.requests} exited early with every ramp on")
    return problems


# -------------------------------------------------------------------------------------- table
def _versions() -> str:
    import onnxruntime
    import torch

    parts = [
        f"torch {torch.__version__}",
        f"onnx {onnx.__version__} (newest opset {onnx.defs.onnx_opset_version()})",
        f"onnxruntime {onnxruntime.__version__}",
    ]
    for name in ("onnxscript", "transformers"):
        try:
            parts.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def _cell(row: Row) -> list[str]:
    e = row.entry
    if row.status != "ok":
        text = row.status if len(row.status) <= 160 else row.status[:157] + "..."
        return [
            e.name,
            e.family,
            e.exporter,
            str(e.opset),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            text.replace("|", "\\|"),
            "pass" if not shortfalls(row) else "FAIL",
        ]
    chain = f"{row.chain_equal}/{row.chain_samples} equal, {row.chain_max_abs_diff:.1e}"
    sites = f"{row.sites}" + (f" ({row.probed_sites} probed)" if row.probed_sites else "")
    exits = f"{row.exits}/{row.requests} ({100 * row.exits / max(1, row.requests):.0f}%), {100 * row.agreement:.1f}%"
    adaptive = (
        f"{row.adaptive_exits}/{row.requests} ({100 * row.adaptive_exits / max(1, row.requests):.0f}%), "
        f"{100 * row.adaptive_agreement:.1f}%"
    )
    answered, rows, skipped = row.compaction
    skip = f"{answered}/{rows}, {skipped} skipped"
    return [
        e.name,
        e.family,
        e.exporter,
        str(e.opset),
        sites,
        chain,
        skip,
        str(row.ramps),
        exits,
        adaptive,
        f"compiled in {row.compile_s:.1f} s",
        "pass" if not shortfalls(row) else "FAIL",
    ]


def render(rows: Sequence[Row], command: str, seconds: float) -> str:
    """The Markdown page of ``rows`` (docs/MODELS.md)."""
    header = [
        "entry",
        "family",
        "exporter",
        "opset",
        "sites (batch axis probed)",
        "chain vs exported (argmax, max abs diff)",
        "skip mode: rows answered, skipped",
        "ramps",
        "exits, agreement: every ramp on",
        "exits, agreement: adaptive",
        "notes",
        "result",
    ]
    lines = [
        "# What compiles: the model matrix",
        "",
        f"Generated by `{command}` ({len(rows)} entries, {seconds / 60:.1f} min); do not edit by hand. The same "
        f"entries run",
        "in CI as `tests/eval/test_model_matrix.py`.",
        "",
        "Each entry is a tiny PyTorch model (random init, 80 Adam steps on synthetic data), exported as",
        f"shown, compiled by the real pipeline (max batch 4, ramp budget 0.5, {BOOTSTRAP_SAMPLES} bootstrap "
        f"samples; to keep",
        "the matrix fast, ramps train without near-copies or blends, at most 200 steps, 30 for a per-position stage), "
        "then: the engine",
        f"directory run with every site active and no exit, against the exported model on {CHAIN_SAMPLES} samples; "
        f"in skip",
        "mode with every row exiting at the first ramp and half of them audited (the later segments run on",
        "the compacted batch, side tensors included); and",
        f"two replays of {REPLAY_REQUESTS} requests at Poisson {REPLAY_RATE:.0f}/s (release mode): with every ramp on",
        "and per-ramp thresholds searched once on the bootstrap statistics at a 1% constraint (the static",
        "baseline; it shows the chain releases early), and through the adaptive engine (Apparate, 1%",
        "constraint), which on models this small may rightly keep ramps off: a ramp can cost about what",
        "the rest of the model does. Exits are requests released by a ramp; agreement is the share of",
        'released answers equal to the model\'s final ones. "probed": sites whose batch axis ONNX shape',
        "inference lost, found by running the model at two batch sizes.",
        "",
        f"Versions: {_versions()}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(_cell(row)) + " |" for row in rows]
    passed = sum(not shortfalls(row) for row in rows)
    lines += ["", f"{passed} of {len(rows)} entries pass."]
    failing = [(row, shortfalls(row)) for row in rows if shortfalls(row)]
    if failing:
        lines += ["", "## Failing entries", ""]
        lines += [f"- `{row.entry.name}`: {'; '.join(problems)}" for row, problems in failing]
    return "\n".join(lines) + "\n"


def _writable(path: Path) -> bool:
    """Whether ``path`` can be written: its folder exists or is created here, and takes a new file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".apparate-matrix-"):
            return not path.is_dir()
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``python -m apparate_trt.eval.model_matrix --help``); exit 0 when every
    entry passes, 1 when one fails, 2 for bad arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m apparate_trt.eval.model_matrix",
        description="Build, export, compile, chain-check and replay every model of the matrix; write the table.",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write the Markdown table here (e.g. docs/MODELS.md); default: print it"
    )
    parser.add_argument("--only", default=None, help="run the entries whose name matches this regular expression")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep each entry's files here (default: a temporary directory, removed at the end)",
    )
    parser.add_argument("--list", action="store_true", help="list the entry names and exit")
    args = parser.parse_args(argv)
    try:
        pattern = re.compile(args.only or "")
    except re.error as exc:
        parser.error(f"--only '{args.only}' is not a regular expression ({exc}); e.g. --only '^cnn-view/'")
    chosen = [e for e in ENTRIES if pattern.search(e.name)]
    if args.list:
        print("\n".join(e.name for e in chosen))
        return 0
    if not chosen:
        print(f"error: no entry matches --only '{args.only}'; see --list", file=sys.stderr)
        return 2
    if args.out and not _writable(args.out):
        print(
            f"error: cannot write --out {args.out}: its folder cannot be created or written; choose another path",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="apparate-matrix-") as tmp:
        base = args.workdir or Path(tmp)
        for i, e in enumerate(chosen, 1):
            t_entry = time.perf_counter()
            try:
                row = run_entry(e, base / e.name.replace("/", "_"))
            except Exception as exc:  # noqa: BLE001 - a broken entry is a row of the table, not the end of the run
                row = Row(e, status=f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            verdict = "pass" if not shortfalls(row) else "FAIL: " + "; ".join(shortfalls(row))
            print(
                f"[{i}/{len(chosen)}] {e.name}: {row.sites} sites, {row.exits}/{row.requests} exits, "
                f"{time.perf_counter() - t_entry:.1f} s: {verdict}",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    command = "python -m apparate_trt.eval.model_matrix" + (f" --out {args.out}" if args.out else "")
    page = render(rows, command, time.perf_counter() - t0)
    if args.out:
        args.out.write_text(page)
        print(f"wrote {args.out}: {sum(not shortfalls(r) for r in rows)} of {len(rows)} entries pass", file=sys.stderr)
    else:
        print(page)
    return 0 if all(not shortfalls(row) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
