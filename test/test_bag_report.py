"""Bag evaluation report: statistics against hand-worked cases and numpy, rejected frames, several bags
aggregated (totals = sums of the per-bag reports, pixels pooled), the report files, and the CLI layout."""

import csv
import functools
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from anomaly_seg_ros.common.errors import BagError
from anomaly_seg_ros.metrics.components import ComponentMetrics
from anomaly_seg_ros.metrics.ood import StreamingOODMetrics
from anomaly_seg_ros.replay import runner
from anomaly_seg_ros.replay.bagio import BagWriter, iter_messages
from anomaly_seg_ros.replay.report import write_bag_report
from anomaly_seg_ros.replay.runner import match_rule, plan_outputs, replay_bag, replay_bags
from anomaly_seg_ros.replay.stats import bag_duration_s, latency_stats, missing_frames, simulate_latest_slot
from anomaly_seg_ros.replay.synthetic_bag import START_NS, SequenceTopics, write_sequence_bag
from anomaly_seg_ros.ros.conversions import array_to_image_msg, make_header, stamp_to_ns
from anomaly_seg_ros.ros.typestore import get_typestore

from conftest import RedDetector, scene_perception

HEIGHT, WIDTH = 64, 128  # the network input of scene_perception: frame pixels = network pixels
FPS = 10.0
MS = 1_000_000  # ns


def _sequence(path, frames, seed=0):
    return write_sequence_bag(path, seed=seed, num_frames=frames, height=HEIGHT, width=WIDTH, fps=FPS)


def _truth_masks(bag):
    for message in iter_messages(bag, topics=[SequenceTopics().ground_truth]):
        yield np.frombuffer(message.msg.data, np.uint8).reshape(message.msg.height, message.msg.width)


def _csv_rows(path):
    with path.open() as stream:
        return list(csv.DictReader(stream))


# -- statistics, hand-worked -----------------------------------------------------------------


def test_latest_slot_drops_match_a_hand_simulation():
    # 10 Hz; frame 0 takes 250 ms: frame 1 waits, frame 2 replaces it (1 dropped); the worker takes
    # frame 2 at 250 ms (done 260 ms), so frames 3 and 4 find it idle.
    arrivals = [i * 100 * MS for i in range(5)]
    assert simulate_latest_slot(arrivals, [250, 10, 10, 10, 10]) == [1]
    # 150 ms every frame: 0 runs 0-150; 1 waits, runs 150-300; 2 waits, runs 300-450 (taken at 300,
    # just as 3 arrives, so 3 waits); 4 arrives at 400 with 3 waiting: 3 dropped; 4 runs 450-600; 5 waits.
    assert simulate_latest_slot([i * 100 * MS for i in range(6)], [150.0] * 6) == [3]
    # always faster than the frame period: nothing dropped
    assert simulate_latest_slot(arrivals, [99.0] * 5) == []
    with pytest.raises(ValueError, match="expected one each"):
        simulate_latest_slot(arrivals, [1.0])


def test_duration_and_missing_frames_from_stamps():
    stamps = [t * MS for t in (0, 100, 200, 500, 600)]  # 300 and 400 ms were not recorded
    # median interval 100 ms; the 300 ms interval lost round(300 / 100) - 1 = 2 frames
    assert missing_frames(stamps) == 2
    assert bag_duration_s(stamps) == pytest.approx(0.6 + 0.1)  # last - first + one interval
    assert missing_frames([0, 100 * MS, 200 * MS]) == 0
    assert bag_duration_s([5]) is None
    values = [3.0, 1.0, 2.0, 10.0]
    stats = latency_stats(values)
    assert stats == {f"p{q}": pytest.approx(np.percentile(values, q)) for q in (50, 95, 99)} | {"max": 10.0}
    assert latency_stats([]) == {}


# -- one bag ---------------------------------------------------------------------------------


