"""Output messages of the pipeline, built with a rosbags typestore (bag tool, tests).

The topic names and encodings here are the node's: ``~/semantic_mask`` (mono8 trainIds),
``~/semantic_color`` (rgb8), ``~/anomaly_heatmap`` (32FC1), ``~/anomaly_overlay`` (rgb8) and
``~/obstacle_alerts`` (anomaly_seg_msgs/msg/ObstacleAlertArray).
"""

from __future__ import annotations

from typing import Any

from anomaly_seg_ros.core.alerts import Alert
from anomaly_seg_ros.core.ground import GroundModel
from anomaly_seg_ros.core.perception import PerceptionResult
from anomaly_seg_ros.ros.conversions import array_to_image_msg
from anomaly_seg_ros.ros.typestore import OBSTACLE_ALERT, OBSTACLE_ALERT_ARRAY

IMAGE = "sensor_msgs/msg/Image"

SEMANTIC_MASK = "semantic_mask"
SEMANTIC_COLOR = "semantic_color"
ANOMALY_HEATMAP = "anomaly_heatmap"
ANOMALY_OVERLAY = "anomaly_overlay"
OBSTACLE_ALERTS = "obstacle_alerts"

OUTPUT_TYPES = {
    SEMANTIC_MASK: IMAGE,
    SEMANTIC_COLOR: IMAGE,
    ANOMALY_HEATMAP: IMAGE,
    ANOMALY_OVERLAY: IMAGE,
    OBSTACLE_ALERTS: OBSTACLE_ALERT_ARRAY,
}


def output_topics(namespace: str) -> dict[str, str]:
    """Full topic name -> message type of every output, under the node's namespace."""
    return {f"{namespace.rstrip('/')}/{name}": kind for name, kind in OUTPUT_TYPES.items()}


def alert_msg(typestore: Any, alert: Alert, ground: GroundModel | None = None) -> Any:
    """One ObstacleAlert; ``typestore`` is anything with a ``types`` mapping of message classes.

    The ground-plane fields are filled from the alert's lowest point when ``ground`` (camera
    intrinsics, height and pitch) is given and that point lies below the horizon; otherwise
    ``position_valid`` is false and the position and distance are zero.
    """
    types = typestore.types
    x, y, w, h = alert.component.bbox
    position, distance, valid = (0.0, 0.0, 0.0), 0.0, False
    if ground is not None:
        estimate = ground.project(*alert.component.bottom_point)
        if bool(estimate.valid[0]):
            position = tuple(float(c) for c in estimate.points[0])
            distance, valid = float(estimate.distance_m[0]), True
    return types[OBSTACLE_ALERT](
        track_id=alert.track_id,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=x, y_offset=y, height=h, width=w, do_rectify=False),
        area_px=alert.component.area_px,
        max_score=alert.component.max_score,
        mean_score=alert.component.mean_score,
        frames_seen=alert.frames_seen,
        in_drivable_area=alert.component.in_drivable_area,
        position_valid=valid,
        ground_position=types["geometry_msgs/msg/Point"](x=position[0], y=position[1], z=position[2]),
        distance_m=distance,
    )


def alert_array_msg(typestore: Any, header: Any, result: PerceptionResult, ground: GroundModel | None = None) -> Any:
    return typestore.types[OBSTACLE_ALERT_ARRAY](
        header=header,
        scorer=result.scorer,
        threshold=float(result.threshold),
        alerts=[alert_msg(typestore, alert, ground) for alert in result.alerts],
    )


def build_outputs(
    typestore: Any, header: Any, result: PerceptionResult, namespace: str, ground: GroundModel | None = None
) -> dict[str, Any]:
    """Every output message of one frame, stamped with the input image's header."""
    prefix = namespace.rstrip("/")
    outputs = {
        f"{prefix}/{SEMANTIC_MASK}": array_to_image_msg(typestore, result.labels, header, "mono8"),
        f"{prefix}/{ANOMALY_HEATMAP}": array_to_image_msg(typestore, result.anomaly, header, "32FC1"),
        f"{prefix}/{OBSTACLE_ALERTS}": alert_array_msg(typestore, header, result, ground),
    }
    if result.color is not None:
        outputs[f"{prefix}/{SEMANTIC_COLOR}"] = array_to_image_msg(typestore, result.color, header, "rgb8")
    if result.overlay is not None:
        outputs[f"{prefix}/{ANOMALY_OVERLAY}"] = array_to_image_msg(typestore, result.overlay, header, "rgb8")
    return outputs
