"""Bag replay: a hand-built rosbag2 through the pipeline into an output bag, read back with rosbags."""

import math

import numpy as np
import pytest

from anomaly_seg_ros.common.errors import BagError
from anomaly_seg_ros.replay.bagio import BagWriter, iter_messages, list_topics
from anomaly_seg_ros.replay.report import detection_section
from anomaly_seg_ros.replay.runner import ReplayOptions, find_topics, replay_bag
from anomaly_seg_ros.ros.conversions import (
    array_to_image_msg,
    camera_info_msg,
    make_header,
    rgb_to_compressed_msg,
    stamp_to_ns,
)
from anomaly_seg_ros.ros.typestore import get_typestore

from conftest import scene_perception as _perception

HEIGHT, WIDTH = 128, 256  # 2x the network input
START = 1_700_000_000 * 10**9
PERIOD = 100_000_000  # 10 Hz
FRAMES = 6
BAD_FRAME = 3  # its data is truncated: size/step mismatch
OUTPUTS = {
    "/anomaly_seg_node/semantic_mask": "sensor_msgs/msg/Image",
    "/anomaly_seg_node/semantic_color": "sensor_msgs/msg/Image",
    "/anomaly_seg_node/anomaly_heatmap": "sensor_msgs/msg/Image",
    "/anomaly_seg_node/anomaly_overlay": "sensor_msgs/msg/Image",
    "/anomaly_seg_node/obstacle_alerts": "anomaly_seg_msgs/msg/ObstacleAlertArray",
}


def _truth() -> np.ndarray:
    # SceneLogits' anomalous square, in frame pixels: rows 80..112, cols 112..144
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[80:112, 112:144] = 1
    mask[-4:] = 255  # ego hood: ignored
    return mask


