"""Alerts: ROI, connected components, k-of-n persistence and track ids on hand-made maps."""

import numpy as np
import pytest

from anomaly_seg_ros.core.alerts import (
    AlertTracker,
    Component,
    bbox_iou,
    drivable_area,
    find_components,
    region_of_interest,
)
from anomaly_seg_ros.core.config import AlertConfig


def _component(x, y, w=10, h=10) -> Component:
    return Component((x, y, w, h), w * h, 1.0, 0.5, (x, y + h - 1), True)


def test_components_boxes_areas_and_scores():
    anomaly = np.zeros((40, 60), dtype=np.float32)
    anomaly[5:15, 10:20] = 2.0  # 100 px, score 2
    anomaly[7, 12] = 5.0  # its maximum
    anomaly[34:36, 50:53] = 3.0  # 6 px: below min area
    anomaly[20:30, 40] = 1.5  # 10 px thin line, diagonal neighbour joins it (8-connectivity)
    anomaly[30, 41] = 1.5  # touches (29, 40) only diagonally
    drivable = np.zeros_like(anomaly, dtype=bool)
    drivable[14, 10] = True
    components = find_components(anomaly, 1.0, roi=None, drivable=drivable, min_area_px=11)
    assert len(find_components(anomaly, 1.0, roi=None, drivable=drivable, min_area_px=1)) == 3
    assert len(components) == 2
    big = next(c for c in components if c.area_px == 100)
    assert big.bbox == (10, 5, 10, 10)
    assert big.max_score == 5.0
    assert big.mean_score == pytest.approx((99 * 2.0 + 5.0) / 100)
    assert big.bottom_point[1] == 14
    assert big.in_drivable_area
    line = next(c for c in components if c.area_px != 100)
    assert line.area_px == 11 and line.bbox == (40, 20, 2, 11)
    assert not line.in_drivable_area


def test_roi_restricts_components():
    anomaly = np.zeros((20, 20), dtype=np.float32)
    anomaly[2:8, 2:8] = 1.0
    anomaly[12:18, 12:18] = 1.0
    roi = np.zeros((20, 20), dtype=bool)
    roi[10:, 10:] = True
    components = find_components(anomaly, 0.5, roi=roi, drivable=roi, min_area_px=1)
    assert [c.bbox for c in components] == [(12, 12, 6, 6)]


def test_drivable_area_covers_an_obstacle_inside_the_road():
    labels = np.full((50, 50), 8, dtype=np.uint8)  # vegetation
    labels[20:, 5:45] = 0  # road
    labels[30:36, 20:26] = 13  # an obstacle predicted as something else
    labels[2, 2] = 0  # a stray road speck in the sky must not inflate the hull
    area = drivable_area(labels, (0,))
    assert area[30:36, 20:26].all()
    assert not area[:15].any() or area[:15].sum() == 1
    assert not area[5:15, 5:15].any()


def test_polygon_roi():
    labels = np.zeros((10, 20), dtype=np.uint8)
    config = AlertConfig(roi="polygon", roi_polygon=((0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)))
    roi, _ = region_of_interest(labels, config)
    assert roi[6:].all() and not roi[:4].any()


def test_bbox_iou_hand_worked():
    assert bbox_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert bbox_iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0


def test_alert_needs_k_of_n_frames_and_keeps_its_track_id():
    tracker = AlertTracker(persistence_k=3, persistence_n=5)
    seen = [_component(10 + i, 10) for i in range(6)]
    assert tracker.update([seen[0]]) == []
    assert tracker.update([seen[1]]) == []
    alerts = tracker.update([seen[2]])  # third sighting: confirmed
    assert [a.track_id for a in alerts] == [1] and alerts[0].frames_seen == 3
    assert tracker.update([]) == []  # not seen: no alert this frame, track kept
    alerts = tracker.update([seen[4]])
    assert [a.track_id for a in alerts] == [1] and alerts[0].frames_seen == 4


def test_flicker_is_suppressed_and_tracks_expire():
    tracker = AlertTracker(persistence_k=3, persistence_n=5)
    pattern = [True, False, False, True, False, False, True]  # never 3 in any 5 frames
    for present in pattern:
        assert tracker.update([_component(0, 0)] if present else []) == []
    for _ in range(5):
        tracker.update([])
    assert tracker.update([_component(0, 0)]) == []  # old track expired: a new one starts
    assert tracker._tracks[0].track_id > 1


def test_two_obstacles_get_distinct_ids():
    tracker = AlertTracker(persistence_k=1, persistence_n=1)
    first = tracker.update([_component(0, 0), _component(50, 50)])
    second = tracker.update([_component(52, 51), _component(1, 0)])
    assert {a.track_id for a in first} == {1, 2}
    by_x = {a.component.bbox[0]: a.track_id for a in second}
    assert by_x[1] == next(a.track_id for a in first if a.component.bbox[0] == 0)
    assert by_x[52] == next(a.track_id for a in first if a.component.bbox[0] == 50)


def test_reset_starts_a_new_sequence_numbered_from_one():
    # a replayed bag's track ids must not depend on the bags the same pipeline replayed before it
    tracker = AlertTracker(persistence_k=1, persistence_n=1)
    assert [a.track_id for a in tracker.update([_component(0, 0), _component(50, 50)])] == [1, 2]
    tracker.reset()
    assert [a.track_id for a in tracker.update([_component(50, 50)])] == [1]
