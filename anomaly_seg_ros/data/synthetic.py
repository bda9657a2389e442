"""Synthetic road scenes with Cityscapes trainId labels, anomaly scenes and driving sequences.

Real road-anomaly data is scarce and cannot be shared with every test, so the package
trains and checks its models on procedurally generated scenes with the layout of a
forward car camera: perspective road with lane markings, sidewalks, facades, vegetation,
street furniture, people and vehicles, sky, and the ego-vehicle hood (label 255, like
Cityscapes). Colours of classes overlap and every region is textured, so segmenting them
needs shape and texture, not a colour lookup.

Anomaly scenes are the same scenes (same seed, same pixels elsewhere) plus objects on
the road whose colours (:data:`ANOMALY_HUE_BANDS_DEG` at high saturation, see
:func:`anomaly_palette_mask`), patterns and shapes appear in no in-distribution scene.

Everything comes from ``numpy.random.Generator`` streams derived from the seed alone:
the same seed gives byte-identical output and no global random state is touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from anomaly_seg_ros.common.labels import ANOMALY, IGNORE_INDEX, TRAIN_ID
from anomaly_seg_ros.data import synthetic_sprites as sp
from anomaly_seg_ros.data.synthetic_sprites import ANOMALY_HUE_BANDS_DEG, anomaly_palette_mask
from anomaly_seg_ros.data.synthetic_world import (
    BACK,
    BACK_FAR,
    FRONT,
    FRONT_FAR,
    NEAR,
    STREAM_FRAME_NOISE,
    STREAM_SEQUENCE_ANOMALIES,
    STREAM_STILL_ANOMALIES,
    Part,
    RoadShift,
    Thing,
    World,
    billboard,
)

__all__ = [
    "ANOMALY_HUE_BANDS_DEG",
    "CameraIntrinsics",
    "Scene",
    "SequenceFrame",
    "anomaly_palette_mask",
    "camera_intrinsics",
    "render_scene",
    "render_sequence",
]

_GROUND_FAR = 3000.0


@dataclass(frozen=True, eq=False)
class Scene:
    """One rendered frame. ``eq=False``: arrays do not compare with ``==``."""

    image: np.ndarray  # HxWx3 uint8 RGB
    labels: np.ndarray  # HxW uint8 trainIds, 255 ignore
    anomaly: np.ndarray  # HxW uint8: 1 anomaly, 0 in-distribution, 255 ignore


@dataclass(frozen=True, eq=False)
class SequenceFrame:
    index: int
    scene: Scene
    instances: np.ndarray  # HxW uint16 anomaly instance ids, 0 = none; stable over the sequence


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole camera of a seed's scenes; pixel centres at integer coordinates (as in ROS CameraInfo).

    The camera looks level along the road, so the principal point lies on the horizon row.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    mount_height: float  # metres above the road


def camera_intrinsics(seed: int, *, height: int = 512, width: int = 1024) -> CameraIntrinsics:
    """Intrinsics of ``render_scene(seed)`` and ``render_sequence(seed)`` at that size.

    Focal length (0.85-1.15 x width), principal point and camera height vary with the seed;
    whoever records the images with a CameraInfo takes them from here.
    """
    camera = World(seed, height, width, lead_car=False).camera
    return CameraIntrinsics(camera.focal, camera.focal, camera.cx, camera.horizon, camera.mount)


def render_scene(seed: int, *, height: int = 512, width: int = 1024, num_anomalies: int = 0) -> Scene:
    """A still road scene; with ``num_anomalies`` > 0 the same scene plus that many objects on the road.

    ``seed`` >= 0. Anomalies stand 8-60 m ahead where nearer objects cover at most a tenth
    of them, so each one shows in the image; all other pixels' labels are those of the
    scene without anomalies.
    """
    if num_anomalies < 0:
        raise ValueError(f"num_anomalies must be >= 0, got {num_anomalies}")
    world = World(seed, height, width, lead_car=True)
    anomalies = _place_still_anomalies(world, num_anomalies)
    scene, _ = _render(world, 0.0, 0.0, anomalies, np.random.default_rng((world.seed, STREAM_FRAME_NOISE)))
    return scene


def render_sequence(
    seed: int, *, num_frames: int, height: int = 512, width: int = 1024, num_anomalies: int = 2, fps: float = 10.0
) -> Iterator[SequenceFrame]:
    """A drive along the road of ``seed``: frame ``k`` is seen from ``k * speed / fps`` metres on.

    The world is the one of ``render_scene(seed)`` (the camera drives on through it; the
    speed, 8-15 m/s, comes from the seed). Anomalies lie at fixed places on the ego lane.
    Each comes into view far ahead (small, just below the horizon) some frames into the
    sequence, the first after at least two anomaly-free frames, then grows as the car
    approaches until it passes under the hood or the sequence ends. The distance at which
    an anomaly appears is what the car covers in the frames left (between 30 and 150 m),
    so short sequences show the whole approach too. Instance ids are 1..num_anomalies
    (in order of appearance). Frames are rendered lazily, one per iteration.
    """
    if num_frames < 0 or num_anomalies < 0 or fps <= 0:
        raise ValueError(
            f"need num_frames >= 0, num_anomalies >= 0 and fps > 0, got {num_frames}, {num_anomalies}, {fps}"
        )
    world = World(seed, height, width, lead_car=False)
    step = world.speed / fps
    anomalies = _place_sequence_anomalies(world, num_anomalies, num_frames, step)
    return _drive(world, anomalies, num_frames, step, fps)


def _drive(world: World, anomalies: list[Thing], num_frames: int, step: float, fps: float) -> Iterator[SequenceFrame]:
    """The frames of render_sequence (a separate generator, so bad arguments raise at the call)."""
    for index in range(num_frames):
        s, t = index * step, index / fps
        noise_rng = np.random.default_rng((world.seed, STREAM_FRAME_NOISE, index))
        scene, instances = _render(world, s, t, anomalies, noise_rng)
        world.prune(s, t)
        yield SequenceFrame(index, scene, instances)


# ---------------------------------------------------------------------------------------
# Anomaly placement.


def _anomaly(uid: tuple[int, ...], instance: int, x: float, z: float, width: float, height: float) -> Thing:
    make = partial(_anomaly_sprites, width=width, height=height)
    return Thing(uid, FRONT, x, z, 0.1, billboard(width, height), make, instance=instance, on_road=True)


def _anomaly_sprites(
    rng: np.random.Generator, bank: sp.NoiseBank, detail: float, width: float, height: float
) -> dict[str, sp.Sprite]:
    return {"body": sp.anomaly_object(rng, bank, width, height, detail)}


def _nearest_visible_distance(world: World) -> float:
    """Distance at which an object's foot is a few rows above the hood."""
    cam = world.camera
    rows = max(cam.hood_rows.min() - cam.horizon - 3.0, 2.0)
    return cam.focal * cam.mount / rows + 0.5


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def _place_still_anomalies(world: World, count: int) -> list[Thing]:
    """Objects on the road 8-60 m ahead that no nearer object covers by more than 10 %."""
    if count == 0:
        return []
    rng = np.random.default_rng((world.seed, STREAM_STILL_ANOMALIES))
    near = max(_nearest_visible_distance(world), 8.0)
    far = max(60.0, near + 10.0)
    hw = world.half_width
    blockers = [
        (th.z, world.bbox(th, 0.0, 0.0)) for th in world.things(0.0, 0.0) if th.layer == FRONT and NEAR < th.z < far
    ]
    placed: list[Thing] = []
    for i in range(count):
        for _ in range(100):
            width, height = rng.uniform(0.4, 2.0), rng.uniform(0.3, 1.5)
            d = near + (far - near) * rng.uniform() ** 1.5
            x = rng.uniform(-hw + width / 2 + 0.3, hw - width / 2 - 0.3)
            candidate = _anomaly((STREAM_STILL_ANOMALIES, i), i + 1, x, d, width, height)
            box = world.bbox(candidate, 0.0, 0.0)
            area = (box[2] - box[0]) * (box[3] - box[1])
            hidden = any(b is not None and z < d and _overlap(box, b) > 0.1 * area for z, b in blockers)
            clash = any(_overlap(box, world.bbox(other, 0.0, 0.0)) > 0 for other in placed)
            if not hidden and not clash:
                break
        else:  # crowded road: in front of everything, in the ego lane
            x, d = world.x_cam + (i - 1) * 1.2, near + 1.5 * i
            candidate = _anomaly((STREAM_STILL_ANOMALIES, i), i + 1, x, d, 0.6, 0.6)
        placed.append(candidate)
        blockers.append((candidate.z, world.bbox(candidate, 0.0, 0.0)))
    return placed


