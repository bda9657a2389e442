"""Bag round trips through rosbags in both storages, raw passthrough and error messages."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_types_from_msg
from rosbags.typesys import get_typestore as rosbags_typestore

from anomaly_seg_ros.common.errors import BagError
from anomaly_seg_ros.replay.bagio import BagWriter, iter_messages, iter_raw, list_topics
from anomaly_seg_ros.ros import conversions as conv
from anomaly_seg_ros.ros.typestore import (
    CAMERA_INFO,
    IMAGE,
    OBSTACLE_ALERT,
    OBSTACLE_ALERT_ARRAY,
    POINT,
    REGION_OF_INTEREST,
    get_typestore,
)

TS = get_typestore()
FRAMES = 3
T0 = 1_700_000_000_000_000_000
PERIOD = 100_000_000
TOPICS = {"/cam/image": IMAGE, "/cam/info": CAMERA_INFO, "/anomaly/alerts": OBSTACLE_ALERT_ARRAY}


def frame(i: int) -> np.ndarray:
    """Distinct small RGB image per frame index."""
    y, x = np.mgrid[0:6, 0:8]
    return np.dstack([x + i, y * 2 + i, np.full_like(x, 10 * i)]).astype(np.uint8)


def alert_array(header, i: int):
    alert = TS.types[OBSTACLE_ALERT](
        track_id=i,
        roi=TS.types[REGION_OF_INTEREST](x_offset=i, y_offset=2, height=3, width=4, do_rectify=False),
        area_px=12,
        max_score=0.5,
        mean_score=0.25,
        frames_seen=i + 1,
        in_drivable_area=True,
        position_valid=False,
        ground_position=TS.types[POINT](x=0.0, y=0.0, z=0.0),
        distance_m=0.0,
    )
    return TS.types[OBSTACLE_ALERT_ARRAY](header=header, scorer="msp", threshold=0.5, alerts=[alert] * i)


def write_bag(path, storage):
    with BagWriter(path, storage=storage) as writer:
        for topic, msgtype in TOPICS.items():
            writer.add_topic(topic, msgtype)
        for i in range(FRAMES):
            stamp = T0 + i * PERIOD
            header = conv.make_header(TS, stamp, f"camera_{i}")
            writer.write("/cam/image", conv.rgb_to_image_msg(TS, frame(i), header), stamp)
            writer.write("/cam/info", conv.camera_info_msg(TS, header, 8, 6, 5.0, 5.0, 4.0, 3.0), stamp + 1)
            writer.write("/anomaly/alerts", alert_array(header, i), stamp + 2)
    return path


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def bag(request, tmp_path_factory):
    return write_bag(tmp_path_factory.mktemp("bags") / request.param, request.param)


def test_storage_on_disk(bag):
    assert (bag / "metadata.yaml").is_file()
    assert list(bag.glob("*.mcap" if bag.name == "mcap" else "*.db3"))


def test_list_topics(bag):
    assert list_topics(bag) == {topic: (msgtype, FRAMES) for topic, msgtype in TOPICS.items()}


def test_round_trip(bag):
    messages = list(iter_messages(bag))
    assert len(messages) == 3 * FRAMES
    assert [m.timestamp_ns for m in messages] == sorted(m.timestamp_ns for m in messages)
    by_topic = {topic: [m for m in messages if m.topic == topic] for topic in TOPICS}
    for topic, msgtype in TOPICS.items():
        assert [m.msgtype for m in by_topic[topic]] == [msgtype] * FRAMES
        assert [m.msg.__msgtype__ for m in by_topic[topic]] == [msgtype] * FRAMES
        offset = list(TOPICS).index(topic)
        assert [m.timestamp_ns for m in by_topic[topic]] == [T0 + i * PERIOD + offset for i in range(FRAMES)]
        assert [m.msg.header.frame_id for m in by_topic[topic]] == [f"camera_{i}" for i in range(FRAMES)]
        assert [conv.stamp_to_ns(m.msg.header) for m in by_topic[topic]] == [T0 + i * PERIOD for i in range(FRAMES)]
    for i, m in enumerate(by_topic["/cam/image"]):
        np.testing.assert_array_equal(conv.image_to_rgb(m.msg), frame(i))
    for m in by_topic["/cam/info"]:
        np.testing.assert_array_equal(m.msg.k, [5, 0, 4, 0, 5, 3, 0, 0, 1])
    for i, m in enumerate(by_topic["/anomaly/alerts"]):
        assert len(m.msg.alerts) == i and all(a.roi.x_offset == i for a in m.msg.alerts)


def test_topic_filter(bag):
    messages = list(iter_messages(bag, topics=["/cam/info"]))
    assert [m.topic for m in messages] == ["/cam/info"] * FRAMES
    with pytest.raises(BagError, match=r"/nope.*available: /anomaly/alerts, /cam/image, /cam/info"):
        list(iter_messages(bag, topics=["/nope"]))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_raw_passthrough_copies_bytes(bag, tmp_path, storage):
    copy = tmp_path / "copy"
    with BagWriter(copy, storage=storage) as writer:
        for raw in iter_raw(bag, topics=["/cam/image", "/anomaly/alerts"]):
            writer.copy_raw(raw)
    source = [
        (r.topic, r.msgtype, r.timestamp_ns, r.rawdata) for r in iter_raw(bag, topics=["/cam/image", "/anomaly/alerts"])
    ]
    copied = [(r.topic, r.msgtype, r.timestamp_ns, r.rawdata) for r in iter_raw(copy)]
    assert copied == source and len(copied) == 2 * FRAMES
    assert all(isinstance(r[3], bytes) for r in copied)
    assert list_topics(copy) == {"/anomaly/alerts": (OBSTACLE_ALERT_ARRAY, FRAMES), "/cam/image": (IMAGE, FRAMES)}


def test_write_raw_after_add_topic(bag, tmp_path):
    raws = list(iter_raw(bag, topics=["/cam/info"]))
    with BagWriter(tmp_path / "out") as writer:
        writer.add_topic("/renamed/info", CAMERA_INFO)
        for raw in raws:
            writer.write_raw("/renamed/info", raw.rawdata, raw.timestamp_ns)
    back = list(iter_messages(tmp_path / "out"))
    assert [m.topic for m in back] == ["/renamed/info"] * FRAMES
    assert [m.msg.header.frame_id for m in back] == [f"camera_{i}" for i in range(FRAMES)]


def test_type_unknown_to_typestore_is_copied_raw(tmp_path):
    vendor = rosbags_typestore(Stores.ROS2_HUMBLE)
    vendor.register(get_types_from_msg("uint32 ticks\nstring label", "vendor_msgs/msg/Tick"))
    src = tmp_path / "vendor"
    with BagWriter(src, typestore=vendor) as writer:
        writer.add_topic("/tick", "vendor_msgs/msg/Tick")
        writer.write("/tick", vendor.types["vendor_msgs/msg/Tick"](ticks=42, label="a"), 5)

    with pytest.raises(BagError, match="vendor_msgs/msg/Tick.*iter_raw"):
        list(iter_messages(src))
    copy = tmp_path / "copy"
    with BagWriter(copy) as writer:
        for raw in iter_raw(src):
            writer.copy_raw(raw)
    (msg,) = iter_messages(copy, typestore=vendor)
    assert (msg.msg.ticks, msg.msg.label, msg.timestamp_ns) == (42, "a", 5)


def test_missing_and_invalid_bag_paths(tmp_path):
    with pytest.raises(BagError, match="does not exist"):
        list(iter_messages(tmp_path / "missing"))
    with pytest.raises(BagError, match="does not exist"):
        list_topics(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"):
        list(iter_raw(tmp_path / "empty"))


def test_existing_output_is_refused(bag):
    with pytest.raises(BagError, match="exists already"):
        BagWriter(bag)
    with pytest.raises(BagError, match="storage"):
        BagWriter(bag.parent / "new", storage="rosbag1")


def test_writer_misuse(tmp_path):
    header = conv.make_header(TS, 0, "cam")
    with BagWriter(tmp_path / "out", storage="sqlite3") as writer:
        with pytest.raises(BagError, match="add_topic"):
            writer.write("/img", conv.rgb_to_image_msg(TS, frame(0), header), 0)
        writer.add_topic("/img", IMAGE)
        assert writer.add_topic("/img", IMAGE) is writer.add_topic("/img", IMAGE)
        with pytest.raises(BagError, match="has type sensor_msgs/msg/Image"):
            writer.add_topic("/img", CAMERA_INFO)
        with pytest.raises(BagError, match="got a sensor_msgs/msg/CameraInfo"):
            writer.write("/img", conv.camera_info_msg(TS, header, 1, 1, 1, 1, 0, 0), 0)
        with pytest.raises(BagError, match="not in the typestore"):
            writer.add_topic("/x", "vendor_msgs/msg/Unknown")
