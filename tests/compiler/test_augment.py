"""Near-copies of bootstrap images: which models get them, and what each transform does."""
from __future__ import annotations

import numpy as np
import pytest

from apparate_trt.compiler.augment import MAX_COPIES, augmented_inputs, default_copies, image_input
from apparate_trt.compiler.ingest import TensorInfo

IMAGE = TensorInfo("image", "float32", ["N", 1, 4, 5])


def test_only_a_single_float_image_input_is_augmented() -> None:
    assert image_input([IMAGE]) is IMAGE and default_copies([IMAGE]) == MAX_COPIES
    ids = TensorInfo("input_ids", "int64", ["N", "S"])
    mask = TensorInfo("attention_mask", "int64", ["N", "S"])
    assert image_input([ids, mask]) is None and default_copies([ids, mask]) == 0
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
