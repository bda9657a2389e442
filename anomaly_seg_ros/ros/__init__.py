"""ROS message handling that works without rclpy.

``typestore`` and ``conversions`` are used both by the offline tools (rosbags messages) and
by the node (rclpy messages). Nothing imported here may import rclpy, so that the package
and its tests run on machines without ROS; the node module imports rclpy itself.
"""

from anomaly_seg_ros.inference.threads import apply_wait_policy

# The node's entry point (ros/node.py) imports torch at module level; this package is imported
# first, so the OpenMP wait policy is in the environment before OpenMP loads (inference/threads.py).
apply_wait_policy()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``anomaly_seg_node`` (``ros2 run anomaly_seg_ros anomaly_seg_node``).

    Importing the node takes seconds (torch, rclpy), before rclpy installs its signal handlers: a
    Ctrl-C or SIGTERM then is a normal stop too (exit 0, no traceback), as it is while the model
    loads and while frames are processed. SIGINT is handled even when the parent ignores it (a
    background job), as rclpy handles it afterwards.
    """
    import os
    import signal

    def stop_quietly(signum: int, frame: object) -> None:
        # Not SystemExit: raised inside a C extension's import (numpy, torch) it turns into an
        # ImportError with a traceback. Nothing is open yet (no file, no ROS context) to clean up.
        os._exit(0)

    signal.signal(signal.SIGINT, stop_quietly)
    signal.signal(signal.SIGTERM, stop_quietly)
    from anomaly_seg_ros.ros.node import main as node_main

    # rclpy.init (in node_main) installs its own handlers; until then the defaults are restored so
    # that nothing of this entry point outlives the import.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return node_main(args)
