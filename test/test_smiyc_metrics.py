"""SegmentMeIfYouCan pixel metrics: the benchmark's formulas, binned and unbinned, against our
exact metrics, scikit-learn and the streaming histogram, with the gaps the module doc states."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from anomaly_seg_ros.metrics import (
    SMIYCPixelMetrics,
    StreamingOODMetrics,
    ood_summary,
    smiyc_frame_bins,
    smiyc_unbinned_metrics,
)


def _frames(seed: int, count: int = 4, shape: tuple[int, int] = (48, 64), decimals: int | None = None):
    """Frames of overlapping score distributions in [0, 1] with an ignore border, different per frame."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        labels = (rng.random(shape) < 0.1 + 0.05 * index).astype(np.uint8)
        labels[:, :3] = 255
        logits = rng.normal(0.0, 1.0, shape) + 1.5 * labels + 0.3 * index
        scores = 1.0 / (1.0 + np.exp(-logits))
        if decimals is not None:
            scores = np.round(scores, decimals)  # many ties
        frames.append((scores, labels))
    return frames


def _pooled(frames):
    scores = np.concatenate([s.ravel() for s, _ in frames])
    labels = np.concatenate([lab.ravel() for _, lab in frames])
    keep = labels != 255
    return scores, labels, scores[keep], labels[keep].astype(bool)


def _first_fpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float = 0.95) -> float:
    return float(fpr[np.argmax(tpr >= target)])


def test_exact_metrics_equal_scikit_learn_with_ties_and_ignore():
    scores, labels, valid_scores, valid_positive = _pooled(_frames(0, decimals=2))
    ours = ood_summary(scores, labels)
    fpr, tpr, _ = roc_curve(valid_positive, valid_scores, drop_intermediate=False)
    assert ours["ap"] == pytest.approx(average_precision_score(valid_positive, valid_scores), abs=1e-12)
    assert ours["auroc"] == pytest.approx(roc_auc_score(valid_positive, valid_scores), abs=1e-12)
    assert ours["fpr_at_tpr"] == pytest.approx(_first_fpr_at(fpr, tpr), abs=1e-12)


def test_smiyc_formulas_on_a_hand_worked_example():
    # Descending: 0.9 anomaly, 0.8 ok, 0.7 anomaly, 0.6 ok, 0.5 ok; P = 2, N = 3.
    # Points (TP, FP): (1,0) (1,1) (2,1) (2,2) (2,3); recall .5 .5 1 1 1; precision 1 .5 2/3 .5 .4.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 0], dtype=np.uint8)
    result = smiyc_unbinned_metrics(scores, labels)
    # AP = trapz over recall: only .5 -> 1 moves recall: 0.5 * (1/2 + 2/3) / 2 = 7/24 (no point at recall 0).
    assert result["ap"] == pytest.approx(7 / 24)
    # The exact (step) AP is .5 * 1 + .5 * 2/3 = 20/24; gap R1 P1 + 1/2 sum dR dP = 1/2 + 1/2 * .5 * (2/3 - 1/2).
    assert ood_summary(scores, labels)["ap"] == pytest.approx(20 / 24)
    assert 20 / 24 - result["ap"] == pytest.approx(0.5 + 0.5 * 0.5 * (2 / 3 - 1 / 2))
    # AUROC = trapz(TPR, FPR) over FPR 0 1/3 1/3 2/3 1 with TPR .5 .5 1 1 1: 1/3 * .5 + 1/3 + 1/3 = 5/6;
    # point 1 is at FPR 0, so nothing is lost at the origin: 5 of 6 pairs ranked right.
    assert result["auroc"] == pytest.approx(5 / 6)
    # First TPR >= 0.95 is point 3 (TP 2, FP 1): FPR 1/3.
    assert result["fpr_at_tpr"] == pytest.approx(1 / 3)
    assert result["tpr95_threshold"] == pytest.approx(0.7)
    # F1 = 2TP / (2TP + FP + FN): 2/3, 1/2, 4/5, 2/3, 4/7 -> best 0.8 at threshold 0.7.
    assert result["best_f1"] == pytest.approx(0.8)
    assert result["best_f1_threshold"] == pytest.approx(0.7)


def test_smiyc_auroc_loses_the_origin_triangle_when_the_top_score_is_tied():
    # 0.9 is shared by an anomaly and an in-distribution pixel, so point 1 is (FPR .5, TPR .5).
    scores = np.array([0.9, 0.9, 0.5, 0.2])
    labels = np.array([1, 0, 1, 0], dtype=np.uint8)
    result = smiyc_unbinned_metrics(scores, labels)
    # Exact: pairs (.9 vs .9 tie: 1/2) + (.9 > .2) + (.5 < .9: 0) + (.5 > .2) = 2.5 / 4.
    assert ood_summary(scores, labels)["auroc"] == pytest.approx(0.625)
    # SMIYC starts at (.5, .5): the triangle .5 * .5 / 2 = 0.125 is missing.
    assert result["auroc"] == pytest.approx(0.625 - 0.125)
    # AP: points (R, Prec) (.5, .5) (1, 2/3) (1, .5): trapz .5 * (1/2 + 2/3) / 2 = 7/24;
    # exact .5 * .5 + .5 * 2/3 = 7/12; gap R1 P1 + 1/2 dR dP = 1/4 + 1/2 * .5 * 1/6.
    assert result["ap"] == pytest.approx(7 / 24)
    assert ood_summary(scores, labels)["ap"] - result["ap"] == pytest.approx(0.25 + 0.5 * 0.5 / 6)


