"""Output messages of the pipeline, built with a rosbags typestore (bag tool, tests).

The topic names and encodings here are the node's: ``~/semantic_mask`` (mono8 trainIds),
``~/semantic_color`` (rgb8), ``~/anomaly_heatmap`` (32FC1), ``~/anomaly_overlay`` (rgb8) and
``~/obstacle_alerts`` (anomaly_seg_msgs/msg/ObstacleAlertArray).
"""

from __future__ import annotations

from typing import Any

from anomaly_seg_ros.alerts import Alert
from anomaly_seg_ros.perception import PerceptionResult
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


def alert_msg(typestore: Any, alert: Alert) -> Any:
    """One ObstacleAlert. The ground-plane fields stay invalid until camera geometry is known."""
    types = typestore.types
    x, y, w, h = alert.component.bbox
    return types[OBSTACLE_ALERT](
        track_id=alert.track_id,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=x, y_offset=y, height=h, width=w, do_rectify=False),
        area_px=alert.component.area_px,
        max_score=alert.component.max_score,
        mean_score=alert.component.mean_score,
        frames_seen=alert.frames_seen,
        in_drivable_area=alert.component.in_drivable_area,
        position_valid=False,
        ground_position=types["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
        distance_m=0.0,
    )


def alert_array_msg(typestore: Any, header: Any, result: PerceptionResult) -> Any:
    return typestore.types[OBSTACLE_ALERT_ARRAY](
        header=header,
        scorer=result.scorer,
        threshold=result.threshold,
        alerts=[alert_msg(typestore, alert) for alert in result.alerts],
    )


def build_outputs(typestore: Any, header: Any, result: PerceptionResult, namespace: str) -> dict[str, Any]:
    """Every output message of one frame, stamped with the input image's header."""
    prefix = namespace.rstrip("/")
    outputs = {
        f"{prefix}/{SEMANTIC_MASK}": array_to_image_msg(typestore, result.labels, header, "mono8"),
        f"{prefix}/{ANOMALY_HEATMAP}": array_to_image_msg(typestore, result.anomaly, header, "32FC1"),
        f"{prefix}/{OBSTACLE_ALERTS}": alert_array_msg(typestore, header, result),
    }
    if result.color is not None:
        outputs[f"{prefix}/{SEMANTIC_COLOR}"] = array_to_image_msg(typestore, result.color, header, "rgb8")
    if result.overlay is not None:
        outputs[f"{prefix}/{ANOMALY_OVERLAY}"] = array_to_image_msg(typestore, result.overlay, header, "rgb8")
    return outputs
