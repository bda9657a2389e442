"""Bag replay: every camera frame of a rosbag2 through the perception core, into an output bag.

The output bag holds the input topics (copied as raw CDR, untouched) and the outputs the
node publishes, under the node's topic names, with the input image's stamp and frame_id.
Malformed frames are counted with their reason and skipped; the run goes on. Every camera
frame leaves a :class:`FrameRecord` (stamps, status, per-stage timings, end to end from the
stored bytes to the written outputs) and every alert track an :class:`AlertTrackRecord`.
Where the bag carries ground truth, pixel metrics (pooled, streaming: memory does not grow
with the bag), component metrics and per-obstacle detection delays are reported.

Several bags (:func:`plan_outputs`, :func:`replay_bags`) are replayed one after the other with
one pipeline; their pixels also go into pooled accumulators for the aggregated report of
:mod:`anomaly_seg_ros.replay.report`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from anomaly_seg_ros.common.errors import AnomalySegError, BagError, MessageConversionError
from anomaly_seg_ros.core.alerts import Alert, BBox, bbox_iou
from anomaly_seg_ros.core.ground import GroundModel
from anomaly_seg_ros.core.perception import Perception, PerceptionResult
from anomaly_seg_ros.metrics import StreamingOODMetrics
from anomaly_seg_ros.metrics.components import ComponentMetrics
from anomaly_seg_ros.replay.bagio import BagWriter, iter_raw, list_topics, truncated_mcap
from anomaly_seg_ros.replay.records import AlertTrackRecord, FrameRecord, ReplayReport, component_summary, pixel_summary
from anomaly_seg_ros.replay.stats import (
    DECODE,
    END_TO_END,
    PUBLISH,
)
from anomaly_seg_ros.ros import messages
from anomaly_seg_ros.ros.conversions import image_to_array, message_to_rgb, stamp_to_ns
from anomaly_seg_ros.ros.typestore import get_typestore

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
#: A topic whose last name component is this carries the anomaly ground truth (mono8 0/1/255).
GT_TOPIC_SUFFIX = "anomaly_gt"
#: Frontal areas (m^2) of reference obstacles whose range at the minimum alert area is reported
#: (0.5 m^2: a 0.7 m cube, a tyre on its side; 0.2 m^2: a small box).
REFERENCE_FRONTAL_AREAS_M2 = (0.2, 0.5)
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
    #: A ground-truth obstacle counts as detected in a frame when an alert's box overlaps the
    #: obstacle's ground-truth box with at least this IoU; each alert matches one obstacle at
    #: most and each obstacle one alert (greedy, highest IoU first); every other alert of a frame
    #: with ground truth is a false alert. 0.5 is the PASCAL VOC / COCO AP50 criterion.
    match_iou: float = 0.5
    #: CameraInfo topic (default: the bag's only one). With a camera height above the road,
    #: alerts get flat-ground positions and the report gets obstacle distances.
    camera_info_topic: str | None = None
    camera_height_m: float = 0.0
    camera_pitch_rad: float = 0.0
    #: SMIYC size filters of the component metrics: "obstacle" (RoadObstacle21) or "anomaly".
    component_track: Literal["obstacle", "anomaly"] = "obstacle"
    #: Histogram range of the pixel metrics (each bag's and a run's pooled) once their pixels
    #: overflow the exact buffer (default: :func:`pooled_score_range`).
    pooled_score_range: tuple[float, float] | None = None


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
    #: Frames with ground truth that show the obstacle, and those where it is smaller than the
    #: alerts' ``min_area_px`` (it cannot raise an alert there, whatever the scores).
    frames: int = 0
    frames_below_min_area: int = 0
    #: Lowest image point at the farthest sighting that was at least ``min_area_px`` large.
    alertable_point: tuple[int, int] | None = None
    #: Best box IoU any alert reached with the obstacle (matched or not); a near miss shows here.
    best_alert_iou: float = 0.0

    def summary(self, ground: GroundModel | None = None) -> dict[str, Any]:
        """Facts of the track; distances need the camera geometry (fixed per camera)."""
        detected = self.first_alert_ns is not None
        return {
            "frames": self.frames,
            "frames_below_min_area": self.frames_below_min_area,
            "farthest_alertable_distance_m": _distance(ground, self.alertable_point),
            "best_alert_iou": self.best_alert_iou,
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
        return _with_messages(bag, options.topic, topics), kind, gt_topic
    cameras = [t for t, (kind, _) in topics.items() if kind in IMAGE_TYPES and t != gt_topic]
    if not topics:
        raise BagError(f"{bag} has no topics (an empty recording); nothing to replay")
    if not cameras:
        listing = ", ".join(f"{t} ({kind})" for t, (kind, _) in topics.items())
        raise BagError(f"{bag} has no camera topic of type {' or '.join(IMAGE_TYPES)}; its topics: {listing}")
    if len(cameras) > 1:
        raise BagError(
            f"{bag} has {len(cameras)} image topics ({', '.join(cameras)}); name the camera topic with --topic"
        )
    return _with_messages(bag, cameras[0], topics), topics[cameras[0]][0], gt_topic


def _with_messages(bag: Path, topic: str, topics: dict[str, tuple[str, int]]) -> str:
    """``topic`` if the bag holds messages on it; an empty camera topic would give an empty report."""
    if topics[topic][1] == 0:
        raise BagError(f"camera topic {topic!r} of {bag} has 0 messages; nothing to replay")
    return topic


@dataclass
class _FrameOutcome:
    frame_index: int
    anomaly: np.ndarray
    alerts: list[Alert]
    threshold: float


def match_rule(match_iou: float) -> str:
    """The detection rule of a replay, in words, for reports."""
    return (
        f"an obstacle is detected in a frame when an alert box overlaps its ground-truth box with IoU >= "
        f"{match_iou:g}; one alert per obstacle and one obstacle per alert (greedy, highest IoU first); every "
        "other alert in a frame with ground truth is a false alert"
    )


def match_alerts(obstacle_boxes: Sequence[BBox], alert_boxes: Sequence[BBox], min_iou: float) -> dict[int, int]:
    """One-to-one matches ``{obstacle index: alert index}`` with box IoU >= ``min_iou``, highest IoU first."""
    pairs = sorted(
        (
            (bbox_iou(obstacle, alert), o, a)
            for o, obstacle in enumerate(obstacle_boxes)
            for a, alert in enumerate(alert_boxes)
        ),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    matches: dict[int, int] = {}
    used: set[int] = set()
    for iou, o, a in pairs:
        if iou < min_iou or iou <= 0.0:
            break
        if o not in matches and a not in used:
            matches[o] = a
            used.add(a)
    return matches


class _GroundTruthTracker:
    """Pairs results with ground-truth masks by stamp, follows each GT obstacle over time and
    matches alerts to obstacles (:func:`match_alerts`)."""

    def __init__(
        self,
        match_iou: float,
        min_area_px: int,
        components: ComponentMetrics,
        score_range: tuple[float, float],
        pooled: PooledMetrics | None = None,
    ) -> None:
        # The histogram range is fixed from the pipeline's score scale, not learnt from the first
        # pixels: a drive whose first frames hold no obstacle would learn a range that ends below
        # the alert threshold and pile every later anomaly pixel into one edge bin.
        self.metrics = StreamingOODMetrics(histogram_range=score_range)
        self.components = components
        #: Accumulators shared by all bags of a run: pixels are pooled, not per-bag values averaged.
        self.pooled = pooled
        self.match_iou = match_iou
        self.min_area_px = min_area_px
        self.pending: OrderedDict[int, _FrameOutcome] = OrderedDict()
        self.truth: OrderedDict[int, np.ndarray] = OrderedDict()
        self.tracks: list[ObstacleTrack] = []
        self.frames = 0
        #: Alerts in frames with ground truth that matched no obstacle, and their alert track ids.
        self.false_alerts = 0
        self.false_alert_ids: set[int] = set()
        self.matched_alert_ids: set[int] = set()

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
        if not np.isin(mask, (0, 1, 255)).all():
            values = ", ".join(str(v) for v in np.unique(mask)[:8])
            raise MessageConversionError(
                f"ground-truth mask has values {values}, expected 0 (in-distribution), 1 (anomaly), 255 (ignore)",
                reason="gt_values",
            )
        self.frames += 1
        self.metrics.update(outcome.anomaly, mask)
        _update_components(self.components, outcome, mask)
        if self.pooled is not None:
            self.pooled.pixels.update(outcome.anomaly, mask)
            _update_components(self.pooled.components, outcome, mask)
        self._follow(stamp_ns, outcome, mask)

    def _follow(self, stamp_ns: int, outcome: _FrameOutcome, mask: np.ndarray) -> None:
        count, _, stats, _ = cv2.connectedComponentsWithStats((mask == 1).astype(np.uint8), connectivity=8)
        active = list(self.tracks)
        seen: list[tuple[ObstacleTrack, int]] = []
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
            track.frames += 1
            if area < self.min_area_px:
                track.frames_below_min_area += 1
            elif track.alertable_point is None or y + h - 1 < track.alertable_point[1]:
                track.alertable_point = (x + w // 2, y + h - 1)  # higher in the image = farther on flat ground
            seen.append((track, area))
        alert_boxes = [alert.component.bbox for alert in outcome.alerts]
        for track, _ in seen:
            track.best_alert_iou = max([track.best_alert_iou, *(bbox_iou(track.bbox, box) for box in alert_boxes)])
        matches = match_alerts([track.bbox for track, _ in seen], alert_boxes, self.match_iou)
        for o, a in matches.items():
            track, area = seen[o]
            alert = outcome.alerts[a]
            self.matched_alert_ids.add(alert.track_id)
            if track.first_alert_ns is None:
                track.first_alert_ns, track.first_alert_frame = stamp_ns, outcome.frame_index
                track.area_at_alert_px, track.alert_point = area, alert.component.bottom_point
        matched = set(matches.values())
        for a, alert in enumerate(outcome.alerts):
            if a not in matched:
                self.false_alerts += 1
                self.false_alert_ids.add(alert.track_id)

    @property
    def false_alert_tracks(self) -> int:
        """Alert tracks that matched no obstacle in any frame with ground truth."""
        return len(self.false_alert_ids - self.matched_alert_ids)


def _distance(ground: GroundModel | None, point: tuple[int, int] | None) -> float | None:
    """Flat-ground distance of an image point, None without camera geometry or above the horizon."""
    if ground is None or point is None:
        return None
    estimate = ground.project(*point)
    return float(estimate.distance_m[0]) if bool(estimate.valid[0]) else None


@dataclass
class PooledMetrics:
    """Accumulators that every bag of a run feeds: the aggregated report's pooled metrics."""

    pixels: StreamingOODMetrics = field(default_factory=StreamingOODMetrics)
    #: A :class:`~anomaly_seg_ros.metrics.components.ComponentMetrics`, see :func:`new_component_metrics`.
    components: ComponentMetrics | None = None

    def merge(self, other: PooledMetrics) -> PooledMetrics:
        """Add another bag's accumulators; returns ``self``."""
        self.pixels.merge(other.pixels)
        if other.components is not None:
            if self.components is None:
                raise ValueError("cannot merge component metrics into pooled metrics that have none")
            self.components.merge(other.components)
        return self


