"""The transport-free perception core that the ROS node and the offline tools share.

``Perception`` (preprocessing -> backend -> scorer -> alerts -> visualisation), its one
configuration schema, the ground model and the alert tracker. Nothing here imports rclpy,
rosbags, matplotlib or the training code (``test_architecture.py`` checks it).
"""
