"""Near-copies of bootstrap samples (images, token sequences): which models get them, and what each edit does."""

from __future__ import annotations

import numpy as np
import pytest

from apparate_trt.compiler.augment import (
    BLEND_WEIGHT,
    DEFAULT_BLENDS,
    MAX_BLENDS,
    MAX_COPIES,
    augmented_inputs,
    blended_inputs,
    default_blends,
    default_copies,
    image_input,
    token_copies,
    token_inputs,
)
from apparate_trt.graph.ingest import TensorInfo

IMAGE = TensorInfo("image", "float32", ["N", 1, 4, 5])


def test_only_a_single_float_image_input_is_augmented() -> None:
    assert image_input([IMAGE]) is IMAGE and default_copies([IMAGE]) == MAX_COPIES
    ids = TensorInfo("input_ids", "int64", ["N", "S"])
    mask = TensorInfo("attention_mask", "int64", ["N", "S"])
    assert image_input([ids, mask]) is None and default_copies([ids, mask]) == 0  # no mask given: not a token model
    assert image_input([TensorInfo("x", "int8", ["N", 1, 4, 4])]) is None  # not float
    assert image_input([TensorInfo("x", "float32", ["N", 8])]) is None  # not rank 4
    assert image_input([IMAGE, TensorInfo("y", "float32", ["N", 3])]) is None  # two inputs
    assert image_input([TensorInfo("x", "float32", ["N", 3, 1, 8])]) is None  # a 1-pixel axis


def test_copies_are_stacked_transform_by_transform() -> None:
    x = np.arange(2 * 1 * 4 * 5, dtype=np.float32).reshape(2, 1, 4, 5)
    copies, names = augmented_inputs({"image": x}, IMAGE, 3)
    out = copies["image"]
    assert names == ["mirror", "down 1 px", "up 1 px"] and out.shape == (6, 1, 4, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:2], x[:, :, :, ::-1])  # mirror of both samples first
    down = out[2:4]
    np.testing.assert_array_equal(down[:, :, 1:], x[:, :, :-1])  # moved down one row ...
    np.testing.assert_array_equal(down[:, :, 0], x[:, :, 0])  # ... the top row repeated, not wrapped
    np.testing.assert_array_equal(out[4:, :, :-1], x[:, :, 1:])
    assert augmented_inputs({"image": x}, IMAGE, 0)[0]["image"].shape == (0, 1, 4, 5)
    with pytest.raises(ValueError, match="copies must be in 0..7"):
        augmented_inputs({"image": x}, IMAGE, MAX_COPIES + 1)


def test_blends_mix_each_sample_mostly_with_itself() -> None:
    n = 6
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None, None, None] * 10.0, 20, axis=3).reshape(
        n, 1, 4, 5
    )  # sample i is 10*i everywhere
    blends, partner = blended_inputs({"image": x}, IMAGE, 3, seed=4)
    out = blends["image"]
    assert out.shape == (3 * n, 1, 4, 5) and out.dtype == np.float32 and partner.shape == (3 * n,)
    for row in range(3 * n):
        own, other = x[row % n, 0, 0, 0], x[partner[row], 0, 0, 0]
        assert np.all(out[row] == out[row, 0, 0, 0])  # one weight per blend, the same at every pixel
        if own != other:
            w = (out[row, 0, 0, 0] - other) / (own - other)
            assert BLEND_WEIGHT[0] - 1e-5 <= w <= BLEND_WEIGHT[1] + 1e-5
    for k in range(3):
        assert sorted(partner[k * n : (k + 1) * n]) == list(range(n))  # every sample is a partner once per copy
    again, partner_again = blended_inputs({"image": x}, IMAGE, 3, seed=4)
    np.testing.assert_array_equal(again["image"], out)
    np.testing.assert_array_equal(partner_again, partner)
    empty, none = blended_inputs({"image": x}, IMAGE, 0)
    assert empty["image"].shape == (0, 1, 4, 5) and none.shape == (0,)
    with pytest.raises(ValueError, match=f"blends must be in 0..{MAX_BLENDS}"):
        blended_inputs({"image": x}, IMAGE, MAX_BLENDS + 1)


