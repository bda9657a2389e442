"""Anomaly map -> obstacle alerts.

Pixels above the threshold, restricted to a region of interest, are split into 8-connected
components (OpenCV), filtered by area, and matched to tracks across frames by bounding-box
IoU. A track raises an alert only once it was seen in ``k`` of the last ``n`` frames, which
suppresses one-frame flicker without delaying a persistent obstacle by more than ``k - 1``
frames.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from anomaly_seg_ros.core.config import AlertConfig

BBox = tuple[int, int, int, int]  # x, y, width, height in pixels of the source frame


@dataclass(frozen=True)
class Component:
    """One connected region of above-threshold pixels in one frame."""

    bbox: BBox
    area_px: int
    max_score: float
    mean_score: float
    #: Lowest pixel (x, y) of the region: where the obstacle meets the ground.
    bottom_point: tuple[int, int]
    in_drivable_area: bool


@dataclass(frozen=True)
class Alert:
    """A confirmed obstacle track as seen in the current frame."""

    track_id: int
    component: Component
    frames_seen: int


def drivable_area(labels: np.ndarray, drivable_classes: tuple[int, ...]) -> np.ndarray:
    """Convex hull of the predicted drivable pixels (bool HxW).

    Obstacles on the road are, by definition, not predicted as road, so the raw road mask has
    holes exactly where they are; its convex hull covers them. Specks far smaller than the
    main road region are left out so a stray road pixel in the sky cannot inflate the hull.
    """
    mask = np.isin(labels, drivable_classes).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    region = np.zeros(labels.shape, dtype=np.uint8)
    if contours:
        areas = np.array([cv2.contourArea(contour) for contour in contours])
        keep = [contour for contour, area in zip(contours, areas, strict=True) if area >= 0.05 * areas.max()]
        hull = cv2.convexHull(np.concatenate(keep))
        cv2.fillConvexPoly(region, hull, 1)
        region |= mask
    return region.astype(bool)


@functools.lru_cache(maxsize=8)
def polygon_mask(polygon: tuple[tuple[float, float], ...], height: int, width: int) -> np.ndarray:
    """Static ROI polygon in normalised coordinates -> bool HxW mask (read-only).

    Cached: the polygon and the camera's frame size do not change from frame to frame, so
    the mask is drawn once rather than allocated and filled for every frame.
    """
    region = np.zeros((height, width), dtype=np.uint8)
    points = np.array(polygon, dtype=np.float64) * np.array([width - 1, height - 1])
    cv2.fillPoly(region, [np.round(points).astype(np.int32)], 1)
    mask = region.astype(bool)
    mask.setflags(write=False)
    return mask


def region_of_interest(labels: np.ndarray, config: AlertConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """(ROI mask or None for the whole image, drivable-area mask) for one frame."""
    drivable = drivable_area(labels, config.drivable_classes)
    height, width = labels.shape
    if config.roi == "none":
        return None, drivable
    if config.roi == "drivable":
        return drivable, drivable
    polygon = polygon_mask(config.roi_polygon, height, width)
    if config.roi == "polygon":
        return polygon, drivable
    return polygon & drivable, drivable


def find_components(
    anomaly: np.ndarray,
    threshold: float,
    *,
    roi: np.ndarray | None,
    drivable: np.ndarray,
    min_area_px: int,
) -> list[Component]:
    """8-connected regions of ``anomaly > threshold`` inside ``roi`` with at least ``min_area_px`` pixels."""
    mask = anomaly > threshold
    if roi is not None:
        mask &= roi
    count, component_ids, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    components = []
    # Area filtering on the stats table first: the per-component work below runs only for
    # the few regions that survive, never for every speck of noise.
    for index in np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area_px):
        if index == 0:  # background
            continue
        x, y, w, h, area = (int(v) for v in stats[index])
        window = component_ids[y : y + h, x : x + w] == index
        scores = anomaly[y : y + h, x : x + w][window]
        rows, cols = np.nonzero(window)
        lowest = int(np.argmax(rows))
        components.append(
            Component(
                bbox=(x, y, w, h),
                area_px=area,
                max_score=float(scores.max()),
                mean_score=float(scores.mean()),
                bottom_point=(x + int(cols[lowest]), y + int(rows[lowest])),
                in_drivable_area=bool(drivable[y : y + h, x : x + w][window].any()),
            )
        )
    return components


def bbox_iou(a: BBox, b: BBox) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter_w = min(ax + aw, bx + bw) - max(ax, bx)
    inter_h = min(ay + ah, by + bh) - max(ay, by)
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    intersection = inter_w * inter_h
    return intersection / float(aw * ah + bw * bh - intersection)


@dataclass
class _Track:
    track_id: int
    bbox: BBox
    history: deque[bool]
    frames_seen: int = 0


@dataclass
class AlertTracker:
    """Tracks components across frames and confirms them with a k-of-n persistence rule."""

    persistence_k: int = 3
    persistence_n: int = 5
    track_iou: float = 0.1
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    @classmethod
    def from_config(cls, config: AlertConfig) -> AlertTracker:
        return cls(config.persistence_k, config.persistence_n, config.track_iou)

    def configure(self, config: AlertConfig) -> None:
        """Apply new persistence settings at run time, keeping the tracks that exist."""
        self.persistence_k, self.persistence_n, self.track_iou = (
            config.persistence_k,
            config.persistence_n,
            config.track_iou,
        )
        for track in self._tracks:
            track.history = deque(track.history, maxlen=self.persistence_n)

    def reset(self) -> None:
        """Forget the tracks and number the next sequence's from 1 again: a replayed bag's alerts must not
        depend on which bags the same pipeline replayed before it."""
        self._tracks.clear()
        self._next_id = 1

    def update(self, components: list[Component]) -> list[Alert]:
        """Feed one frame's components; return the alerts (confirmed tracks seen in this frame)."""
        pairs = sorted(
            (
                (bbox_iou(track.bbox, component.bbox), t, c)
                for t, track in enumerate(self._tracks)
                for c, component in enumerate(components)
            ),
            reverse=True,
        )
        matched_tracks: dict[int, int] = {}
        matched_components: set[int] = set()
        for iou, t, c in pairs:
            if iou <= self.track_iou:
                break
            if t not in matched_tracks and c not in matched_components:
                matched_tracks[t] = c
                matched_components.add(c)

        seen: list[tuple[_Track, Component]] = []
        for t, track in enumerate(self._tracks):
            c = matched_tracks.get(t)
            track.history.append(c is not None)
            if c is not None:
                track.bbox = components[c].bbox
                track.frames_seen += 1
                seen.append((track, components[c]))
        for c, component in enumerate(components):
            if c not in matched_components:
                track = _Track(self._next_id, component.bbox, deque([True], maxlen=self.persistence_n), 1)
                self._next_id += 1
                self._tracks.append(track)
                seen.append((track, component))
        self._tracks = [track for track in self._tracks if any(track.history)]
        return [
            Alert(track.track_id, component, track.frames_seen)
            for track, component in seen
            if sum(track.history) >= self.persistence_k
        ]
