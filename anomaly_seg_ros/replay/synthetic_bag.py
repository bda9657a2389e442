"""Synthetic driving sequences recorded as rosbag2 (mcap or sqlite3) with the rosbags library.

Topics: the camera image (sensor_msgs/Image rgb8), its CameraInfo, and the anomaly ground
truth (sensor_msgs/Image mono8: 1 = anomaly, 0 = in-distribution, 255 = ignore), all with
the same stamp and frame_id per frame at a real frame rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from anomaly_seg_ros.data.synthetic import camera_intrinsics, render_sequence
from anomaly_seg_ros.replay.bagio import BagWriter
from anomaly_seg_ros.ros.conversions import array_to_image_msg, camera_info_msg, make_header
from anomaly_seg_ros.ros.typestore import get_typestore

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
#: 2023-11-14T22:13:20Z: a fixed start so that recordings are byte-for-byte reproducible.
START_NS = 1_700_000_000 * 10**9


@dataclass(frozen=True)
class SequenceTopics:
    image: str = "/camera/image_raw"
    camera_info: str = "/camera/camera_info"
    ground_truth: str = "/camera/anomaly_gt"
    frame_id: str = "camera_optical_frame"


def write_sequence_bag(
    path: str | Path,
    *,
    seed: int = 0,
    num_frames: int = 100,
    height: int = 512,
    width: int = 1024,
    num_anomalies: int = 2,
    fps: float = 10.0,
    storage: Literal["mcap", "sqlite3"] = "mcap",
    topics: SequenceTopics = SequenceTopics(),
    progress: bool = False,
) -> Path:
    """Render a driving sequence and record it; returns the bag folder."""
    typestore = get_typestore()
    period_ns = round(1e9 / fps)
    camera = camera_intrinsics(seed, height=height, width=width)
    with BagWriter(path, storage=storage, typestore=typestore) as writer:
        writer.add_topic(topics.image, IMAGE)
        writer.add_topic(topics.camera_info, CAMERA_INFO)
        writer.add_topic(topics.ground_truth, IMAGE)
        frames = render_sequence(
            seed, num_frames=num_frames, height=height, width=width, num_anomalies=num_anomalies, fps=fps
        )
        for frame in tqdm(frames, total=num_frames, desc="synthetic bag", unit="frame", disable=not progress):
            stamp = START_NS + frame.index * period_ns
            header = make_header(typestore, stamp, topics.frame_id)
            writer.write(topics.image, array_to_image_msg(typestore, frame.scene.image, header, "rgb8"), stamp)
            writer.write(
                topics.camera_info,
                camera_info_msg(typestore, header, width, height, camera.fx, camera.fy, camera.cx, camera.cy),
                stamp,
            )
            writer.write(
                topics.ground_truth, array_to_image_msg(typestore, frame.scene.anomaly, header, "mono8"), stamp
            )
    return Path(path)
