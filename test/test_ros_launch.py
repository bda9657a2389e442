"""launch_testing: pipeline.launch.py on the synthetic bag; the alerts carry the input stamps.

Runs with ``launch_test test/test_ros_launch.py`` or pytest (launch_testing's plugin) in a
sourced ROS 2 workspace where anomaly_seg_ros and anomaly_seg_msgs are built; skipped
elsewhere, since ROS 2 cannot be installed on the development machines.
"""

import tempfile
import time
import unittest
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed: ROS 2 is not available on this machine")
pytest.importorskip("launch_testing", reason="launch_testing is not installed (no pip wheel; apt ROS 2 has it)")
pytest.importorskip("anomaly_seg_msgs", reason="anomaly_seg_msgs is not built: colcon build the msg/ package")

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
from anomaly_seg_msgs.msg import ObstacleAlertArray  # noqa: E402
from launch.actions import ExecuteProcess, IncludeLaunchDescription, TimerAction  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from anomaly_seg_ros.replay.synthetic_bag import SequenceTopics  # noqa: E402

from conftest import ros_test_assets  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "pipeline.launch.py"
TOPICS = SequenceTopics()
WORKDIR = Path(tempfile.mkdtemp(prefix="anomaly_seg_launch_test_"))


BAG, WEIGHTS, INPUT_STAMPS = ros_test_assets(WORKDIR)


@pytest.mark.launch_test
def generate_test_description():
    pipeline = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={
            "camera_topic": TOPICS.image,
            "camera_info_topic": TOPICS.camera_info,
            "weights": str(WEIGHTS),
        }.items(),
    )
    # Play after the node had time to load the model; loop so a late subscriber still gets frames.
    play = TimerAction(period=5.0, actions=[ExecuteProcess(cmd=["ros2", "bag", "play", str(BAG), "--loop"])])
    return launch.LaunchDescription([pipeline, play, launch_testing.actions.ReadyToTest()])


class TestAlertsCarryInputStamps(unittest.TestCase):
    def test_alerts_arrive_with_input_stamps(self):
        rclpy.init()
        try:
            probe = rclpy.create_node("anomaly_seg_launch_probe")
            stamps: set[int] = set()
            probe.create_subscription(
                ObstacleAlertArray,
                "/anomaly_seg_node/obstacle_alerts",
                lambda msg: stamps.add(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec),
                10,
            )
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline and len(stamps) < 5:
                rclpy.spin_once(probe, timeout_sec=0.1)
            self.assertGreaterEqual(len(stamps), 5, "fewer than 5 alert messages within 60 s")
            self.assertLessEqual(stamps, INPUT_STAMPS, "alerts carry stamps that no input image had")
            probe.destroy_node()
        finally:
            rclpy.try_shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_node_exits_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