def pooled_score_range(perception: Perception, options: ReplayOptions) -> tuple[float, float]:
    """Histogram range of the pixel metrics, a bag's and a run's pooled: ``options.pooled_score_range``,
    else the heatmap range widened by its span on each side.

    Fixed before the first pixel (not learnt from the first bag's pixels) so that bags replayed
    apart, in other processes or on other machines, merge into exactly the serial run's
    accumulator. Scores outside it count into the edge bins (``out_of_range`` in the report)
    and the error bounds still hold.
    """
    if options.pooled_score_range is not None:
        return options.pooled_score_range
    lo, hi = perception.heatmap_range
    span = hi - lo if hi > lo else max(abs(lo), 1.0)
    return (lo - span, hi + span)


def new_pooled_metrics(perception: Perception, options: ReplayOptions) -> PooledMetrics:
    """Empty pooled accumulators of a run: exact while the pixels fit the buffer, binned in
    :func:`pooled_score_range` beyond it; one bag's merge exactly into another's."""
    return PooledMetrics(
        StreamingOODMetrics(histogram_range=pooled_score_range(perception, options)),
        new_component_metrics(perception.threshold, options.component_track),
    )


def new_component_metrics(threshold: float, track: str) -> ComponentMetrics:
    """SMIYC component metrics (sIoU_gt, PPV, F1 over tau = 0.25..0.75; Chan et al., arXiv 2104.14812)
    at the pipeline's alert threshold.

    Deviation from the benchmark: SMIYC thresholds at the best pixel F1 of the whole dataset,
    which needs a second pass over all scores; a replay evaluates the system as deployed, so
    the prediction is ``score > alerts threshold``, the pixels that can raise alerts. ``track``
    picks the SMIYC size filters (``"obstacle"``: ground-truth components under 10 px void,
    predicted ones under 50 px dropped; ``"anomaly"``: 100 / 500).
    """
    return ComponentMetrics(threshold, track)