def test_smiyc_unbinned_equals_trapezoids_over_scikit_learn_curves_and_the_stated_gaps():
    scores, labels, valid_scores, valid_positive = _pooled(_frames(1, decimals=3))
    result = smiyc_unbinned_metrics(scores, labels)
    exact = ood_summary(scores, labels)
    fpr, tpr, _ = roc_curve(valid_positive, valid_scores, drop_intermediate=False)
    precision, recall, _ = precision_recall_curve(valid_positive, valid_scores)
    precision, recall = precision[:-1][::-1], recall[:-1][::-1]  # decreasing thresholds, no (1, 0) end point
    assert result["auroc"] == pytest.approx(np.trapezoid(tpr[1:], fpr[1:]), abs=1e-12)
    assert result["ap"] == pytest.approx(np.trapezoid(precision, recall), abs=1e-12)
    assert result["fpr_at_tpr"] == exact["fpr_at_tpr"]
    # Stated gaps (module doc) evaluated on scikit-learn's points.
    assert exact["auroc"] - result["auroc"] == pytest.approx(fpr[1] * tpr[1] / 2, abs=1e-12)
    ap_gap = recall[0] * precision[0] + 0.5 * np.sum(np.diff(recall) * np.diff(precision))
    assert exact["ap"] - result["ap"] == pytest.approx(ap_gap, abs=1e-12)


def test_percentile_bins_of_two_frames_worked_by_hand():
    # num_bins 4 -> quantiles at min(2, n) points per class, i.e. each class's min and max.
    # Frame A: anomaly .6 .8, ok .1 .3 .7 -> edges 0 .1 .6 .7 .8 1; bins [.1,.6): 2 ok, [.6,.7): 1 anomaly,
    #   [.7,.8): 1 ok, [.8,1]: 1 anomaly.
    # Frame B: anomaly .5 (one value: one quantile point), ok .2 .9 -> edges 0 .2 .5 .9 1;
    #   [.2,.5): 1 ok, [.5,.9): 1 anomaly, [.9,1]: 1 ok.
    metrics = SMIYCPixelMetrics(num_bins=4, strategy="percentiles")
    metrics.update(np.array([[0.6, 0.8, 0.1, 0.3, 0.7]]), np.array([[1, 1, 0, 0, 0]], dtype=np.uint8))
    metrics.update(np.array([[0.5, 0.2, 0.9, 0.4]]), np.array([[1, 0, 0, 255]], dtype=np.uint8))
    bins_a = smiyc_frame_bins(np.array([0.6, 0.8, 0.1, 0.3, 0.7]), np.array([1, 1, 0, 0, 0], bool), 4)
    assert bins_a.thresholds.tolist() == pytest.approx([0.8, 0.7, 0.6, 0.1, 0.0])
    assert bins_a.tp_rel.tolist() == [1, 0, 1, 0, 0] and bins_a.fp_rel.tolist() == [0, 1, 0, 2, 0]
    # Merged by lower edge: .9 ok, .8 a, .7 ok, .6 a, .5 a, .2 ok, .1 ok ok, 0, 0 -> cumulative (TP, FP):
    # (0,1) (1,1) (1,2) (2,2) (3,2) (3,3) (3,5) (3,5) (3,5); P = 3, N = 5.
    result = metrics.summary()
    # Recall 0 1/3 1/3 2/3 1 ..., precision 0 1/2 1/3 1/2 3/5 ...:
    # AP = 1/3 (0 + 1/2)/2 + 1/3 (1/3 + 1/2)/2 + 1/3 (1/2 + 3/5)/2.
    assert result["ap"] == pytest.approx((0.5 / 2 + (1 / 3 + 0.5) / 2 + (0.5 + 0.6) / 2) / 3)
    # FPR .2 .2 .4 .4 .4 .6 1 with TPR 0 1/3 1/3 2/3 1 1 1: .2 * 1/3 + .2 * 1 + .4 * 1.
    assert result["auroc"] == pytest.approx(0.2 / 3 + 0.2 + 0.4)
    assert result["fpr_at_tpr"] == pytest.approx(0.4)  # first TPR >= .95 at (3, 2)
    # F1 at (3, 2): 6 / (6 + 2 + 0) = .75, the best; its threshold is frame B's bin edge .5.
    assert result["best_f1"] == pytest.approx(0.75)
    assert result["best_f1_threshold"] == pytest.approx(0.5)
    assert (result["num_anomaly"], result["num_in_distribution"], result["num_frames"]) == (3, 5, 2)


