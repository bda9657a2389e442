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

from anomaly_seg_ros.ros.cameras import PARAMETER_ARGUMENTS, pipeline_nodes

PACKAGE = "anomaly_seg_ros"

ARGUMENTS = (
    "camera_topic",
    "compressed",
    "camera_info_topic",
    "namespace",
    "cameras",
    "params_file",
    *PARAMETER_ARGUMENTS,
    "use_sim_time",
)


def _pipeline(context: LaunchContext) -> list[Node]:
    """The nodes, with parameters and remappings built from the arguments' values at launch time."""
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    return [
        Node(
            package=PACKAGE,
            executable="anomaly_seg_node",
            name=node.name,
            namespace=node.namespace,
            parameters=node.parameters,
            remappings=node.remappings,
            output="screen",
            emulate_tty=True,
        )
        for node in pipeline_nodes(values)
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
                description="scorer.name (a scorer of anomaly_seg_ros.scoring, see README); empty = params_file's",
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
