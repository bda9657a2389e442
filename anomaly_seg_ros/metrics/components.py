"""Component-level anomaly metrics of SegmentMeIfYouCan: sIoU, PPV and component F1.

Definitions (Chan et al., "SegmentMeIfYouCan", arXiv 2104.14812, Sec. 4), as computed by the
benchmark code (SegmentMeIfYouCan/road-anomaly-benchmark,
``road_anomaly_benchmark/metrics/instance_segmentation.py``: ``default_instancer`` and
``segment_metrics``):

* Prediction: pixels with ``score > threshold`` (strict), void (255) pixels removed. The
  threshold is the one of best pixel F1 of the ``PixBinaryClass`` curve
  (:class:`~anomaly_seg_ros.metrics.smiyc.SMIYCPixelMetrics` ``summary()["best_f1_threshold"]``).
* Components ``K`` (ground-truth anomalies, label 1) and ``K_hat`` (prediction) are 8-connected
  (``cv2.connectedComponentsWithStats(connectivity=8)``, the same as the reference code's
  ``scipy.ndimage.label`` with a 3x3 structure).
* Size filters of each track: predicted components smaller than ``min_pred_size`` pixels are
  dropped; ground-truth components smaller than ``min_gt_size`` pixels become void, so
  neither they nor predicted pixels on them count. Anomaly track (RoadAnomaly21, FS L&F):
  ``min_gt_size = 100``, ``min_pred_size = 500``; obstacle track (RoadObstacle21, LAF):
  ``10`` and ``50`` (``MetricSegment.configs``: ``thresh_instsize``, ``thresh_segsize``).
* All counts below are over the remaining region of interest (label != 255).
* ``sIoU(k) = |k ∩ K_hat(k)| / |(k ∪ K_hat(k)) \\ A(k)|`` for ``k`` in ``K``, with ``K_hat(k)``
  the union of the predicted components that intersect ``k`` and ``A(k)`` the pixels of the
  OTHER ground-truth components, so that one prediction covering two objects is not charged
  for the second one. With ``M[g, p]`` the pixels of ground-truth component ``g`` (0 =
  in-distribution) in predicted component ``p`` (0 = none) this is
  ``sum_{p>0} M[k, p] / (|k| + sum_{p>0, M[k,p]>0} M[0, p])``.
* ``PPV(k_hat) = |k_hat ∩ K(k_hat)| / |k_hat|``: the fraction of a predicted component that is
  anomaly. The reference code also reports the symmetric ``sIoU_pred`` (same formula with the
  roles swapped), kept here as ``siou_pred``.
* For ``tau`` in ``0.25, 0.30, ..., 0.75``: ``TP = #{k: sIoU(k) >= tau}``, ``FN = #{k: sIoU(k) < tau}``,
  ``FP = #{k_hat: PPV(k_hat) < tau}`` summed over frames, ``F1(tau) = 2 TP / (2 TP + FN + FP)``;
  ``F1_mean`` is their mean. ``sIoU`` and ``PPV`` are means over all components of all frames.

Deviation: the reference code also turns the BACKGROUND (label-0 "component" of the
ground-truth labelling, i.e. everything that is not anomaly) into void when it has fewer than
``min_gt_size`` pixels, which only happens on tiny images; this module does not.

Memory is bounded: only running counts (per ``tau``) and sums are kept per accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anomaly_seg_ros.common.labels import ANOMALY, IGNORE_INDEX, IN_DISTRIBUTION
from anomaly_seg_ros.metrics.ood import ArrayLike, _to_numpy

SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11, endpoint=True)  # the reference code's thresh_sIoU


@dataclass(frozen=True)
class ComponentTrack:
    """Size filters of a SMIYC track, in pixels (components smaller than these are dropped)."""

    min_gt_size: int
    min_pred_size: int


TRACKS: dict[str, ComponentTrack] = {
    "anomaly": ComponentTrack(min_gt_size=100, min_pred_size=500),
    "obstacle": ComponentTrack(min_gt_size=10, min_pred_size=50),
}


@dataclass(frozen=True)
class FrameComponents:
    """Per-component results of one frame (arrays indexed by component)."""

    siou_gt: np.ndarray
    siou_pred: np.ndarray
    ppv: np.ndarray
    size_gt: np.ndarray
    size_pred: np.ndarray


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels (0 = background) and each label's pixel count."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64)


def _check_labels(labels: np.ndarray) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers 0/1/{IGNORE_INDEX}, got dtype {labels.dtype}")
    bad = (labels != IN_DISTRIBUTION) & (labels != ANOMALY) & (labels != IGNORE_INDEX)
    if bad.any():
        raise ValueError(
            f"labels must be {IN_DISTRIBUTION}, {ANOMALY} or {IGNORE_INDEX}, got {np.unique(labels[bad])[:10].tolist()}"
        )


def frame_components(
    prediction: ArrayLike, labels: ArrayLike, *, min_gt_size: int = 0, min_pred_size: int = 0
) -> FrameComponents:
    """sIoU of each ground-truth component and sIoU / PPV of each predicted one, for one frame.

    ``prediction`` is an HxW boolean anomaly mask, ``labels`` HxW 0/1/255; see the module doc.
    """
    prediction = _to_numpy(prediction)
    labels = _to_numpy(labels)
    if prediction.ndim != 2 or prediction.shape != labels.shape:
        raise ValueError(
            f"prediction and labels must be HxW maps of the same shape, got {prediction.shape} and {labels.shape}"
        )
    _check_labels(labels)
    void = labels == IGNORE_INDEX
    gt_labels, gt_sizes = _components(labels == ANOMALY)
    pred_labels, pred_sizes = _components(prediction.astype(bool) & ~void)
    small_pred = pred_sizes < min_pred_size
    small_pred[0] = True  # label 0 is "no prediction" whatever its size
    pred_labels = np.where(small_pred[pred_labels], 0, pred_labels)
    small_gt = gt_sizes < min_gt_size
    small_gt[0] = False  # see the module doc: the background is never made void here
    roi = ~void & ~small_gt[gt_labels]

    num_gt, num_pred = gt_sizes.size, pred_sizes.size
    joint = np.bincount(
        gt_labels[roi].astype(np.int64) * num_pred + pred_labels[roi], minlength=num_gt * num_pred
    ).reshape(num_gt, num_pred)
    gt_size = joint.sum(axis=1)
    pred_size = joint.sum(axis=0)
    gt_ids = np.flatnonzero(gt_size[1:] > 0) + 1  # components left in the region of interest
    pred_ids = np.flatnonzero(pred_size[1:] > 0) + 1
    overlap = joint[np.ix_(gt_ids, pred_ids)]  # anomaly component x predicted component
    touches = overlap > 0
    # Union minus A(k) reduces to |k| plus the in-distribution pixels of the touching predictions.
    siou_gt = overlap.sum(axis=1) / (gt_size[gt_ids] + touches @ joint[0, pred_ids])
    intersection_pred = overlap.sum(axis=0)
    siou_pred = intersection_pred / (pred_size[pred_ids] + touches.T @ joint[gt_ids, 0])
    ppv = intersection_pred / pred_size[pred_ids]
    return FrameComponents(
        siou_gt=siou_gt.astype(np.float64),
        siou_pred=siou_pred.astype(np.float64),
        ppv=ppv.astype(np.float64),
        size_gt=gt_size[gt_ids],
        size_pred=pred_size[pred_ids],
    )


class ComponentMetrics:
    """sIoU / PPV / F1 over many frames with bounded memory (running counts and sums).

    ``ComponentMetrics(threshold, track="anomaly")`` uses the anomaly track's size filters;
    explicit ``min_gt_size`` / ``min_pred_size`` override the track's.
    """

    def __init__(
        self,
        threshold: float,
        track: str = "anomaly",
        *,
        min_gt_size: int | None = None,
        min_pred_size: int | None = None,
        siou_thresholds: np.ndarray = SIOU_THRESHOLDS,
    ) -> None:
        if track not in TRACKS:
            raise ValueError(f"track must be one of {sorted(TRACKS)}, got {track!r}")
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        defaults = TRACKS[track]
        self.threshold = float(threshold)
        self.track = track
        self.min_gt_size = defaults.min_gt_size if min_gt_size is None else int(min_gt_size)
        self.min_pred_size = defaults.min_pred_size if min_pred_size is None else int(min_pred_size)
        self.siou_thresholds = np.asarray(siou_thresholds, dtype=np.float64)
        self.tp = np.zeros(self.siou_thresholds.size, dtype=np.int64)
        self.fn = np.zeros_like(self.tp)
        self.fp = np.zeros_like(self.tp)
        self.num_gt = 0
        self.num_pred = 0
        self.num_frames = 0
        self._sum_siou_gt = 0.0
        self._sum_siou_pred = 0.0
        self._sum_ppv = 0.0

    def update(self, scores: ArrayLike, labels: ArrayLike) -> FrameComponents:
        """Add one frame of HxW anomaly scores (thresholded with ``>``); returns its components."""
        scores = _to_numpy(scores)
        if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
            raise ValueError("scores contain NaN")
        return self.update_mask(scores > self.threshold, labels)

    def update_mask(self, prediction: ArrayLike, labels: ArrayLike) -> FrameComponents:
        """Add one frame given as a boolean anomaly mask."""
        frame = frame_components(prediction, labels, min_gt_size=self.min_gt_size, min_pred_size=self.min_pred_size)
        tau = self.siou_thresholds[:, None]
        self.tp += np.count_nonzero(frame.siou_gt[None, :] >= tau, axis=1)
        self.fn += np.count_nonzero(frame.siou_gt[None, :] < tau, axis=1)
        self.fp += np.count_nonzero(frame.ppv[None, :] < tau, axis=1)
        self.num_gt += frame.siou_gt.size
        self.num_pred += frame.ppv.size
        self.num_frames += 1
        self._sum_siou_gt += float(frame.siou_gt.sum())
        self._sum_siou_pred += float(frame.siou_pred.sum())
        self._sum_ppv += float(frame.ppv.sum())
        return frame

    def merge(self, other: ComponentMetrics) -> ComponentMetrics:
        """Add another accumulator's counts (same threshold, sizes and tau values); returns ``self``."""
        mine = (self.threshold, self.min_gt_size, self.min_pred_size)
        theirs = (other.threshold, other.min_gt_size, other.min_pred_size)
        if mine != theirs or not np.array_equal(self.siou_thresholds, other.siou_thresholds):
            raise ValueError(f"cannot merge component metrics with different settings {mine} and {theirs}")
        self.tp += other.tp
        self.fn += other.fn
        self.fp += other.fp
        self.num_gt += other.num_gt
        self.num_pred += other.num_pred
        self.num_frames += other.num_frames
        self._sum_siou_gt += other._sum_siou_gt
        self._sum_siou_pred += other._sum_siou_pred
        self._sum_ppv += other._sum_ppv
        return self

    def f1(self) -> np.ndarray:
        """F1 per tau, ``2 TP / (2 TP + FN + FP)``; NaN where there is neither object nor prediction."""
        denominator = 2 * self.tp + self.fn + self.fp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denominator > 0, 2 * self.tp / denominator, np.nan)

    def summary(self) -> dict[str, object]:
        """Means of sIoU (ground truth), PPV and sIoU (prediction), F1 per tau and its mean, counts."""
        f1 = self.f1()
        nan = float("nan")
        return {
            "siou_gt": self._sum_siou_gt / self.num_gt if self.num_gt else nan,
            "ppv": self._sum_ppv / self.num_pred if self.num_pred else nan,
            "siou_pred": self._sum_siou_pred / self.num_pred if self.num_pred else nan,
            "f1_mean": float(np.mean(f1)),
            "f1": {f"{tau:.2f}": float(value) for tau, value in zip(self.siou_thresholds, f1, strict=True)},
            "tp": self.tp.tolist(),
            "fn": self.fn.tolist(),
            "fp": self.fp.tolist(),
            "num_gt_components": self.num_gt,
            "num_pred_components": self.num_pred,
            "num_frames": self.num_frames,
            "threshold": self.threshold,
            "min_gt_size": self.min_gt_size,
            "min_pred_size": self.min_pred_size,
        }
