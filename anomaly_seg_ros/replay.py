"""Bag replay: every camera frame of a rosbag2 through the perception core, into an output bag.

The output bag holds the input topics (copied as raw CDR, untouched) and the outputs the
node publishes, under the node's topic names, with the input image's stamp and frame_id.
Malformed frames are counted with their reason and skipped; the run goes on. Where the bag
carries ground truth, pixel metrics (pooled, streaming: memory does not grow with the bag)
and per-obstacle detection delays are reported.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from anomaly_seg_ros.alerts import Alert, bbox_iou
from anomaly_seg_ros.bagio import BagWriter, iter_raw, list_topics
from anomaly_seg_ros.errors import AnomalySegError, BagError, MessageConversionError
from anomaly_seg_ros.ground import GroundModel
from anomaly_seg_ros.metrics import StreamingOODMetrics
from anomaly_seg_ros.perception import Perception, PerceptionResult
from anomaly_seg_ros.ros import messages
from anomaly_seg_ros.ros.conversions import image_to_array, message_to_rgb, stamp_to_ns
from anomaly_seg_ros.ros.typestore import get_typestore

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
#: A topic whose last name component is this carries the anomaly ground truth (mono8 0/1/255).
GT_TOPIC_SUFFIX = "anomaly_gt"
#: Results kept while waiting for a ground-truth message with the same stamp.
MAX_PENDING_GT = 64


@dataclass
class ReplayOptions:
    topic: str | None = None
    gt_topic: str | None = None
    storage: Literal["mcap", "sqlite3"] = "mcap"
    #: Output topics are ``{namespace}/semantic_mask`` etc., the node's private topics.
    namespace: str = "/anomaly_seg_node"
    copy_input: bool = True
    #: A ground-truth obstacle counts as detected once this fraction of its pixels lies inside
    #: an alert's box and above the alert threshold (a pixel-level hit, not a box overlap).
    detection_overlap: float = 0.1
    #: CameraInfo topic (default: the bag's only one). With a camera height above the road,
    #: alerts get flat-ground positions and the report gets obstacle distances.
    camera_info_topic: str | None = None
    camera_height_m: float = 0.0
    camera_pitch_rad: float = 0.0


@dataclass
class ObstacleTrack:
    """One ground-truth obstacle followed over the sequence."""

    track_id: int
    first_seen_ns: int
    first_seen_frame: int
    bbox: tuple[int, int, int, int]
    first_area_px: int
    last_seen_ns: int
    #: Lowest image points (where the obstacle meets the road) at first sight and first alert.
    first_point: tuple[int, int] = (0, 0)
    first_alert_ns: int | None = None
    first_alert_frame: int | None = None
    area_at_alert_px: int | None = None
    alert_point: tuple[int, int] | None = None

    def summary(self, ground: GroundModel | None = None) -> dict[str, Any]:
        """Facts of the track; distances need the camera geometry (fixed per camera)."""
        detected = self.first_alert_ns is not None
        return {
            "track_id": self.track_id,
            "first_seen_s": self.first_seen_ns * 1e-9,
            "first_seen_frame": self.first_seen_frame,
            "first_area_px": self.first_area_px,
            "detected": detected,
            "delay_s": (self.first_alert_ns - self.first_seen_ns) * 1e-9 if detected else None,
            "delay_frames": self.first_alert_frame - self.first_seen_frame if detected else None,
            "area_at_alert_px": self.area_at_alert_px,
            "first_distance_m": _distance(ground, self.first_point),
            "distance_at_alert_m": _distance(ground, self.alert_point) if detected else None,
        }


@dataclass
class ReplayReport:
    input: str
    output: str
    camera_topic: str
    gt_topic: str | None
    frames: int = 0
    processed: int = 0
    rejected: Counter = field(default_factory=Counter)
    last_rejection: str | None = None
    latencies_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    alerts: int = 0
    frames_with_alerts: int = 0
    gt_frames: int = 0
    pixel_metrics: dict[str, float] | None = None
    obstacles: list[dict[str, Any]] = field(default_factory=list)
    #: (precision, recall, thresholds) of the pooled ground-truth pixels, for plotting.
    pr_curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def summary(self) -> dict[str, Any]:
        latency = np.asarray(self.latencies_ms, dtype=np.float64)
        percentiles = (
            {f"p{q}": float(np.percentile(latency, q)) for q in (50, 95, 99)} | {"max": float(latency.max())}
            if latency.size
            else {}
        )
        return {
            "input": self.input,
            "output": self.output,
            "camera_topic": self.camera_topic,
            "gt_topic": self.gt_topic,
            "frames": self.frames,
            "processed": self.processed,
            "rejected": dict(self.rejected),
            "last_rejection": self.last_rejection,
            "latency_ms": percentiles,
            "stage_ms_p50": {stage: float(np.median(values)) for stage, values in self.stage_ms.items()},
            "alerts": self.alerts,
            "frames_with_alerts": self.frames_with_alerts,
            "gt_frames": self.gt_frames,
            "pixel_metrics": self.pixel_metrics,
            "obstacles": self.obstacles,
        }


def find_topics(bag: Path, options: ReplayOptions) -> tuple[str, str, str | None]:
    """(camera topic, its type, ground-truth topic or None), found by type and name."""
    topics = list_topics(bag)
    gt_topic = options.gt_topic
    if gt_topic is None:
        candidates = [
            t for t, (kind, _) in topics.items() if kind in IMAGE_TYPES and t.rsplit("/", 1)[-1] == GT_TOPIC_SUFFIX
        ]
        gt_topic = candidates[0] if len(candidates) == 1 else None
    elif gt_topic not in topics:
        raise BagError(f"ground-truth topic {gt_topic!r} is not in {bag}; topics: {', '.join(sorted(topics))}")
    if options.topic is not None:
        if options.topic not in topics:
            raise BagError(f"camera topic {options.topic!r} is not in {bag}; topics: {', '.join(sorted(topics))}")
        kind = topics[options.topic][0]
        if kind not in IMAGE_TYPES:
            raise BagError(f"topic {options.topic!r} has type {kind}, expected one of {', '.join(IMAGE_TYPES)}")
        return options.topic, kind, gt_topic
    cameras = [t for t, (kind, _) in topics.items() if kind in IMAGE_TYPES and t != gt_topic]
    if len(cameras) != 1:
        listing = ", ".join(cameras) or "none"
        raise BagError(f"{bag} has {len(cameras)} image topics ({listing}); name the camera topic with --topic")
    return cameras[0], topics[cameras[0]][0], gt_topic


@dataclass
class _FrameOutcome:
    frame_index: int
    anomaly: np.ndarray
    alerts: list[Alert]
    threshold: float


class _GroundTruthTracker:
    """Pairs results with ground-truth masks by stamp and follows each GT obstacle over time."""

    def __init__(self, overlap: float) -> None:
        self.metrics = StreamingOODMetrics()
        self.overlap = overlap
        self.pending: OrderedDict[int, _FrameOutcome] = OrderedDict()
        self.truth: OrderedDict[int, np.ndarray] = OrderedDict()
        self.tracks: list[ObstacleTrack] = []
        self.frames = 0

    def add_result(self, stamp_ns: int, outcome: _FrameOutcome) -> None:
        if stamp_ns in self.truth:
            self._score(stamp_ns, outcome, self.truth.pop(stamp_ns))
            return
        self.pending[stamp_ns] = outcome
        while len(self.pending) > MAX_PENDING_GT:
            self.pending.popitem(last=False)

    def add_truth(self, stamp_ns: int, mask: np.ndarray) -> None:
        if stamp_ns in self.pending:
            self._score(stamp_ns, self.pending.pop(stamp_ns), mask)
            return
        self.truth[stamp_ns] = mask
        while len(self.truth) > MAX_PENDING_GT:
            self.truth.popitem(last=False)

    def _score(self, stamp_ns: int, outcome: _FrameOutcome, mask: np.ndarray) -> None:
        if mask.shape != outcome.anomaly.shape:
            raise MessageConversionError(
                f"ground-truth mask has shape {mask.shape}, expected the camera frame's {outcome.anomaly.shape}",
                reason="gt_size",
            )
        self.frames += 1
        self.metrics.update(outcome.anomaly, mask)
        self._follow(stamp_ns, outcome, mask)

    def _follow(self, stamp_ns: int, outcome: _FrameOutcome, mask: np.ndarray) -> None:
        count, ids, stats, _ = cv2.connectedComponentsWithStats((mask == 1).astype(np.uint8), connectivity=8)
        active = list(self.tracks)
        for index in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[index])
            bbox = (x, y, w, h)
            track = max(active, key=lambda t: bbox_iou(t.bbox, bbox), default=None)
            if track is None or bbox_iou(track.bbox, bbox) <= 0.0:
                track = ObstacleTrack(len(self.tracks) + 1, stamp_ns, outcome.frame_index, bbox, area, stamp_ns)
                track.first_point = (x + w // 2, y + h - 1)
                self.tracks.append(track)
            else:
                active.remove(track)
            track.bbox, track.last_seen_ns = bbox, stamp_ns
            if track.first_alert_ns is not None:
                continue
            for alert in outcome.alerts:
                if self._hit(alert, outcome, ids, index, area):
                    track.first_alert_ns, track.first_alert_frame = stamp_ns, outcome.frame_index
                    track.area_at_alert_px, track.alert_point = area, alert.component.bottom_point
                    break

    def _hit(self, alert: Alert, outcome: _FrameOutcome, ids: np.ndarray, index: int, area: int) -> bool:
        x, y, w, h = alert.component.bbox
        window = (ids[y : y + h, x : x + w] == index) & (outcome.anomaly[y : y + h, x : x + w] > outcome.threshold)
        return int(np.count_nonzero(window)) >= self.overlap * area


def _distance(ground: GroundModel | None, point: tuple[int, int] | None) -> float | None:
    """Flat-ground distance of an image point, None without camera geometry or above the horizon."""
    if ground is None or point is None:
        return None
    estimate = ground.project(*point)
    return float(estimate.distance_m[0]) if bool(estimate.valid[0]) else None


def replay_bag(
    bag: str | Path,
    out: str | Path,
    perception: Perception,
    options: ReplayOptions | None = None,
    *,
    on_frame: Callable[[int, np.ndarray, PerceptionResult], None] | None = None,
    progress: bool = False,
) -> ReplayReport:
    """Replay ``bag`` through ``perception`` into a new bag at ``out``; return the report.

    ``on_frame(index, frame, result)`` is called for every processed frame (the demo uses it
    to save overlay images).
    """
    from tqdm import tqdm

    bag, out = Path(bag), Path(out)
    options = options or ReplayOptions()
    camera_topic, camera_type, gt_topic = find_topics(bag, options)
    typestore = get_typestore()
    report = ReplayReport(str(bag), str(out), camera_topic, gt_topic)
    truth = _GroundTruthTracker(options.detection_overlap) if gt_topic else None
    outputs = messages.output_topics(options.namespace)
    topics = list_topics(bag)
    total = topics[camera_topic][1]
    info_topic = _camera_info_topic(topics, options) if options.camera_height_m > 0 else None
    ground: GroundModel | None = None
    perception.reset()

    with BagWriter(out, storage=options.storage, typestore=typestore) as writer:
        for topic, msgtype in outputs.items():
            writer.add_topic(topic, msgtype)
        bar = tqdm(total=total, desc="replay", unit="frame", disable=not progress)
        for raw in iter_raw(bag):
            if options.copy_input:
                writer.copy_raw(raw)
            if raw.topic == gt_topic and truth is not None:
                try:
                    msg = typestore.deserialize_cdr(raw.rawdata, raw.msgtype)
                    truth.add_truth(stamp_to_ns(msg.header), image_to_array(msg))
                except (MessageConversionError, AnomalySegError) as error:
                    _reject(report, error, f"{gt_topic}: ")
                continue
            if raw.topic == info_topic:
                try:
                    info = typestore.deserialize_cdr(raw.rawdata, raw.msgtype)
                    ground = GroundModel.from_camera_info(info, options.camera_height_m, options.camera_pitch_rad)
                except ValueError as error:
                    _reject(report, MessageConversionError(f"{info_topic}: {error}", reason="camera_info"))
                continue
            if raw.topic != camera_topic:
                continue
            report.frames += 1
            bar.update(1)
            try:
                msg = typestore.deserialize_cdr(raw.rawdata, raw.msgtype)
                frame = message_to_rgb(msg)
            except MessageConversionError as error:
                _reject(report, error)
                continue
            except Exception as error:  # a CDR payload that does not even deserialise
                _reject(report, MessageConversionError(f"undecodable {camera_type}: {error}", reason="cdr"))
                continue
            result = perception.process(frame)
            report.processed += 1
            report.latencies_ms.append(result.timings_ms["total"])
            for stage, value in result.timings_ms.items():
                report.stage_ms.setdefault(stage, []).append(value)
            report.alerts += len(result.alerts)
            report.frames_with_alerts += bool(result.alerts)
            for topic, message in messages.build_outputs(
                typestore, msg.header, result, options.namespace, ground
            ).items():
                writer.write(topic, message, raw.timestamp_ns)
            if truth is not None:
                try:
                    outcome = _FrameOutcome(report.processed - 1, result.anomaly, result.alerts, result.threshold)
                    truth.add_result(stamp_to_ns(msg.header), outcome)
                except MessageConversionError as error:
                    _reject(report, error, f"{gt_topic}: ")
            if on_frame is not None:
                on_frame(report.processed - 1, frame, result)
        bar.close()

    if truth is not None and truth.frames:
        report.gt_frames = truth.frames
        report.pixel_metrics = _plain_metrics(truth.metrics.summary())
        report.obstacles = [track.summary(ground) for track in truth.tracks]
        report.pr_curve = truth.metrics.pr_curve()
    return report


def _camera_info_topic(topics: dict[str, tuple[str, int]], options: ReplayOptions) -> str:
    """The CameraInfo topic for flat-ground distances: the one named, or the bag's only one."""
    if options.camera_info_topic is not None:
        if topics.get(options.camera_info_topic, ("", 0))[0] != CAMERA_INFO:
            raise BagError(f"{options.camera_info_topic!r} is not a {CAMERA_INFO} topic of the bag")
        return options.camera_info_topic
    candidates = [topic for topic, (kind, _) in topics.items() if kind == CAMERA_INFO]
    if len(candidates) != 1:
        raise BagError(
            f"a camera height was given but the bag has {len(candidates)} CameraInfo topics "
            f"({', '.join(candidates) or 'none'}); name one with --camera-info-topic"
        )
    return candidates[0]


def _reject(report: ReplayReport, error: MessageConversionError | AnomalySegError, prefix: str = "") -> None:
    reason = getattr(error, "reason", "invalid")
    report.rejected[reason] += 1
    report.last_rejection = f"{prefix}{error}"
    log.warning("skipped a message (%s): %s", reason, error)


def _plain_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a metrics summary (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in summary.items()}
