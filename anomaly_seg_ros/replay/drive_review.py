"""A per-obstacle review of one replayed drive under a strict detection rule, with thumbnails.

The replay report (:mod:`.runner`) counts an obstacle as detected when an alert box matches its
ground-truth box one-to-one with IoU >= 0.5 (``runner.match_rule``). This review, written for the
demo, uses a coverage rule instead (a second rule: unifying the two is open work) and adds thumbnails:

- **alerted**: an alert box overlaps the obstacle's ground-truth box *substantially*: the
  intersection covers at least ``cover_truth`` (default 50 %) of the ground-truth box and at
  least ``cover_alert`` (25 %) of the alert box (so a box four times the obstacle's size, or
  one clipping its corner, does not count);
- **in time**: the first such frame is at most ``max_delay_frames`` after the first frame in
  which the obstacle's ground-truth mask covers ``min_area_px`` pixels;
- **false alert track**: an alert track none of whose boxes intersects any ground-truth
  obstacle box in any frame. Tracks that touch an obstacle without ever meeting the strict
  rule are listed apart, as loose.

:class:`DriveRecorder` is the replay's ``on_frame`` hook: it keeps each frame's alert boxes,
a thumbnail of every alert track's first frame, and the full frames picked for overlays.
:func:`read_ground_truth` reads the bag's ground-truth masks; :func:`review_drive` matches them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomaly_seg_ros.core.alerts import BBox, bbox_iou
from anomaly_seg_ros.core.ground import GroundModel
from anomaly_seg_ros.core.perception import PerceptionResult
from anomaly_seg_ros.replay.bagio import iter_messages
from anomaly_seg_ros.ros.conversions import image_to_array

THUMBNAIL_SIZE = 160


@dataclass(frozen=True)
class DetectionRule:
    """The strict rule of the module docstring."""

    cover_truth: float = 0.5
    cover_alert: float = 0.25
    min_area_px: int = 100
    max_delay_frames: int = 10

    def describe(self) -> str:
        return (
            f"an alert box covering >= {100 * self.cover_truth:.0f} % of the obstacle's ground-truth box with "
            f">= {100 * self.cover_alert:.0f} % of the alert box on it; in time = within {self.max_delay_frames} "
            f"frames of the first frame where the ground-truth mask covers {self.min_area_px} px"
        )


def box_intersection(a: BBox, b: BBox) -> int:
    """Pixels shared by two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0)


def strict_hit(alert: BBox, truth: BBox, rule: DetectionRule) -> bool:
    """True when ``alert`` overlaps ``truth`` substantially (see :class:`DetectionRule`)."""
    shared = box_intersection(alert, truth)
    return (
        shared > 0
        and shared >= rule.cover_truth * truth[2] * truth[3]
        and shared >= rule.cover_alert * alert[2] * alert[3]
    )


@dataclass
class _FrameAlerts:
    boxes: list[tuple[int, BBox]] = field(default_factory=list)  # (track id, box)


class DriveRecorder:
    """``on_frame`` hook of :func:`~anomaly_seg_ros.replay.runner.replay_bag` (see the module docstring)."""

    def __init__(self, picks: Iterable[int] = ()) -> None:
        self.frames: dict[int, _FrameAlerts] = {}
        self.thumbnails: dict[int, np.ndarray] = {}
        self.first_frame: dict[int, int] = {}
        self.picks = set(picks)
        self.picked: dict[int, tuple[np.ndarray, PerceptionResult]] = {}

    def __call__(self, index: int, frame: np.ndarray, result: PerceptionResult) -> None:
        record = _FrameAlerts(
            [(alert.track_id, tuple(int(v) for v in alert.component.bbox)) for alert in result.alerts]
        )
        self.frames[index] = record
        for track_id, box in record.boxes:
            if track_id not in self.thumbnails:
                self.first_frame[track_id] = index
                self.thumbnails[track_id] = thumbnail(frame, box)
        if index in self.picks:
            self.picked[index] = (frame, result)


