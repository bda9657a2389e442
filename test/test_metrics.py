"""Metrics against scikit-learn (the oracle, test-only) and hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from anomaly_seg_ros.metrics import (
    ConfusionMatrix,
    StreamingOODMetrics,
    auroc,
    average_precision,
    fpr_at_tpr,
    ood_summary,
    precision_recall_curve,
    roc_curve,
)
from anomaly_seg_ros.metrics.ood import valid_pixels

TOL = 1e-6


def _random_ood(seed: int, ties: str, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly scores shifted upwards for label 1, ~10 % ignore pixels, as (H, W) maps."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(np.uint8)
    scores = rng.normal(size=n) + 1.0 * labels
    if ties == "round1":
        scores = np.round(scores, 1)
    elif ties == "round2":
        scores = np.round(scores, 2)
    elif ties == "integer":
        scores = np.round(scores * 2).astype(np.int64)
    labels[rng.random(n) < 0.1] = 255
    return scores.reshape(100, -1), labels.reshape(100, -1)


def _sklearn_fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float) -> float:
    """Independent oracle: first point of sklearn's full ROC curve with TPR >= tpr."""
    fpr_curve, tpr_curve, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr_curve[np.flatnonzero(tpr_curve >= tpr)[0]])


# --- exact OOD metrics ---------------------------------------------------------------------


