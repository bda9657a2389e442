"""The synthetic driving bag: topics, types, stamps, frame ids, camera model and ground truth."""

import numpy as np
import pytest

from anomaly_seg_ros.data import camera_intrinsics, render_sequence
from anomaly_seg_ros.replay.bagio import iter_messages, list_topics
from anomaly_seg_ros.replay.synthetic_bag import START_NS, write_sequence_bag
from anomaly_seg_ros.ros.conversions import image_to_array, image_to_rgb, stamp_to_ns
from anomaly_seg_ros.tools.cli import main

FRAMES, HEIGHT, WIDTH, FPS = 12, 64, 128, 10.0


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_sequence_bag_contents(tmp_path, storage):
    path = write_sequence_bag(
        tmp_path / "bag", seed=3, num_frames=FRAMES, height=HEIGHT, width=WIDTH, fps=FPS, storage=storage
    )
    assert list_topics(path) == {
        "/camera/image_raw": ("sensor_msgs/msg/Image", FRAMES),
        "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", FRAMES),
        "/camera/anomaly_gt": ("sensor_msgs/msg/Image", FRAMES),
    }
    expected = list(render_sequence(3, num_frames=FRAMES, height=HEIGHT, width=WIDTH, fps=FPS))
    camera = camera_intrinsics(3, height=HEIGHT, width=WIDTH)
    images, truths = [], []
    for message in iter_messages(path):
        header = message.msg.header
        assert header.frame_id == "camera_optical_frame"
        assert stamp_to_ns(header) == message.timestamp_ns
        if message.topic == "/camera/image_raw":
            assert message.msg.encoding == "rgb8"
            images.append((message.timestamp_ns, image_to_rgb(message.msg)))
        elif message.topic == "/camera/anomaly_gt":
            assert message.msg.encoding == "mono8"
            truths.append(image_to_array(message.msg))
        else:
            k = message.msg.k.reshape(3, 3)
            assert (message.msg.width, message.msg.height) == (WIDTH, HEIGHT)
            assert k[0, 0] == pytest.approx(camera.fx) and k[1, 2] == pytest.approx(camera.cy)
    stamps = [stamp for stamp, _ in images]
    assert stamps == [START_NS + round(i * 1e9 / FPS) for i in range(FRAMES)]  # a real frame rate
    for (_, image), truth, frame in zip(images, truths, expected, strict=True):
        np.testing.assert_array_equal(image, frame.scene.image)
        np.testing.assert_array_equal(truth, frame.scene.anomaly)
    assert any((truth == 1).any() for truth in truths)  # anomalies do appear
    assert set(np.unique(np.concatenate([t.ravel() for t in truths]))) <= {0, 1, 255}


def test_synth_cli_writes_datasets_and_both_bags(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["synth", str(out), "--train", "2", "--val", "1", "--anomaly", "1", "--height", "64", "--width", "128"]
    assert main([*args, "--bag-frames", "3", "--bag-storage", "both"]) == 0
    assert sorted(p.name for p in (out / "bags").iterdir()) == ["drive_mcap", "drive_sqlite3"]
    for storage in ("mcap", "sqlite3"):
        assert list_topics(out / "bags" / f"drive_{storage}")["/camera/image_raw"][1] == 3
    assert len(list((out / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))) == 2
    assert "driving bag" in capsys.readouterr().out
