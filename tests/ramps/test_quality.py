"""The releasable share: wrong releases count against all inputs, ties never split, weights count."""

from __future__ import annotations

import numpy as np

from apparate_trt.ramps.quality import head_quality, releasable_share


def test_releasable_share_counts_wrong_releases_against_all_inputs_and_never_splits_ties() -> None:
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    agree = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 1], dtype=np.uint8)
    assert releasable_share(conf, agree, 0.0) == 0.2  # the first wrong one is third most confident
    assert releasable_share(conf, agree, 0.1) == 0.5  # one wrong release of ten inputs is allowed
    assert releasable_share(conf, agree, 1.0) == 1.0
    tied = np.array([0.9, 0.9, 0.9, 0.1])
    assert releasable_share(tied, np.array([1, 1, 0, 1], dtype=np.uint8), 0.0) == 0.0  # no threshold splits the tie
    assert releasable_share(np.zeros(0), np.zeros(0, dtype=np.uint8), 0.01) == 0.0


def test_releasable_share_weighs_each_sample_by_the_inputs_it_stands_for() -> None:
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    agree = np.array([1, 0, 1, 1], dtype=np.uint8)
    # unweighted: the wrong second sample is 1 of 4 inputs (25%); weighted it stands for 1 of 10
    assert releasable_share(conf, agree, 0.1) == 0.25
    weights = np.array([1.0, 1.0, 4.0, 4.0])
    assert releasable_share(conf, agree, 0.1, weights) == 1.0
    assert releasable_share(conf, agree, 0.0, weights) == 0.1  # only the first (1 of 10 inputs)


def test_head_quality_reports_share_and_agreement() -> None:
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [0.1, 0.0]], dtype=np.float32)
    final = np.array([0, 1, 1, 0])
    quality = head_quality(logits, final, 0.0)
    assert quality["agreement"] == 0.75
    assert quality["share"] == 0.0  # the wrong third row ties the most confident ones
    assert head_quality(logits, np.array([0, 1, 0, 0]), 0.0) == {"share": 1.0, "agreement": 1.0}
