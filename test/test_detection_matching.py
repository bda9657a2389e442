"""The replay's detection rule: alert boxes matched one-to-one to ground-truth obstacles by box IoU."""

import numpy as np
import pytest

from anomaly_seg_ros.core.alerts import Alert, Component
from anomaly_seg_ros.metrics.components import ComponentMetrics
from anomaly_seg_ros.replay.runner import _FrameOutcome, _GroundTruthTracker, match_alerts, match_rule


def _iou(a, b):  # by hand: boxes (x, y, w, h) as pixel sets
    grid_a = np.zeros((100, 100), bool)
    grid_b = np.zeros((100, 100), bool)
    grid_a[a[1] : a[1] + a[3], a[0] : a[0] + a[2]] = True
    grid_b[b[1] : b[1] + b[3], b[0] : b[0] + b[2]] = True
    return (grid_a & grid_b).sum() / (grid_a | grid_b).sum()


def test_a_stray_box_credits_nothing():
    obstacle = (40, 40, 20, 20)
    far_away = (0, 0, 10, 10)
    grazing = (55, 55, 20, 20)  # overlaps the obstacle's corner: IoU 25 / 775
    assert _iou(obstacle, grazing) == pytest.approx(25 / 775)
    assert match_alerts([obstacle], [far_away, grazing], 0.5) == {}
    # a huge box that contains the obstacle is not a detection either: IoU 400 / 10000
    assert match_alerts([obstacle], [(0, 0, 100, 100)], 0.5) == {}
    assert match_alerts([obstacle], [(42, 40, 20, 20)], 0.5) == {0: 0}  # IoU 360 / 440


def test_one_alert_per_obstacle_and_one_obstacle_per_alert():
    obstacle = (40, 40, 20, 20)
    good, better = (44, 40, 20, 20), (41, 40, 20, 20)
    assert _iou(obstacle, better) > _iou(obstacle, good) > 0.5
    assert match_alerts([obstacle], [good, better], 0.5) == {0: 1}  # the other alert stays unmatched
    # one alert between two obstacles matches one of them only: the one with the higher IoU
    left, right = (10, 10, 20, 20), (32, 10, 20, 20)
    alert = (14, 10, 20, 20)
    assert _iou(left, alert) > 0.5 and _iou(right, alert) < 0.5
    assert match_alerts([left, right], [alert], 0.1) == {0: 0}
    assert match_alerts([right, left], [alert], 0.1) == {1: 0}


def _alert(track_id, bbox):
    x, y, w, h = bbox
    component = Component(bbox, w * h, 1.0, 1.0, (x + w // 2, y + h - 1), True)
    return Alert(track_id, component, 3)


def test_tracker_counts_a_horizon_blob_as_a_false_alert_and_a_matched_box_as_the_detection():
    tracker = _GroundTruthTracker(0.5, 100, ComponentMetrics(0.5, "obstacle"), score_range=(-1.0, 2.0))
    truth = np.zeros((64, 128), np.uint8)
    truth[20:23, 60:64] = 1  # a far obstacle of 12 pixels (below min_area_px = 100)
    anomaly = np.zeros(truth.shape, np.float32)
    anomaly[18:26, 58:71] = 1.0  # a 104-pixel blob at the horizon around it: all of its pixels above threshold
    blob = _alert(1, (58, 18, 13, 8))
    tracker.add_result(1, _FrameOutcome(0, anomaly, [blob], 0.5))
    tracker.add_truth(1, truth)
    [obstacle] = tracker.tracks
    assert obstacle.first_alert_ns is None  # the old rule (10 % of its pixels in the box, above threshold) credited it
    assert tracker.false_alerts == 1 and obstacle.frames_below_min_area == 1

    truth = np.zeros((64, 128), np.uint8)
    truth[21:33, 56:68] = 1  # the same obstacle nearer (its box overlaps the last one): 144 pixels
    anomaly = np.zeros(truth.shape, np.float32)
    anomaly[21:33, 57:68] = 1.0
    tracker.add_truth(2, truth)
    tracker.add_result(2, _FrameOutcome(1, anomaly, [_alert(1, (57, 21, 11, 12)), _alert(2, (0, 0, 5, 5))], 0.5))
    assert obstacle.first_alert_ns == 2 and obstacle.first_alert_frame == 1
    assert obstacle.alert_point == (62, 32) and obstacle.best_alert_iou == pytest.approx(132 / 144)
    assert tracker.false_alerts == 2  # the stray 5 x 5 box
    assert tracker.false_alert_tracks == 1  # track 1 matched later; track 2 never did
    assert obstacle.frames == 2 and obstacle.frames_below_min_area == 1
    assert obstacle.alertable_point == (62, 32) and len(tracker.tracks) == 1
    assert "IoU >= 0.5" in match_rule(0.5)
