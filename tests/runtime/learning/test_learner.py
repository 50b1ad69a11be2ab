"""Ramps that keep learning, end to end on the tiny ResNet: a refit that raises a ramp's agreement is
swapped in (and saved), one that gains too little is rejected; without torch the ramps stay put."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_models

from apparate_trt.data import take
from apparate_trt.engine_dir import read_manifest, write_manifest
from apparate_trt.errors import ApparateError
from apparate_trt.ramps.model import RampWeights, head_weights, with_head_weights
from apparate_trt.runtime import api
from apparate_trt.runtime.executor import Executor
from apparate_trt.runtime.learning import learner as learner_module
from apparate_trt.runtime.learning.refit_worker import main as worker_main

pytest.importorskip("torch")

BATCH = 4
STREAM = 320  # past refit_every (256) with >= 64 held-out samples


def _stream(n: int) -> dict[str, np.ndarray]:
    return tiny_models.separable_images("resnet", n, seed=7)


def _serve(engine: api.Engine, data: dict[str, np.ndarray], start: int, count: int) -> None:
    for i in range(start, start + count, BATCH):
        for handle in engine.submit_batch(take(data, slice(i, i + BATCH))):
            handle.result(30)
    assert engine.sync_controller(60)


def _serve_until_refit(engine: api.Engine) -> list[dict]:
    """Serve past one refit, let it finish, serve a batch more (the engine takes it up between
    batches); return the refit events."""
    data = _stream(STREAM + BATCH)
    _serve(engine, data, 0, STREAM)
    assert engine.learner is not None and engine.learner.wait(120)
    _serve(engine, data, STREAM, BATCH)
    return [e for e in engine.controller.events if e["kind"] == "refit"]


def _zeroed_copy(engine_dir: Path, dst: Path) -> tuple[Path, int]:
    """A copy of the engine whose first active ramp has an all-zero head (it agrees by chance only)."""
    shutil.copytree(engine_dir, dst)
    manifest = read_manifest(dst)
    site = manifest.initial_config.active_sites[0]
    entry = manifest.ramps[site]
    model = onnx.load(str(dst / entry.file))
    head = head_weights(model, entry.kind)
    zero = RampWeights([(np.zeros_like(w), np.zeros_like(b)) for w, b in head.layers], head.activation)
    onnx.save(with_head_weights(model, zero), str(dst / entry.file))
    write_manifest(dst, manifest)
    return dst, site


def _ramp_agreement(engine_dir: Path, site: int, inputs: dict[str, np.ndarray]) -> float:
    """Share of ``inputs`` on which ``site``'s ramp argmax is the model's (threshold 0: no exits)."""
    executor = Executor(read_manifest(engine_dir), threads=1)
    try:
        executor.configure([site], [0.0], wait=True)
        outcome = executor.run_batch(inputs, lambda *args, **kwargs: None)
        return float(outcome.agree[0].mean())
    finally:
        executor.close()


def test_a_refit_that_raises_agreement_is_swapped_in_and_saved(tiny_resnet_engine, tmp_path: Path) -> None:
    engine_dir, site = _zeroed_copy(tiny_resnet_engine[0], tmp_path / "zeroed")
    engine = api.load(engine_dir, threads=1, max_batch=BATCH, learning_options={"refit_every": 256})
    try:
        assert engine.learner is not None and engine.learner.status == "on"
        refits = _serve_until_refit(engine)
        assert len(refits) == 1, refits
        event = refits[0]
        assert event["accepted"] and event["site"] == site, event
        assert event["after"]["agreement"] > event["before"]["agreement"] + 0.3
        assert event["after"]["share"] > event["before"]["share"]
        assert event["train_samples"] + event["heldout_samples"] >= 256 and event["wall_s"] > 0
        assert site in engine.controller.probation or any(  # a tune may already have ended the probation
            e["kind"] == "tune" and e["batch"] > event["batch"] for e in engine.controller.events
        )
        stats = engine.stats()["learning"]
        assert stats["refits"] == 1 and stats["refits_accepted"] == 1 and stats["reservoir_samples"] >= STREAM
        assert 0 < stats["reservoir_bytes"] and stats["refit_seconds"] > 0
        saved = engine.save_ramps(tmp_path / "saved")
        with pytest.raises(ApparateError, match="not empty"):
            engine.save_ramps(tmp_path / "saved")
    finally:
        engine.close()
    manifest = read_manifest(saved)
    provenance = manifest.ramps[site].refit
    assert provenance["refits"] == 1 and provenance["compiled_file"] == manifest.ramps[site].file
    assert provenance["requests_served"] >= 256 and provenance["after"] == event["after"]
    assert json.loads((saved / "manifest.json").read_text())["ramps"][site]["refit"] == provenance
    inputs = take(_stream(400), slice(0, 400))  # samples the refit never saw as a whole
    before, after = _ramp_agreement(engine_dir, site, inputs), _ramp_agreement(saved, site, inputs)
    assert after > before + 0.3, (before, after)
    reloaded = api.load(saved, threads=1, max_batch=BATCH, refits=False)
    try:
        assert site in reloaded.controller.probation  # the bootstrap statistics describe the compiled head
        assert reloaded.controller.events[0]["reason"].startswith(f"sites from the manifest; refitted ramps [{site}]")
        result = reloaded.infer({name: value[0] for name, value in inputs.items()}, timeout_s=30)
        assert result.is_final and result.output.shape == (manifest.model.num_classes,)
    finally:
        reloaded.close()


def test_a_refit_that_gains_too_little_is_rejected(tiny_resnet_engine) -> None:
    engine = api.load(
        tiny_resnet_engine[0], threads=1, max_batch=BATCH, learning_options={"refit_every": 256, "min_gain": 0.99}
    )
    try:
        refits = _serve_until_refit(engine)
        assert len(refits) == 1 and not refits[0]["accepted"], refits
        assert "rejected" in refits[0]["reason"] and refits[0]["after"]["share"] < refits[0]["before"]["share"] + 0.99
        assert engine.stats()["learning"]["refits_accepted"] == 0
        assert engine.learner.refitted() == {}
    finally:
        engine.close()


def test_without_torch_the_ramps_stay_as_compiled(tiny_resnet_engine, monkeypatch, caplog) -> None:
    monkeypatch.setattr(learner_module, "is_available", lambda name: name != "torch")
    with caplog.at_level("WARNING"):
        engine = api.load(tiny_resnet_engine[0], threads=1, max_batch=BATCH)
    try:
        status = engine.stats()["learning"]["status"]
        assert "torch" in status and "pip install 'apparate_trt[train]'" in status
        assert sum("ramp refits are off" in r.message for r in caplog.records) == 1
        assert not engine.executor.keep_features
        data = _stream(8)
        _serve(engine, data, 0, 8)
        assert engine.stats()["learning"]["reservoir_samples"] == 0
    finally:
        engine.close()


def test_refits_off_keeps_no_learner(tiny_resnet_engine, tmp_path: Path) -> None:
    engine = api.load(tiny_resnet_engine[0], threads=1, max_batch=BATCH, refits=False)
    try:
        assert engine.learner is None and engine.stats()["learning"] is None
        with pytest.raises(ApparateError, match="does not refit ramps"):
            engine.save_ramps(tmp_path / "saved")
    finally:
        engine.close()
    with pytest.raises(ApparateError, match="unknown learning option"):
        api.load(tiny_resnet_engine[0], learning_options={"refit_evry": 3})
    with pytest.raises(ApparateError, match="refit_every must be at least 1"):
        api.load(tiny_resnet_engine[0], learning_options={"refit_every": 0})


def test_the_worker_refuses_a_bad_job(tmp_path: Path, capsys) -> None:
    assert worker_main([str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
