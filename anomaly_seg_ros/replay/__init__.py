"""Bag replay without a ROS graph: rosbag2 I/O, replay through the perception core, the replay report."""

from anomaly_seg_ros.replay.records import ReplayReport
from anomaly_seg_ros.replay.report import write_bag_report
from anomaly_seg_ros.replay.runner import ReplayOptions, replay_bag, replay_bags

__all__ = ["ReplayOptions", "ReplayReport", "replay_bag", "replay_bags", "write_bag_report"]
