"""Which node instances a launch starts: one per camera.

One node (and one model instance) per camera rather than one node batching all cameras:
each camera keeps its own queue of one, QoS, parameters and diagnostics, so a slow or
failing camera cannot add latency to another, and a node restarts alone. ERFNet's weights
are 8 MB, so the duplicated models cost little GPU memory; what batching would save (kernel
launches of several small forwards) is to be measured with the inference-speed work.
"""

from __future__ import annotations

from dataclasses import dataclass

from anomaly_seg_ros.common.errors import ConfigError


@dataclass(frozen=True)
class CameraStream:
    namespace: str
    image_topic: str
    camera_info_topic: str


def camera_streams(
    cameras: str, *, image_topic: str, camera_info_topic: str, namespace: str = ""
) -> list[CameraStream]:
    """Node instances for a launch.

    ``cameras`` empty: one node in ``namespace`` on ``image_topic``/``camera_info_topic``.
    ``cameras="front,left"``: one node per camera, in ``<namespace>/<camera>``, on
    ``/<camera>/image_raw`` and ``/<camera>/camera_info`` (the image_pipeline convention).
    """
    names = [name.strip().strip("/") for name in cameras.split(",") if name.strip()]
    if not names:
        return [CameraStream(namespace, image_topic, camera_info_topic)]
    bad = [name for name in names if not name.replace("_", "").replace("/", "").isalnum() or name[0].isdigit()]
    if bad or len(set(names)) != len(names):
        raise ConfigError(
            f"cameras: expected distinct ROS names separated by commas (e.g. front,left), got {cameras!r}"
        )
    prefix = namespace.rstrip("/")
    return [CameraStream(f"{prefix}/{name}", f"/{name}/image_raw", f"/{name}/camera_info") for name in names]