def test_only_image_models_get_blends() -> None:
    assert default_blends([IMAGE]) == DEFAULT_BLENDS
    assert default_blends([IDS, MASK]) == 0 and default_blends([TensorInfo("x", "float32", ["N", 8])]) == 0


IDS = TensorInfo("input_ids", "int64", ["N", "S"])
MASK = TensorInfo("attention_mask", "int64", ["N", "S"])


def test_token_models_with_a_mask_get_copies() -> None:
    assert token_inputs([IDS, MASK], MASK) == [IDS, MASK] and default_copies([IDS, MASK], MASK) == MAX_COPIES
    assert token_inputs([IDS], None) is None  # no attention mask: lengths unknown
    assert token_inputs([IDS, MASK, TensorInfo("x", "float32", ["N", 4])], MASK) is None  # a float input too


def _sentences() -> dict[str, np.ndarray]:
    ids = np.zeros((3, 10), np.int64)
    ids[0, :8] = [1, 11, 12, 13, 14, 15, 16, 2]  # [CLS] six words [SEP], then padding
    ids[1, :4] = [1, 21, 22, 2]  # too short for most edits: two inner tokens
    ids[2, :] = [1, 31, 32, 33, 34, 35, 36, 37, 38, 2]  # no padding at all
    mask = (ids != 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def test_token_copies_delete_inner_tokens_and_keep_the_ends() -> None:
    x = _sentences()
    copies, names = token_copies(x, [IDS, MASK], MASK, MAX_COPIES, seed=3)
    assert len(names) == MAX_COPIES and copies["input_ids"].shape == (3 * MAX_COPIES, 10)
    for _k, (name, row) in enumerate(zip(names, range(0, 3 * MAX_COPIES, 3))):
        for i in range(3):
            ids, mask = copies["input_ids"][row + i], copies["attention_mask"][row + i]
            length = int(x["attention_mask"][i].sum())
            kept = ids[: int(mask.sum())]
            assert kept[0] == 1 and kept[-1] == 2, name  # first and last real token stay
            assert np.all(ids[int(mask.sum()) :] == 0) and np.all(mask[: int(mask.sum())] == 1)  # right-padded still
            original = list(x["input_ids"][i, :length])
            assert set(kept.tolist()) <= set(original)  # only deletions ...
            assert [t for t in original if t in kept] == kept.tolist()  # ... order kept
            if length - 2 >= 2:
                assert 1 <= length - kept.size <= length - 3, name  # at least one inner token stays
            else:
                assert kept.tolist() == original
    drop2 = copies["input_ids"][3]  # "drop 2 tokens" of sentence 0
    assert names[1] == "drop 2 tokens" and int(copies["attention_mask"][3].sum()) == 6
    cut = copies["input_ids"][6]  # "cut the last quarter": 6 inner tokens, round(1.5) = 2 cut before [SEP]
    assert names[2] == "cut the last quarter" and cut[:6].tolist() == [1, 11, 12, 13, 14, 2]
    assert drop2.dtype == np.int64


def test_token_copies_are_seeded_and_leave_odd_masks_alone() -> None:
    x = _sentences()
    a, _ = token_copies(x, [IDS, MASK], MASK, 4, seed=7)
    b, _ = token_copies(x, [IDS, MASK], MASK, 4, seed=7)
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    x["attention_mask"][0, 3] = 0  # a hole: not right-padded, so the row is copied unedited
    c, _ = token_copies(x, [IDS, MASK], MASK, 2, seed=7)
    np.testing.assert_array_equal(c["input_ids"][0], x["input_ids"][0])
    assert token_copies(x, [IDS, MASK], MASK, 0)[0]["input_ids"].shape == (0, 10)
    with pytest.raises(ValueError, match="copies must be in 0..7"):
        token_copies(x, [IDS, MASK], MASK, MAX_COPIES + 1)
