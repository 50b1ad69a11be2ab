"""Models as PyTorch exports them (``torch.onnx.export``, TorchScript exporter, opset 17, dynamic
batch and sequence axes), built and exported in the test, compiled with the real pipeline and
chained through the runtime.

- transformer encoders: hand-built ``torch.nn.MultiheadAttention`` layers with ``key_padding_mask``,
  ``nn.TransformerEncoder``, each with a learned positional embedding and a first-token classifier
  (ONNX shape inference loses the batch symbol at the positional Add and every attention Reshape,
  so the batch axis is probed), and a Hugging Face BERT from a tiny config;
- a CNN whose head is ``n = x.size(0); ...; x.view(n, -1)``: the batch-size scalar is live
  across every site and is recomputed in the segment that reshapes.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from apparate_trt.engine_dir import read_manifest  # noqa: E402
from apparate_trt.runtime.executor import Executor  # noqa: E402


class MhaEncoder(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, layers: int = 3, seq: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        self.attn = nn.ModuleList([nn.MultiheadAttention(d, 2, batch_first=True) for _ in range(layers)])
        self.ff = nn.ModuleList([nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, d)) for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(2 * layers)])
        self.cls = nn.Linear(d, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids) + self.pos[:, : input_ids.shape[1]]
        pad = attention_mask == 0
        for i, (attn, ff) in enumerate(zip(self.attn, self.ff)):
            h = self.norms[2 * i](h + attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
            h = self.norms[2 * i + 1](h + ff(h))
        return self.cls(h[:, 0])


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer`` (the same attention inside)."""

    def __init__(self, vocab: int = 50, d: int = 16, layers: int = 3, seq: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.cls = nn.Linear(d, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids) + self.pos[:, : input_ids.shape[1]]
        return self.cls(self.enc(h, src_key_padding_mask=attention_mask == 0)[:, 0])


class HfBert(nn.Module):
    """A Hugging Face ``BertForSequenceClassification`` from a tiny config (random weights)."""

    def __init__(self) -> None:
        super().__init__()
        transformers = pytest.importorskip("transformers")
        config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=32)
        self.bert = transformers.BertForSequenceClassification(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits


SEQUENCE_MODELS = {"multihead_attention": MhaEncoder, "transformer_encoder": TorchEncoder, "hf_bert": HfBert}


class ViewCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                                     for i in range(5)])
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        for block in self.blocks:
            x = block(x)
        return self.fc(self.pool(x).view(n, -1))


def _export(module: nn.Module, example: tuple, names: list[str], path: Path, dynamic: dict) -> None:
    """``torch.onnx.export`` (TorchScript exporter, opset 17); ``dynamic`` empty: every axis fixed."""
    torch.manual_seed(0)
    module.eval()
    axes = {**dynamic, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), opset_version=17, dynamo=False, input_names=names,
                          output_names=["logits"], dynamic_axes=axes)


def _compile(tmp_path: Path, module: nn.Module, example: tuple, names: list[str], dynamic: dict, data: dict) -> Path:
    """Export, then compile as the tiny engines are (max batch 4, one thread, budget 0.5)."""
    from apparate_trt.compiler.pipeline import compile_model
    from apparate_trt.compiler.profiling import ProfileSettings

    _export(module, example, names, tmp_path / "exported.onnx", dynamic)
    np.savez(tmp_path / "bootstrap.npz", **data)
    compile_model(tmp_path / "exported.onnx", tmp_path / "bootstrap.npz", tmp_path / "engine", max_batch=4, threads=1, seed=0,
                  log=lambda line: None, budget=0.5, profile_settings=ProfileSettings(budget_ms=10.0, min_repeats=3, max_repeats=50))
    return tmp_path / "engine"


def _run_every_row_exiting(engine: Path, batch: dict[str, np.ndarray]) -> None:
    """Every site active, every row exiting at the first ramp, in skip mode: the chain runs on
    the compacted batch (audited rows) without error and each row gets its answer."""
    manifest = read_manifest(engine)
    sites = [s.id for s in manifest.sites]
    executor = Executor(manifest, threads=1, exit_mode="skip", audit_seed=1)
    try:
        executor.configure(sites, [1.0] + [0.0] * (len(sites) - 1), wait=True)
        executor.set_audit_rate(0.5)
        answered: set[int] = set()
        outcome = executor.run_batch(batch, lambda i, *rest, **kw: answered.add(i))
    finally:
        executor.close()
    n = len(next(iter(batch.values())))
    assert answered == set(range(n)) and 0 < outcome.skipped_count < n