def test_uniform_bins_equal_the_unbinned_formulas_on_scores_floored_to_the_bin_edges():
    frames = _frames(2)
    metrics = SMIYCPixelMetrics(num_bins=4096, strategy="uniform")
    for scores, labels in frames:
        metrics.update(scores, labels)
    floored = [(np.minimum(np.floor(s * 4096), 4095) / 4096, lab) for s, lab in frames]
    scores, labels, _, _ = _pooled(floored)
    expected = smiyc_unbinned_metrics(scores, labels)
    result = metrics.summary()
    for key in ("ap", "auroc", "fpr_at_tpr", "best_f1", "best_f1_threshold", "tpr95_threshold"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key


def test_uniform_bins_never_detect_scores_above_one():
    # The reference histogram covers [0, 1] only: anomaly pixels scored 1.5 are never counted as
    # detected, TPR stays at 0.8 < 0.95 and the benchmark code reports FPR95 = 1.0.
    scores = np.array([1.5, 1.5, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.1, 0.2])
    labels = np.array([1] * 10 + [0, 0], dtype=np.uint8)
    metrics = SMIYCPixelMetrics(num_bins=16, strategy="uniform")
    metrics.update(scores, labels)
    assert metrics.summary()["fpr_at_tpr"] == 1.0
    assert ood_summary(scores, labels)["fpr_at_tpr"] == 0.0  # the exact metric ranks them first


def test_streaming_histogram_agrees_with_the_uniform_variant_within_the_stated_gaps():
    frames = _frames(3)
    smiyc = SMIYCPixelMetrics(num_bins=4096, strategy="uniform")
    streaming = StreamingOODMetrics(num_bins=4096, score_range=(0.0, 1.0), buffer_size=0)
    for scores, labels in frames:
        smiyc.update(scores, labels)
        streaming.update(scores, labels)
    ours, theirs = streaming.summary(), smiyc.summary()
    assert ours["fpr_at_tpr"] == theirs["fpr_at_tpr"]  # same bins, same first point reaching 0.95
    fpr, tpr, _ = streaming.roc_curve()
    assert ours["auroc"] - theirs["auroc"] == pytest.approx(fpr[1] * tpr[1] / 2, abs=1e-12)
    precision, recall, _ = streaming.pr_curve()
    precision, recall = precision[:-1][::-1], recall[:-1][::-1]
    gap = recall[0] * precision[0] + 0.5 * np.sum(np.diff(recall) * np.diff(precision))
    bound = recall[0] + 0.5 * np.sum(np.diff(recall) * np.abs(np.diff(precision)))
    assert ours["ap"] - theirs["ap"] == pytest.approx(gap, abs=1e-12)
    assert abs(ours["ap"] - theirs["ap"]) <= bound
    # Both stay near the exact metrics: the histogram within its error bounds, SMIYC within those plus the gap.
    exact = ood_summary(*_pooled(frames)[:2])
    bounds = ours["error_bounds"]
    assert abs(ours["ap"] - exact["ap"]) <= bounds["ap"]
    assert abs(theirs["ap"] - exact["ap"]) <= bounds["ap"] + bound
    assert abs(theirs["auroc"] - exact["auroc"]) <= bounds["auroc"] + fpr[1] * tpr[1] / 2
    assert 0.0 <= theirs["fpr_at_tpr"] - exact["fpr_at_tpr"] <= bounds["fpr"]


def test_percentile_variant_stays_close_to_the_exact_metrics():
    # No a-priori bound (module doc); measured on 6 frames of 96x128 with frame-dependent score shifts.
    frames = _frames(4, count=6, shape=(96, 128))
    metrics = SMIYCPixelMetrics()
    for scores, labels in frames:
        metrics.update(scores, labels)
    result = metrics.summary()
    exact = ood_summary(*_pooled(frames)[:2])
    assert abs(result["ap"] - exact["ap"]) < 2e-3
    assert abs(result["auroc"] - exact["auroc"]) < 1e-3
    assert abs(result["fpr_at_tpr"] - exact["fpr_at_tpr"]) < 2e-3


def test_smiyc_rejects_bad_input():
    with pytest.raises(ValueError, match="strategy"):
        SMIYCPixelMetrics(strategy="quantile")
    with pytest.raises(ValueError, match="update"):
        SMIYCPixelMetrics().summary()
    metrics = SMIYCPixelMetrics()
    metrics.update(np.array([0.1, 0.2]), np.array([0, 0], dtype=np.uint8))
    with pytest.raises(ValueError, match="anomaly and in-distribution"):
        metrics.summary()
    with pytest.raises(ValueError, match="labels must be"):
        metrics.update(np.array([0.1, 0.2]), np.array([0, 3], dtype=np.uint8))
