"""Shared fixtures: tiny models compiled once per test session with the real pipeline.

``tiny_resnet_engine`` and ``tiny_bert_engine`` return ``(engine_dir, eval_npz_path)``: an engine
directory written by ``compile_model`` (max batch 4, 300 bootstrap samples, budget 0.5, one ORT
thread) and
an evaluation ``.npz`` of 200 samples from the same separable distribution. They are read-only:
tests that change an engine directory must copy it first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from apparate_trt.data import load_inputs, take
from apparate_trt.engine_dir import read_manifest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py and runtime_helpers.py, whatever the import mode

import tiny_models  # noqa: E402
from runtime_helpers import Compiled, reference_logits  # noqa: E402

try:  # tests share 2 cores with other work: one torch thread
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - the train extra is part of the test setup
    pass

TINY_BOOTSTRAP_SAMPLES = 300
TINY_EVAL_SAMPLES = 200
# A tiny model runs in ~0.1 ms, so one ramp (ORT call overhead) costs ~10% of it: a large budget
# lets the initial configuration hold active ramps, as a real model's 2% does.
TINY_BUDGET = 0.5


def compile_tiny(
    root: Path, model: onnx.ModelProto, bootstrap: dict[str, np.ndarray], evaluation: dict[str, np.ndarray]
) -> tuple[Path, Path]:
    """Save model and data under ``root``, compile them quickly, return (engine dir, eval npz)."""
    from apparate_trt.compiler.pipeline import compile_model
    from apparate_trt.compiler.profiling import ProfileSettings

    onnx.save(model, str(root / "model.onnx"))
    np.savez(root / "bootstrap.npz", **bootstrap)
    np.savez(root / "eval.npz", **evaluation)
    compile_model(
        root / "model.onnx",
        root / "bootstrap.npz",
        root / "engine",
        max_batch=4,
        threads=1,
        seed=0,
        log=lambda line: None,
        budget=TINY_BUDGET,
        profile_settings=ProfileSettings(budget_ms=10.0, min_repeats=3, max_repeats=50),
    )
    return root / "engine", root / "eval.npz"


@pytest.fixture(scope="session")
def tiny_resnet_engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(engine dir, eval .npz) of a compiled tiny ResNet-like model (10 classes, 3 sites)."""
    return compile_tiny(
        tmp_path_factory.mktemp("tiny_resnet"),
        tiny_models.resnet_like().model,
        tiny_models.separable_images("resnet", TINY_BOOTSTRAP_SAMPLES, seed=1),
        tiny_models.separable_images("resnet", TINY_EVAL_SAMPLES, seed=2),
    )


@pytest.fixture(scope="session")
def tiny_view_resnet_engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(engine dir, eval .npz) of the tiny ResNet whose head does ``x.view(n, -1)`` with ``n`` read
    from the input's shape before the stem (PyTorch's ``n = x.size(0)``): a scalar live across
    every site, which each segment recomputes from the input."""
    return compile_tiny(
        tmp_path_factory.mktemp("tiny_view_resnet"),
        tiny_models.resnet_like(view_early=True).model,
        tiny_models.separable_images("resnet", TINY_BOOTSTRAP_SAMPLES, seed=1),
        tiny_models.separable_images("resnet", TINY_EVAL_SAMPLES, seed=2),
    )


@pytest.fixture(scope="session")
def tiny_bert_engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(engine dir, eval .npz) of a compiled tiny BERT-like model (2 classes, 3 sites, mask side tensor)."""
    return compile_tiny(
        tmp_path_factory.mktemp("tiny_bert"),
        tiny_models.bert_like().model,
        tiny_models.separable_tokens(TINY_BOOTSTRAP_SAMPLES, seed=1),
        tiny_models.separable_tokens(TINY_EVAL_SAMPLES, seed=2),
    )


# ----------------------------------------------------- the tiny engines with eval inputs and reference outputs


def _compiled(engine: tuple[Path, Path], count: int) -> Compiled:
    engine_dir, eval_npz = engine
    manifest = read_manifest(engine_dir)
    inputs = take(load_inputs(eval_npz, manifest.model.inputs), slice(0, count))
    return Compiled(Path(engine_dir), manifest, inputs, reference_logits(manifest, inputs))


@pytest.fixture(scope="session")
def resnet(tiny_resnet_engine) -> Compiled:
    """The tiny ResNet engine with 24 eval samples."""
    compiled = _compiled(tiny_resnet_engine, 24)
    assert len(compiled.manifest.sites) >= 2, "the tiny ResNet should have at least two ramp sites"
    return compiled


@pytest.fixture(scope="session")
def bert(tiny_bert_engine) -> Compiled:
    """The tiny BERT engine (attention mask as a side tensor) with 16 eval samples."""
    compiled = _compiled(tiny_bert_engine, 16)
    assert len(compiled.manifest.sites) >= 2, "the tiny BERT should have at least two ramp sites"
    return compiled


@pytest.fixture(scope="session")
def view_resnet(tiny_view_resnet_engine) -> Compiled:
    """The tiny ResNet whose head reshapes with the batch size read from the input's shape at the
    start (a scalar live across every site), with 24 eval samples."""
    compiled = _compiled(tiny_view_resnet_engine, 24)
    assert len(compiled.manifest.sites) >= 2, "the view-flattening ResNet should have ramp sites"
    return compiled
