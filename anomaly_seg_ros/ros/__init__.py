"""ROS message handling that works without rclpy.

``typestore`` and ``conversions`` are used both by the offline tools (rosbags messages) and
by the node (rclpy messages). Nothing imported here may import rclpy, so that the package
and its tests run on machines without ROS; the node module imports rclpy itself.
"""