def thumbnail(frame: np.ndarray, box: BBox, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A square crop around ``box`` (three times its size, at least 64 px) with the box drawn, resized to ``size``."""
    x, y, w, h = box
    side = max(64, 3 * max(w, h))
    cx, cy = x + w // 2, y + h // 2
    height, width = frame.shape[:2]
    x0, y0 = (
        int(np.clip(cx - side // 2, 0, max(width - side, 0))),
        int(np.clip(cy - side // 2, 0, max(height - side, 0))),
    )
    crop = np.ascontiguousarray(frame[y0 : y0 + side, x0 : x0 + side]).copy()
    cv2.rectangle(crop, (x - x0, y - y0), (x - x0 + w - 1, y - y0 + h - 1), (0, 255, 0), max(1, side // 96))
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_NEAREST)


def read_ground_truth(bag: str | Path, topic: str) -> list[np.ndarray]:
    """The ground-truth masks (0/1/255) of ``topic`` in bag order: one per camera frame of a synthetic drive."""
    return [image_to_array(message.msg) for message in iter_messages(bag, [topic])]


@dataclass
class _Obstacle:
    track_id: int
    box: BBox
    first_seen: int
    first_large: int | None = None
    large_box: BBox | None = None
    first_hit: int | None = None
    hit_box: BBox | None = None


def _truth_components(mask: np.ndarray) -> list[tuple[BBox, int]]:
    count, _, stats, _ = cv2.connectedComponentsWithStats((mask == 1).astype(np.uint8), connectivity=8)
    return [(tuple(int(v) for v in stats[i, :4]), int(stats[i, 4])) for i in range(1, count)]


def _bottom_distance(ground: GroundModel | None, box: BBox | None) -> float | None:
    if ground is None or box is None:
        return None
    estimate = ground.project(box[0] + box[2] / 2.0, box[1] + box[3] - 1)
    return float(estimate.distance_m[0]) if bool(estimate.valid[0]) else None


def review_drive(
    recorder: DriveRecorder,
    truth: list[np.ndarray],
    *,
    rule: DetectionRule = DetectionRule(),
    ground: GroundModel | None = None,
    fps: float = 10.0,
) -> dict[str, Any]:
    """Per obstacle: when and how far away it was first alerted; and the false alert tracks."""
    obstacles: list[_Obstacle] = []
    touched: set[int] = set()
    strict_tracks: set[int] = set()
    for index, mask in enumerate(truth):
        alerts = recorder.frames.get(index, _FrameAlerts()).boxes
        active = list(obstacles)
        for box, area in _truth_components(mask):
            match = max(active, key=lambda o: bbox_iou(o.box, box), default=None)
            if match is None or bbox_iou(match.box, box) <= 0.0:
                match = _Obstacle(len(obstacles) + 1, box, index)
                obstacles.append(match)
            else:
                active.remove(match)
            match.box = box
            if match.first_large is None and area >= rule.min_area_px:
                match.first_large, match.large_box = index, box
            for track_id, alert_box in alerts:
                if box_intersection(alert_box, box) > 0:
                    touched.add(track_id)
                if strict_hit(alert_box, box, rule):
                    strict_tracks.add(track_id)
                    if match.first_hit is None:
                        match.first_hit, match.hit_box = index, alert_box
    rows = []
    for obstacle in obstacles:
        delay = None
        if obstacle.first_hit is not None and obstacle.first_large is not None:
            delay = obstacle.first_hit - obstacle.first_large
        rows.append(
            {
                "obstacle": obstacle.track_id,
                "first_seen_frame": obstacle.first_seen,
                "first_100px_frame": obstacle.first_large,
                "distance_at_100px_m": _bottom_distance(ground, obstacle.large_box),
                "first_alert_frame": obstacle.first_hit,
                "delay_frames": delay,
                "delay_s": None if delay is None else delay / fps,
                "distance_at_alert_m": _bottom_distance(ground, obstacle.hit_box),
                "in_time": delay is not None and delay <= rule.max_delay_frames,
            }
        )
    tracks = sorted(recorder.thumbnails)
    false_tracks = [t for t in tracks if t not in touched]
    loose_tracks = [t for t in tracks if t in touched and t not in strict_tracks]
    return {
        "rule": rule.describe(),
        "obstacles": rows,
        "all_in_time": bool(rows) and all(row["in_time"] for row in rows),
        "alert_tracks": len(tracks),
        "false_alert_tracks": [
            {"track_id": t, "first_frame": recorder.first_frame[t], "frames": _track_frames(recorder, t)}
            for t in false_tracks
        ],
        "loose_alert_tracks": [
            {"track_id": t, "first_frame": recorder.first_frame[t], "frames": _track_frames(recorder, t)}
            for t in loose_tracks
        ],
    }


def _track_frames(recorder: DriveRecorder, track_id: int) -> int:
    return sum(any(t == track_id for t, _ in record.boxes) for record in recorder.frames.values())


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def write_drive_review(folder: str | Path, review: dict[str, Any], recorder: DriveRecorder) -> str:
    """Thumbnails of the false and loose alert tracks under ``folder/alerts/``; returns the Markdown section."""
    folder = Path(folder)
    (folder / "alerts").mkdir(parents=True, exist_ok=True)
    lines = [
        "## Obstacles of the drive (strict rule)",
        "",
        f"Rule: {review['rule']}.",
        "",
        "| obstacle | first seen (frame) | mask >= 100 px (frame) | distance then (m) | first alert (frame) "
        "| delay (frames) | delay (s) | distance at alert (m) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in review["obstacles"]:
        verdict = "in time" if row["in_time"] else ("late" if row["first_alert_frame"] is not None else "MISSED")
        first_alert = row["first_alert_frame"] if row["first_alert_frame"] is not None else "–"
        lines.append(
            f"| {row['obstacle']} | {row['first_seen_frame']} | {row['first_100px_frame']} "
            f"| {_fmt(row['distance_at_100px_m'])} | {first_alert} "
            f"| {row['delay_frames'] if row['delay_frames'] is not None else '–'} | {_fmt(row['delay_s'], 2)} "
            f"| {_fmt(row['distance_at_alert_m'])} | {verdict} |"
        )
    false_tracks, loose = review["false_alert_tracks"], review["loose_alert_tracks"]
    lines += [
        "",
        f"## False alerts: {len(false_tracks)} of {review['alert_tracks']} alert tracks touch no obstacle",
        "",
    ]
    for title, items in (("false", false_tracks), ("loose (touch an obstacle, never the strict rule)", loose)):
        if not items:
            continue
        lines += [
            f"{title}:",
            "",
            "| track | first frame | frames | thumbnail (first frame) |",
            "| --- | --- | --- | --- |",
        ]
        for item in items:
            name = f"alerts/track_{item['track_id']:03d}.png"
            cv2.imwrite(str(folder / name), cv2.cvtColor(recorder.thumbnails[item["track_id"]], cv2.COLOR_RGB2BGR))
            lines.append(f"| {item['track_id']} | {item['first_frame']} | {item['frames']} | ![]({name}) |")
        lines.append("")
    return "\n".join(lines) + "\n"