@pytest.mark.parametrize("family", sorted(SEQUENCE_MODELS))
def test_sequence_encoders_get_a_site_per_inner_layer(family: str, tmp_path: Path) -> None:
    """Three encoder layers: a site after each of the first two, batch-first (probed where ONNX
    shape inference lost the batch symbol), and the chain runs with compaction."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (300, 12)).astype(np.int64)
    mask = np.ones((300, 12), np.int64)
    mask[::3, 9:] = 0  # some padding, so the padding mask matters
    engine = _compile(tmp_path, SEQUENCE_MODELS[family](), (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])),
                      ["input_ids", "attention_mask"],
                      {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
                      {"input_ids": ids, "attention_mask": mask})
    manifest = read_manifest(engine)
    assert len(manifest.sites) >= 2, "one site after each of the first encoder layers"
    assert all(site.shape[0] == "batch" for site in manifest.sites)
    _run_every_row_exiting(engine, {"input_ids": ids[:8], "attention_mask": mask[:8]})


def test_cnn_with_view_of_an_early_batch_size_compiles_and_compacts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((300, 3, 16, 16)).astype(np.float32)
    engine = _compile(tmp_path, ViewCnn(), (torch.from_numpy(x[:2]),), ["input"], {"input": {0: "batch"}}, {"input": x})
    manifest = read_manifest(engine)
    assert len(manifest.sites) >= 2
    _run_every_row_exiting(engine, {"input": x[:8]})


def test_a_batch_fixed_at_one_is_a_clear_error(tmp_path: Path) -> None:
    """Exported without dynamic axes, the CNN's batch is 1 and its reshape depends on it: the
    compiler says how to re-export it, in one line."""
    from apparate_trt.errors import ApparateError

    _export(ViewCnn(), (torch.randn(1, 3, 16, 16),), ["input"], tmp_path / "fixed.onnx", {})
    np.savez(tmp_path / "bootstrap.npz", input=np.zeros((300, 3, 16, 16), np.float32))
    from apparate_trt.compiler.pipeline import compile_model

    with pytest.raises(ApparateError) as err:
        compile_model(tmp_path / "fixed.onnx", tmp_path / "bootstrap.npz", tmp_path / "engine", threads=1, log=lambda line: None)
    message = str(err.value)
    assert "fixes the batch size to 1" in message and "dynamic_axes" in message and "\n" not in message


class TwoOutputCnn(ViewCnn):
    """The view CNN returning its pooled features beside the logits (a common export)."""

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        n = x.size(0)
        for block in self.blocks:
            x = block(x)
        features = self.pool(x).view(n, -1)
        return features, self.fc(features)


def test_the_score_output_of_a_model_with_several_outputs_is_chosen_by_name(tmp_path: Path) -> None:
    from apparate_trt.compiler.pipeline import compile_model
    from apparate_trt.compiler.profiling import ProfileSettings

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((300, 3, 16, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoOutputCnn().eval(), (torch.from_numpy(x[:2]),), str(tmp_path / "two.onnx"), opset_version=17,
                          dynamo=False, input_names=["input"], output_names=["features", "scores"],
                          dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}, "scores": {0: "batch"}})
    np.savez(tmp_path / "bootstrap.npz", input=x)
    compile_model(tmp_path / "two.onnx", tmp_path / "bootstrap.npz", tmp_path / "engine", output="scores", max_batch=4, threads=1,
                  log=lambda line: None, budget=0.5, profile_settings=ProfileSettings(budget_ms=10.0, min_repeats=3, max_repeats=50))
    manifest = read_manifest(tmp_path / "engine")
    assert manifest.model.output == "scores" and manifest.model.num_classes == 10 and len(manifest.sites) >= 2
    _run_every_row_exiting(tmp_path / "engine", {"input": x[:8]})


def test_a_qdq_quantized_model_keeps_its_sites(tmp_path: Path) -> None:
    """ONNX Runtime's static quantizer (QDQ format, int8 activations and weights) on the tiny
    ResNet: the same block-boundary sites as the float model, chained and run with compaction."""
    import onnx
    import tiny_models
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from apparate_trt.compiler.pipeline import compile_model
    from apparate_trt.compiler.profiling import ProfileSettings

    tiny = tiny_models.resnet_like()
    data = tiny_models.separable_images("resnet", 300, seed=1)
    onnx.save(tiny.model, str(tmp_path / "float.onnx"))

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": data["input"][i:i + 8]} for i in range(0, 64, 8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    np.savez(tmp_path / "bootstrap.npz", **data)
    compile_model(tmp_path / "qdq.onnx", tmp_path / "bootstrap.npz", tmp_path / "engine", max_batch=4, threads=1,
                  log=lambda line: None, budget=0.5, profile_settings=ProfileSettings(budget_ms=10.0, min_repeats=3, max_repeats=50))
    manifest = read_manifest(tmp_path / "engine")
    assert len(manifest.sites) == len(tiny.site_tensors)
    _run_every_row_exiting(tmp_path / "engine", {"input": data["input"][:8]})


def test_a_model_with_external_data_compiles_into_a_self_contained_directory(tmp_path: Path) -> None:
    """Weights in a separate file (``save_as_external_data``): the compiler reads them, and the
    engine directory it writes runs after the source files are gone."""
    import shutil

    import onnx
    import tiny_models

    from apparate_trt.compiler.pipeline import compile_model
    from apparate_trt.compiler.profiling import ProfileSettings

    tiny = tiny_models.resnet_like()
    data = tiny_models.separable_images("resnet", 300, seed=1)
    source = tmp_path / "source"
    source.mkdir()
    onnx.save_model(tiny.model, str(source / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=0)
    assert (source / "weights.data").stat().st_size > (source / "model.onnx").stat().st_size
    np.savez(tmp_path / "bootstrap.npz", **data)
    compile_model(source / "model.onnx", tmp_path / "bootstrap.npz", tmp_path / "engine", max_batch=4, threads=1,
                  log=lambda line: None, budget=0.5, profile_settings=ProfileSettings(budget_ms=10.0, min_repeats=3, max_repeats=50))
    shutil.rmtree(source)
    manifest = read_manifest(tmp_path / "engine")
    assert len(manifest.sites) == len(tiny.site_tensors)
    _run_every_row_exiting(tmp_path / "engine", {"input": data["input"][:8]})
