"""Pixel-level metrics exactly as the SegmentMeIfYouCan benchmark code computes them.

Reproduces ``road_anomaly_benchmark/metrics/pixel_classification.py`` and
``pixel_classification_curves.py`` of SegmentMeIfYouCan/road-anomaly-benchmark (Chan et al.,
"SegmentMeIfYouCan: A Benchmark for Anomaly Segmentation", NeurIPS 2021 Datasets and
Benchmarks, arXiv 2104.14812), so numbers can be compared with the leaderboard. The exact
metrics of :mod:`anomaly_seg_ros.metrics.ood` (== scikit-learn) remain the project's reference;
this module states precisely how the benchmark's numbers differ from them.

Per frame (``process_frame``), the ignore (255) pixels are dropped and the scores of anomaly
and in-distribution pixels are histogrammed with ``np.histogram`` over shared edges:

* ``"percentiles"`` (metric ``PixBinaryClass``, the one on the leaderboard, 768 bins): edges
  ``unique([0, 1] + quantiles(anomaly scores, min(B/2, P_f) points) + quantiles(in-distribution
  scores, min(B/2, N_f) points))``, so every frame has its own edges;
* ``"uniform"`` (``PixBinaryClass-uniThr``, 4096 bins): ``B`` equal bins over [0, 1]; scores
  outside [0, 1] fall in no bin and are therefore never counted as detected (they stay false
  negatives / true negatives at every threshold), as in the reference code.

Each bin becomes one threshold, its lower edge. Aggregation over frames: uniform bins are
summed bin by bin; percentile bins of all frames are concatenated and ordered by
``np.argsort(thresholds)[::-1]`` (equal thresholds of different frames stay separate points).
From the cumulative counts ``TP_k``, ``FP_k`` (thresholds decreasing, leading points without
any prediction dropped), with ``P``, ``N`` the totals (``curves_from_cmats``):

* ``TPR_k = TP_k / P``, ``FPR_k = FP_k / N``, ``Prec_k = TP_k / (TP_k + FP_k)``, ``R_k = TPR_k``
* ``AP = trapz(Prec, R) = sum_{k>=2} (R_k - R_{k-1}) (Prec_k + Prec_{k-1}) / 2`` (no point at
  recall 0),
* ``AUROC = trapz(TPR, FPR)`` (no point at the origin),
* ``FPR@95 = FPR_{k*}``, ``k* = searchsorted(TPR, 0.95)``: the first point with TPR >= 0.95
  (1.0 if never reached),
* ``best F1 = max_k 2 TP_k / (2 TP_k + FP_k + FN_k)`` and its threshold (first maximum), the
  threshold the component metrics use (``MetricSegment.get_thresh_p_from_curve``).

"Unbinned" below means the same formulas with one point per distinct score (ties grouped),
:func:`smiyc_unbinned_metrics`. Against the exact metrics on the same points
(``k = 1..K``, ``R_0 = 0``):

* FPR@95 is identical (same first point reaching the TPR);
* ``AUROC_exact - AUROC_smiyc = FPR_1 TPR_1 / 2``: the triangle from the origin to point 1;
* ``AP_exact - AP_smiyc = R_1 Prec_1 + 1/2 sum_{k>=2} (R_k - R_{k-1}) (Prec_k - Prec_{k-1})``
  (step-wise sum vs trapezoids; bounded by ``R_1 + 1/2 sum_k (R_k - R_{k-1}) |Prec_k - Prec_{k-1}|``).

Both gaps vanish as the pixels per threshold shrink relative to the dataset. The same
identities relate :class:`~anomaly_seg_ros.metrics.ood.StreamingOODMetrics` with
``score_range=(0, 1)``, ``num_bins=4096`` and ``buffer_size=0`` to the uniform variant, since
both bin identically (``floor(4096 s)``); test/test_smiyc_metrics.py checks them. The
percentile variant has no such a-priori bound: a bin of one frame can span scores of bins of
other frames, and its pixels are all ranked at its lower edge. It is compared with the exact
metrics empirically in the tests.

The reference pipeline stores each frame's scores as float16 before computing the metrics
(``process_frame``: "anomaly_p: HxW float16"); pass ``scores.astype(np.float16)`` for
leaderboard-identical numbers, the ties it creates change the curve slightly.

Memory: uniform keeps 2 x B counts; percentiles keep every frame's bins (<= B + 2 per frame,
24 bytes each), as the reference code does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anomaly_seg_ros.metrics.ood import ArrayLike, _exact_curve, valid_pixels

# The reference code's configurations (MetricPixelClassification.configs).
SMIYC_PERCENTILE_BINS = 768
SMIYC_UNIFORM_BINS = 4096
BIN_STRATEGIES = ("percentiles", "uniform")


@dataclass(frozen=True)
class FrameBins:
    """One frame's histogram, bins in DECREASING order of their lower edge ``thresholds``."""

    thresholds: np.ndarray
    tp_rel: np.ndarray
    fp_rel: np.ndarray
    num_pos: int
    num_neg: int


