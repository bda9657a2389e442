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


#: Launch argument -> node parameter, applied only when the argument is not empty.
PARAMETER_ARGUMENTS = {
    "model_name": "model.name",
    "weights": "model.weights",
    "scorer": "scorer.name",
    "backend": "model.backend",
    "device": "model.device",
}

_TRUE = ("true", "1", "yes", "on")


@dataclass(frozen=True)
class NodeLaunch:
    """What pipeline.launch.py gives one anomaly_seg_node: name, namespace, parameters, remappings."""

    name: str
    namespace: str
    #: Parameter files (paths) and override mappings, in launch_ros order (later wins).
    parameters: list
    remappings: list[tuple[str, str]]


def pipeline_nodes(arguments: dict[str, str]) -> list[NodeLaunch]:
    """The nodes of pipeline.launch.py for its launch arguments' values (all strings).

    The launch file calls this with the performed ``LaunchConfiguration`` values; the tests
    call it with the same values and start the real node with the result.
    """
    value = {key: str(text).strip() for key, text in arguments.items()}
    overrides: dict[str, object] = {"input.compressed": value.get("compressed", "").lower() in _TRUE}
    overrides.update({parameter: value[arg] for arg, parameter in PARAMETER_ARGUMENTS.items() if value.get(arg)})
    parameters: list[object] = [value["params_file"]] if value.get("params_file") else []
    parameters += [overrides, {"use_sim_time": value.get("use_sim_time", "").lower() in _TRUE}]
    streams = camera_streams(
        value.get("cameras", ""),
        image_topic=value["camera_topic"],
        camera_info_topic=value["camera_info_topic"],
        namespace=value.get("namespace", ""),
    )
    return [
        NodeLaunch(
            name="anomaly_seg_node",
            namespace=stream.namespace,
            parameters=parameters,
            remappings=[
                ("image", stream.image_topic),
                ("image/compressed", f"{stream.image_topic}/compressed"),
                ("camera_info", stream.camera_info_topic),
            ],
        )
        for stream in streams
    ]
