"""Start anomaly_seg_node on one camera (and optionally RViz).

    ros2 launch anomaly_seg_ros pipeline.launch.py camera_topic:=/front/image_raw \
        camera_info_topic:=/front/camera_info weights:=/models/erfnet.safetensors device:=cuda
    ros2 launch anomaly_seg_ros pipeline.launch.py cameras:=front,left weights:=...   # one node per camera

Parameters come from ``params_file`` (default: the installed config/pipeline.yaml); the
model/scorer/backend/device arguments override that file only when given (an empty value
keeps the file's setting), so one file can serve several vehicles.
"""

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from anomaly_seg_ros.ros.cameras import camera_streams

PACKAGE = "anomaly_seg_ros"

#: Launch argument -> node parameter, applied only when the argument is not empty.
PARAMETER_ARGUMENTS = {
    "model_name": "model.name",
    "weights": "model.weights",
    "scorer": "scorer.name",
    "backend": "model.backend",
    "device": "model.device",
}

_TRUE = ("true", "1", "yes", "on")


def _pipeline(context: LaunchContext) -> list[Node]:
    """The node, with overrides built from the arguments' values at launch time."""

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    overrides: dict[str, object] = {"input.compressed": value("compressed").lower() in _TRUE}
    overrides.update({parameter: value(arg) for arg, parameter in PARAMETER_ARGUMENTS.items() if value(arg)})
    parameters: list[object] = [value("params_file")] if value("params_file") else []
    parameters += [overrides, {"use_sim_time": value("use_sim_time").lower() in _TRUE}]
    streams = camera_streams(
        value("cameras"),
        image_topic=value("camera_topic"),
        camera_info_topic=value("camera_info_topic"),
        namespace=value("namespace"),
    )
    return [
        Node(
            package=PACKAGE,
            executable="anomaly_seg_node",
            name="anomaly_seg_node",
            namespace=stream.namespace,
            parameters=parameters,
            remappings=[
                ("image", stream.image_topic),
                ("image/compressed", f"{stream.image_topic}/compressed"),
                ("camera_info", stream.camera_info_topic),
            ],
            output="screen",
            emulate_tty=True,
        )
        for stream in streams
    ]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "camera_topic", default_value="/camera/image_raw", description="sensor_msgs/Image topic"
            ),
            DeclareLaunchArgument(
                "compressed",
                default_value="false",
                description="subscribe to <camera_topic>/compressed (sensor_msgs/CompressedImage) instead",
            ),
            DeclareLaunchArgument(
                "camera_info_topic", default_value="/camera/camera_info", description="sensor_msgs/CameraInfo topic"
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its outputs"),
            DeclareLaunchArgument(
                "cameras",
                default_value="",
                description="several cameras, e.g. front,left: one node each in <namespace>/<camera> on "
                "/<camera>/image_raw and /<camera>/camera_info; empty = the single camera_topic",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([share, "config", "pipeline.yaml"]),
                description="node parameter file (/**: ros__parameters: layout)",
            ),
            DeclareLaunchArgument("model_name", default_value="", description="model.name; empty = params_file's"),
            DeclareLaunchArgument(
                "weights", default_value="", description="model.weights checkpoint path; empty = params_file's"
            ),
            DeclareLaunchArgument(
                "scorer",
                default_value="",
                description="scorer.name (msp, maxlogit, maxentropy, energy); empty = params_file's",
            ),
            DeclareLaunchArgument(
                "backend", default_value="", description="model.backend (eager, compile); empty = params_file's"
            ),
            DeclareLaunchArgument(
                "device", default_value="", description="model.device (cpu, cuda, cuda:N); empty = params_file's"
            ),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
            DeclareLaunchArgument("rviz", default_value="false", description="start RViz with the pipeline's views"),
            OpaqueFunction(function=_pipeline),
            Node(
                package="rviz2",
                executable="rviz2",
                arguments=["-d", PathJoinSubstitution([share, "config", "anomaly_seg.rviz"])],
                condition=IfCondition(LaunchConfiguration("rviz")),
                output="screen",
            ),
        ]
    )
