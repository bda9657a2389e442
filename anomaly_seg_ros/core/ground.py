"""Flat-ground position of an image point: where an obstacle touches the road.

A planner needs to know how far an anomaly is, not only where it is in the image. With a
calibrated pinhole camera at a known height above a flat road and a known pitch, the
lowest image point of an obstacle (where it meets the road) back-projects to a ray that
hits the road plane at one point. That is the whole model: no depth network, no LiDAR,
and wrong exactly where the road is not flat, which is why the result carries a validity
flag and the message documents the assumption.

Geometry, in the camera optical frame (x right, y down, z forward):

* ray of pixel (u, v): ``d = ((u - cx) / fx, (v - cy) / fy, 1)``;
* with the camera pitched down by ``theta`` (rotation about its x axis), the world's
  downward unit vector expressed in the camera frame is ``n = (0, cos theta, sin theta)``;
* the road is the plane ``n . p = h`` (``h`` = camera height above the road), so the ray
  meets it at ``t = h / (n . d)``, ``p = t d``, valid only when ``n . d > 0`` (the ray
  points below the horizon; at or above it, it never reaches the road ahead);
* the reported distance is the range along the road from the point below the camera:
  ``sqrt(|p|^2 - h^2)``. At zero pitch and ``u = cx`` this is ``z = fy h / (v - cy)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class GroundEstimate:
    """Ground points of N pixels: ``points`` (N, 3) in metres, NaN where ``valid`` is false."""

    points: np.ndarray
    distance_m: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class GroundModel:
    """A pinhole camera (intrinsics in pixels) at ``height_m`` above a flat road, pitched down by ``pitch_rad``."""

    fx: float
    fy: float
    cx: float
    cy: float
    height_m: float
    pitch_rad: float = 0.0

    def __post_init__(self) -> None:
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if not self.height_m > 0:
            raise ValueError(f"camera height must be positive (metres above the road), got {self.height_m}")
        if not -math.pi / 2 < self.pitch_rad < math.pi / 2:
            raise ValueError(f"pitch must be in (-pi/2, pi/2) radians, got {self.pitch_rad}")

    @classmethod
    def from_camera_info(cls, msg: Any, height_m: float, pitch_rad: float = 0.0) -> GroundModel:
        """Intrinsics from a ``sensor_msgs/CameraInfo`` (rclpy or rosbags; row-major ``k``).

        ``k`` describes the raw image; the node runs on the image it receives, so this is
        right for undistorted or rectified input and approximate for distorted lenses.
        """
        k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise ValueError(f"CameraInfo.k must have 9 elements, got {k.size}")
        return cls(
            fx=float(k[0]), fy=float(k[4]), cx=float(k[2]), cy=float(k[5]), height_m=height_m, pitch_rad=pitch_rad
        )

    def project(self, u: npt.ArrayLike, v: npt.ArrayLike) -> GroundEstimate:
        """Ground points of pixels ``(u, v)`` (scalars or same-shape arrays, flattened to N)."""
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        rays = np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], axis=1)
        down = np.array([0.0, math.cos(self.pitch_rad), math.sin(self.pitch_rad)])
        along_down = rays @ down
        valid = along_down > 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(valid, self.height_m / along_down, np.nan)
        points = rays * scale[:, None]
        distance = np.sqrt(np.maximum(np.einsum("ij,ij->i", points, points) - self.height_m**2, 0.0))
        return GroundEstimate(points=points, distance_m=distance, valid=valid)

    def range_for_area(self, frontal_area_m2: float, min_area_px: float) -> float:
        """Distance (m) beyond which an object of ``frontal_area_m2`` covers fewer than ``min_area_px`` pixels.

        A fronto-parallel patch of area ``A`` at depth ``z`` covers ``fx fy A / z^2`` pixels,
        so it reaches ``min_area_px`` up to ``z = sqrt(fx fy A / min_area_px)``: the detection
        range an alert's minimum area implies, whatever the scores.
        """
        if not (frontal_area_m2 > 0 and min_area_px > 0):
            raise ValueError(f"area and minimum pixel count must be positive, got {frontal_area_m2}, {min_area_px}")
        return math.sqrt(self.fx * self.fy * frontal_area_m2 / min_area_px)
