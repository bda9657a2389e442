"""A per-obstacle review of one replayed drive, with thumbnails of the false alerts.

It uses the replay report's detection rule (:func:`.runner.match_alerts`, issue 16), so the
demo's review and ``anomaly-seg bag``'s report cannot disagree about what was detected:

- **alerted**: in a frame, an alert box matches the obstacle's ground-truth box one-to-one with
  box IoU >= ``match_iou`` (0.5; greedy, highest IoU first);
- **in time**: the first such frame is at most ``max_delay_frames`` after the first frame in
  which the obstacle's ground-truth mask covers ``min_area_px`` pixels (the smallest component
  the alerts can raise);
- **false alert track**: an alert track none of whose alerts was ever matched to an obstacle.
  Those that overlap an obstacle's box somewhere (too big, too small or off-centre to match) are
  flagged, since they point at a localisation error rather than at a phantom.

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
from anomaly_seg_ros.replay.runner import match_alerts, match_rule
from anomaly_seg_ros.ros.conversions import image_to_array

THUMBNAIL_SIZE = 160


@dataclass(frozen=True)
class DetectionRule:
    """The rule of the module docstring: the replay report's match, and the delay allowed."""

    match_iou: float = 0.5
    min_area_px: int = 100
    max_delay_frames: int = 10

    def describe(self) -> str:
        return (
            f"{match_rule(self.match_iou)}; in time = within {self.max_delay_frames} frames of the first frame "
            f"where the ground-truth mask covers {self.min_area_px} px"
        )


def box_intersection(a: BBox, b: BBox) -> int:
    """Pixels shared by two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0)


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
    matched_tracks: set[int] = set()
    for index, mask in enumerate(truth):
        alerts = recorder.frames.get(index, _FrameAlerts()).boxes
        active = list(obstacles)
        seen: list[_Obstacle] = []
        for box, area in _truth_components(mask):
            match = max(active, key=lambda o: bbox_iou(o.box, box), default=None)
            if match is None or bbox_iou(match.box, box) <= 0.0:
                match = _Obstacle(len(obstacles) + 1, box, index)
                obstacles.append(match)
            else:
                active.remove(match)
            match.box = box
            seen.append(match)
            if match.first_large is None and area >= rule.min_area_px:
                match.first_large, match.large_box = index, box
            touched.update(track_id for track_id, alert_box in alerts if box_intersection(alert_box, box) > 0)
        pairs = match_alerts([o.box for o in seen], [alert_box for _, alert_box in alerts], rule.match_iou)
        for o, a in pairs.items():
            track_id, alert_box = alerts[a]
            matched_tracks.add(track_id)
            if seen[o].first_hit is None:
                seen[o].first_hit, seen[o].hit_box = index, alert_box
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
    return {
        "rule": rule.describe(),
        "obstacles": rows,
        "all_in_time": bool(rows) and all(row["in_time"] for row in rows),
        "alert_tracks": len(tracks),
        "false_alert_tracks": [
            {
                "track_id": t,
                "first_frame": recorder.first_frame[t],
                "frames": _track_frames(recorder, t),
                "overlaps_obstacle": t in touched,
            }
            for t in tracks
            if t not in matched_tracks
        ],
    }


def _track_frames(recorder: DriveRecorder, track_id: int) -> int:
    return sum(any(t == track_id for t, _ in record.boxes) for record in recorder.frames.values())


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def write_drive_review(folder: str | Path, review: dict[str, Any], recorder: DriveRecorder) -> str:
    """Thumbnails of the false alert tracks under ``folder/alerts/``; returns the Markdown section."""
    folder = Path(folder)
    (folder / "alerts").mkdir(parents=True, exist_ok=True)
    lines = [
        "## Obstacles of the drive: alerted in time?",
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
    false_tracks = review["false_alert_tracks"]
    overlapping = sum(item["overlaps_obstacle"] for item in false_tracks)
    lines += [
        "",
        f"## False alert tracks: {len(false_tracks)} of {review['alert_tracks']} never matched an obstacle "
        f"({overlapping} of them overlap one's box)",
        "",
    ]
    if false_tracks:
        lines += [
            "| track | first frame | frames | overlaps an obstacle | thumbnail (first frame) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for item in false_tracks:
            name = f"alerts/track_{item['track_id']:03d}.png"
            cv2.imwrite(str(folder / name), cv2.cvtColor(recorder.thumbnails[item["track_id"]], cv2.COLOR_RGB2BGR))
            overlaps = "yes" if item["overlaps_obstacle"] else "no"
            lines.append(
                f"| {item['track_id']} | {item['first_frame']} | {item['frames']} | {overlaps} | ![]({name}) |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"
