"""anomaly_seg_node under ROS 2: outputs carry the input stamps; start-up errors exit non-zero.

Needs rclpy, the built anomaly_seg_msgs interface package and ``ros2 bag`` (a sourced ROS 2
workspace); skipped otherwise, since ROS 2 cannot be installed on the development machines.
"""

import subprocess
import sys
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed: ROS 2 is not available on this machine")
pytest.importorskip("anomaly_seg_msgs", reason="anomaly_seg_msgs is not built: colcon build the msg/ package")

from anomaly_seg_msgs.msg import ObstacleAlertArray  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from anomaly_seg_ros.replay.synthetic_bag import SequenceTopics  # noqa: E402
from anomaly_seg_ros.ros import messages  # noqa: E402
from anomaly_seg_ros.ros.node import AnomalySegNode  # noqa: E402

from conftest import ros_test_assets  # noqa: E402

TOPICS = SequenceTopics()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return ros_test_assets(tmp_path_factory.mktemp("ros_node"))


def _stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def test_every_output_carries_an_input_stamp(assets):
    bag, weights, input_stamps = assets
    rclpy.init()
    play = None
    try:
        node = AnomalySegNode(
            parameter_overrides=[Parameter("model.weights", value=str(weights))],
            cli_args=["--ros-args", "-r", f"image:={TOPICS.image}", "-r", f"camera_info:={TOPICS.camera_info}"],
        )
        probe = rclpy.create_node("anomaly_seg_probe")
        received: dict[str, set[int]] = {name: set() for name in messages.OUTPUT_TYPES}
        for name in messages.OUTPUT_TYPES:
            probe.create_subscription(
                ObstacleAlertArray if name == messages.OBSTACLE_ALERTS else Image,
                f"/{node.get_name()}/{name}",
                lambda msg, name=name: received[name].add(_stamp_ns(msg.header)),
                qos_profile_sensor_data,
            )
        diagnostics: list[DiagnosticArray] = []
        probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        executor.add_node(probe)
        play = subprocess.Popen(["ros2", "bag", "play", str(bag), "--loop"])
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and not (all(received.values()) and diagnostics):
            executor.spin_once(timeout_sec=0.1)
        for name, stamps in received.items():
            assert stamps, f"nothing received on ~/{name}"
            assert stamps <= input_stamps, f"~/{name} carries stamps that no input image had"
        assert diagnostics and diagnostics[-1].status[0].name.endswith(": pipeline")
        node.destroy_node()
        probe.destroy_node()
    finally:
        if play is not None:
            play.terminate()
            play.wait(10)
        rclpy.try_shutdown()


def test_missing_weights_is_one_line_and_exit_status_1():
    proc = subprocess.run(
        [sys.executable, "-m", "anomaly_seg_ros.ros.node"], capture_output=True, text=True, timeout=120
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "model.weights" in output and "Traceback" not in output
