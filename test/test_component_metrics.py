"""SMIYC component metrics: sIoU with the adjustment set, PPV, F1 per tau, size filters, pooling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anomaly_seg_ros.metrics import SIOU_THRESHOLDS, TRACKS, ComponentMetrics, frame_components


def _fixture() -> tuple[np.ndarray, np.ndarray]:
    """10x12 frame: objects A, B (2x4 each) under one prediction P1, object C half hit by P2,
    a false positive P3 and a prediction on void that must vanish."""
    labels = np.zeros((10, 12), dtype=np.uint8)
    labels[1:3, 1:5] = 1  # A: 8 px
    labels[1:3, 7:11] = 1  # B: 8 px
    labels[5:9, 1:4] = 1  # C: 12 px
    labels[8:10, 8:12] = 255  # void
    prediction = np.zeros_like(labels, dtype=bool)
    prediction[1:3, 1:11] = True  # P1: 20 px = A + B + 4 in-distribution px between them
    prediction[6:9, 2:6] = True  # P2: 12 px, 6 of them on C
    prediction[5:7, 9:11] = True  # P3: 4 px, all in-distribution
    prediction[9, 8:11] = True  # on void only: removed before the components are found
    return prediction, labels


def test_siou_ppv_on_a_hand_worked_frame():
    prediction, labels = _fixture()
    frame = frame_components(prediction, labels)
    # sIoU(A) = |A ∩ P1| / |(A ∪ P1) \ B| = 8 / (20 - 8) = 2/3; the same for B (B is A's adjustment set).
    # sIoU(C) = 6 / |C ∪ P2| = 6 / (12 + 12 - 6) = 1/3.
    assert sorted(frame.siou_gt.tolist()) == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert sorted(frame.size_gt.tolist()) == [8, 8, 12]
    # PPV(P1) = 16 / 20, PPV(P2) = 6 / 12, PPV(P3) = 0 / 4.
    assert sorted(frame.ppv.tolist()) == pytest.approx([0.0, 0.5, 0.8])
    assert sorted(frame.size_pred.tolist()) == [4, 12, 20]
    # sIoU_pred(P1) = 16 / |P1 ∪ A ∪ B| = 16 / 20; sIoU_pred(P2) = 6 / |P2 ∪ C| = 6 / 18; P3: 0.
    assert sorted(frame.siou_pred.tolist()) == pytest.approx([0.0, 1 / 3, 0.8])


def test_f1_per_tau_and_means_worked_by_hand():
    prediction, labels = _fixture()
    metrics = ComponentMetrics(0.5, min_gt_size=0, min_pred_size=0)
    metrics.update(prediction.astype(np.float32), labels)  # 1.0 > 0.5 where predicted, 0.0 elsewhere
    result = metrics.summary()
    # sIoU 2/3 2/3 1/3 -> TP = 3 for tau .25 .30; 2 for .35 .. .65; 0 for .70 .75 (FN = 3 - TP).
    assert result["tp"] == [3, 3, 2, 2, 2, 2, 2, 2, 2, 0, 0]
    assert result["fn"] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 3, 3]
    # PPV .8 0 .5 -> FP = #(PPV < tau): 1 for tau <= .50 (PPV .5 is not < .5), 2 above.
    assert result["fp"] == [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    # F1 = 2TP / (2TP + FN + FP): 6/7 (x2), 4/6 (x4), 4/7 (x3), 0 (x2); mean = (12/7 + 8/3 + 12/7) / 11.
    expected_f1 = [6 / 7] * 2 + [2 / 3] * 4 + [4 / 7] * 3 + [0.0] * 2
    assert list(result["f1"].values()) == pytest.approx(expected_f1)
    assert list(result["f1"]) == [f"{t:.2f}" for t in SIOU_THRESHOLDS]
    assert result["f1_mean"] == pytest.approx(128 / 231)
    assert result["siou_gt"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    assert result["ppv"] == pytest.approx((0.8 + 0.0 + 0.5) / 3)
    assert (result["num_gt_components"], result["num_pred_components"]) == (3, 3)


def test_scores_equal_to_the_threshold_are_not_predicted():
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[1:3, 1:3] = 1
    scores = np.zeros((6, 6))
    scores[1:3, 1:3] = 0.5  # exactly at the threshold: "score > threshold" leaves it out
    metrics = ComponentMetrics(0.5, min_gt_size=0, min_pred_size=0)
    frame = metrics.update(scores, labels)
    assert frame.siou_gt.tolist() == [0.0] and frame.ppv.size == 0


def _size_filter_frame() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[2:14, 2:14] = 1  # big object: 144 px
    labels[15:24, 15:24] = 1  # small object: 81 px
    prediction = np.zeros_like(labels, dtype=bool)
    prediction[0:25, 0:25] = True  # P_big: 625 px over both objects
    prediction[0:20, 35:55] = True  # P_small: 400 px on the road
    return prediction, labels


def test_anomaly_track_size_filters():
    # min_gt 100: the 81 px object becomes void, with P_big's pixels on it; min_pred 500 drops P_small.
    assert TRACKS["anomaly"].min_gt_size == 100 and TRACKS["anomaly"].min_pred_size == 500
    prediction, labels = _size_filter_frame()
    metrics = ComponentMetrics(0.0, track="anomaly")
    frame = metrics.update_mask(prediction, labels)
    # P_big in the region of interest: 625 - 81 = 544 px, 144 of them on the big object.
    assert frame.siou_gt.tolist() == pytest.approx([144 / 544])
    assert frame.ppv.tolist() == pytest.approx([144 / 544])
    assert frame.size_pred.tolist() == [544]


def test_obstacle_track_size_filters():
    # min_gt 10, min_pred 50: both objects and both predictions count.
    assert TRACKS["obstacle"].min_gt_size == 10 and TRACKS["obstacle"].min_pred_size == 50
    prediction, labels = _size_filter_frame()
    frame = ComponentMetrics(0.0, track="obstacle").update_mask(prediction, labels)
    # In-distribution pixels of P_big: 625 - 144 - 81 = 400; the other object is the adjustment set.
    # sIoU(big) = 144 / (144 + 400), sIoU(small) = 81 / (81 + 400).
    assert sorted(frame.siou_gt.tolist()) == pytest.approx(sorted([144 / 544, 81 / 481]))
    # PPV(P_big) = 225 / 625, PPV(P_small) = 0.
    assert sorted(frame.ppv.tolist()) == pytest.approx([0.0, 225 / 625])


def _reference_frame(prediction: np.ndarray, labels: np.ndarray, min_gt: int, min_pred: int):
    """The paper's definitions with pixel sets and scipy labelling (independent of the matrix form)."""
    structure = np.ones((3, 3), dtype=int)
    gt, num_gt = ndimage.label(labels == 1, structure)
    pred, num_pred = ndimage.label(prediction & (labels != 255), structure)
    for index in range(1, num_pred + 1):
        if np.count_nonzero(pred == index) < min_pred:
            pred[pred == index] = 0
    roi = labels != 255
    for index in range(1, num_gt + 1):
        if np.count_nonzero(gt == index) < min_gt:
            roi &= gt != index
    siou_gt, ppv, siou_pred = [], [], []
    for index in range(1, num_gt + 1):
        k = (gt == index) & roi
        if not k.any():
            continue
        hits = np.unique(pred[k & (pred > 0)])
        k_hat = np.isin(pred, hits) & roi
        adjustment = (gt > 0) & (gt != index)
        siou_gt.append(np.count_nonzero(k & k_hat) / np.count_nonzero((k | k_hat) & ~adjustment))
    for index in range(1, num_pred + 1):
        k_hat = (pred == index) & roi
        if not k_hat.any():
            continue
        hits = np.unique(gt[k_hat & (gt > 0)])
        k = np.isin(gt, hits) & roi
        adjustment = (pred > 0) & (pred != index)
        ppv.append(np.count_nonzero(k_hat & (gt > 0)) / np.count_nonzero(k_hat))
        siou_pred.append(np.count_nonzero(k & k_hat) / np.count_nonzero((k | k_hat) & ~adjustment))
    return sorted(siou_gt), sorted(ppv), sorted(siou_pred)


