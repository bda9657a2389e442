"""Image message conversions against hand-built message bytes, and the registered types."""

from __future__ import annotations

import array
import struct
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from anomaly_seg_ros.common.errors import MessageConversionError
from anomaly_seg_ros.ros import conversions as conv
from anomaly_seg_ros.ros import typestore as typestore_module
from anomaly_seg_ros.ros.typestore import (
    CAMERA_INFO,
    OBSTACLE_ALERT,
    OBSTACLE_ALERT_ARRAY,
    POINT,
    REGION_OF_INTEREST,
    get_typestore,
    message_definition_dir,
)

H, W = 5, 7
RNG = np.random.default_rng(1234)


def image_msg(encoding, rows, *, height=H, width=W, step=None, bigendian=False, wrap=bytes):
    """rclpy-like Image whose data is ``rows`` (h x step uint8) wrapped as ``wrap``."""
    rows = np.asarray(rows, dtype=np.uint8)
    raw = rows.tobytes()
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=2), frame_id="cam"),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=rows.shape[1] if step is None else step,
        data=wrap(raw),
    )


def as_rows(pixels: np.ndarray, dtype: str, pad: int = 0) -> np.ndarray:
    """Rows of bytes of ``pixels`` stored as ``dtype`` ('<u2', '>f4', ...), plus garbage padding."""
    payload = np.frombuffer(pixels.astype(dtype).tobytes(), dtype=np.uint8).reshape(H, -1)
    garbage = RNG.integers(0, 256, (H, pad), dtype=np.uint8)
    return np.concatenate([payload, garbage], axis=1)


def gray3(gray: np.ndarray) -> np.ndarray:
    return np.dstack([gray, gray, gray])


def scaled_float(values: np.ndarray) -> np.ndarray:
    """Independent min-max scaling: finite min -> 0, max -> 255, non-finite -> 0."""
    out = np.zeros(values.shape, dtype=np.uint8)
    finite = np.isfinite(values)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    for idx in zip(*np.nonzero(finite), strict=True):
        out[idx] = int(np.floor((float(values[idx]) - lo) / (hi - lo) * 255.0 + 0.5))
    return out


RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
GRAY8 = RNG.integers(0, 256, (H, W), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
FLOAT = RNG.normal(3.0, 2.0, (H, W)).astype(np.float32)

# encoding -> (pixels as stored, dtype without byte order, expected RGB, expected array)
CASES = {
    "rgb8": (RGB, "u1", RGB, RGB),
    "bgr8": (RGB[:, :, ::-1], "u1", RGB, RGB[:, :, ::-1]),
    "rgba8": (np.dstack([RGB, ALPHA]), "u1", RGB, np.dstack([RGB, ALPHA])),
    "bgra8": (np.dstack([RGB[:, :, ::-1], ALPHA]), "u1", RGB, np.dstack([RGB[:, :, ::-1], ALPHA])),
    "mono8": (GRAY8, "u1", gray3(GRAY8), GRAY8),
    "8UC1": (GRAY8, "u1", gray3(GRAY8), GRAY8),
    "mono16": (GRAY16, "u2", gray3((GRAY16 // 256).astype(np.uint8)), GRAY16),
    "16UC1": (GRAY16, "u2", gray3((GRAY16 // 256).astype(np.uint8)), GRAY16),
    "32FC1": (FLOAT, "f4", gray3(scaled_float(FLOAT)), FLOAT),
}


@pytest.mark.parametrize(
    ("encoding", "bigendian"),
    [(enc, False) for enc in CASES] + [(enc, True) for enc in ("mono16", "16UC1", "32FC1")],
)
@pytest.mark.parametrize("pad", [0, 7])
def test_raw_encodings(encoding, bigendian, pad):
    pixels, dtype, want_rgb, want_array = CASES[encoding]
    rows = as_rows(pixels, (">" if bigendian else "<") + dtype, pad)
    msg = image_msg(encoding, rows, bigendian=bigendian)

    rgb = conv.image_to_rgb(msg)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(rgb, want_rgb)
    assert conv.message_to_rgb(msg).tobytes() == rgb.tobytes()

    native = conv.image_to_array(msg)
    assert native.dtype == np.dtype(dtype) and native.dtype.isnative
    assert native.flags.c_contiguous and native.flags.writeable
    np.testing.assert_array_equal(native, want_array)


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda raw: array.array("B", raw), lambda raw: np.frombuffer(raw, np.uint8)],
    ids=["bytes", "bytearray", "memoryview", "array.array", "numpy"],
)
def test_data_containers(wrap):
    msg = image_msg("bgr8", as_rows(RGB[:, :, ::-1], "u1", pad=3), wrap=wrap)
    np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB)


def test_results_do_not_alias_message_data():
    data = bytearray(RGB.tobytes())
    msg = image_msg("rgb8", as_rows(RGB, "u1"), wrap=lambda _: data)
    rgb = conv.image_to_rgb(msg)
    data[:] = bytes(len(data))
    np.testing.assert_array_equal(rgb, RGB)


def test_float_special_values():
    values = np.array([[np.nan, 1.0, np.inf], [-np.inf, 3.0, 2.0]], dtype=np.float32)
    msg = image_msg("32FC1", values.reshape(2, -1).view(np.uint8), height=2, width=3)
    np.testing.assert_array_equal(conv.image_to_rgb(msg)[:, :, 0], [[0, 0, 0], [0, 255, 128]])
    flat = image_msg("32FC1", np.full((2, 3), 4.0, np.float32).view(np.uint8), height=2, width=3)
    assert not conv.image_to_rgb(flat).any()


def smooth_rgb(h=32, w=48):
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 5, y * 7, (x + y) * 3]).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8"])
def test_compressed_jpeg(fmt):
    src = smooth_rgb()
    ok, enc = cv2.imencode(".jpg", src[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    msg = SimpleNamespace(format=fmt, data=array.array("B", enc.tobytes()))
    rgb = conv.message_to_rgb(msg)
    assert rgb.shape == src.shape and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - src).mean() < 3


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8"])
def test_compressed_png_exact(fmt):
    ok, enc = cv2.imencode(".png", RGB[:, :, ::-1])
    assert ok
    msg = SimpleNamespace(format=fmt, data=enc)
    np.testing.assert_array_equal(conv.compressed_to_rgb(msg), RGB)


def test_compressed_grayscale_png_becomes_rgb():
    ok, enc = cv2.imencode(".png", GRAY8)
    assert ok
    np.testing.assert_array_equal(
        conv.compressed_to_rgb(SimpleNamespace(format="png", data=enc.tobytes())), gray3(GRAY8)
    )


def good_rows():
    return as_rows(RGB, "u1")


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (image_msg("rgb8", good_rows(), height=0), "empty"),
        (image_msg("rgb8", good_rows(), width=0), "empty"),
        (image_msg("rgb8", np.zeros((0, 3 * W)), step=3 * W), "empty"),
        (image_msg("yuv422", good_rows()), "encoding"),
        (image_msg("", good_rows()), "encoding"),
        (image_msg("rgb8", good_rows(), step=3 * W - 1), "size"),
        (image_msg("mono16", as_rows(GRAY16, "<u2"), step=2 * W - 1), "size"),
        (image_msg("rgb8", good_rows()[:-1]), "size"),
        (image_msg("rgb8", good_rows(), wrap=list), "data"),
        (image_msg("rgb8", good_rows(), wrap=lambda raw: np.zeros(len(raw), np.float32)), "data"),
        (SimpleNamespace(format="jpeg", data=b"not a jpeg at all"), "decode"),
        (SimpleNamespace(format="png", data=b"\x89PNG\r\n\x1a\n" + bytes(40)), "decode"),
        (SimpleNamespace(format="jpeg", data=b""), "empty"),
        (SimpleNamespace(format="tiff", data=b"II*\x00"), "format"),
        (SimpleNamespace(format="16UC1; compressedDepth png", data=b"x"), "format"),
        (SimpleNamespace(height=1, width=1, data=b"x"), "type"),
    ],
)
def test_malformed(msg, reason):
    with pytest.raises(MessageConversionError) as info:
        conv.message_to_rgb(msg)
    assert info.value.reason == reason
    assert str(info.value)


def test_size_error_names_numbers():
    with pytest.raises(MessageConversionError, match=rf"expected step x height = {3 * W} x {H}"):
        conv.image_to_rgb(image_msg("rgb8", good_rows()[:-1]))


# ----------------------------------------------------------------------------- builders

TS = get_typestore()


def cdr_round_trip(msg):
    return TS.deserialize_cdr(TS.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def test_header_and_stamp():
    header = conv.make_header(TS, 1_700_000_001_000_000_042, "camera")
    assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (1_700_000_001, 42, "camera")
    assert conv.stamp_to_ns(header) == 1_700_000_001_000_000_042
    assert conv.stamp_to_ns(conv.make_header(TS, (3, 5), "x")) == 3_000_000_005


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_rgb_builder_round_trip(encoding):
    header = conv.make_header(TS, (10, 20), "cam")
    msg = cdr_round_trip(conv.rgb_to_image_msg(TS, RGB, header, encoding=encoding))
    assert (msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian) == (H, W, encoding, 3 * W, 0)
    assert bytes(msg.data) == (RGB if encoding == "rgb8" else RGB[:, :, ::-1]).tobytes()
    np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB)
    assert msg.header.frame_id == "cam" and conv.stamp_to_ns(msg.header) == 10_000_000_020


@pytest.mark.parametrize(
    ("encoding", "pixels", "bpp"),
    [("mono8", GRAY8, 1), ("16UC1", GRAY16, 2), ("32FC1", FLOAT, 4), ("rgba8", np.dstack([RGB, ALPHA]), 4)],
)
def test_array_builder_round_trip(encoding, pixels, bpp):
    msg = cdr_round_trip(conv.array_to_image_msg(TS, pixels, conv.make_header(TS, 0, "cam"), encoding))
    assert (msg.encoding, msg.step, msg.is_bigendian) == (encoding, W * bpp, 0)
    assert bytes(msg.data) == pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(conv.image_to_array(msg), pixels)


def test_array_builder_accepts_hxwx1_and_rejects_wrong_dtype():
    header = conv.make_header(TS, 0, "cam")
    msg = conv.array_to_image_msg(TS, FLOAT[:, :, None], header, "32FC1")
    np.testing.assert_array_equal(conv.image_to_array(msg), FLOAT)
    with pytest.raises(ValueError, match="float32"):
        conv.array_to_image_msg(TS, FLOAT.astype(np.float64), header, "32FC1")
    with pytest.raises(ValueError, match="HxWx3"):
        conv.rgb_to_image_msg(TS, GRAY8, header)
    with pytest.raises(ValueError, match="unsupported"):
        conv.array_to_image_msg(TS, GRAY8, header, "yuv422")


def test_compressed_builder_round_trip():
    header = conv.make_header(TS, (1, 0), "cam")
    png = cdr_round_trip(conv.rgb_to_compressed_msg(TS, RGB, header, format="png"))
    assert png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(conv.message_to_rgb(png), RGB)
    src = smooth_rgb()
    jpeg = cdr_round_trip(conv.rgb_to_compressed_msg(TS, src, header))
    assert jpeg.format == "rgb8; jpeg compressed bgr8"
    assert np.abs(conv.message_to_rgb(jpeg).astype(int) - src).mean() < 3


def test_camera_info():
    msg = cdr_round_trip(conv.camera_info_msg(TS, conv.make_header(TS, 0, "cam"), 640, 480, 500.0, 510.0, 320.5, 240.5))
    assert msg.__msgtype__ == CAMERA_INFO
    assert (msg.width, msg.height, msg.distortion_model) == (640, 480, "plumb_bob")
    np.testing.assert_array_equal(msg.d, np.zeros(5))
    np.testing.assert_array_equal(msg.k.reshape(3, 3), [[500, 0, 320.5], [0, 510, 240.5], [0, 0, 1]])
    np.testing.assert_array_equal(msg.r.reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(msg.p.reshape(3, 4), [[500, 0, 320.5, 0], [0, 510, 240.5, 0], [0, 0, 1, 0]])


# ----------------------------------------------------------------------------- custom types


def test_message_definitions_come_from_the_checkout():
    folder = message_definition_dir()
    assert (folder / "ObstacleAlert.msg").is_file() and (folder / "ObstacleAlertArray.msg").is_file()
    assert get_typestore() is TS


def _outside_checkout(tmp_path, monkeypatch) -> None:
    """As if the package were installed (no checkout beside it) into an empty prefix."""
    monkeypatch.setattr(typestore_module, "__file__", str(tmp_path / "site/pkg/ros/typestore.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))


def test_message_definitions_fall_back_to_share_then_fail(tmp_path, monkeypatch):
    _outside_checkout(tmp_path, monkeypatch)
    # An empty ament index, whether or not ament_index_python is installed or a workspace sourced.
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "no_workspace"))
    with pytest.raises(FileNotFoundError) as info:
        message_definition_dir()
    assert str(tmp_path / "site/msg/msg") in str(info.value)
    assert str(tmp_path / "prefix/share/anomaly_seg_ros/msg") in str(info.value)
    share = tmp_path / "prefix/share/anomaly_seg_ros/msg"
    share.mkdir(parents=True)
    (share / "ObstacleAlert.msg").write_text("uint32 track_id\n")
    assert message_definition_dir() == share


@pytest.mark.parametrize("ament", ["not_installed", "no_workspace_sourced"])
def test_message_definitions_without_a_ros_workspace(tmp_path, monkeypatch, ament):
    """No ament_index_python, or one without AMENT_PREFIX_PATH (the pip wheels): a clear miss, not OSError."""
    if ament == "not_installed":
        monkeypatch.setitem(sys.modules, "ament_index_python.packages", None)  # import raises ImportError
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert message_definition_dir() == typestore_module.Path(conv.__file__).resolve().parents[2] / "msg" / "msg"
    _outside_checkout(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match="cannot find the anomaly_seg_msgs message definitions"):
        message_definition_dir()


def test_message_definitions_from_a_sourced_workspace(tmp_path, monkeypatch):
    """The ament index of a sourced workspace (colcon install) is the last place looked in."""
    pytest.importorskip("ament_index_python", reason="ament_index_python is not installed (no ROS 2)")
    _outside_checkout(tmp_path, monkeypatch)
    workspace = tmp_path / "install"
    (workspace / "share/ament_index/resource_index/packages").mkdir(parents=True)
    (workspace / "share/ament_index/resource_index/packages/anomaly_seg_msgs").write_text("")
    share = workspace / "share/anomaly_seg_msgs/msg"
    share.mkdir(parents=True)
    (share / "ObstacleAlert.msg").write_text("uint32 track_id\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(workspace))
    assert message_definition_dir() == share


def test_obstacle_alert_array_cdr_round_trip():
    types = TS.types
    alerts = [
        types[OBSTACLE_ALERT](
            track_id=7 + i,
            roi=types[REGION_OF_INTEREST](x_offset=10 * i, y_offset=20, height=30, width=40, do_rectify=False),
            area_px=1200,
            max_score=0.75,
            mean_score=0.5,
            frames_seen=3,
            in_drivable_area=True,
            position_valid=i == 1,
            ground_position=types[POINT](x=0.5, y=1.25, z=12.0 + i),
            distance_m=12.5,
        )
        for i in range(2)
    ]
    msg = types[OBSTACLE_ALERT_ARRAY](
        header=conv.make_header(TS, (1234, 5678), "camera_optical"),
        scorer="max_logit",
        threshold=0.25,
        alerts=alerts,
    )
    raw = bytes(TS.serialize_cdr(msg, OBSTACLE_ALERT_ARRAY, little_endian=True))
    # CDR: 4-byte encapsulation (little endian), then header.stamp.sec and nanosec.
    assert raw[:8] == b"\x00\x01\x00\x00" + struct.pack("<i", 1234)
    assert raw[8:12] == struct.pack("<I", 5678)
    back = TS.deserialize_cdr(raw, OBSTACLE_ALERT_ARRAY)
    assert back.header.frame_id == "camera_optical" and back.scorer == "max_logit"
    assert back.threshold == 0.25 and len(back.alerts) == 2
    for got, want in zip(back.alerts, alerts, strict=True):
        assert got.track_id == want.track_id and got.roi.x_offset == want.roi.x_offset
        assert (got.roi.width, got.roi.height) == (40, 30)
        assert got.position_valid == want.position_valid and got.in_drivable_area
        assert (got.ground_position.x, got.ground_position.z) == (0.5, want.ground_position.z)
        assert (got.max_score, got.mean_score, got.distance_m) == (0.75, 0.5, 12.5)