def _update_components(accumulator: ComponentMetrics | None, outcome: _FrameOutcome, truth: np.ndarray) -> None:
    if accumulator is not None:
        accumulator.update_mask(outcome.anomaly > outcome.threshold, truth)


def replay_bag(
    bag: str | Path,
    out: str | Path,
    perception: Perception,
    options: ReplayOptions | None = None,
    *,
    on_frame: Callable[[int, np.ndarray, PerceptionResult], None] | None = None,
    progress: bool = False,
    pooled: PooledMetrics | None = None,
) -> ReplayReport:
    """Replay ``bag`` through ``perception`` into a new bag at ``out``; return the report.

    ``on_frame(index, frame, result)`` is called for every processed frame (the demo uses it
    to save overlay images). ``pooled`` accumulators, shared by several calls, also receive
    every ground-truth frame (see :func:`replay_bags`).
    """
    from tqdm import tqdm

    bag, out = Path(bag), Path(out)
    options = options or ReplayOptions()
    camera_topic, camera_type, gt_topic = find_topics(bag, options)
    typestore = get_typestore()
    report = ReplayReport(str(bag), str(out), camera_topic, gt_topic)
    components = new_component_metrics(perception.threshold, options.component_track)
    truth = (
        _GroundTruthTracker(
            options.match_iou,
            perception.config.alerts.min_area_px,
            components,
            pooled_score_range(perception, options),
            pooled,
        )
        if gt_topic
        else None
    )
    outputs = messages.output_topics(options.namespace)
    topics = list_topics(bag)
    total = topics[camera_topic][1]
    info_topic = _camera_info_topic(topics, options) if options.camera_height_m > 0 else None
    perception.reset()
    clock = time.perf_counter
    started = clock()

    stop: BaseException | None = None
    with BagWriter(out, storage=options.storage, typestore=typestore) as writer:
        for topic, msgtype in outputs.items():
            writer.add_topic(topic, msgtype)
        state = _ReplayState(tqdm(total=total, desc="replay", unit="frame", disable=not progress), info_topic)
        try:
            for raw in iter_raw(bag):
                _replay_message(report, state, raw, typestore, perception, writer, options, truth, on_frame)
        except (KeyboardInterrupt, Exception) as error:  # noqa: BLE001 - keep what was replayed, re-raised below
            stop = error
            _drop_unfinished_frame(report)
        finally:
            state.progress.close()
        # the writer closes normally either way: an indexed bag with metadata.yaml of the frames written
    report.wall_s = clock() - started

    if truth is not None and truth.frames:
        report.gt_frames = truth.frames
        report.pixel_metrics = pixel_summary(truth.metrics)
        report.pixel_accumulator = truth.metrics
        report.component_accumulator = truth.components
        report.component_metrics = component_summary(truth.components)
        report.obstacles = [track.summary(state.ground) for track in truth.tracks]
        report.match_rule = match_rule(truth.match_iou)
        report.min_area_px = truth.min_area_px
        report.false_alerts, report.false_alert_tracks = truth.false_alerts, truth.false_alert_tracks
        if state.ground is not None:
            report.range_at_min_area_m = {
                f"{area:g}": state.ground.range_for_area(area, truth.min_area_px) for area in REFERENCE_FRONTAL_AREAS_M2
            }
        report.pr_curve = truth.metrics.pr_curve() if report.pixel_metrics is not None else None
    if (cut := truncated_mcap(bag)) is not None:
        last = report.frame_records[-1].log_ns if report.frame_records else None
        report.last_rejection = f"{cut.describe()}: replayed those, {report.frames} camera frames" + (
            f", the last at log time {last} ns" if last is not None else ""
        )
        report.rejected["truncated_bag"] += 1
        log.warning("%s", report.last_rejection)
    if stop is not None:
        raise ReplayStopped(report, stop) from stop
    return report


