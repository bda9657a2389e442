"""Colour views for RViz and reports: Cityscapes-palette labels and an anomaly heatmap overlay."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anomaly_seg_ros.common.labels import colorize
from anomaly_seg_ros.core.alerts import Alert

__all__ = ["colorize", "colour_bar", "heatmap", "overlay", "report_overlay"]

ALERT_COLOUR = (0, 255, 0)
FAR_FIELD_COLOUR = (190, 190, 190)


def heatmap(anomaly: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """HxW scores -> HxWx3 uint8 RGB (inferno colour map), clipped to ``value_range``."""
    low, high = value_range
    scaled = (anomaly.astype(np.float32) - low) * (255.0 / (high - low))
    levels = np.clip(scaled, 0.0, 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def overlay(
    frame: np.ndarray,
    anomaly: np.ndarray,
    value_range: tuple[float, float],
    *,
    alpha: float = 0.5,
    alerts: Sequence[Alert] = (),
    far_field: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Frame blended with the heatmap, alert boxes drawn with their track ids; ``far_field``
    (top, bottom, left, right; end exclusive) outlined in grey, one pixel wide, under the alerts."""
    view = cv2.addWeighted(frame, 1.0 - alpha, heatmap(anomaly, value_range), alpha, 0.0)
    if far_field is not None:
        top, bottom, left, right = far_field
        cv2.rectangle(view, (left, top), (right - 1, bottom - 1), FAR_FIELD_COLOUR, 1)
    thickness = max(1, round(min(frame.shape[:2]) / 256))
    for alert in alerts:
        x, y, w, h = alert.component.bbox
        cv2.rectangle(view, (x, y), (x + w - 1, y + h - 1), ALERT_COLOUR, thickness)
        cv2.putText(
            view,
            f"#{alert.track_id}",
            (x, max(0, y - 3 * thickness)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            ALERT_COLOUR,
            thickness,
            cv2.LINE_AA,
        )
    return view


GT_OUTLINE_COLOUR = (0, 255, 255)
THRESHOLD_COLOUR = (255, 255, 255)


def colour_bar(width: int, value_range: tuple[float, float], threshold: float | None = None) -> np.ndarray:
    """A horizontal legend of :func:`heatmap` (HxWx3 uint8): the colours from low to high, the
    range's ends written at its sides, and the alert threshold marked with a white tick."""
    low, high = value_range
    height = 30
    bar = np.zeros((height, width, 3), np.uint8)
    margin = min(60, width // 5)  # room for the range's end labels; narrow images get a narrow margin
    left, right = margin, width - margin
    ramp = np.linspace(low, high, max(right - left, 2), dtype=np.float32)[None]
    bar[4:18, left:right] = heatmap(np.repeat(ramp, 14, axis=0), value_range)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    cv2.putText(bar, f"{low:.3g}", (2, 16), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(bar, f"{high:.3g}", (right + 4, 16), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    if threshold is not None and high > low:
        x = left + int(round((min(max(threshold, low), high) - low) / (high - low) * (right - left - 1)))
        cv2.line(bar, (x, 1), (x, 20), THRESHOLD_COLOUR, 2)
        label = f"threshold {threshold:.3g}"
        cv2.putText(bar, label, (min(max(x - 40, 0), width - 110), 29), font, scale, THRESHOLD_COLOUR, 1, cv2.LINE_AA)
    return bar


def report_overlay(
    frame: np.ndarray,
    anomaly: np.ndarray,
    value_range: tuple[float, float],
    *,
    threshold: float | None = None,
    alerts: Sequence[Alert] = (),
    ground_truth: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """:func:`overlay` for reports: the ground-truth anomaly outline (cyan, where ``ground_truth``
    (0/1/255) is given) and a colour bar with the threshold under the image."""
    view = overlay(frame, anomaly, value_range, alpha=alpha, alerts=alerts)
    if ground_truth is not None:
        contours, _ = cv2.findContours((ground_truth == 1).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(view, contours, -1, GT_OUTLINE_COLOUR, max(1, round(min(frame.shape[:2]) / 256)))
    return np.concatenate([view, colour_bar(view.shape[1], value_range, threshold)], axis=0)