def test_single_bag_report_matches_frames_and_output_bag(tmp_path):
    frames = 6
    source = _sequence(tmp_path / "drive", frames)
    report = replay_bag(source, tmp_path / "out", scene_perception())
    document = write_bag_report(tmp_path / "report", [report])
    folder = tmp_path / "report"
    for name in ("report.md", "report.json", "metrics.json", "frames.csv", "tracks.csv", "obstacles.csv"):
        assert (folder / name).stat().st_size > 0, name
    for name in ("latency_histogram.png", "pr_curve.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert json.loads((folder / "report.json").read_text()) == json.loads(json.dumps(document))
    [bag] = document["bags"]

    # latency percentiles per stage: numpy over the per-frame values written to frames.csv
    rows = _csv_rows(folder / "frames.csv")
    assert len(rows) == frames and all(row["status"] == "ok" for row in rows)
    stages = [column[:-3] for column in rows[0] if column.endswith("_ms")]
    assert {"decode", "forward", "total", "publish", "end_to_end"} <= set(stages)
    for stage in stages:
        values = np.array([float(row[f"{stage}_ms"]) for row in rows])
        expected = {f"p{q}": np.percentile(values, q) for q in (50, 95, 99)} | {"max": values.max()}
        assert bag["latency_by_stage_ms"][stage] == pytest.approx(expected, rel=1e-6, abs=1e-4), stage
    # end to end holds every stage: decode + perception + publish
    e2e = np.array([float(row["end_to_end_ms"]) for row in rows])
    parts = np.array([float(row["decode_ms"]) + float(row["total_ms"]) + float(row["publish_ms"]) for row in rows])
    assert np.all(e2e >= parts - 1e-3)
    assert bag["latency_ms"] == pytest.approx(bag["latency_by_stage_ms"]["total"])
    assert bag["throughput_fps"] == pytest.approx(frames / bag["wall_s"])

    # alert tracks against the alerts read back from the output bag
    alerts: dict[int, list] = {}
    for message in iter_messages(tmp_path / "out", topics=["/anomaly_seg_node/obstacle_alerts"]):
        for alert in message.msg.alerts:
            alerts.setdefault(alert.track_id, []).append((stamp_to_ns(message.msg.header), alert))
    assert alerts, "SceneLogits' square must raise an alert"
    tracks = {track["track_id"]: track for track in bag["alert_track_list"]}
    assert set(tracks) == set(alerts)
    for track_id, seen in alerts.items():
        track = tracks[track_id]
        assert track["first_stamp_ns"] == seen[0][0] and track["last_stamp_ns"] == seen[-1][0]
        assert track["duration_s"] == pytest.approx((seen[-1][0] - seen[0][0]) * 1e-9)
        assert track["frames"] == len(seen)
        assert track["max_area_px"] == max(alert.area_px for _, alert in seen)
        assert track["max_score"] == pytest.approx(max(alert.max_score for _, alert in seen), abs=1e-6)
    csv_tracks = _csv_rows(folder / "tracks.csv")
    assert [int(row["track_id"]) for row in csv_tracks] == list(tracks)
    assert document["total"]["alert_tracks"] == bag["alert_tracks"] == len(alerts)

    # alerts per minute of recording: tracks / (frames at 10 Hz)
    minutes = frames / FPS / 60.0
    assert bag["bag_duration_s"] == pytest.approx(frames / FPS)
    assert bag["alerts_per_minute"] == pytest.approx(len(alerts) / minutes)

    # ground truth: obstacles listed with detection or MISSED, in JSON, CSV and Markdown
    assert bag["gt_frames"] == frames and bag["pixel_metrics"]["ap"] > 0
    assert bag["obstacles_detected"] + bag["obstacles_missed"] == len(bag["obstacles"]) > 0
    assert len(_csv_rows(folder / "obstacles.csv")) == len(bag["obstacles"])
    markdown = (folder / "report.md").read_text()
    assert markdown.startswith("# Bag replay report")
    for heading in ("## Latency per frame", "## Alert tracks", "## Pixel metrics", "## Ground-truth obstacles"):
        assert heading in markdown
    # the report states how alerts were matched to obstacles and what the minimum alert area excludes
    assert f"Matching rule: {match_rule(0.5)}" in markdown and bag["match_rule"] == match_rule(0.5)
    assert "Detection range: an alert needs a component of at least min_area_px" in markdown
    shown = sum(item["frames"] for item in bag["obstacles"])
    assert f"of {shown} obstacle-frames were smaller" in markdown and shown > 0
    assert json.loads((folder / "metrics.json").read_text())["processed"] == frames


def _bag_with_bad_frames(path, frames=6):
    """A camera bag whose frame 1 has an unsupported encoding, frame 3 truncated data, frame 4 is not CDR."""
    typestore = get_typestore()
    rng = np.random.default_rng(0)
    with BagWriter(path, typestore=typestore) as writer:
        writer.add_topic("/cam/image_raw", "sensor_msgs/msg/Image")
        for index in range(frames):
            stamp = START_NS + index * 100 * MS
            msg = array_to_image_msg(
                typestore,
                rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
                make_header(typestore, stamp, "cam"),
                "rgb8",
            )
            if index == 1:
                msg.encoding = "bayer_rggb8"
            elif index == 3:
                msg.data = msg.data[: len(msg.data) // 2]
            if index == 4:
                writer.write_raw("/cam/image_raw", b"\x00\x01\x00\x00\x07", stamp)
            else:
                writer.write("/cam/image_raw", msg, stamp)
    return path


def test_rejected_frames_are_counted_by_reason_and_the_run_goes_on(tmp_path):
    source = _bag_with_bad_frames(tmp_path / "bad")
    report = replay_bag(source, tmp_path / "out", scene_perception())
    summary = report.summary()
    assert summary["frames"] == 6 and summary["processed"] == 3
    assert summary["rejected_frames_by_reason"] == {"encoding": 1, "size": 1, "cdr": 1}
    assert summary["rejected_by_topic"] == {"/cam/image_raw": {"encoding": 1, "size": 1, "cdr": 1}}
    assert [(item["frame"], item["reason"]) for item in summary["rejected_frames"]] == [
        (1, "encoding"),
        (3, "size"),
        (4, "cdr"),
    ]
    assert "bayer_rggb8" in summary["rejected_frames"][0]["message"]
    assert summary["gt_topic"] is None and summary["pixel_metrics"] is None
    # frames after the bad ones were processed: outputs for frames 0, 2, 5
    stamps = [
        stamp_to_ns(m.msg.header) for m in iter_messages(tmp_path / "out", topics=["/anomaly_seg_node/semantic_mask"])
    ]
    assert stamps == [START_NS + i * 100 * MS for i in (0, 2, 5)]
    write_bag_report(tmp_path / "report", [report], plots=False)
    rows = _csv_rows(tmp_path / "report" / "frames.csv")
    assert [row["status"] for row in rows] == ["ok", "encoding", "ok", "size", "cdr", "ok"]
    assert rows[4]["stamp_ns"] == "" and rows[3]["stamp_ns"] == str(START_NS + 300 * MS)
    assert rows[1]["forward_ms"] == "" and float(rows[1]["end_to_end_ms"]) >= 0  # refused before the network
    assert "encoding 1, size 1, cdr 1" in (tmp_path / "report" / "report.md").read_text()


def test_ground_truth_with_invalid_values_is_rejected_and_scoring_goes_on(tmp_path):
    typestore = get_typestore()
    frames = 3
    with BagWriter(tmp_path / "gt", typestore=typestore) as writer:
        writer.add_topic("/cam/image_raw", "sensor_msgs/msg/Image")
        writer.add_topic("/cam/anomaly_gt", "sensor_msgs/msg/Image")
        for index in range(frames):
            stamp = START_NS + index * 100 * MS
            header = make_header(typestore, stamp, "cam")
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            writer.write("/cam/image_raw", array_to_image_msg(typestore, image, header, "rgb8"), stamp)
            truth = np.zeros((HEIGHT, WIDTH), np.uint8)
            truth[40:56, 56:72] = 7 if index == 0 else 1  # a class id where an anomaly mask belongs
            writer.write("/cam/anomaly_gt", array_to_image_msg(typestore, truth, header, "mono8"), stamp)
    summary = replay_bag(tmp_path / "gt", tmp_path / "out", scene_perception()).summary()
    assert summary["rejected_by_topic"] == {"/cam/anomaly_gt": {"gt_values": 1}}
    assert summary["rejected_frames_by_reason"] == {} and summary["processed"] == frames
    assert "values 0, 7" in summary["last_rejection"] and "expected 0 (in-distribution)" in summary["last_rejection"]
    assert summary["gt_frames"] == frames - 1
    assert summary["pixel_metrics"]["num_anomaly"] == (frames - 1) * 16 * 16


def test_a_bags_pixel_metrics_bin_in_a_fixed_range_not_one_learnt_from_its_first_frames(tmp_path, monkeypatch):
    """More ground-truth pixels than the exact buffer (shrunk here to one frame): the first two
    frames hold no obstacle (road scoring -10 on the left, -9.02 on the right), the last two a red
    square scoring 0. A range learnt from the first frames ([-10.1, -8.9]) would put the square in
    one edge bin with the whole right half; binned in the fixed range (the heatmap range
    threshold -5 +- 1, widened by its span: [-8, -2]) the square stays apart: AP 1, as sklearn's."""
    monkeypatch.setattr(
        runner, "StreamingOODMetrics", functools.partial(StreamingOODMetrics, buffer_size=HEIGHT * WIDTH)
    )
    typestore = get_typestore()
    scores, labels = [], []
    with BagWriter(tmp_path / "drive", typestore=typestore) as writer:
        writer.add_topic("/cam/image_raw", "sensor_msgs/msg/Image")
        writer.add_topic("/cam/anomaly_gt", "sensor_msgs/msg/Image")
        for index in range(4):
            stamp = START_NS + index * 100 * MS
            header = make_header(typestore, stamp, "cam")
            image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
            image[:, WIDTH // 2 :, 0] = 153  # redness 25/255: maxlogit -10 (1 - 25/255) = -9.02
            truth = np.zeros((HEIGHT, WIDTH), np.uint8)
            if index >= 2:
                image[40:56, 16:32] = (255, 0, 0)
                truth[40:56, 16:32] = 1
            writer.write("/cam/image_raw", array_to_image_msg(typestore, image, header, "rgb8"), stamp)
            writer.write("/cam/anomaly_gt", array_to_image_msg(typestore, truth, header, "mono8"), stamp)
            scores.append(np.where(truth == 1, 0.0, np.where(np.arange(WIDTH) >= WIDTH // 2, -9.02, -10.0)).ravel())
            labels.append(truth.ravel())
    perception = scene_perception("model.mean=[0, 0, 0]", "model.std=[1, 1, 1]", model=RedDetector())
    pixels = replay_bag(tmp_path / "drive", tmp_path / "out", perception).pixel_metrics
    assert not pixels["exact"] and pixels["score_range"] == pytest.approx([-8.0, -2.0])
    expected = average_precision_score(np.concatenate(labels), np.concatenate(scores))
    assert expected == 1.0 and pixels["ap"] == pytest.approx(expected, abs=1e-9)
    assert pixels["num_anomaly"] == 2 * 16 * 16


# -- several bags ----------------------------------------------------------------------------


def test_folder_of_bags_aggregates_to_the_sums_of_the_bags(tmp_path):
    folder = tmp_path / "drives"
    _sequence(folder / "a", 4, seed=0)
    _sequence(folder / "b", 5, seed=1)
    (folder / "notes").mkdir()  # not a bag: ignored inside a folder of bags
    pairs = plan_outputs([folder], tmp_path / "out")
    assert pairs == [(folder / "a", tmp_path / "out" / "a"), (folder / "b", tmp_path / "out" / "b")]
    replayed = replay_bags(pairs, scene_perception())
    document = write_bag_report(
        tmp_path / "report",
        replayed.reports,
        pixel_metrics=replayed.pooled.pixels,
        component_metrics=replayed.pooled.components,
        plots=False,
    )
    bags, total = document["bags"], document["total"]
    assert [bag["name"] for bag in bags] == ["a", "b"]
    assert all((tmp_path / "out" / name / "metadata.yaml").is_file() for name in ("a", "b"))
    for key in (
        "frames",
        "processed",
        "alerts",
        "frames_with_alerts",
        "alert_tracks",
        "gt_frames",
        "obstacles_detected",
        "obstacles_missed",
        "realtime_drops",
        "missing_frames",
    ):
        assert total[key] == sum(bag[key] for bag in bags), key
    assert total["frames"] == 9 and total["bags"] == 2
    assert total["bag_duration_s"] == pytest.approx(sum(bag["bag_duration_s"] for bag in bags))
    assert total["wall_s"] == pytest.approx(sum(bag["wall_s"] for bag in bags))
    assert total["alerts_per_minute"] == pytest.approx(total["alert_tracks"] / (9 / FPS / 60))

    # latency percentiles over all frames of both bags, from frames.csv
    rows = _csv_rows(tmp_path / "report" / "frames.csv")
    assert [row["bag"] for row in rows] == ["a"] * 4 + ["b"] * 5
    for stage in ("total", "end_to_end"):
        values = np.array([float(row[f"{stage}_ms"]) for row in rows])
        expected = {f"p{q}": np.percentile(values, q) for q in (50, 95, 99)} | {"max": values.max()}
        assert total["latency_by_stage_ms"][stage] == pytest.approx(expected, rel=1e-6, abs=1e-4)

    # pixel metrics: all pixels of both bags pooled (sklearn), not a mean of the per-bag values
    anomaly = scene_perception().process(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).anomaly  # input-independent
    scores, labels = [], []
    for name in ("a", "b"):
        for truth in _truth_masks(folder / name):
            scores.append(anomaly[truth != 255])
            labels.append(truth[truth != 255])
    pooled_ap = average_precision_score(np.concatenate(labels), np.concatenate(scores))
    assert total["pixel_metrics"]["ap"] == pytest.approx(pooled_ap, abs=1e-9)
    # component metrics: every frame of both bags in one SMIYC accumulator at the alert threshold (-5)
    direct = ComponentMetrics(-5.0, "obstacle")
    for name in ("a", "b"):
        for truth in _truth_masks(folder / name):
            direct.update(anomaly, truth)
    expected = direct.summary()
    components = total["component_metrics"]
    assert (components["tp"], components["fn"], components["fp"]) == (expected["tp"], expected["fn"], expected["fp"])
    assert components["num_frames"] == 9 and components["num_gt_components"] == expected["num_gt_components"] > 0
    assert components["siou_gt"] == pytest.approx(expected["siou_gt"])
    assert [bag["component_metrics"]["num_frames"] for bag in bags] == [4, 5]
    assert total["pixel_metrics"]["num_anomaly"] == sum(bag["pixel_metrics"]["num_anomaly"] for bag in bags)
    # one table row per bag plus the totals
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Bags" in markdown and "| a |" in markdown and "| b |" in markdown and "| **total** |" in markdown
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["frames"] == 9
    assert not (tmp_path / "report" / "latency_histogram.png").exists() and "latency_histogram" not in markdown


def test_plan_outputs_refuses_before_replaying(tmp_path):
    first = _sequence(tmp_path / "x" / "drive", 2)
    second = _sequence(tmp_path / "y" / "drive", 2)
    assert plan_outputs([first], tmp_path / "out") == [(first, tmp_path / "out")]  # one bag: OUT is the bag
    assert plan_outputs([first, tmp_path / "x"], tmp_path / "o2")[0] == (first, tmp_path / "o2" / "drive")
    with pytest.raises(BagError, match="two input bags are named 'drive'"):
        plan_outputs([first, second], tmp_path / "out")
    with pytest.raises(BagError, match="neither a rosbag2 bag"):
        plan_outputs([tmp_path / "x" / "drive" / "metadata.yaml"], tmp_path / "out")
    (tmp_path / "out" / "drive").mkdir(parents=True)
    with pytest.raises(BagError, match="exists already"):
        plan_outputs([tmp_path / "x"], tmp_path / "out")


def test_cli_replays_several_bags_into_one_report(tmp_path, capsys):
    from anomaly_seg_ros.models import build_model, save_checkpoint
    from anomaly_seg_ros.tools.cli import main

    weights = tmp_path / "erfnet.safetensors"
    calibration = {"energy": {"threshold": 0.0, "range": [-1.0, 1.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=19), weights, metadata={"input_size": [32, 64], "calibration": calibration}
    )
    first, second = _sequence(tmp_path / "one", 2, seed=2), _sequence(tmp_path / "two", 3, seed=3)
    out = tmp_path / "out"
    args = ["bag", str(first), str(second), "--out", str(out), "--weights", str(weights), "--no-progress"]
    assert main([*args, "--no-plots", "--component-track", "anomaly"]) == 0
    report = json.loads((tmp_path / "out_report" / "report.json").read_text())
    assert [bag["output"] for bag in report["bags"]] == [str(out / "one"), str(out / "two")]
    assert report["total"]["frames"] == 5 and report["total"]["processed"] == 5
    # bag "one" shows no obstacle yet: no AP of its own, but its pixels are in the pooled metrics
    assert report["bags"][0]["pixel_metrics"] is None and report["bags"][0]["gt_frames"] == 2
    in_distribution = [sum(int(np.count_nonzero(mask == 0)) for mask in _truth_masks(bag)) for bag in (first, second)]
    assert report["bags"][1]["pixel_metrics"]["num_in_distribution"] == in_distribution[1]
    assert report["total"]["pixel_metrics"]["num_in_distribution"] == sum(in_distribution)
    components = report["total"]["component_metrics"]
    assert (components["min_gt_size"], components["min_pred_size"]) == (100, 500)  # the SMIYC anomaly track
    assert components["num_frames"] == 5 and components["threshold"] == 0.0  # the calibrated alert threshold
    assert "| **total** |" in capsys.readouterr().out
