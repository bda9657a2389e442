"""Closed-set segmentation metrics: PAvPU (seed 003 eq. 10) and the per-class IoU table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from anomaly_seg_ros.common.labels import TRAIN_ID_NAMES
from anomaly_seg_ros.metrics import PAvPU, pavpu
from anomaly_seg_ros.metrics.segmentation import ConfusionMatrix


def _four_patches() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """9x9 maps, 4x4 patches: the last row and column are outside every patch."""
    target = np.zeros((9, 9), dtype=np.int64)
    pred = np.zeros_like(target)
    uncertainty = np.zeros((9, 9))
    # Top-left: 16/16 correct, uncertainty .1 -> accurate and certain.
    uncertainty[0:4, 0:4] = 0.1
    # Top-right: 8/16 correct (accuracy .5 is not > .5: inaccurate), uncertainty .9 -> inaccurate, uncertain.
    pred[0:2, 4:8] = 1
    uncertainty[0:4, 4:8] = 0.9
    # Bottom-left: 12/16 correct, uncertainty .6 -> accurate, uncertain.
    pred[4, 0:4] = 1
    uncertainty[4:8, 0:4] = 0.6
    # Bottom-right: 8 pixels ignored (their uncertainty 100 must not count), 4 of the other 8 correct
    # -> accuracy .5, inaccurate; mean uncertainty .2 over the valid pixels -> certain.
    target[4:6, 4:8] = 255
    uncertainty[4:6, 4:8] = 100.0
    pred[6, 4:8] = 1
    uncertainty[6:8, 4:8] = 0.2
    # Row 8 and column 8 would make every patch wrong and uncertain if they were scored.
    pred[8, :] = 5
    pred[:, 8] = 5
    uncertainty[8, :] = 50.0
    uncertainty[:, 8] = 50.0
    return pred, target, uncertainty


def test_pavpu_hand_worked():
    pred, target, uncertainty = _four_patches()
    metric = PAvPU(0.5, window=4)
    metric.update(pred, target, uncertainty)
    assert metric.counts() == {"n_ac": 1, "n_au": 1, "n_ic": 1, "n_iu": 1}
    # (n_ac + n_iu) / all = (1 + 1) / 4.
    assert metric.value() == pytest.approx(0.5)
    # A second image, perfect and certain: its 4 patches (the half-ignored one too) are accurate-certain,
    # so after pooling (n_ac + n_iu) / all = (5 + 1) / 8.
    metric.update(target.copy(), target, np.zeros_like(uncertainty))
    assert metric.counts() == {"n_ac": 1 + 4, "n_au": 1, "n_ic": 1, "n_iu": 1}
    assert metric.value() == pytest.approx((5 + 1) / 8)


def test_pavpu_thresholds_are_strict():
    # One 2x2 patch, 3 of 4 correct (.75), uncertainty exactly the threshold: "lower than" fails -> uncertain.
    pred = np.array([[0, 0], [0, 1]])
    target = np.zeros((2, 2), dtype=np.int64)
    uncertainty = np.full((2, 2), 0.3)
    assert pavpu(pred, target, uncertainty, uncertainty_threshold=0.3, window=2) == 0.0  # accurate, uncertain
    assert pavpu(pred, target, uncertainty, uncertainty_threshold=0.31, window=2) == 1.0  # accurate, certain
    assert pavpu(pred, target, uncertainty, uncertainty_threshold=0.31, window=2, accuracy_threshold=0.75) == 0.0


def _reference_pavpu(pred, target, uncertainty, window, accuracy_threshold, uncertainty_threshold):
    """Patch by patch with Python loops over a batch."""
    good = total = 0
    for p, t, u in zip(pred, target, uncertainty, strict=True):
        for top in range(0, t.shape[0] - window + 1, window):
            for left in range(0, t.shape[1] - window + 1, window):
                sl = (slice(top, top + window), slice(left, left + window))
                valid = t[sl] != 255
                if not valid.any():
                    continue
                accurate = np.mean(p[sl][valid] == t[sl][valid]) > accuracy_threshold
                certain = np.mean(u[sl][valid]) < uncertainty_threshold
                good += accurate == certain
                total += 1
    return good / total


def test_pavpu_matches_a_loop_over_patches_on_random_batches():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (3, 22, 30))
    target[rng.random(target.shape) < 0.2] = 255
    target[0, :8, :8] = 255  # fully ignored patches are skipped
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 3, target.shape))
    uncertainty = rng.random(target.shape)
    for window in (2, 4, 5):
        expected = _reference_pavpu(pred, target, uncertainty, window, 0.5, 0.5)
        assert pavpu(pred, target, uncertainty, uncertainty_threshold=0.5, window=window) == pytest.approx(expected)


def test_pavpu_rejects_bad_input():
    target = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="one shape"):
        pavpu(target, target[:2], np.zeros((4, 4)), uncertainty_threshold=0.5)
    with pytest.raises(ValueError, match="no 8x8 patch"):
        pavpu(target, target, np.zeros((4, 4)), uncertainty_threshold=0.5, window=8)
    with pytest.raises(TypeError, match="integer"):
        pavpu(target.astype(float), target, np.zeros((4, 4)), uncertainty_threshold=0.5)
    with pytest.raises(ValueError, match="NaN"):
        pavpu(target, target, np.full((4, 4), np.nan), uncertainty_threshold=0.5)
    assert math.isnan(PAvPU(0.5).value())


def test_per_class_table_matches_scikit_learn_confusion_matrix():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 19, (2, 30, 40))
    target[target == 7] = 16  # class 7 never occurs in the ground truth ...
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 19, target.shape))
    pred[pred == 7] = 3  # ... nor in the prediction: its IoU is NaN
    pred[pred == 255] = 0
    matrix = ConfusionMatrix(19)
    matrix.update(pred, target)
    keep = target != 255
    reference = confusion_matrix(target[keep], pred[keep], labels=list(range(19)))
    tp = np.diag(reference)
    fp = reference.sum(axis=0) - tp
    fn = reference.sum(axis=1) - tp
    table = matrix.per_class_table()
    assert [row["class"] for row in table] == list(TRAIN_ID_NAMES)
    for index, row in enumerate(table):
        assert (row["tp"], row["fp"], row["fn"]) == (tp[index], fp[index], fn[index])
        union = tp[index] + fp[index] + fn[index]
        if union == 0:
            assert math.isnan(row["iou"])
        else:
            assert row["iou"] == pytest.approx(tp[index] / union)
    assert math.isnan(table[7]["iou"])
    assert [row["class"] for row in ConfusionMatrix(20).per_class_table()][-1] == "void"
    assert ConfusionMatrix(3).per_class_table(["a", "b", "c"])[1]["class"] == "b"
    assert ConfusionMatrix(3).per_class_table()[2]["class"] == "class 2"
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        ConfusionMatrix(3).per_class_table(["a", "b"])