class ReplayStopped(Exception):
    """A replay that ended early (Ctrl-C, or an unexpected error) after closing its output bag.

    ``reports`` holds every bag replayed so far, the last one up to ``frame`` (the camera
    message it stopped at, not processed); ``cause`` is what stopped it. Not an
    :class:`AnomalySegError`: the caller writes the partial report before it reports the stop.
    """

    def __init__(self, report: ReplayReport, cause: BaseException) -> None:
        self.reports = [report]
        self.pooled: PooledMetrics | None = None
        self.cause = cause
        self.bag = report.input
        self.frame = report.frames
        what = "interrupted" if self.interrupted else f"{type(cause).__name__}: {cause}"
        super().__init__(f"replay of {report.input} stopped at camera frame {report.frames} ({what})")

    @property
    def interrupted(self) -> bool:
        """True for Ctrl-C (SIGINT), False for an error."""
        return isinstance(self.cause, KeyboardInterrupt)

    def summary(self) -> dict[str, Any]:
        """What the partial report records about the stop."""
        return {
            "bag": self.bag,
            "stopped_at_frame": self.frame,
            "reason": "interrupted" if self.interrupted else f"{type(self.cause).__name__}: {self.cause}",
        }


def _drop_unfinished_frame(report: ReplayReport) -> None:
    """Forget the camera frame that was in progress when the replay stopped: it has no outputs."""
    if report.frame_records and report.frame_records[-1].status == "ok" and not report.frame_records[-1].timings_ms:
        report.frame_records.pop()
        report.frames -= 1