@pytest.mark.parametrize("ties", ["continuous", "round1", "round2", "integer"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_metrics_match_sklearn(seed: int, ties: str) -> None:
    scores, labels = _random_ood(seed, ties)
    keep = labels != 255
    y, s = labels[keep], scores[keep]
    assert np.unique(s).size < s.size or ties == "continuous"

    assert average_precision(scores, labels) == pytest.approx(skm.average_precision_score(y, s), abs=TOL)
    assert auroc(scores, labels) == pytest.approx(skm.roc_auc_score(y, s), abs=TOL)
    for tpr in (0.95, 0.5, 1.0):
        assert fpr_at_tpr(scores, labels, tpr) == pytest.approx(_sklearn_fpr_at_tpr(y, s, tpr), abs=TOL)

    fpr, tpr_, thresholds = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=TOL)
    np.testing.assert_allclose(tpr_, sk_tpr, atol=TOL)
    np.testing.assert_array_equal(thresholds, sk_thr)

    precision, recall, thresholds = precision_recall_curve(scores, labels)
    sk_p, sk_r, sk_thr = skm.precision_recall_curve(y, s)
    np.testing.assert_allclose(precision, sk_p, atol=TOL)
    np.testing.assert_allclose(recall, sk_r, atol=TOL)
    np.testing.assert_array_equal(thresholds, sk_thr)

    summary = ood_summary(scores, labels)
    assert summary["ap"] == average_precision(scores, labels)
    assert summary["auroc"] == auroc(scores, labels)
    assert summary["fpr_at_tpr"] == fpr_at_tpr(scores, labels)
    assert (summary["num_anomaly"], summary["num_in_distribution"]) == (
        int((y == 1).sum()),
        int((y == 0).sum()),
    )


def test_torch_inputs_match_numpy() -> None:
    scores, labels = _random_ood(3, "round2")
    scores = scores.astype(np.float32)
    t_scores, t_labels = torch.from_numpy(scores).view(2, 50, -1), torch.from_numpy(labels).view(2, 50, -1)
    assert average_precision(t_scores, t_labels) == average_precision(scores, labels)
    assert auroc(t_scores, t_labels) == auroc(scores, labels)
    assert fpr_at_tpr(t_scores, t_labels) == fpr_at_tpr(scores, labels)
    assert auroc(t_scores.half(), t_labels) == pytest.approx(auroc(scores.astype(np.float16), labels), abs=TOL)


def test_hand_worked_tiny_case() -> None:
    # score:  0.95  0.9  0.8  0.8  0.4  0.4  0.1
    # label:  255   1    1    0    1    0    0      (the 255 pixel is dropped)
    scores = np.array([0.95, 0.9, 0.8, 0.8, 0.4, 0.4, 0.1], dtype=np.float32)
    labels = np.array([255, 1, 1, 0, 1, 0, 0], dtype=np.uint8)
    # P = 3, N = 3. Distinct thresholds, high to low (the 0.8 and 0.4 ties are one step each):
    #   t = 0.9: TP 1, FP 0 -> precision 1,   recall 1/3, FPR 0
    #   t = 0.8: TP 2, FP 1 -> precision 2/3, recall 2/3, FPR 1/3
    #   t = 0.4: TP 3, FP 2 -> precision 3/5, recall 1,   FPR 2/3
    #   t = 0.1: TP 3, FP 3 -> precision 1/2, recall 1,   FPR 1
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 + 0 * 1/2 = 15/45 + 10/45 + 9/45 = 34/45
    assert average_precision(scores, labels) == pytest.approx(34 / 45, abs=1e-12)
    # AUROC, trapezoids over FPR steps of 1/3 from (0, 0):
    #   (0,0)->(0,1/3): 0;  (0,1/3)->(1/3,2/3): 1/3 * (1/3 + 2/3)/2 = 1/6
    #   (1/3,2/3)->(2/3,1): 1/3 * (2/3 + 1)/2 = 5/18;  (2/3,1)->(1,1): 1/3 * 1 = 1/3
    # total 3/18 + 5/18 + 6/18 = 7/9 (pairs: 0.9 beats 3 + 0.8 beats 2, ties 1 + 0.4 beats 1,
    # ties 1 -> (3 + 2.5 + 1.5) / 9).
    assert auroc(scores, labels) == pytest.approx(7 / 9, abs=1e-12)
    # TPR >= 0.95 is first reached at t = 0.4 (TPR 1): FPR 2/3. TPR >= 0.5 at t = 0.8: FPR 1/3.
    assert fpr_at_tpr(scores, labels) == pytest.approx(2 / 3, abs=1e-12)
    assert fpr_at_tpr(scores, labels, tpr=0.5) == pytest.approx(1 / 3, abs=1e-12)
    assert fpr_at_tpr(scores, labels, tpr=1 / 3) == 0.0


def test_pooled_not_per_image_mean() -> None:
    # Image 1: anomaly 0.9 > normal 0.1 -> AP 1. Image 2: normal 0.5 > anomaly 0.2 -> AP 1/2.
    # Mean of per-image APs: 3/4. Pooled ranking 0.9(1) 0.5(0) 0.2(1) 0.1(0):
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    images = [
        (np.array([0.9, 0.1]), np.array([1, 0], dtype=np.uint8)),
        (np.array([0.2, 0.5]), np.array([1, 0], dtype=np.uint8)),
    ]
    per_image = [average_precision(s, y) for s, y in images]
    assert per_image == pytest.approx([1.0, 0.5])
    pooled = average_precision(np.stack([s for s, _ in images]), np.stack([y for _, y in images]))
    assert pooled == pytest.approx(5 / 6, abs=1e-12)
    streaming = StreamingOODMetrics()
    for s, y in images:
        streaming.update(s, y)
    assert streaming.average_precision() == pytest.approx(5 / 6, abs=1e-12)
    assert pooled != pytest.approx(np.mean(per_image))


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (np.zeros(4), np.zeros(5, dtype=np.uint8), "same shape"),
        (np.zeros(3), np.array([0, 0, 255], dtype=np.uint8), "no anomaly pixels"),
        (np.zeros(3), np.array([1, 255, 1], dtype=np.uint8), "no in-distribution pixels"),
        (np.zeros(2), np.array([255, 255], dtype=np.uint8), "no valid pixels"),
        (np.zeros(3), np.array([0, 1, 2], dtype=np.uint8), r"got \[2\]"),
        (np.array([0.0, np.nan, 1.0]), np.array([0, 1, 1], dtype=np.uint8), "NaN"),
    ],
)
def test_ood_errors(scores: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        average_precision(scores, labels)


def test_ood_error_tpr_and_dtype() -> None:
    scores, labels = np.array([0.1, 0.9]), np.array([0, 1], dtype=np.uint8)
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(scores, labels, tpr=0.0)
    with pytest.raises(TypeError, match="labels"):
        auroc(scores, labels.astype(np.float32))
    # NaN on an ignored pixel is fine: the pixel is not evaluated.
    assert auroc(np.array([0.1, 0.9, np.nan]), np.array([0, 1, 255], dtype=np.uint8)) == 1.0


def test_valid_pixels_drops_ignore() -> None:
    scores, positive = valid_pixels(
        torch.tensor([[0.5, 0.2], [0.7, 0.1]]), torch.tensor([[1, 255], [0, 255]], dtype=torch.uint8)
    )
    np.testing.assert_array_equal(scores, np.array([0.5, 0.7], dtype=np.float32))
    np.testing.assert_array_equal(positive, [True, False])


# --- streaming OOD metrics -----------------------------------------------------------------


def _gaussians(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.uint8)
    scores = (rng.normal(size=n) + 1.5 * labels).astype(np.float32)
    labels[rng.random(n) < 0.05] = 255
    return scores, labels


def _fill(metrics: StreamingOODMetrics, scores: np.ndarray, labels: np.ndarray, chunk: int) -> StreamingOODMetrics:
    for start in range(0, scores.size, chunk):
        metrics.update(scores[start : start + chunk], labels[start : start + chunk])
    return metrics


@pytest.mark.parametrize("score_range", [None, (-8.0, 8.0)])
def test_streaming_histogram_accuracy(score_range: tuple[float, float] | None) -> None:
    scores, labels = _gaussians(2_000_000)
    exact = ood_summary(scores, labels)
    streaming = _fill(
        StreamingOODMetrics(num_bins=2**16, score_range=score_range, buffer_size=100_000),
        scores,
        labels,
        chunk=250_000,
    )
    got = streaming.summary()
    assert not got["exact"]
    assert got["out_of_range"] == (0, 0)
    assert (got["num_anomaly"], got["num_in_distribution"]) == (exact["num_anomaly"], exact["num_in_distribution"])
    bounds = got["error_bounds"]
    assert abs(got["ap"] - exact["ap"]) < 1e-3
    assert abs(got["ap"] - exact["ap"]) <= bounds["ap"]
    assert abs(got["auroc"] - exact["auroc"]) < 1e-3
    assert abs(got["auroc"] - exact["auroc"]) <= bounds["auroc"] + 1e-12
    fpr_excess = got["fpr_at_tpr"] - exact["fpr_at_tpr"]
    assert 0.0 <= fpr_excess < 2e-3
    assert fpr_excess <= bounds["fpr"] + 1e-12


def test_streaming_out_of_range_is_counted_and_bounded() -> None:
    scores, labels = _gaussians(200_000, seed=1)
    exact = ood_summary(scores, labels)
    streaming = _fill(StreamingOODMetrics(num_bins=4096, score_range=(-1.0, 1.0)), scores, labels, chunk=50_000)
    keep = labels != 255
    assert streaming.out_of_range == (int((scores[keep] < -1.0).sum()), int((scores[keep] > 1.0).sum()))
    got, bounds = streaming.summary(), streaming.error_bounds()
    assert abs(got["ap"] - exact["ap"]) <= bounds["ap"]
    assert abs(got["auroc"] - exact["auroc"]) <= bounds["auroc"] + 1e-12
    assert 0.0 <= got["fpr_at_tpr"] - exact["fpr_at_tpr"] <= bounds["fpr"] + 1e-12
    assert streaming.roc_curve()[2][-1] == -np.inf  # the bottom bin also holds scores < -1


def test_streaming_exact_while_buffered() -> None:
    scores, labels = _random_ood(4, "round2")
    streaming = _fill(StreamingOODMetrics(), scores.ravel(), labels.ravel(), chunk=3_000)
    assert streaming.exact and streaming.score_range is None
    assert streaming.average_precision() == average_precision(scores, labels)
    assert streaming.auroc() == auroc(scores, labels)
    assert streaming.fpr_at_tpr(0.95) == fpr_at_tpr(scores, labels)
    for got, want in zip(streaming.roc_curve(), roc_curve(scores, labels), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(streaming.pr_curve(), precision_recall_curve(scores, labels), strict=True):
        np.testing.assert_array_equal(got, want)
    assert streaming.error_bounds() == {"ap": 0.0, "auroc": 0.0, "fpr": 0.0}


def test_streaming_bins_on_integer_scores_equal_exact() -> None:
    # One bin per integer value: the bins are exactly the tied groups, so nothing is lost.
    rng = np.random.default_rng(5)
    labels = (rng.random(50_000) < 0.3).astype(np.uint8)
    scores = rng.integers(0, 10, size=50_000) + 2 * labels
    streaming = StreamingOODMetrics(num_bins=12, score_range=(0, 12))
    streaming.update(torch.from_numpy(scores), torch.from_numpy(labels))
    assert not streaming.exact
    assert streaming.average_precision() == pytest.approx(average_precision(scores, labels), abs=1e-12)
    assert streaming.auroc() == pytest.approx(auroc(scores, labels), abs=1e-12)
    assert streaming.fpr_at_tpr() == pytest.approx(fpr_at_tpr(scores, labels), abs=1e-12)


def test_streaming_range_learnt_after_buffer_overflow() -> None:
    scores, labels = _gaussians(30_000, seed=2)
    streaming = _fill(StreamingOODMetrics(buffer_size=10_000, margin=0.1), scores, labels, 7_000)
    lo, hi = streaming.score_range
    seen = scores[:14_000][labels[:14_000] != 255]  # the two chunks that overflowed the buffer
    span = float(seen.max()) - float(seen.min())
    assert lo == pytest.approx(float(seen.min()) - 0.1 * span)
    assert hi == pytest.approx(float(seen.max()) + 0.1 * span)
    keep = labels != 255
    assert sum(streaming.out_of_range) == int(((scores[keep] < lo) | (scores[keep] > hi)).sum())


def test_streaming_merge_equals_single_accumulator() -> None:
    scores, labels = _gaussians(100_000, seed=3)
    half = scores.size // 2

    # Histograms over the same explicit range add up bin by bin: identical results.
    single = _fill(StreamingOODMetrics(num_bins=1024, score_range=(-6, 8)), scores, labels, 10_000)
    a = _fill(StreamingOODMetrics(num_bins=1024, score_range=(-6, 8)), scores[:half], labels[:half], 10_000)
    b = _fill(StreamingOODMetrics(num_bins=1024, score_range=(-6, 8)), scores[half:], labels[half:], 10_000)
    assert a.merge(b).summary() == single.summary()

    # Buffered + buffered stays exact.
    a, b = StreamingOODMetrics(), StreamingOODMetrics()
    a.update(scores[:half], labels[:half])
    b.update(scores[half:], labels[half:])
    assert a.merge(b).exact
    assert a.average_precision() == average_precision(scores, labels)

    # Buffered + histogram: the buffered pixels are binned into the other's range.
    a = StreamingOODMetrics(num_bins=1024)
    a.update(scores[:half], labels[:half])
    b = _fill(StreamingOODMetrics(num_bins=1024, score_range=(-6, 8)), scores[half:], labels[half:], 10_000)
    assert a.merge(b).summary() == single.summary()


def test_streaming_errors() -> None:
    with pytest.raises(ValueError, match="never called"):
        StreamingOODMetrics().auroc()
    with pytest.raises(ValueError, match="score_range"):
        StreamingOODMetrics(score_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="no anomaly"):
        streaming = StreamingOODMetrics(score_range=(0, 1))
        streaming.update(np.array([0.2, 0.4]), np.array([0, 0], dtype=np.uint8))
        streaming.average_precision()
    with pytest.raises(ValueError, match="different score ranges"):
        StreamingOODMetrics(score_range=(0, 1)).merge(StreamingOODMetrics(score_range=(0, 2)))
    with pytest.raises(ValueError, match="num_bins"):
        StreamingOODMetrics(num_bins=8).merge(StreamingOODMetrics(num_bins=16))


# --- confusion matrix ----------------------------------------------------------------------


def test_confusion_matrix_hand_worked() -> None:
    target = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # (gt, pred) pairs: (0,0) (0,1) (1,1) (1,2) (2,2); the 255 pixel is not counted.
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    # IoU = TP / (TP + FP + FN): class 0: 1/(1+0+1) = 1/2; class 1: 1/(1+1+1) = 1/3;
    # class 2: 1/(1+1+0) = 1/2. mIoU = (1/2 + 1/3 + 1/2) / 3 = 4/9. Accuracy = 3/5.
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1 / 3, 1 / 2])
    assert cm.miou() == pytest.approx(4 / 9)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_confusion_matrix_absent_class_is_nan() -> None:
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    iou = cm.iou()
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert np.isnan(ConfusionMatrix(3).miou())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = 19
    target = rng.integers(0, num_classes, size=(2, 64, 64)).astype(np.uint8)
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, num_classes, size=target.shape)).astype(
        np.int64
    )
    target[rng.random(target.shape) < 0.1] = 255
    keep = target != 255
    want = skm.confusion_matrix(target[keep], pred[keep], labels=np.arange(num_classes))

    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    np.testing.assert_array_equal(cm.matrix, want)
    assert cm.matrix.dtype == np.int64
    tp = np.diag(want)
    np.testing.assert_allclose(cm.iou(), tp / (want.sum(0) + want.sum(1) - tp), atol=1e-12)
    assert cm.pixel_accuracy() == pytest.approx(tp.sum() / keep.sum())

    torch_cm = ConfusionMatrix(num_classes)
    torch_cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    np.testing.assert_array_equal(torch_cm.matrix, want)

    first, second = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    first.update(pred[0], target[0])
    second.update(pred[1], target[1])
    np.testing.assert_array_equal(first.merge(second).matrix, want)
    first.reset()
    assert first.matrix.sum() == 0


def test_confusion_matrix_errors() -> None:
    cm = ConfusionMatrix(5)
    with pytest.raises(ValueError, match=r"target contains values outside 0\.\.4.*\[7, 9\]"):
        cm.update(np.array([0, 1, 2, 3]), np.array([7, 255, 9, 7]))
    with pytest.raises(ValueError, match=r"target .*\[-1\]"):
        cm.update(torch.tensor([0, 1]), torch.tensor([-1, 255]))
    with pytest.raises(ValueError, match=r"pred .*\[5\]"):
        cm.update(np.array([5, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        cm.update(np.zeros((2, 2), dtype=np.int64), np.zeros(4, dtype=np.int64))
    with pytest.raises(TypeError, match="integer"):
        cm.update(np.zeros(4), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="num_classes"):
        cm.merge(ConfusionMatrix(6))
    assert cm.matrix.sum() == 0  # failed updates leave the counts untouched
