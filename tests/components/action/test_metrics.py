import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from components.action.metrics import (
    average_precision,
    calibrated_average_precision,
    frame_map,
    onset_map,
)


def test_ap_equals_scikit_learn_with_and_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        positives = rng.random(200) < 0.2
        scores = rng.random(200) + positives * rng.random() * 0.5
        assert average_precision(scores, positives) == pytest.approx(
            average_precision_score(positives, scores), abs=1e-12
        )
        tied = np.round(scores, 1)  # many ties
        assert average_precision(tied, positives) == pytest.approx(
            average_precision_score(positives, tied), abs=1e-12
        )
    assert np.isnan(average_precision(np.ones(3), np.zeros(3, bool)))


def test_cap_on_a_hand_computed_case():
    # ranking: P N P N N (scores descending); 2 positives, 3 negatives: w = 3 / 2
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positives = np.array([True, False, True, False, False])
    w = 1.5
    # at the 1st positive: TP 1, FP 0 -> 1.0; at the 2nd: TP 2, FP 1 -> 3 / (3 + 1) = 0.75
    assert calibrated_average_precision(scores, positives) == pytest.approx((1.0 + 0.75) / 2)
    assert average_precision(scores, positives) == pytest.approx((1.0 + 2 / 3) / 2)
    assert w * 2 / (w * 2 + 1) == pytest.approx(0.75)


def test_frame_map_leaves_out_background_and_absent_classes():
    labels = np.array([0, 1, 1, 0, 2, 2, 0])
    probs = np.zeros((7, 4))
    probs[np.arange(7), labels] = 1.0  # perfect
    out = frame_map(probs, labels, ["bg", "a", "b", "c"])
    assert out["map"] == 1.0 and out["cmap"] == 1.0 and "ap/bg" not in out
    assert np.isnan(out["ap/c"])  # no frame of c: not in the mean


def test_onset_map_scores_the_first_frames_of_each_instance():
    labels = np.array([0, 1, 1, 1, 1, 0, 0])
    instances = [(1, 1, 5)]
    probs = np.zeros((7, 2))
    probs[3:5, 1] = 1.0  # recognised late: only from the instance's third frame
    probs[1:3, 1] = 0.1
    probs[0, 1] = 0.5  # a background frame scored above the onset
    assert onset_map(probs, labels, instances, ["bg", "a"], frames=2) == pytest.approx(
        average_precision_score([0, 1, 1, 0, 0], [0.5, 0.1, 0.1, 0.0, 0.0])
    )
    early = np.zeros((7, 2))
    early[1:5, 1] = 1.0
    assert onset_map(early, labels, instances, ["bg", "a"], frames=2) == 1.0
