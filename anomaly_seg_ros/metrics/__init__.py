"""Evaluation metrics: closed-set segmentation (IoU, PAvPU), pixel-level anomaly detection (exact,
streaming and SegmentMeIfYouCan-binned) and SMIYC component-level metrics."""

from anomaly_seg_ros.metrics.components import (
    SIOU_THRESHOLDS,
    TRACKS,
    ComponentMetrics,
    ComponentTrack,
    FrameComponents,
    frame_components,
)
from anomaly_seg_ros.metrics.ood import (
    StreamingOODMetrics,
    auroc,
    average_precision,
    fpr_at_tpr,
    ood_summary,
    precision_recall_curve,
    roc_curve,
    valid_pixels,
)
from anomaly_seg_ros.metrics.pavpu import PAvPU, pavpu
from anomaly_seg_ros.metrics.segmentation import ConfusionMatrix
from anomaly_seg_ros.metrics.smiyc import (
    SMIYCPixelMetrics,
    smiyc_curve_metrics,
    smiyc_frame_bins,
    smiyc_unbinned_metrics,
)

__all__ = [
    "SIOU_THRESHOLDS",
    "TRACKS",
    "ComponentMetrics",
    "ComponentTrack",
    "ConfusionMatrix",
    "FrameComponents",
    "PAvPU",
    "SMIYCPixelMetrics",
    "StreamingOODMetrics",
    "auroc",
    "average_precision",
    "fpr_at_tpr",
    "frame_components",
    "ood_summary",
    "pavpu",
    "precision_recall_curve",
    "roc_curve",
    "smiyc_curve_metrics",
    "smiyc_frame_bins",
    "smiyc_unbinned_metrics",
    "valid_pixels",
]
