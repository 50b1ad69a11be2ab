"""Fixtures of the runtime tests: the tiny compiled engines with eval inputs and reference outputs.

The engine directories come from the session-wide ``tiny_resnet_engine`` / ``tiny_bert_engine``
fixtures (tests/conftest.py), which compile the tiny models once.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from apparate_trt.data import load_inputs, take
from apparate_trt.engine_dir import read_manifest
from runtime_helpers import Compiled, reference_logits


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