@dataclass
class _ReplayState:
    """What the messages of one bag change as they go by: the progress bar and the camera geometry."""

    progress: Any
    info_topic: str | None
    ground: GroundModel | None = None


def _replay_message(
    report: ReplayReport,
    state: _ReplayState,
    raw: Any,
    typestore: Any,
    perception: Perception,
    writer: BagWriter,
    options: ReplayOptions,
    truth: _GroundTruthTracker | None,
    on_frame: Callable[[int, np.ndarray, PerceptionResult], None] | None,
) -> None:
    """One message of the input bag: copied, and routed to ground truth, camera geometry or perception."""
    if options.copy_input:
        writer.copy_raw(raw)
    if raw.topic == report.gt_topic and truth is not None:
        try:
            msg = typestore.deserialize_cdr(raw.rawdata, raw.msgtype)
            truth.add_truth(stamp_to_ns(msg.header), image_to_array(msg))
        except (MessageConversionError, AnomalySegError) as error:
            _reject(report, error, raw.topic)
        except Exception as error:  # a CDR payload that does not even deserialise
            _reject(report, MessageConversionError(f"undecodable ground truth: {error}", reason="cdr"), raw.topic)
        return
    if raw.topic == state.info_topic:
        try:
            info = typestore.deserialize_cdr(raw.rawdata, raw.msgtype)
            state.ground = GroundModel.from_camera_info(info, options.camera_height_m, options.camera_pitch_rad)
        except ValueError as error:
            _reject(report, MessageConversionError(f"{error}", reason="camera_info"), raw.topic)
        return
    if raw.topic != report.camera_topic:
        return
    state.progress.update(1)
    _replay_frame(report, raw, typestore, perception, writer, options, state.ground, truth, on_frame)


