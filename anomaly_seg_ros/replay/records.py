"""What a replay records: per-frame timings, alert tracks, the per-bag report and its summaries."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_seg_ros.core.alerts import Alert
from anomaly_seg_ros.metrics import StreamingOODMetrics
from anomaly_seg_ros.metrics.components import ComponentMetrics
from anomaly_seg_ros.replay.stats import (
    END_TO_END,
    bag_duration_s,
    delay_stats,
    latency_stats,
    missing_frames,
    per_minute,
    simulate_latest_slot,
)

log = logging.getLogger(__name__)


@dataclass
class FrameRecord:
    """One camera message of the bag: what happened to it and how long each step took."""

    #: Position among the camera messages of the bag (rejected ones included).
    index: int
    #: Bag (receive) timestamp; always known, even for a frame that does not deserialise.
    log_ns: int
    #: Header stamp; None when the message did not deserialise.
    stamp_ns: int | None
    #: ``"ok"`` or the rejection reason (``MessageConversionError.reason``).
    status: str = "ok"
    alerts: int = 0
    #: ``decode`` (CDR + image conversion), the perception stages and ``total``, ``publish``
    #: (building and writing the outputs) and ``end_to_end`` (all of it). A rejected frame
    #: has ``decode`` and ``end_to_end`` only: the time spent until it was refused.
    timings_ms: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "frame": self.index,
            "log_ns": self.log_ns,
            "stamp_ns": self.stamp_ns,
            "status": self.status,
            "alerts": self.alerts,
            "timings_ms": dict(self.timings_ms),
        }


@dataclass
class AlertTrackRecord:
    """One alert track (a confirmed obstacle, same ``track_id``) over the frames it was reported in."""

    track_id: int
    first_stamp_ns: int
    first_frame: int
    last_stamp_ns: int = 0
    last_frame: int = 0
    frames: int = 0
    max_area_px: int = 0
    max_score: float = float("-inf")
    first_distance_m: float | None = None
    min_distance_m: float | None = None

    def add(self, stamp_ns: int, frame: int, alert: Alert, distance_m: float | None) -> None:
        self.last_stamp_ns, self.last_frame = stamp_ns, frame
        self.frames += 1
        self.max_area_px = max(self.max_area_px, alert.component.area_px)
        self.max_score = max(self.max_score, float(alert.component.max_score))
        if distance_m is not None:
            if self.first_distance_m is None and self.frames == 1:
                self.first_distance_m = distance_m
            self.min_distance_m = distance_m if self.min_distance_m is None else min(self.min_distance_m, distance_m)

    def summary(self, start_ns: int) -> dict[str, Any]:
        """Facts of the track; ``first_s``/``last_s`` are seconds since ``start_ns`` (the bag's first frame)."""
        return {
            "track_id": self.track_id,
            "first_stamp_ns": self.first_stamp_ns,
            "last_stamp_ns": self.last_stamp_ns,
            "first_s": (self.first_stamp_ns - start_ns) * 1e-9,
            "last_s": (self.last_stamp_ns - start_ns) * 1e-9,
            "duration_s": (self.last_stamp_ns - self.first_stamp_ns) * 1e-9,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames": self.frames,
            "max_area_px": self.max_area_px,
            "max_score": self.max_score,
            "first_distance_m": self.first_distance_m,
            "min_distance_m": self.min_distance_m,
        }


@dataclass
class ReplayReport:
    input: str
    output: str
    camera_topic: str
    gt_topic: str | None
    frames: int = 0
    processed: int = 0
    #: Rejected messages of every topic by reason; ``rejected_by_topic`` splits them per topic.
    rejected: Counter = field(default_factory=Counter)
    rejected_by_topic: dict[str, Counter] = field(default_factory=dict)
    last_rejection: str | None = None
    #: Camera frames refused: (frame index, bag timestamp, reason, message).
    rejected_frames: list[tuple[int, int, str, str]] = field(default_factory=list)
    frame_records: list[FrameRecord] = field(default_factory=list)
    alert_track_records: dict[int, AlertTrackRecord] = field(default_factory=dict)
    #: Wall time of the replay loop (reading, processing, writing), for throughput.
    wall_s: float = 0.0
    alerts: int = 0
    frames_with_alerts: int = 0
    gt_frames: int = 0
    pixel_metrics: dict[str, float] | None = None
    component_metrics: dict[str, Any] | None = None
    obstacles: list[dict[str, Any]] = field(default_factory=list)
    #: The rule that matched alerts to ground-truth obstacles (``runner.match_rule``), and what it left over.
    match_rule: str | None = None
    false_alerts: int = 0
    false_alert_tracks: int = 0
    #: The alerts' smallest component (frame pixels): obstacles smaller than this cannot alert.
    min_area_px: int | None = None
    #: With camera geometry: frontal area (m^2, as text) -> the distance up to which such an obstacle
    #: covers min_area_px frame pixels (``GroundModel.range_for_area``).
    range_at_min_area_m: dict[str, float] | None = None
    #: (precision, recall, thresholds) of the pooled ground-truth pixels, for plotting.
    pr_curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    #: This bag's accumulators (for the aggregated report of a single bag).
    pixel_accumulator: StreamingOODMetrics | None = field(default=None, repr=False)
    component_accumulator: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The bag's name: its folder name (or file stem for a single .mcap/.db3)."""
        path = Path(self.input)
        return path.stem if path.is_file() else path.name

    @property
    def latencies_ms(self) -> list[float]:
        """Perception time (``timings_ms["total"]``) of every processed frame."""
        return [r.timings_ms["total"] for r in self.frame_records if r.status == "ok"]

    @property
    def stage_ms(self) -> dict[str, list[float]]:
        """Per-frame times of each timing column, over the frames that have it."""
        stages: dict[str, list[float]] = {}
        for record in self.frame_records:
            for stage, value in record.timings_ms.items():
                stages.setdefault(stage, []).append(value)
        return stages

    def summary(self) -> dict[str, Any]:
        stages = self.stage_ms
        log_stamps = [record.log_ns for record in self.frame_records]
        duration = bag_duration_s(log_stamps)
        start = min(log_stamps, default=0)
        tracks = [track.summary(start) for track in self.alert_track_records.values()]
        # a live node's worker decodes, perceives and publishes each frame; writing the outputs to the bag
        # stands in for publishing (both serialise the same messages)
        processing = [record.timings_ms[END_TO_END] for record in self.frame_records]
        drops = simulate_latest_slot(log_stamps, processing)
        frames_by_reason = Counter(reason for _, _, reason, _ in self.rejected_frames)
        return {
            "name": self.name,
            "input": self.input,
            "output": self.output,
            "camera_topic": self.camera_topic,
            "gt_topic": self.gt_topic,
            "frames": self.frames,
            "processed": self.processed,
            "rejected": dict(self.rejected),
            "rejected_by_topic": {topic: dict(counts) for topic, counts in self.rejected_by_topic.items()},
            "rejected_frames_by_reason": dict(frames_by_reason),
            "rejected_frames": [
                {"frame": index, "log_ns": log_ns, "reason": reason, "message": message}
                for index, log_ns, reason, message in self.rejected_frames
            ],
            "last_rejection": self.last_rejection,
            "bag_duration_s": duration,
            "wall_s": self.wall_s,
            "throughput_fps": self.processed / self.wall_s if self.wall_s > 0 else None,
            "realtime_factor": duration / self.wall_s if duration and self.wall_s > 0 else None,
            "latency_ms": latency_stats(self.latencies_ms),
            "latency_by_stage_ms": {stage: latency_stats(values) for stage, values in stages.items()},
            "stage_ms_p50": {stage: float(np.median(values)) for stage, values in stages.items()},
            "realtime_drops": len(drops),
            "realtime_dropped_frames": drops,
            "missing_frames": missing_frames(log_stamps),
            "alerts": self.alerts,
            "frames_with_alerts": self.frames_with_alerts,
            "alert_tracks": len(tracks),
            "alerts_per_minute": per_minute(len(tracks), duration),
            "alert_track_list": tracks,
            "gt_frames": self.gt_frames,
            "pixel_metrics": self.pixel_metrics,
            "component_metrics": self.component_metrics,
            "obstacles": self.obstacles,
            "match_rule": self.match_rule,
            "false_alerts": self.false_alerts,
            "false_alert_tracks": self.false_alert_tracks,
            "min_area_px": self.min_area_px,
            "range_at_min_area_m": self.range_at_min_area_m,
            **delay_stats(self.obstacles),
        }


def component_summary(accumulator: ComponentMetrics | None) -> dict[str, Any] | None:
    """JSON-ready component metrics (NaN, e.g. PPV without predictions, as None); None without frames."""
    if accumulator is None or accumulator.num_frames == 0:
        return None
    return _no_nan(accumulator.summary())


def pixel_summary(accumulator: StreamingOODMetrics | None) -> dict[str, Any] | None:
    """JSON-ready pooled AP / FPR95 / AUROC; None when they are undefined.

    A recording whose ground truth has no anomaly pixel (an empty stretch of road) or only
    anomaly pixels is valid; it has no AP, but its frames still count and still enter the
    pooled metrics of a multi-bag run.
    """
    if accumulator is None:
        return None
    try:
        return _plain_metrics(accumulator.summary())
    except ValueError as error:
        log.info("no pixel metrics: %s", error)
        return None


def _no_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _no_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _plain_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a metrics summary (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in summary.items()}
