"""Unit tests of the pure helpers of scripts/build_real_models.py (no real models, no real data).

The script itself is run by hand (`make models`); these tests cover its stream splits, drift
construction, tokenisation, graph reordering and error paths on tiny inputs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_real_models.py"


@pytest.fixture(scope="module")
def brm():
    """The script and its per-model modules (scripts/real_models: common, cv, nlp; not part of the
    package) as one namespace."""
    spec = importlib.util.spec_from_file_location("build_real_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts scripts/ on sys.path
    parts = [importlib.import_module(f"real_models.{name}") for name in ("common", "cv", "nlp")]
    return SimpleNamespace(
        **{k: v for part in [*parts, module] for k, v in vars(part).items() if not k.startswith("__")}
    )


def test_bootstrap_count_is_max_of_ten_percent_and_1000(brm):
    assert brm.bootstrap_count(10_000) == 1000
    assert brm.bootstrap_count(6_343) == 1000
    assert brm.bootstrap_count(20_001) == 2001
    with pytest.raises(brm.BuildError):
        brm.bootstrap_count(1000)


def test_choose_seq_len_covers_the_99th_percentile(brm):
    assert brm.choose_seq_len(np.full(100, 20)) == 32
    assert brm.choose_seq_len(np.r_[np.full(98, 20), 55, 55]) == 64
    assert brm.choose_seq_len(np.full(10, 1000)) == 128


def test_split_movies_is_seeded_and_sized(brm):
    movies = [f"m{i}" for i in range(100)] * 3
    a = brm.split_movies(movies, 0.3, seed=0)
    assert a == brm.split_movies(movies, 0.3, seed=0)
    assert len(a) == 30 and a <= set(movies)
    assert a != brm.split_movies(movies, 0.3, seed=1)


def test_nlp_split_has_no_movie_in_two_parts(brm):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "text": [f"t{i}" for i in range(2000)],
            "movie_name": [f"m{i}" for i in rng.integers(0, 200, 2000)],
            "label": rng.integers(0, 2, 2000),
        }
    )
    train, val, stream = brm.nlp_split(df)
    sets = [set(p["movie_name"]) for p in (train, val, stream)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(val) + len(stream) + len(train) <= len(df)
    assert len(stream) == df["movie_name"].isin(sets[2]).sum()  # every snippet of a movie
    assert len(train) <= brm.NLP_TRAIN_MAX


def test_tokenize_pads_and_truncates_keeping_sep(brm):
    class FakeTokenizer:
        def encode_batch(self, texts):
            return [SimpleNamespace(ids=[101] + [7] * len(t) + [102]) for t in texts]

    ids, mask = brm.tokenize(FakeTokenizer(), ["ab", "abcdefgh"], seq_len=6)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == (2, 6)
    assert ids[0].tolist() == [101, 7, 7, 102, 0, 0] and mask[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert ids[1].tolist() == [101, 7, 7, 7, 7, 102] and mask[1].sum() == 6
    assert brm.token_lengths(FakeTokenizer(), ["ab", ""]).tolist() == [4, 2]


def test_blur_preserves_mass_of_an_interior_point(brm):
    img = np.zeros((1, 1, 28, 28), np.float32)
    img[0, 0, 14, 14] = 1.0
    out = brm.blur_images(img, sigma=0.8)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.sum() == pytest.approx(1.0, abs=1e-5) and out.max() < 0.5


def test_degrade_images_is_seeded_in_range_and_lower_contrast(brm):
    rng = np.random.default_rng(0)
    images = (rng.random((8, 1, 28, 28)) > 0.5).astype(np.float32)
    a = brm.degrade_images(images, np.random.default_rng(1))
    b = brm.degrade_images(images, np.random.default_rng(1))
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.shape == images.shape
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert a.std() < 0.5 * images.std() + 0.05


def test_drift_indices_phases(brm):
    labels = np.repeat(np.arange(10), 900)
    picks, phases = brm.drift_indices(labels, np.random.default_rng(0))
    n = brm.DRIFT_PHASE_LEN
    assert [len(p) for p in picks] == [n] * 4
    assert [(p["start"], p["end"]) for p in phases] == [(i * n, (i + 1) * n) for i in range(4)]
    assert all(len(np.unique(p)) == n for p in picks)  # no repeats within a phase
    focus = np.isin(labels[picks[1]], brm.DRIFT_FOCUS_CLASSES).mean()
    assert focus == pytest.approx(brm.DRIFT_FOCUS_SHARE, abs=1e-3)
    assert np.isin(labels[picks[0]], brm.DRIFT_FOCUS_CLASSES).mean() < 0.45


def _side_chain_graph():
    """x -> Relu -> Relu -> Add(., side) -> y, with side = Neg(x) listed first in the file."""
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    nodes = [
        h.make_node("Neg", ["x"], ["side"], name="side"),
        h.make_node("Relu", ["x"], ["a"], name="r1"),
        h.make_node("Relu", ["a"], ["b"], name="r2"),
        h.make_node("Add", ["b", "side"], ["y"], name="add"),
    ]
    vi = lambda n: h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", 4])  # noqa: E731
    graph = h.make_graph(nodes, "g", [vi("x")], [vi("y")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_demand_order_puts_side_chains_before_their_consumer(brm):
    model = _side_chain_graph()
    order = [model.graph.node[i].name for i in brm.demand_order(model.graph)]
    assert order == ["r1", "r2", "side", "add"]


def test_fold_constants_keeps_standard_ops_and_outputs(brm, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_side_chain_graph(), str(src))
    brm.fold_constants(src, dst)
    facts = brm.check_onnx(dst)
    assert facts["inputs"] == {"x": ["batch", 4]} and facts["outputs"] == {"y": ["batch", 4]}
    assert [o.domain for o in onnx.load(str(dst)).opset_import] in ([""], ["ai.onnx"])
    x = np.arange(-4, 4, dtype=np.float32).reshape(2, 4)
    out = brm.ort_session(dst).run(None, {"x": x})[0]
    assert np.allclose(out, np.maximum(x, 0) - x)


def test_missing_dataset_is_a_one_line_error(brm, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.setattr(importlib.import_module("real_models.cv"), "FASHION_MNIST_DIR", tmp_path / "nowhere")
    assert brm.main(["--only", "cv", "--out", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset-fashion-mnist" in err and "install_system.sh" in err


def test_require_names_the_package(brm):
    with pytest.raises(brm.BuildError, match="missing package not-a-pkg.*install_system.sh"):
        brm.require("surely_not_a_module_xyz", "not-a-pkg")