def _replay_frame(
    report: ReplayReport,
    raw: Any,
    typestore: Any,
    perception: Perception,
    writer: BagWriter,
    options: ReplayOptions,
    ground: GroundModel | None,
    truth: _GroundTruthTracker | None,
    on_frame: Callable[[int, np.ndarray, PerceptionResult], None] | None,
) -> None:
    """One camera message: decode, perceive, write the outputs, record timings, alert tracks and ground truth."""
    clock = time.perf_counter
    started = clock()
    record = FrameRecord(report.frames, raw.timestamp_ns, None)
    report.frames += 1
    report.frame_records.append(record)
    decoded = None
    try:
        try:
            msg = typestore.deserialize_cdr(raw.rawdata, raw.msgtype)
        except Exception as error:  # a CDR payload that does not even deserialise
            raise MessageConversionError(f"undecodable {raw.msgtype}: {error}", reason="cdr") from error
        record.stamp_ns = stamp_to_ns(msg.header)
        frame = message_to_rgb(msg)
        decoded = clock()
        result = perception.process(frame)
    except (MessageConversionError, AnomalySegError) as error:
        reason = getattr(error, "reason", "perception")
        refused = clock()
        record.status = reason
        record.timings_ms = {DECODE: ((decoded or refused) - started) * 1e3, END_TO_END: (refused - started) * 1e3}
        report.rejected_frames.append((record.index, record.log_ns, reason, str(error)))
        _reject(report, error, raw.topic)
        return
    perceived = clock()
    stamp_ns = record.stamp_ns
    for topic, message in messages.build_outputs(typestore, msg.header, result, options.namespace, ground).items():
        writer.write(topic, message, raw.timestamp_ns)
    finished = clock()
    # frame numbers in tracks and obstacles are camera-message positions, as in frames.csv
    index = record.index
    report.processed += 1
    record.alerts = len(result.alerts)
    record.timings_ms = (
        {DECODE: (decoded - started) * 1e3}
        | result.timings_ms
        | {PUBLISH: (finished - perceived) * 1e3, END_TO_END: (finished - started) * 1e3}
    )
    report.alerts += len(result.alerts)
    report.frames_with_alerts += bool(result.alerts)
    for alert in result.alerts:
        track = report.alert_track_records.get(alert.track_id)
        if track is None:
            track = report.alert_track_records[alert.track_id] = AlertTrackRecord(alert.track_id, stamp_ns, index)
        track.add(stamp_ns, index, alert, _distance(ground, alert.component.bottom_point))
    if truth is not None:
        try:
            truth.add_result(stamp_ns, _FrameOutcome(index, result.anomaly, result.alerts, result.threshold))
        except MessageConversionError as error:
            _reject(report, error, report.gt_topic or "")
    if on_frame is not None:
        on_frame(report.processed - 1, frame, result)


def is_bag(path: Path) -> bool:
    """A rosbag2 folder (has metadata.yaml), a single .mcap / .db3 file, or the folder of a recording
    that was cut off (one .mcap, no metadata.yaml; see :func:`~anomaly_seg_ros.replay.bagio.truncated_mcap`)."""
    return (
        (path.is_dir() and (path / "metadata.yaml").is_file())
        or (path.is_file() and path.suffix in (".mcap", ".db3"))
        or truncated_mcap(path) is not None
    )


