"""ROS message handling that works without rclpy.

``typestore`` and ``conversions`` are used both by the offline tools (rosbags messages) and
by the node (rclpy messages). Nothing imported here may import rclpy, so that the package
and its tests run on machines without ROS; the node module imports rclpy itself.
"""

from anomaly_seg_ros.inference.threads import apply_wait_policy

# The node's entry point (ros/node.py) imports torch at module level; this package is imported
# first, so the OpenMP wait policy is in the environment before OpenMP loads (inference/threads.py).
apply_wait_policy()