@pytest.mark.parametrize("seed", range(4))
def test_random_frames_match_the_set_definitions(seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros((48, 64), dtype=np.uint8)
    prediction = np.zeros(labels.shape, dtype=bool)
    for _ in range(6):
        top, left, h, w = rng.integers(0, 40), rng.integers(0, 56), rng.integers(2, 12), rng.integers(2, 12)
        labels[top : top + h, left : left + w] = 1
    for _ in range(6):
        top, left, h, w = rng.integers(0, 40), rng.integers(0, 56), rng.integers(2, 14), rng.integers(2, 14)
        prediction[top : top + h, left : left + w] = True
    labels[rng.random(labels.shape) < 0.05] = 255
    for min_gt, min_pred in ((0, 0), (10, 20)):
        frame = frame_components(prediction, labels, min_gt_size=min_gt, min_pred_size=min_pred)
        siou_gt, ppv, siou_pred = _reference_frame(prediction, labels, min_gt, min_pred)
        assert sorted(frame.siou_gt.tolist()) == pytest.approx(siou_gt)
        assert sorted(frame.ppv.tolist()) == pytest.approx(ppv)
        assert sorted(frame.siou_pred.tolist()) == pytest.approx(siou_pred)


def test_frames_pool_and_merge():
    prediction, labels = _fixture()
    big_prediction, big_labels = _size_filter_frame()

    def make() -> ComponentMetrics:
        return ComponentMetrics(0.5, min_gt_size=0, min_pred_size=0)

    pooled, first, second = make(), make(), make()
    for metrics, frames in ((pooled, [0, 1]), (first, [0]), (second, [1])):
        for index in frames:
            metrics.update_mask(*[(prediction, labels), (big_prediction, big_labels)][index])
    merged = first.merge(second).summary()
    assert merged == pooled.summary()
    # Without size filters: 3 + 2 objects, 3 + 2 predictions; TP at tau .25: 3 (first frame) + 1
    # (sIoU 81/481 = .168 < .25 < 144/544 = .265), FP at .25: 1 (P3) + 1 (P_small, PPV 0; P_big .36).
    assert (merged["num_gt_components"], merged["num_pred_components"]) == (5, 5)
    assert (merged["tp"][0], merged["fn"][0], merged["fp"][0]) == (4, 1, 2)
    assert merged["f1"]["0.25"] == pytest.approx(8 / (8 + 1 + 2))
    with pytest.raises(ValueError, match="different settings"):
        first.merge(ComponentMetrics(0.4, min_gt_size=0, min_pred_size=0))


def test_component_metrics_reject_bad_input():
    labels = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        frame_components(np.zeros((4, 5), bool), labels)
    with pytest.raises(ValueError, match="0, 1 or 255"):
        frame_components(np.zeros((4, 4), bool), labels + 3)
    with pytest.raises(ValueError, match="track"):
        ComponentMetrics(0.5, track="lane")
    assert np.isnan(ComponentMetrics(0.5).summary()["f1_mean"])  # no object and no prediction: F1 undefined
