"""The synthetic driving bag played in a loop through anomaly_seg_node, shown in RViz.

    anomaly-seg demo                      # once: writes demo_output/bags/drive_mcap
    ros2 launch anomaly_seg_ros demo.launch.py bag:=demo_output/bags/drive_mcap \
        weights:=checkpoints/erfnet_synthetic_oe.safetensors

The node runs config/demo_node.yaml: the demo model's scorer and alert region (config/demo.yaml,
the ego hood kept out) in the node's parameter layout.

The bag is played on wall time (no --clock): a looping clock would jump backwards at each
loop, which nodes on sim time treat as a reset.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("anomaly_seg_ros")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "bag", default_value="demo_output/bags/drive_mcap", description="synthetic bag from `anomaly-seg demo`"
            ),
            DeclareLaunchArgument(
                "weights",
                default_value="checkpoints/erfnet_synthetic_oe.safetensors",
                description="checkpoint (the demo model, trained on synthetic scenes)",
            ),
            DeclareLaunchArgument("device", default_value="", description="model.device; empty = params_file's"),
            DeclareLaunchArgument("rviz", default_value="true", description="start RViz"),
            ExecuteProcess(cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--loop"], output="screen"),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "pipeline.launch.py"])),
                launch_arguments={
                    "params_file": PathJoinSubstitution([share, "config", "demo_node.yaml"]),
                    "camera_topic": "/camera/image_raw",
                    "camera_info_topic": "/camera/camera_info",
                    "weights": LaunchConfiguration("weights"),
                    "device": LaunchConfiguration("device"),
                    "rviz": LaunchConfiguration("rviz"),
                }.items(),
            ),
        ]
    )
