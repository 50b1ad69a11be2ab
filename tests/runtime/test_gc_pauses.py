"""runtime/gc_pauses.freeze_after_load, and the commands that own their process calling it."""

from __future__ import annotations

import gc

import pytest

from apparate_trt.cli.run import main
from apparate_trt.runtime.gc_pauses import freeze_after_load


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
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is before for o in gc.get_objects())  # the permanent generation is not scanned
    after = _Node()
    assert any(o is after for o in gc.get_objects())  # new objects are collected as usual


def test_a_replay_freezes_once_its_engine_is_loaded(unfrozen, tiny_resnet_engine, tmp_path, capsys):
    engine_dir, eval_npz = tiny_resnet_engine
    assert gc.get_freeze_count() == 0
    code = main(["--engine-dir", str(engine_dir), "--data", str(eval_npz), "--limit", "16", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert gc.get_freeze_count() > 0
