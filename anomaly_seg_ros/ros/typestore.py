"""The rosbags typestore that the offline tools (de)serialise messages with.

The offline path never has rclpy, so message classes come from rosbags: the ROS 2 Humble
store for the standard types plus our own ``anomaly_seg_msgs`` types, registered from the
very ``.msg`` files that colcon builds for the node. Keeping one definition means a bag
written offline is readable by ``ros2 bag play`` and the node's subscribers, and the other
way round.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg
from rosbags.typesys import get_typestore as _rosbags_typestore
from rosbags.typesys.store import Typestore

MSG_PACKAGE = "anomaly_seg_msgs"

OBSTACLE_ALERT = f"{MSG_PACKAGE}/msg/ObstacleAlert"
OBSTACLE_ALERT_ARRAY = f"{MSG_PACKAGE}/msg/ObstacleAlertArray"
HEADER = "std_msgs/msg/Header"
TIME = "builtin_interfaces/msg/Time"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
REGION_OF_INTEREST = "sensor_msgs/msg/RegionOfInterest"
POINT = "geometry_msgs/msg/Point"

CUSTOM_TYPES = (OBSTACLE_ALERT, OBSTACLE_ALERT_ARRAY)

_SENTINEL = "ObstacleAlert.msg"


def _ament_share_dirs() -> list[Path]:
    """Share folders of a sourced ROS workspace; empty where there is none.

    ament_index_python may be importable without a workspace being sourced (the ROS 2 pip
    wheels install it): it then raises ``OSError`` (``AMENT_PREFIX_PATH is not set``) or
    ``LookupError`` for a package that is not in the index. Either means "not found here".
    """
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return []
    found = []
    for package in ("anomaly_seg_ros", MSG_PACKAGE):
        try:
            found.append(Path(get_package_share_directory(package)) / "msg")
        except (LookupError, OSError, ValueError):  # OSError: ament_index_python installed, no workspace sourced
            continue
    return found


def message_definition_dir() -> Path:
    """Folder holding ``ObstacleAlert.msg`` and ``ObstacleAlertArray.msg``.

    Looked up in order: the source checkout (``msg/msg`` beside the package, the editable
    install case), ``<sys.prefix>/share/anomaly_seg_ros/msg`` (where ``setup.py`` installs
    them for pip and colcon), then the ament index of a sourced workspace.

    Raises:
        FileNotFoundError: None of those places has the files; the message lists them all.
    """
    candidates = [
        Path(__file__).resolve().parents[2] / "msg" / "msg",
        Path(sys.prefix) / "share" / "anomaly_seg_ros" / "msg",
    ]
    for folder in candidates:
        if (folder / _SENTINEL).is_file():
            return folder
    # The ament index is asked only when neither place has the files.
    candidates += _ament_share_dirs()
    for folder in candidates[2:]:
        if (folder / _SENTINEL).is_file():
            return folder
    searched = "\n  ".join(str(folder) for folder in candidates)
    raise FileNotFoundError(
        f"cannot find the anomaly_seg_msgs message definitions ({_SENTINEL}); searched:\n  "
        f"{searched}\nreinstall the package (pip install -e . or colcon build) or source the "
        "ROS workspace"
    )


@cache
def get_typestore() -> Typestore:
    """ROS 2 Humble typestore plus the ``anomaly_seg_msgs`` types (built once, then shared).

    The returned store is shared by every caller: do not register more types into it.
    """
    store = _rosbags_typestore(Stores.ROS2_HUMBLE)
    folder = message_definition_dir()
    types = {}
    for typename in CUSTOM_TYPES:
        path = folder / f"{typename.rsplit('/', 1)[-1]}.msg"
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"), typename))
    store.register(types)
    return store