def plan_outputs(paths: Sequence[str | Path], out: str | Path) -> list[tuple[Path, Path]]:
    """``(input bag, output bag)`` pairs for ``anomaly-seg bag PATH... --out OUT``.

    One path that is itself a bag: the output bag is ``OUT`` (as before). Otherwise every
    path is a bag or a folder of bags (its subfolders that are rosbag2 folders, by name), and
    each output bag is ``OUT/<bag name>``. Everything is checked before a single frame is
    replayed, so an hour-long run does not stop at its last bag.

    Raises:
        BagError: a path is neither a bag nor a folder with bags, two bags share a name, or
            an output bag exists already.
    """
    paths, out = [Path(p) for p in paths], Path(out)
    if not paths:
        raise BagError("no input bags given; expected rosbag2 folders or a folder that contains them")
    if len(paths) == 1 and is_bag(paths[0]):
        pairs = [(paths[0], out)]
    else:
        bags: list[Path] = []
        for path in paths:
            if is_bag(path):
                bags.append(path)
            elif path.is_dir() and (found := sorted(p for p in path.iterdir() if is_bag(p))):
                bags += found
            else:
                raise BagError(
                    f"{path} is neither a rosbag2 bag (a folder with metadata.yaml, or a .mcap/.db3 file) "
                    "nor a folder that contains bags"
                )
        names: dict[str, Path] = {}
        unique: dict[Path, Path] = {}
        for bag in bags:  # the same bag named twice (itself and through its folder) runs once
            unique.setdefault(bag.resolve(), bag)
        for bag in unique.values():
            name = bag.stem if bag.is_file() else bag.name
            if name in names:
                raise BagError(f"two input bags are named {name!r} ({names[name]} and {bag}); outputs go to OUT/<name>")
            names[name] = bag
        pairs = [(bag, out / name) for name, bag in names.items()]
    for _, target in pairs:
        if target.exists():
            raise BagError(f"output bag {target} exists already; choose a new --out or remove it")
    return pairs


@dataclass
class MultiReplay:
    """Reports of the bags of one run and the accumulators they all fed."""

    reports: list[ReplayReport]
    pooled: PooledMetrics


def replay_bags(
    pairs: Sequence[tuple[Path, Path]],
    perception: Perception,
    options: ReplayOptions | None = None,
    *,
    progress: bool = False,
) -> MultiReplay:
    """Replay each ``(input, output)`` pair with the same pipeline (alert tracks reset per bag)."""
    options = options or ReplayOptions()
    for bag, _ in pairs:  # topic problems surface before the first bag is replayed
        find_topics(bag, options)
    pooled = new_pooled_metrics(perception, options)
    reports: list[ReplayReport] = []
    for bag, target in pairs:
        if progress:
            log.info("replaying %s into %s", bag, target)
        # accumulated per bag and merged in bag order, as a parallel run does: the two agree exactly
        contribution = new_pooled_metrics(perception, options)
        try:
            reports.append(replay_bag(bag, target, perception, options, progress=progress, pooled=contribution))
        except ReplayStopped as stopped:  # the bags before it, and it up to the stop, make the partial report
            pooled.merge(contribution)
            stopped.reports = [*reports, *stopped.reports]
            stopped.pooled = pooled
            raise
        pooled.merge(contribution)
    return MultiReplay(reports, pooled)


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


def _reject(report: ReplayReport, error: MessageConversionError | AnomalySegError, topic: str) -> None:
    reason = getattr(error, "reason", "perception")
    report.rejected[reason] += 1
    report.rejected_by_topic.setdefault(topic, Counter())[reason] += 1
    report.last_rejection = f"{topic}: {error}"
    log.warning("skipped a message (%s): %s", reason, error)
