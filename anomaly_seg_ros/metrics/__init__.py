"""Evaluation metrics: closed-set segmentation (IoU) and pixel-level anomaly detection."""

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
from anomaly_seg_ros.metrics.segmentation import ConfusionMatrix

__all__ = [
    "ConfusionMatrix",
    "StreamingOODMetrics",
    "auroc",
    "average_precision",
    "fpr_at_tpr",
    "ood_summary",
    "precision_recall_curve",
    "roc_curve",
    "valid_pixels",
]