def _place_sequence_anomalies(world: World, count: int, num_frames: int, step: float) -> list[Thing]:
    """Objects on the ego lane that come into view at frames spread over the sequence.

    Anomaly ``i`` appears at frame ``first + i * gap`` at the distance the car covers by
    the end of the sequence (so it gets close), and is not drawn while further away.
    Successive anomalies alternate sides of the lane and are 10 m or more apart.
    """
    rng = np.random.default_rng((world.seed, STREAM_SEQUENCE_ANOMALIES))
    first = max(2, int(round(num_frames * rng.uniform(0.1, 0.2))))
    gap = max(2, int(round(num_frames * rng.uniform(0.1, 0.2))))
    near = _nearest_visible_distance(world)
    placed: list[Thing] = []
    z_last = -np.inf
    for i in range(count):
        width, height = rng.uniform(0.5, 1.2), rng.uniform(0.4, 1.3)
        frame = first + i * gap
        appear = float(np.clip(near + 0.85 * step * (num_frames - 1 - frame), 30.0, FRONT_FAR))
        z = max(frame * step + appear - rng.uniform(0.05, 0.95) * step, z_last + 10.0)
        room = max(world.lane_width / 2 - width / 2 - 0.2, 0.0)
        side = 1 if i % 2 == 0 else -1
        x = world.lane_centres[world.ego_lane] + side * rng.uniform(0.3 * room, room)
        anomaly = _anomaly((STREAM_SEQUENCE_ANOMALIES, i), i + 1, x, z, width, height)
        placed.append(dataclasses.replace(anomaly, max_distance=appear))
        z_last = z
    return placed


