"""Colour views for RViz and reports: Cityscapes-palette labels and an anomaly heatmap overlay."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anomaly_seg_ros.common.labels import colorize
from anomaly_seg_ros.core.alerts import Alert

__all__ = ["colorize", "heatmap", "overlay"]

ALERT_COLOUR = (0, 255, 0)


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
) -> np.ndarray:
    """Frame blended with the heatmap, alert boxes drawn with their track ids."""
    view = cv2.addWeighted(frame, 1.0 - alpha, heatmap(anomaly, value_range), alpha, 0.0)
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
