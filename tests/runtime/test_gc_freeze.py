"""runtime/gc_freeze.freeze_after_load, and the commands that own their process calling it."""

from __future__ import annotations

import gc

import pytest

from apparate_trt.cli.run import main
from apparate_trt.runtime import gc_freeze
from apparate_trt.runtime.gc_freeze import freeze_after_load


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


def test_what_lives_at_the_freeze_leaves_the_collections_and_what_comes_after_does_not(unfrozen):
    before = _Node()
    assert any(o is before for o in gc.get_objects())
    frozen = freeze_after_load()
    assert frozen > 0 and gc.get_freeze_count() > 0  # (frozen objects that refcounting frees leave the count)
    assert not any(o is before for o in gc.get_objects())  # the permanent generation is not scanned
    after = _Node()
    assert any(o is after for o in gc.get_objects())  # new objects are collected as usual


def test_a_freeze_again_frees_what_was_closed_since_and_unfreeze_ends_it(unfrozen):
    freeze_after_load()
    gone = _Node()
    del gone  # a cycle: frozen objects would keep it; the next freeze collects it first
    assert freeze_after_load() > 0
    gc_freeze.unfreeze()
    assert gc.get_freeze_count() == 0


def test_a_replay_freezes_once_its_engine_is_loaded_and_unfreezes_once_closed(
    unfrozen, tiny_resnet_engine, monkeypatch, capsys
):
    engine_dir, eval_npz = tiny_resnet_engine
    frozen: list[int] = []
    monkeypatch.setattr(gc_freeze, "freeze_after_load", lambda: frozen.append(freeze_after_load()) or frozen[-1])
    code = main(["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--limit", "16", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert len(frozen) == 1 and frozen[0] > 0, "one freeze, after the engine loaded"
    assert gc.get_freeze_count() == 0, "the closed engine is handed back to the collector"