# ---------------------------------------------------------------------------------------
# Rendering.


class _Canvas:
    def __init__(self, height: int, width: int) -> None:
        self.image = np.empty((height, width, 3), dtype=np.float32)
        self.labels = np.full((height, width), TRAIN_ID["sky"], dtype=np.uint8)
        self.instances = np.zeros((height, width), dtype=np.uint16)
        self.has_instances = False  # skip the instance map until an anomaly is drawn


def _haze(world: World, distance: np.ndarray | float) -> np.ndarray | float:
    """Fraction of the horizon colour mixed in at ``distance`` (aerial perspective)."""
    return 1.0 - np.exp(-np.asarray(distance, dtype=np.float32) / world.haze_distance)


def _render(
    world: World, s: float, t: float, anomalies: list[Thing], noise_rng: np.random.Generator
) -> tuple[Scene, np.ndarray]:
    cam = world.camera
    canvas = _Canvas(cam.height, cam.width)
    _draw_sky(world, s, canvas)
    _draw_ground(world, s, t, canvas)
    shift = world.road_shift(s)
    things = world.things(s, t) + anomalies
    for layer, far in ((BACK, BACK_FAR), (FRONT, FRONT_FAR)):
        visible = [(th.z_at(t) - s, th) for th in things if th.layer == layer]
        visible = [(d, th) for d, th in visible if d < (th.max_distance or far) and d + th.length > NEAR]
        for d, thing in sorted(visible, key=lambda item: -item[0]):
            sprites = world.sprites(thing, d)
            for part in thing.parts:
                _draw_part(world, shift, d, thing, part, sprites[part.key], canvas)
    anomaly = (canvas.labels == sp.ANOMALY_MARK).astype(np.uint8) * ANOMALY
    canvas.labels[anomaly == ANOMALY] = IGNORE_INDEX
    _draw_hood(world, canvas, anomaly)
    image = _finish(world, canvas.image, noise_rng)
    return Scene(image, canvas.labels, anomaly), canvas.instances