def _write_bag(path, *, storage="mcap", compressed=False, camera_info=False):
    typestore = get_typestore()
    rng = np.random.default_rng(0)
    with BagWriter(path, storage=storage, typestore=typestore) as writer:
        camera = "/cam/image_raw/compressed" if compressed else "/cam/image_raw"
        writer.add_topic(camera, "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image")
        writer.add_topic("/cam/anomaly_gt", "sensor_msgs/msg/Image")
        if camera_info:
            writer.add_topic("/cam/camera_info", "sensor_msgs/msg/CameraInfo")
        for index in range(FRAMES):
            stamp = START + index * PERIOD
            header = make_header(typestore, stamp, "cam_optical")
            frame = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            if compressed:
                msg = rgb_to_compressed_msg(typestore, frame, header, format="png")
                if index == BAD_FRAME:
                    msg.data = msg.data[:20]
            else:
                msg = array_to_image_msg(typestore, frame, header, "rgb8")
                if index == BAD_FRAME:
                    msg.data = msg.data[: len(msg.data) // 2]
            writer.write(camera, msg, stamp)
            writer.write("/cam/anomaly_gt", array_to_image_msg(typestore, _truth(), header, "mono8"), stamp)
            if camera_info:
                info = camera_info_msg(typestore, header, WIDTH, HEIGHT, 100.0, 100.0, 127.5, 40.0)
                writer.write("/cam/camera_info", info, stamp)
    return path


@pytest.mark.parametrize("storage, compressed", [("mcap", False), ("sqlite3", True)])
def test_round_trip_topics_types_counts_and_stamps(tmp_path, storage, compressed):
    source = _write_bag(tmp_path / "in", storage=storage, compressed=compressed)
    report = replay_bag(source, tmp_path / "out", _perception(), ReplayOptions(storage=storage))

    topics = list_topics(tmp_path / "out")
    good = FRAMES - 1
    for topic, kind in OUTPUTS.items():
        assert topics[topic] == (kind, good), topic
    camera = "/cam/image_raw/compressed" if compressed else "/cam/image_raw"
    assert topics[camera][1] == FRAMES and topics["/cam/anomaly_gt"][1] == FRAMES  # inputs copied

    expected_stamps = [START + i * PERIOD for i in range(FRAMES) if i != BAD_FRAME]
    stamps = {topic: [] for topic in OUTPUTS}
    masks = []
    alerts = []
    for message in iter_messages(tmp_path / "out", topics=list(OUTPUTS)):
        stamps[message.topic].append((message.timestamp_ns, stamp_to_ns(message.msg.header)))
        assert message.msg.header.frame_id == "cam_optical"
        if message.topic.endswith("semantic_mask"):
            assert message.msg.encoding == "mono8"
            masks.append(message.msg)
        elif message.topic.endswith("anomaly_heatmap"):
            assert message.msg.encoding == "32FC1" and message.msg.step == WIDTH * 4
        elif message.topic.endswith("obstacle_alerts"):
            alerts.append(message.msg)
    for topic, pairs in stamps.items():
        assert [log for log, _ in pairs] == expected_stamps, topic
        assert [header for _, header in pairs] == expected_stamps, topic
    assert (masks[0].height, masks[0].width) == (HEIGHT, WIDTH)

    # persistence 2-of-3: the first frame raises nothing, the later ones one alert with one track id
    counts = [len(msg.alerts) for msg in alerts]
    assert counts[0] == 0 and all(count == 1 for count in counts[1:])
    assert len({msg.alerts[0].track_id for msg in alerts[1:]}) == 1
    roi = alerts[1].alerts[0].roi
    assert (roi.x_offset, roi.y_offset) == pytest.approx((112, 80), abs=2)
    assert alerts[1].scorer == "maxlogit" and alerts[1].threshold == pytest.approx(-5.0)

    assert report.frames == FRAMES and report.processed == good
    assert report.rejected == {"decode" if compressed else "size": 1}
    assert report.last_rejection
    summary = report.summary()
    assert summary["gt_frames"] == good
    # the square scores 0, everything else -10: a perfect separation of the ground truth
    assert summary["pixel_metrics"]["ap"] == pytest.approx(1.0)
    assert summary["pixel_metrics"]["fpr_at_tpr"] == pytest.approx(0.0)
    [obstacle] = summary["obstacles"]
    assert obstacle["first_seen_frame"] == 0 and obstacle["detected"]
    assert obstacle["delay_frames"] == 1 and obstacle["delay_s"] == pytest.approx(0.1)


def test_topic_discovery(tmp_path):
    source = _write_bag(tmp_path / "in")
    assert find_topics(source, ReplayOptions()) == ("/cam/image_raw", "sensor_msgs/msg/Image", "/cam/anomaly_gt")
    with pytest.raises(BagError, match="'/nope' is not in"):
        find_topics(source, ReplayOptions(topic="/nope"))
    two_cameras = tmp_path / "two"
    typestore = get_typestore()
    with BagWriter(two_cameras, typestore=typestore) as writer:
        for topic in ("/left/image_raw", "/right/image_raw"):
            writer.add_topic(topic, "sensor_msgs/msg/Image")
            image = np.zeros((8, 8, 3), dtype=np.uint8)
            writer.write(topic, array_to_image_msg(typestore, image, make_header(typestore, START, "c"), "rgb8"), START)
    with pytest.raises(BagError, match="2 image topics.*--topic"):
        find_topics(two_cameras, ReplayOptions())
    assert find_topics(two_cameras, ReplayOptions(topic="/right/image_raw"))[0] == "/right/image_raw"


def test_existing_output_is_refused(tmp_path):
    source = _write_bag(tmp_path / "in")
    (tmp_path / "out").mkdir()
    with pytest.raises(BagError):
        replay_bag(source, tmp_path / "out", _perception())


def test_flat_ground_distances_from_camera_info(tmp_path):
    source = _write_bag(tmp_path / "in", camera_info=True)
    options = ReplayOptions(camera_height_m=1.5)
    report = replay_bag(source, tmp_path / "out", _perception(), options)
    fx = fy = 100.0
    cx, cy, height = 127.5, 40.0, 1.5

    def flat_ground_distance(u: float, v: float) -> float:  # pitch 0: z = fy h / (v - cy)
        z = fy * height / (v - cy)
        return float(np.hypot((u - cx) / fx * z, z))

    alerts = [
        alert
        for m in iter_messages(tmp_path / "out", topics=["/anomaly_seg_node/obstacle_alerts"])
        for alert in m.msg.alerts
    ]
    assert alerts and all(alert.position_valid for alert in alerts)
    roi = alerts[0].roi
    bottom_row = roi.y_offset + roi.height - 1
    assert alerts[0].distance_m == pytest.approx(flat_ground_distance(roi.x_offset, bottom_row), rel=0.02)
    assert alerts[0].ground_position.y == pytest.approx(height)  # the road is 1.5 m below the camera
    [obstacle] = report.summary()["obstacles"]
    assert obstacle["first_distance_m"] == pytest.approx(flat_ground_distance(128, 111), rel=1e-6)
    assert obstacle["distance_at_alert_m"] == pytest.approx(alerts[0].distance_m, rel=1e-5)
    # the range min_area_px = 10 allows at this camera: (100 side / z)^2 = 10 for a 0.5 m^2 square
    summary = report.summary()
    assert summary["min_area_px"] == 10
    assert summary["range_at_min_area_m"]["0.5"] == pytest.approx(100 * math.sqrt(0.5) / math.sqrt(10))
    assert obstacle["frames"] == summary["gt_frames"] and obstacle["frames_below_min_area"] == 0
    assert obstacle["farthest_alertable_distance_m"] == pytest.approx(obstacle["first_distance_m"])
    lines = "\n".join(detection_section(summary["obstacles"], summary, with_bag=False))
    assert f"an obstacle of 0.5 m² frontal area reaches it up to {100 * math.sqrt(0.05):.0f} m" in lines
