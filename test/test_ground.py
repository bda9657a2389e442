"""Flat-ground back-projection on known geometry, and the alert message's ground fields."""

import math

import numpy as np
import pytest

from anomaly_seg_ros.core.alerts import Alert, Component
from anomaly_seg_ros.core.ground import GroundModel
from anomaly_seg_ros.ros.messages import alert_msg
from anomaly_seg_ros.ros.typestore import OBSTACLE_ALERT, get_typestore

CAMERA = {"fx": 800.0, "fy": 820.0, "cx": 640.0, "cy": 360.0}


def test_level_camera_row_gives_distance():
    model = GroundModel(**CAMERA, height_m=1.5)
    distances = np.array([5.0, 10.0, 40.0])
    estimate = model.project(np.full(3, CAMERA["cx"]), CAMERA["cy"] + CAMERA["fy"] * 1.5 / distances)
    assert estimate.valid.all()
    np.testing.assert_allclose(estimate.distance_m, distances)
    np.testing.assert_allclose(estimate.points, np.stack([np.zeros(3), np.full(3, 1.5), distances], axis=1))


def test_pitched_camera_matches_rotation_matrix():
    pitch, height = math.radians(8.0), 1.3
    model = GroundModel(**CAMERA, height_m=height, pitch_rad=pitch)
    u = np.array([100.0, 640.0, 1200.0, 900.0])
    v = np.array([700.0, 500.0, 650.0, 320.0])
    estimate = model.project(u, v)
    # Independent check in a world frame (X right, Y forward, Z up), camera at (0, 0, h).
    # Camera axes in world coordinates for a camera pitched down by `pitch` about its x axis.
    c, s = math.cos(pitch), math.sin(pitch)
    cam_to_world = np.array([[1.0, 0.0, 0.0], [0.0, -s, c], [0.0, -c, -s]])  # columns: x_cam, y_cam, z_cam
    for i in range(len(u)):
        ray = cam_to_world @ np.array([(u[i] - CAMERA["cx"]) / CAMERA["fx"], (v[i] - CAMERA["cy"]) / CAMERA["fy"], 1.0])
        t = -height / ray[2]
        world = np.array([0.0, 0.0, height]) + t * ray
        assert abs(world[2]) < 1e-9
        np.testing.assert_allclose(cam_to_world @ estimate.points[i], t * ray, atol=1e-9)
        np.testing.assert_allclose(estimate.distance_m[i], math.hypot(world[0], world[1]))
    assert estimate.valid.all()


def test_at_or_above_horizon_is_invalid():
    pitch = math.radians(5.0)
    model = GroundModel(**CAMERA, height_m=1.5, pitch_rad=pitch)
    horizon_row = CAMERA["cy"] - CAMERA["fy"] * math.tan(pitch)
    estimate = model.project([640.0, 640.0, 640.0], [horizon_row - 50.0, horizon_row, horizon_row + 50.0])
    assert estimate.valid.tolist() == [False, False, True]
    assert np.isnan(estimate.points[:2]).all() and np.isnan(estimate.distance_m[:2]).all()


def test_bad_geometry_rejected():
    with pytest.raises(ValueError, match="height"):
        GroundModel(**CAMERA, height_m=0.0)


def test_from_camera_info():
    typestore = get_typestore()
    k = np.array([700.0, 0.0, 320.0, 0.0, 710.0, 240.0, 0.0, 0.0, 1.0])
    info = typestore.types["sensor_msgs/msg/CameraInfo"](
        header=None, height=480, width=640, distortion_model="plumb_bob", d=np.zeros(5), k=k,
        r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0, roi=None,
    )  # fmt: skip
    model = GroundModel.from_camera_info(info, height_m=1.2, pitch_rad=0.1)
    assert (model.fx, model.fy, model.cx, model.cy) == (700.0, 710.0, 320.0, 240.0)


def _alert(bottom: tuple[int, int]) -> Alert:
    component = Component(
        bbox=(600, 400, 80, bottom[1] - 400 + 1), area_px=900, max_score=3.0, mean_score=2.0,
        bottom_point=bottom, in_drivable_area=True,
    )  # fmt: skip
    return Alert(track_id=7, component=component, frames_seen=4)


def test_alert_msg_ground_fields():
    typestore = get_typestore()
    model = GroundModel(**CAMERA, height_m=1.5)
    row = int(CAMERA["cy"] + CAMERA["fy"] * 1.5 / 12.0)
    msg = alert_msg(typestore, _alert((640, row)), model)
    assert isinstance(msg, typestore.types[OBSTACLE_ALERT])
    assert msg.position_valid
    expected = model.project(640, row)
    assert msg.distance_m == pytest.approx(float(expected.distance_m[0]))
    assert (msg.ground_position.x, msg.ground_position.y, msg.ground_position.z) == pytest.approx(
        tuple(expected.points[0])
    )
    roundtrip = typestore.deserialize_cdr(typestore.serialize_cdr(msg, OBSTACLE_ALERT), OBSTACLE_ALERT)
    assert roundtrip.position_valid and roundtrip.distance_m == pytest.approx(msg.distance_m, rel=1e-6)


def test_alert_msg_without_geometry_or_above_horizon_stays_invalid():
    typestore = get_typestore()
    for ground in (None, GroundModel(**CAMERA, height_m=1.5)):
        msg = alert_msg(typestore, _alert((640, 100)), ground)
        assert not msg.position_valid
        assert msg.distance_m == 0.0 and msg.ground_position.z == 0.0


def test_range_for_area_is_where_a_square_obstacle_shrinks_to_the_minimum_pixel_count():
    model = GroundModel(fx=1000.0, fy=800.0, cx=500.0, cy=300.0, height_m=1.5)
    side = math.sqrt(0.5)  # a 0.5 m^2 square facing the camera
    depth = model.range_for_area(0.5, 100)
    # by the pinhole projection: (fx side / z) * (fy side / z) pixels at depth z
    assert (model.fx * side / depth) * (model.fy * side / depth) == pytest.approx(100.0)
    assert depth == pytest.approx(math.sqrt(1000.0 * 800.0 * 0.5 / 100))
    assert model.range_for_area(0.5, 400) == pytest.approx(depth / 2)  # 4x the pixels: half the range
    with pytest.raises(ValueError, match="must be positive"):
        model.range_for_area(0.0, 100)