def smiyc_frame_bins(
    scores: np.ndarray, is_anomaly: np.ndarray, num_bins: int = SMIYC_PERCENTILE_BINS, strategy: str = "percentiles"
) -> FrameBins:
    """``binary_confusion_matrix`` of the reference code for the valid pixels of one frame.

    ``scores`` and ``is_anomaly`` are 1-D (ignore pixels already removed).
    """
    at_true = scores[is_anomaly]
    at_false = scores[~is_anomaly]
    if strategy == "uniform":
        bins: int | np.ndarray = num_bins
        value_range: tuple[float, float] | None = (0.0, 1.0)
    elif strategy == "percentiles":
        parts = [np.array([0.0, 1.0])]  # 0 and 1 are always edges
        for values in (at_true, at_false):
            if values.size:
                parts.append(np.quantile(values, np.linspace(0, 1, min(num_bins // 2, values.size))))
        bins = np.unique(np.concatenate(parts))
        value_range = None
    else:
        raise ValueError(f"strategy must be one of {BIN_STRATEGIES}, got {strategy!r}")
    tp_rel, _ = np.histogram(at_true, bins=bins, range=value_range)
    fp_rel, edges = np.histogram(at_false, bins=bins, range=value_range)
    return FrameBins(
        thresholds=edges[:-1][::-1].astype(np.float64),
        tp_rel=tp_rel[::-1].astype(np.int64),
        fp_rel=fp_rel[::-1].astype(np.int64),
        num_pos=int(at_true.size),
        num_neg=int(at_false.size),
    )


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    """``np.trapz(y, x)`` (removed from numpy 2): sum of (x_k - x_{k-1}) (y_k + y_{k-1}) / 2."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def smiyc_curve_metrics(
    tps: np.ndarray, fps: np.ndarray, thresholds: np.ndarray, num_pos: int, num_neg: int
) -> dict[str, float]:
    """``curves_from_cmats`` of the reference code; counts cumulative over decreasing thresholds.

    Returns ``ap``, ``auroc``, ``fpr_at_tpr`` (at 0.95), ``tpr95_threshold``, ``best_f1``,
    ``best_f1_threshold``, ``num_anomaly``, ``num_in_distribution``.
    """
    if num_pos == 0 or num_neg == 0:
        raise ValueError(f"SMIYC pixel metrics need anomaly and in-distribution pixels, got {num_pos} and {num_neg}")
    tps = np.asarray(tps, dtype=np.float64)
    fps = np.asarray(fps, dtype=np.float64)
    predicted = np.flatnonzero(tps + fps > 0.01)
    if predicted.size == 0:
        raise ValueError("no pixel is predicted anomalous at any threshold (all scores outside the bins?)")
    first = predicted[0]
    tps, fps, thresholds = tps[first:], fps[first:], np.asarray(thresholds, dtype=np.float64)[first:]
    tpr = tps / num_pos
    fpr = fps / num_neg
    precision = tps / (tps + fps)
    f1 = 2 * tps / (2 * tps + fps + (num_pos - tps))
    index95 = int(np.searchsorted(tpr, 0.95))
    if index95 < tpr.size:
        fpr95, threshold95 = float(fpr[index95]), float(thresholds[index95])
    else:
        fpr95, threshold95 = 1.0, 0.0  # the reference code's value when TPR 0.95 is never reached
    best = int(np.nanargmax(f1))
    return {
        "ap": _trapz(precision, tpr),
        "auroc": _trapz(tpr, fpr),
        "fpr_at_tpr": fpr95,
        "tpr95_threshold": threshold95,
        "best_f1": float(f1[best]),
        "best_f1_threshold": float(thresholds[best]),
        "num_anomaly": int(num_pos),
        "num_in_distribution": int(num_neg),
    }


def smiyc_unbinned_metrics(scores: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """The benchmark's formulas with one threshold per distinct score (no binning); pooled pixels."""
    values, positive = valid_pixels(scores, labels)
    curve = _exact_curve(values, positive)  # shares validation and tie grouping with ood.py
    return smiyc_curve_metrics(curve.tps, curve.fps, curve.thresholds, curve.num_positive, curve.num_negative)


@dataclass
class SMIYCPixelMetrics:
    """Frame-by-frame accumulator of the benchmark's binned pixel metrics.

    ``strategy="percentiles"`` with 768 bins is ``PixBinaryClass`` (the leaderboard numbers),
    ``strategy="uniform"`` with 4096 bins is ``PixBinaryClass-uniThr``. Call ``update`` once
    per frame: the percentile edges are per frame, so how pixels are grouped into calls
    changes the result, exactly as in the reference code.
    """

    num_bins: int = SMIYC_PERCENTILE_BINS
    strategy: str = "percentiles"
    _frames: list[FrameBins] = field(default_factory=list, repr=False)
    _uniform_tp: np.ndarray | None = field(default=None, repr=False)
    _uniform_fp: np.ndarray | None = field(default=None, repr=False)
    _uniform_thresholds: np.ndarray | None = field(default=None, repr=False)
    _num_pos: int = 0
    _num_neg: int = 0
    num_frames: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in BIN_STRATEGIES:
            raise ValueError(f"strategy must be one of {BIN_STRATEGIES}, got {self.strategy!r}")
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")

    def update(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Add one frame: HxW scores and 0/1/255 labels."""
        values, positive = valid_pixels(scores, labels)
        bins = smiyc_frame_bins(values, positive, self.num_bins, self.strategy)
        self._num_pos += bins.num_pos
        self._num_neg += bins.num_neg
        self.num_frames += 1
        if self.strategy == "uniform":
            if self._uniform_tp is None:
                self._uniform_tp = np.zeros(self.num_bins, dtype=np.int64)
                self._uniform_fp = np.zeros(self.num_bins, dtype=np.int64)
                self._uniform_thresholds = bins.thresholds
            self._uniform_tp += bins.tp_rel
            self._uniform_fp += bins.fp_rel
        else:
            self._frames.append(bins)

    def _cumulative(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.num_frames == 0:
            raise ValueError("no frames: update() was never called")
        if self.strategy == "uniform":
            return np.cumsum(self._uniform_tp), np.cumsum(self._uniform_fp), self._uniform_thresholds
        thresholds = np.concatenate([f.thresholds for f in self._frames])
        order = np.argsort(thresholds)[::-1]  # the reference code's order, ties included
        tp = np.concatenate([f.tp_rel for f in self._frames])[order].astype(np.float64)
        fp = np.concatenate([f.fp_rel for f in self._frames])[order].astype(np.float64)
        return np.cumsum(tp), np.cumsum(fp), thresholds[order]

    def summary(self) -> dict[str, float]:
        """``ap``, ``auroc``, ``fpr_at_tpr`` (TPR 0.95), thresholds at TPR 95 and at best F1, counts."""
        tps, fps, thresholds = self._cumulative()
        result = smiyc_curve_metrics(tps, fps, thresholds, self._num_pos, self._num_neg)
        result["num_frames"] = self.num_frames
        return result