def _draw_sky(world: World, s: float, canvas: _Canvas) -> None:
    """Sky gradient and clouds above the horizon, then the distant skyline and tree line."""
    cam = world.camera
    h, w = cam.height, cam.width
    top = min(int(np.ceil(cam.horizon)) + 1, h)
    rows = np.arange(top, dtype=np.float32)
    t = np.clip(rows / max(cam.horizon, 1.0), 0.0, 1.0) ** 0.7
    gradient = (world.sky_top + (world.sky_horizon - world.sky_top) * t[:, None]).astype(np.float32)
    canvas.image[:top] = cv2.resize(gradient[:, None, :], (w, top), interpolation=cv2.INTER_NEAREST)
    heading = world.heading(s)
    # Clouds: noise on a plane above the camera (flattened towards the horizon), at a
    # quarter of the resolution since they are smooth.
    small_h, small_w = max(top // 4, 1), max(w // 4, 1)
    small_rows = (np.arange(small_h, dtype=np.float32) + 0.5) * (top / small_h)
    small_cols = (np.arange(small_w, dtype=np.float32) + 0.5) * (w / small_w)
    elevation = np.maximum((cam.horizon - small_rows) / cam.focal, 0.0) + 0.02
    azimuth = heading + (small_cols - cam.cx) / cam.focal
    depth = 40.0 / elevation[:, None]
    map_x = azimuth[None, :] * depth + world.noise_offset[0]
    map_y = np.broadcast_to(depth * 2.0, map_x.shape)
    density = world.bank.remap("coarse", map_x, map_y)
    detail = world.bank.remap("medium", map_x * 3.0, map_y * 3.0)
    alpha = np.clip((density + 0.3 * detail - (1.3 - 1.8 * world.clouds)) * 1.2, 0.0, 0.9)
    alpha *= np.clip((elevation[:, None] - 0.02) / 0.05, 0.0, 1.0)
    shade = np.clip(0.5 - 0.35 * detail, 0.0, 1.0)
    bright = world.sky_horizon * 1.04
    dark = world.sky_horizon * (0.68 if world.weather == 1 else 0.82)
    cloud = cv2.resize(sp.mix(bright, dark, shade), (w, top), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.resize(alpha.astype(np.float32), (w, top), interpolation=cv2.INTER_LINEAR)
    canvas.image[:top] = cv2.blendLinear(canvas.image[:top], cloud, 1.0 - alpha, alpha)
    # Distant skyline (buildings) and tree line, as elevation angles around the horizon.
    cols = np.arange(w, dtype=np.float32)
    n = len(world.skyline)
    index = np.mod(np.round((heading + (cols - cam.cx) / cam.focal) * n / (2 * np.pi)).astype(np.int64), n)
    building_top = cam.horizon - cam.focal * world.skyline[index]
    tree_top = cam.horizon - cam.focal * world.treeline[index]
    first = int(max(0, np.floor(min(building_top.min(), tree_top.min()))))
    if first >= top:
        return
    band_rows = np.arange(first, top, dtype=np.float32)[:, None]
    is_tree = band_rows >= tree_top[None, :]
    is_building = (band_rows >= building_top[None, :]) & ~is_tree
    building_rgb = world.sky_horizon * (0.78 * world.skyline_shade[index])[:, None]
    tree_rgb = world.sky_horizon * 0.55 + sp.hsv(95, 0.5, 0.25) * 0.45
    band = canvas.image[first:top]
    building_image = cv2.resize(
        building_rgb.astype(np.float32)[None], (w, top - first), interpolation=cv2.INTER_NEAREST
    )
    cv2.copyTo(building_image, is_building.view(np.uint8), band)
    band[is_tree] = tree_rgb
    canvas.labels[first:top][is_building] = TRAIN_ID["building"]
    canvas.labels[first:top][is_tree] = TRAIN_ID["vegetation"]


def _draw_ground(world: World, s: float, t: float, canvas: _Canvas) -> None:
    """Road, markings, sidewalks and verges, per pixel from each pixel's ground position.

    Each pixel below the horizon is a point on the flat ground; its lateral offset from
    the road centre picks the surface and its world position samples the texture, so the
    ground texture stays put as the camera moves. Surface colours come from uint8 codes
    through cv2.LUT and the image is assembled channel by channel (numpy gathers and
    channel-axis broadcasts would cost several times more).
    """
    cam = world.camera
    h, w = cam.height, cam.width
    first = int(np.floor(cam.horizon)) + 1
    if first >= h:
        return
    rows = np.arange(first, h, dtype=np.float32)
    d = np.minimum(cam.focal * cam.mount / (rows - cam.horizon), _GROUND_FAR).astype(np.float32)
    offset = (world.road_shift(s)(d) - world.x_cam).astype(np.float32)
    ray = (np.arange(w, dtype=np.float32) - cam.cx) / cam.focal
    x = ray[None, :] * d[:, None] - offset[:, None]  # lateral position from the road centre (m)
    z = (s + d).astype(np.float32)  # arc length of each row
    bank = world.bank
    # World-anchored noise (patches, blobs, grain), sampled at half resolution.
    half_x = x[::2, ::2]
    noise = []
    for kind, per_metre in (("coarse", 4.0), ("medium", 20.0), ("fine", 60.0)):
        map_y = np.broadcast_to(bank.wrap(z[::2] * per_metre + world.noise_offset[1])[:, None], half_x.shape)
        small = bank.remap(kind, half_x * per_metre + world.noise_offset[0], np.ascontiguousarray(map_y))
        noise.append(cv2.resize(small, (w, len(rows)), interpolation=cv2.INTER_LINEAR))
    coarse, medium, fine = noise
    lateral = np.clip((x - world.lateral_x0) * 100.0, 0, len(world.lateral_track) - 1).astype(np.intp)
    surface = world.lateral_surface[lateral]  # 0 road, 1 sidewalk, 2 curb, 3 terrain
    gain = cv2.LUT(surface, sp.lut256([0.08, 0.06, 0.03, 0.35])) * coarse
    gain += cv2.LUT(surface, sp.lut256([0.04, 0.0, 0.0, 0.2])) * medium
    gain += cv2.LUT(surface, sp.lut256([0.06, 0.06, 0.05, 0.14])) * fine
    gain += 1.0
    gain *= world.lateral_track[lateral]
    walk_r, walk_c = np.nonzero(surface == 1)  # paving joints
    tile = world.paving_size
    jx, jz = x[walk_r, walk_c], z[walk_r]
    joint = np.minimum(jx - np.floor(jx / tile) * tile, jz - np.floor(jz / tile) * tile) < 0.025
    gain[walk_r[joint], walk_c[joint]] *= 0.78
    if world.shadow_strength > 0:
        reach = _shadow_reach(world, s, t, d)
        gain[world.sun_side * x >= reach] *= 1.0 - world.shadow_strength
    np.maximum(gain, 0.3, out=gain)
    haze = _haze(world, d)[:, None]
    gain *= 1.0 - haze
    # Lane markings and crossings (a few percent of the pixels): painted pixel list and cover.
    pixel = d / cam.focal
    distance = world.lateral_distance[lateral]
    line_r, line_c = np.nonzero((distance < 0.07 + pixel[:, None]) & (surface == 0))
    cover = np.clip((0.07 - distance[line_r, line_c]) / pixel[line_r] + 0.5, 0.0, 1.0)
    dash_off = np.mod(z, world.dash_period) >= world.dash_period * 0.35
    cover[dash_off[line_r] & world.lateral_dashed[lateral[line_r, line_c]]] = 0.0
    paint_r, paint_c, paint = [line_r], [line_c], [cover]
    for z_cross in world.crossings(s, t):
        band = np.nonzero((z > z_cross - 5.0) & (z < z_cross))[0]
        if len(band):
            rows_x = x[band]
            stripes = (z[band, None] > z_cross - 4.0) & (np.mod(rows_x, 1.0) < 0.5)
            stop = (z[band, None] < z_cross - 4.6) & (rows_x > world.lane_bounds[world.oncoming])
            cr, cc = np.nonzero((stripes | stop) & (surface[band] == 0))
            paint_r.append(band[cr])
            paint_c.append(cc)
            paint.append(np.ones(len(cr), np.float32))
    painted = np.concatenate(paint_r) * w + np.concatenate(paint_c)  # flat pixel indices
    amount = np.concatenate(paint)
    amount *= np.clip(0.9 - 0.25 * medium.ravel()[painted], 0.0, 1.0)
    yellow = world.lateral_yellow[lateral.ravel()[painted]]
    # Per channel: surface colour (cv2.LUT), markings, gain, haze.
    grass = (world.grass + world.grass_dark) / 2
    colors = np.stack([world.asphalt, world.paving, world.curb, grass]).astype(np.float32)
    channels = []
    for c in range(3):
        value = cv2.LUT(surface, sp.lut256(colors[:, c]))
        mark = np.where(yellow, world.marking_yellow[c], world.marking[c]).astype(np.float32)
        flat = value.ravel()
        flat[painted] += amount * (mark - flat[painted])
        value *= gain
        value += haze * world.sky_horizon[c]
        channels.append(value)
    cv2.merge(channels, dst=canvas.image[first:])
    road_labels = sp.lut256([TRAIN_ID["road"], TRAIN_ID["sidewalk"], TRAIN_ID["sidewalk"], TRAIN_ID["terrain"]])
    canvas.labels[first:] = cv2.LUT(surface, road_labels.astype(np.uint8))


def _shadow_reach(world: World, s: float, t: float, d: np.ndarray) -> np.ndarray:
    """Per row: lateral offset (towards the sun side) beyond which the back row shades the ground."""
    grid = np.full(int(BACK_FAR) + 1, np.inf, dtype=np.float32)
    for thing in world.things(s, t):
        if thing.casts_shadow > 0 and np.sign(thing.x) == world.sun_side:
            start = int(max(np.floor(thing.z - s), 0))
            stop = int(min(np.ceil(thing.z + thing.length - s), BACK_FAR))
            if start < stop:
                line = abs(thing.x) - world.shadow_reach * thing.casts_shadow
                grid[start : stop + 1] = np.minimum(grid[start : stop + 1], line)
    return grid[np.clip(d, 0, BACK_FAR).astype(np.int64)][:, None]


def _draw_part(
    world: World, shift: RoadShift, distance: float, thing: Thing, part: Part, sprite: sp.Sprite, canvas: _Canvas
) -> None:
    """Warp one textured plane into the image (painter's order) with its light and haze."""
    cam = world.camera
    da, db = distance + part.dz0, distance + part.dz1
    xa, xb = thing.x + part.dx0, thing.x + part.dx1
    ta, tb = 0.0, 1.0  # texture fraction at the two ends after clipping
    if max(da, db) < NEAR:
        return
    if da < NEAR:
        f = (NEAR - da) / (db - da)
        xa, da, ta = xa + f * (xb - xa), NEAR, f
    if db < NEAR:
        f = (NEAR - db) / (da - db)
        xb, db, tb = xb + f * (xa - xb), NEAR, 1.0 - f
    if thing.mirror:
        ta, tb = 1.0 - ta, 1.0 - tb
    la, lb = xa + shift.at(da) - world.x_cam, xb + shift.at(db) - world.x_cam
    if (part.facing == "+x" and la + lb >= 0) or (part.facing == "-x" and la + lb <= 0):
        return
    focal = cam.focal
    ia, ib = 1.0 / da, 1.0 / db
    ua, ub = cam.cx + focal * la * ia, cam.cx + focal * lb * ib
    if abs(ub - ua) < 0.5:
        return
    bottom_a, bottom_b = (
        cam.horizon + focal * (cam.mount - part.y0) * ia,
        cam.horizon + focal * (cam.mount - part.y0) * ib,
    )
    top_a, top_b = cam.horizon + focal * (cam.mount - part.y1) * ia, cam.horizon + focal * (cam.mount - part.y1) * ib
    x0, x1 = max(math.floor(min(ua, ub)), 0), min(math.ceil(max(ua, ub)), cam.width)
    y0, y1 = max(math.floor(min(top_a, top_b)), 0), min(math.ceil(max(bottom_a, bottom_b)), cam.height)
    if x1 <= x0 or y1 <= y0:
        return
    shrink = sprite.shape[0] / max(bottom_a - top_a, bottom_b - top_b, 1e-3)
    rgb, labels, cover = sprite.level(int(math.log2(shrink)) if shrink >= 2.0 else 0)
    th, tw = labels.shape
    size = (x1 - x0, y1 - y0)
    if da == db:  # facing the camera: scale and shift only
        sx = (ub - ua) / ((tb - ta) * tw)
        sy = (bottom_a - top_a) / th
        matrix = np.array([[sx, 0.0, ua - x0 - sx * ta * tw], [0.0, sy, top_a - y0]])
        warp = cv2.warpAffine
    else:
        src = np.float32([[ta * tw, th], [tb * tw, th], [tb * tw, 0], [ta * tw, 0]])
        dst = np.float32(
            [[ua - x0, bottom_a - y0], [ub - x0, bottom_b - y0], [ub - x0, top_b - y0], [ua - x0, top_a - y0]]
        )
        matrix = cv2.getPerspectiveTransform(src, dst)
        warp = cv2.warpPerspective
    warped_labels = warp(
        labels, matrix, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=sp.CLEAR
    )
    image = canvas.image[y0:y1, x0:x1]
    shade = warped_labels == sp.SHADE
    if shade.any():
        image[shade] *= 0.45
    # Opaque where the interpolated coverage is over one half: smooth outlines when magnified.
    warped_cover = warp(cover, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    opaque = (warped_cover >= 128) & (warped_labels < sp.CLEAR)
    if not opaque.any():
        return
    warped = warp(rgb, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    haze = float(_haze(world, 2.0 / (ia + ib)))  # at the plane's mean depth
    gain = world.light[part.facing] * (1.0 - haze)
    affine = np.zeros((3, 4), dtype=np.float32)  # light and haze in one pass: rgb * gain + haze colour
    affine[[0, 1, 2], [0, 1, 2]] = gain
    affine[:, 3] = world.sky_horizon * haze
    warped = cv2.transform(warped, affine)
    mask = opaque.view(np.uint8)
    cv2.copyTo(warped, mask, image)
    cv2.copyTo(warped_labels, mask, canvas.labels[y0:y1, x0:x1])
    if thing.instance or canvas.has_instances:
        canvas.instances[y0:y1, x0:x1][opaque] = thing.instance
        canvas.has_instances = True


def _hood_layer(world: World) -> tuple[int, np.ndarray, np.ndarray]:
    """First hood row, hood mask and colours below it (static, so built once per world)."""
    if "hood" not in world.render_cache:
        cam = world.camera
        first = int(cam.hood_rows.min())
        rows = np.arange(first, cam.height, dtype=np.float32)[:, None]
        mask = rows >= cam.hood_rows[None, :]
        glare = np.exp(-(rows - cam.hood_rows[None, :]) / max(cam.height * 0.02, 1.0))
        spread = np.exp(-(((np.arange(cam.width) - cam.cx) / cam.width) ** 2) * 6.0)[None, :]
        rgb = sp.mix(world.hood_paint, world.hood_paint + world.sky_horizon * 0.35, glare * spread)
        world.render_cache["hood"] = (first, mask, rgb)
    return world.render_cache["hood"]


def _draw_hood(world: World, canvas: _Canvas, anomaly: np.ndarray) -> None:
    """The ego-vehicle hood along the bottom: dark paint with the sky's reflection; ignore label."""
    first, mask, rgb = _hood_layer(world)
    cv2.copyTo(rgb, mask.view(np.uint8), canvas.image[first:])
    canvas.labels[first:][mask] = IGNORE_INDEX
    anomaly[first:][mask] = IGNORE_INDEX
    canvas.instances[first:][mask] = 0


def _finish(world: World, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, vignetting and sensor noise; to uint8."""
    h, w = image.shape[:2]
    if "gain" not in world.render_cache:
        ys = (np.arange(h, dtype=np.float32) / h - 0.5) * 2
        xs = (np.arange(w, dtype=np.float32) / w - 0.5) * 2
        vignette = (1.0 - world.vignette * ys**2 * 0.5)[:, None] * (1.0 - world.vignette * xs**2)[None, :]
        world.render_cache["gain"] = cv2.merge([vignette * np.float32(c) for c in world.tint * world.brightness])
    image *= world.render_cache["gain"]
    # All colours are >= 0, so this is a rounding, saturating conversion in one pass.
    out = cv2.convertScaleAbs(image)
    # Sensor noise: uniform integers, the same on all channels (a luminance grain), with
    # standard deviation ~sensor_noise; added with saturation.
    reach = max(1, round(world.sensor_noise * np.sqrt(3.0)))
    noise = rng.integers(-reach, reach + 1, (h, w), dtype=np.int16)
    return cv2.add(out, cv2.merge([noise, noise, noise]), dtype=cv2.CV_8U)
