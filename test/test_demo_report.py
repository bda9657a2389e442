"""Readable demo reports: the PR-curve axis, overlays with colour bar / threshold / GT outline,
and the per-obstacle drive review under the replay report's detection rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly_seg_ros.core.alerts import Alert, Component
from anomaly_seg_ros.core.ground import GroundModel
from anomaly_seg_ros.core.perception import PerceptionResult
from anomaly_seg_ros.core.visualization import GT_OUTLINE_COLOUR, THRESHOLD_COLOUR, colour_bar, heatmap, report_overlay
from anomaly_seg_ros.evaluation.plots import plot_pr_curve, pr_axis_limits
from anomaly_seg_ros.replay.drive_review import (
    DetectionRule,
    DriveRecorder,
    box_intersection,
    review_drive,
    write_drive_review,
)


def test_pr_axis_is_logarithmic_for_rare_anomalies_and_shows_the_curve(tmp_path):
    recall = np.linspace(0, 1, 50)
    low = {"weak": (np.full(50, 0.004), recall)}
    scale, bottom, top = pr_axis_limits(low, positive_ratio=0.0015)
    # Chance 0.15 %, curve at 0.4 %: both above the floor (a third of the lowest), a log axis.
    assert scale == "log" and bottom == pytest.approx(0.0005) and top > 1
    assert pr_axis_limits({"good": (np.full(50, 0.6), recall)}, positive_ratio=0.3) == ("linear", 0.0, 1.02)
    # A few top-scored pixels at recall < 2 % do not stretch the axis down.
    spiky = {"spiky": (np.where(recall < 0.015, 1e-6, 0.004), recall)}
    assert pr_axis_limits(spiky, positive_ratio=0.0015)[1] == pytest.approx(0.0005)
    plot_pr_curve(tmp_path / "pr.png", low, 0.0015, operating_points={"threshold": (0.004, 0.5)})
    assert (tmp_path / "pr.png").stat().st_size > 1000


def test_colour_bar_marks_the_threshold_where_it_lies_in_the_range():
    bar = colour_bar(460, (0.0, 2.0), threshold=1.5)
    left, right = 60, 400
    expected_x = left + round(0.75 * (right - left - 1))
    column = bar[1:20, expected_x]
    assert (column == THRESHOLD_COLOUR).all(axis=-1).all()
    # The ramp is the heatmap's colours: its first column is the colour of the range's low end.
    np.testing.assert_array_equal(bar[10, left], heatmap(np.zeros((1, 1), np.float32), (0.0, 2.0))[0, 0])


def test_report_overlay_draws_the_ground_truth_outline_and_appends_the_bar():
    frame = np.full((64, 96, 3), 40, np.uint8)
    anomaly = np.zeros((64, 96), np.float32)
    truth = np.zeros((64, 96), np.uint8)
    truth[20:40, 30:60] = 1
    view = report_overlay(frame, anomaly, (0.0, 1.0), threshold=0.5, ground_truth=truth)
    assert view.shape == (64 + 30, 96, 3)
    outline = (view[:64] == GT_OUTLINE_COLOUR).all(axis=-1)
    assert outline[20, 30:60].all() and outline[39, 30:60].all() and not outline[30, 40]


def _result(boxes):
    alerts = [
        Alert(track_id, Component(box, box[2] * box[3], 1.0, 1.0, (box[0], box[1] + box[3] - 1), True), 3)
        for track_id, box in boxes
    ]
    return PerceptionResult(np.zeros((60, 100), np.uint8), np.zeros((60, 100), np.float32), alerts, "energy", 0.5)


def _still_obstacles(boxes_per_frame, frames, size=(60, 100)):
    truth, recorder = [], DriveRecorder()
    for _ in range(frames):
        mask = np.zeros(size, np.uint8)
        for x, y, w, h in boxes_per_frame:
            mask[y : y + h, x : x + w] = 1
        truth.append(mask)
    return truth, recorder


def test_review_uses_the_replay_reports_iou_rule_one_to_one():
    truth_box = (10, 10, 10, 10)
    assert box_intersection((15, 15, 10, 10), truth_box) == 25
    # By hand: IoU of (10, 10, 10, 20) with the obstacle is 100 / 200 = 0.5 (matched); of (10, 10, 10, 21),
    # 100 / 210 = 0.476 (not matched, though it covers the whole obstacle and half of it is the obstacle).
    for alert_box, detected in (((10, 10, 10, 20), True), ((10, 10, 10, 21), False), ((8, 8, 14, 14), True)):
        truth, recorder = _still_obstacles([truth_box], 3)
        for index in range(3):
            recorder(index, np.zeros((60, 100, 3), np.uint8), _result([(1, alert_box)] if index == 1 else []))
        review = review_drive(recorder, truth, rule=DetectionRule(match_iou=0.5, min_area_px=100))
        (row,) = review["obstacles"]
        assert (row["first_alert_frame"] == 1) is detected, alert_box
        assert [t["track_id"] for t in review["false_alert_tracks"]] == ([] if detected else [1])
        assert "IoU >= 0.5" in review["rule"]
    # Two alerts on one obstacle (IoU 1 and 100 / 120): one-to-one, the second is a false alert; an
    # alert on nothing is false too, and the second obstacle, without an alert, is missed.
    truth, recorder = _still_obstacles([(10, 10, 10, 10), (50, 10, 10, 10)], 1)
    alerts = [(1, (10, 10, 10, 12)), (2, (10, 10, 10, 10)), (3, (80, 40, 5, 5))]
    recorder(0, np.zeros((60, 100, 3), np.uint8), _result(alerts))
    review = review_drive(recorder, truth, rule=DetectionRule(min_area_px=50))
    assert [row["first_alert_frame"] for row in review["obstacles"]] == [0, None]
    assert [(t["track_id"], t["overlaps_obstacle"]) for t in review["false_alert_tracks"]] == [(1, True), (3, False)]


def test_review_times_each_obstacle_from_its_first_100_px_frame_and_finds_false_tracks(tmp_path):
    # One obstacle growing from 6x6 (36 px) to 12x12 (144 px) at frame 3; matched (IoU 1) at frame 5.
    truth, recorder = [], DriveRecorder(picks=[5])
    frame = np.zeros((60, 100, 3), np.uint8)
    for index in range(8):
        mask = np.zeros((60, 100), np.uint8)
        side = 6 if index < 3 else 12
        mask[30 : 30 + side, 40 : 40 + side] = 1
        truth.append(mask)
        boxes = [(7, (80, 5, 8, 8))]  # a track on the sky: false
        if index == 4:
            boxes.append((8, (38, 28, 40, 30)))  # overlaps the obstacle, far too big (IoU 0.12): false
        if index >= 5:
            boxes.append((9, (40, 30, 12, 12)))
        recorder(index, frame, _result(boxes))
    ground = GroundModel(100.0, 100.0, 50.0, 20.0, 1.5)
    review = review_drive(recorder, truth, ground=ground)
    (row,) = review["obstacles"]
    assert (row["first_seen_frame"], row["first_100px_frame"], row["first_alert_frame"]) == (0, 3, 5)
    assert row["delay_frames"] == 2 and row["in_time"] and review["all_in_time"]
    # Flat ground: the foot row 41 is 21 rows below the horizon at f = 100: 1.5 * 100 / 21 m (on the axis-ish).
    assert row["distance_at_100px_m"] == pytest.approx(ground.project(46.0, 41.0).distance_m[0])
    assert [(t["track_id"], t["overlaps_obstacle"]) for t in review["false_alert_tracks"]] == [(7, False), (8, True)]
    assert review["false_alert_tracks"][0]["frames"] == 8
    page = write_drive_review(tmp_path, review, recorder)
    assert "| 1 | 0 | 3 |" in page and "in time" in page
    assert (tmp_path / "alerts" / "track_007.png").is_file() and (tmp_path / "alerts" / "track_008.png").is_file()
    assert 5 in recorder.picked


def test_an_obstacle_alerted_too_late_is_not_in_time():
    truth, recorder = [], DriveRecorder()
    for index in range(15):
        mask = np.zeros((60, 100), np.uint8)
        mask[20:32, 20:32] = 1
        truth.append(mask)
        recorder(index, np.zeros((60, 100, 3), np.uint8), _result([(1, (20, 20, 12, 12))] if index == 11 else []))
    (row,) = review_drive(recorder, truth, rule=DetectionRule(max_delay_frames=10))["obstacles"]
    assert row["delay_frames"] == 11 and not row["in_time"]


def test_demo_train_reproduces_the_shipped_chain_of_six_trainings(monkeypatch, tmp_path):
    """`anomaly-seg demo --train`: base -> OE stage 1 -> stage 2 -> 256x512 -> far objects -> margin 0, each from
    the last's."""
    from anomaly_seg_ros.tools import demo

    runs, datasets = [], []

    def fake_datasets(out, *, num_train, num_val, num_anomaly, height, width, seed):
        datasets.append((Path(out).name, height, width, seed))
        return {"cityscapes_root": Path(out) / "cityscapes", "anomaly_root": Path(out) / "anomaly"}

    def fake_train(config, out, progress):
        runs.append(
            (
                Path(out).name,
                config.input_size,
                config.crop_size,
                config.init_checkpoint,
                config.data,
                config.learning_rate,
                config.epochs,
                [(loss["name"], loss.get("margin_out")) for loss in config.losses],
                (config.outliers.foot_sampling, config.outliers.max_objects, config.anomaly_val),
            )
        )

    monkeypatch.setattr(demo, "generate_datasets", fake_datasets)
    monkeypatch.setattr(demo, "train", fake_train)
    weights = demo._train_demo_model(tmp_path, progress=False)
    assert datasets == [("train_data", 128, 256, 0), ("train_data_256", 256, 512, 0)]
    names = [run[0] for run in runs]
    assert names == [
        "model",
        "model_oe",
        "model_oe_stage2",
        "model_oe_256",
        "model_oe_far",
        "model_oe_margin",
    ]
    base, stage1, stage2, stage3, stage4, stage5 = runs
    assert base[3] == "" and stage1[3] == str(tmp_path / "model" / "best.safetensors")
    assert stage2[3] == str(tmp_path / "model_oe" / "best.safetensors") and stage2[5] == 1e-4 and stage2[6] == 2
    assert stage3[3] == str(tmp_path / "model_oe_stage2" / "best.safetensors")
    assert (stage3[1], stage3[2]) == ((256, 512), (128, 256))
    assert stage3[4] == str(tmp_path / "train_data_256" / "cityscapes")
    assert ("energy_margin", -2.0) in stage3[7] and ("energy_margin", -2.0) in stage1[7]
    anomaly_256 = [str(tmp_path / "train_data_256" / "anomaly")]
    assert stage3[8] == ("pixels", 4, anomaly_256)
    # the fourth: the third's config and data, objects at every distance, 8 epochs at 1e-4
    assert stage4[3] == str(tmp_path / "model_oe_256" / "best.safetensors")
    assert (stage4[1], stage4[2], stage4[4]) == (stage3[1], stage3[2], stage3[4]) and (stage4[5], stage4[6]) == (
        1e-4,
        8,
    )
    assert stage4[8] == ("rows", 4, anomaly_256)
    # the fifth: the fourth's recipe for 6 epochs with the outlier margin at 0
    assert stage5[3] == str(tmp_path / "model_oe_far" / "best.safetensors")
    assert stage5[1:3] == stage4[1:3] and stage5[4:6] == stage4[4:6] and stage5[6] == 6
    assert stage5[7] == [("ce", None), ("energy_margin", 0.0)] and stage5[8] == stage4[8]
    assert weights == tmp_path / "model_oe_margin" / "best.safetensors"
