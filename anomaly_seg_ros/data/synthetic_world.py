"""The world of the synthetic driving scenes: camera, road and the objects along it.

Everything is fixed by the seed before anything is drawn, so a driving sequence is the
same world seen from a camera further along the road. Objects are generated in blocks of
:data:`BLOCK` metres of road, each block from its own random stream: a still scene and a
long sequence of the same seed see the same buildings, and a block is generated only
when the camera gets near it.

Geometry: flat ground, pinhole camera at ``mount`` metres looking along the road. The
road is described by its curvature along the arc length; an object at distance ``d``
ahead and lateral offset ``X`` from the road centre sits at camera-frame lateral
``X + c(d) - x_cam``, where ``c`` is the road centre's lateral drift seen from the
camera (small-angle approximation), and projects to column ``cx + f x / d`` and, for a
point ``y`` metres above the ground, row ``horizon + f (mount - y) / d``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly_seg_ros.data import synthetic_sprites as sp

# Random streams are numpy.random.default_rng((seed, STREAM_..., ...)), one prefix per
# purpose, so that drawing more of one thing never changes the draws of another.
(
    STREAM_WORLD,
    STREAM_BLOCKS,
    STREAM_FRAME_NOISE,
    STREAM_LEAD_CAR,
    STREAM_STILL_ANOMALIES,
    STREAM_SEQUENCE_ANOMALIES,
    STREAM_POOLS,
    STREAM_ANOMALY_COUNT,
) = range(8)

BLOCK = 60.0  # metres of road per generation block
NEAR = 1.0  # near clipping distance (m)
FRONT_FAR = 150.0  # objects beside and on the road are drawn up to this distance
BACK_FAR = 220.0  # buildings and vegetation rows further (the painted skyline takes over beyond)
BACK, FRONT = 0, 1
_CURVE_GRID = np.arange(0.0, 601.0, 1.0)

# (texture stream, noise bank, pixels per metre needed) -> textures by part key
SpriteMaker = Callable[[np.random.Generator, sp.NoiseBank, float], dict[str, sp.Sprite]]
_MAX_DETAIL = 128.0
_POOL_DETAIL = 16.0  # vehicles needing at most this many pixels per metre use pooled textures


class RoadShift:
    """c(d) on a 1 m grid: ``shift(d_array)`` for arrays, ``shift.at(d)`` for one distance."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self._list = values.tolist()

    def __call__(self, d: np.ndarray) -> np.ndarray:
        return np.interp(d, _CURVE_GRID, self.values)

    def at(self, d: float) -> float:
        """Scalar lookup without numpy call overhead (hundreds of calls per frame)."""
        values = self._list
        if d <= 0.0:
            return values[0]
        i = int(d)
        if i >= len(values) - 1:
            return values[-1]
        return values[i] + (d - i) * (values[i + 1] - values[i])


@dataclass(frozen=True)
class Camera:
    height: int
    width: int
    focal: float  # pixels
    cx: float
    horizon: float  # image row of the horizon
    mount: float  # camera height above the road (m)
    hood_rows: np.ndarray  # (width,) first row of the ego-vehicle hood in each column


@dataclass(frozen=True)
class Part:
    """One textured vertical plane of an object, between two ground points.

    Offsets are from the object's position; texture column 0 is at (dx0, dz0). ``facing``
    is the plane's outward normal: ``-z`` towards the camera, ``+x``/``-x`` to the right or
    left (drawn only when the camera is on that side).
    """

    key: str
    dx0: float
    dz0: float
    dx1: float
    dz1: float
    y0: float
    y1: float
    facing: str


@dataclass(frozen=True)
class Thing:
    """An object at lateral ``x`` (from the road centre) and arc length ``z`` at time 0."""

    uid: tuple[int, ...]  # seeds the object's texture stream
    layer: int
    x: float
    z: float
    length: float
    parts: tuple[Part, ...]
    make: SpriteMaker | None  # own textures; None for kinds that always use pooled ones
    speed: float = 0.0  # m/s along the road
    instance: int = 0  # anomaly instance id, 0 for in-distribution objects
    pool: str = ""  # key of _POOLS, "building" for facade crops, "" for own textures only
    mirror: bool = False  # draw the texture mirrored (more variety from pooled looks)
    max_distance: float = 0.0  # drawn up to this distance; 0: the layer's (FRONT_FAR or BACK_FAR)
    on_road: bool = False
    casts_shadow: float = 0.0  # height (m) of a back-row object that shades the ground

    def z_at(self, t: float) -> float:
        return self.z + self.speed * t


@dataclass(frozen=True)
class Block:
    things: tuple[Thing, ...]
    crossings: tuple[float, ...]  # arc lengths of zebra crossings (4 m long, ending there)


def billboard(width: float, height: float, left: float | None = None) -> tuple[Part, ...]:
    """A plane facing the camera, ``width`` wide, from ``left`` (default centred) to the right."""
    x0 = -width / 2 if left is None else left
    return (Part("body", x0, 0.0, x0 + width, 0.0, 0.0, height, "-z"),)


def _vehicle_parts(width: float, height: float, length: float) -> tuple[Part, ...]:
    half = width / 2
    return (
        Part("side", -half, 0.0, -half, length, 0.0, height, "-x"),
        Part("side", half, 0.0, half, length, 0.0, height, "+x"),
        Part("near", -half - 0.1, 0.0, half + 0.1, 0.0, 0.0, height, "-z"),
    )


def _single(function: Callable[..., sp.Sprite], **kwargs: float | int | bool) -> SpriteMaker:
    def make(rng: np.random.Generator, bank: sp.NoiseBank, detail: float) -> dict[str, sp.Sprite]:
        return {"body": function(rng, bank, detail=detail, **kwargs)}

    return make


def _vehicle_maker(**kwargs: float | str | bool) -> SpriteMaker:
    def make(rng: np.random.Generator, bank: sp.NoiseBank, detail: float) -> dict[str, sp.Sprite]:
        return sp.vehicle(rng, bank, detail=detail, **kwargs)

    return make


@dataclass(frozen=True)
class _Pool:
    """Shared textures of one kind of object, with typical dimensions (the warp stretches them)."""

    make: SpriteMaker
    variants: int
    always: bool  # every object of the kind uses a pooled look; else only beyond _POOL_DETAIL


_VEHICLE_SIZE = {"car": (1.8, 1.5, 4.4), "truck": (2.4, 3.4, 8.5), "bus": (2.5, 3.15, 12.0)}
_LAMP_ARM = 1.6

# Texture generation is most of the render time, and a street has dozens of trees, people
# and signs: those kinds take their looks (mirrored for half of them) from a few variants
# per scene. An object keeps its variant at every distance, so nothing changes look as the
# camera approaches. Buildings crop their faces out of large pooled facades; vehicles have
# their own textures except far away (beyond focal / 16, ~60 m at full size), where they
# are some twenty pixels tall.
_POOLS: dict[str, _Pool] = {
    "facade": _Pool(_single(sp.facade, length=32.0, height=30.0), 4, True),
    "trees": _Pool(_single(sp.vegetation_band, length=20.0, height=10.0, tall=True), 3, True),
    "hedge": _Pool(_single(sp.vegetation_band, length=15.0, height=1.8, tall=False), 2, True),
    "wall": _Pool(_single(sp.wall, length=15.0, height=2.2), 2, True),
    "fence": _Pool(_single(sp.fence, length=15.0, height=1.7), 2, True),
    "tree": _Pool(_single(sp.tree, width=4.5, height=8.5, trunk_height=2.3), 4, True),
    "person": _Pool(_single(sp.person, width=0.8, height=1.75), 6, True),
    "rider": _Pool(_single(sp.rider, width=0.8, height=1.75), 2, True),
    "sign": _Pool(_single(sp.sign_post, width=0.65, height=2.7, back=False), 4, True),
    "sign-back": _Pool(_single(sp.sign_post, width=0.65, height=2.7, back=True), 2, True),
    "bicycle": _Pool(_single(sp.bicycle, length=1.75, height=1.05), 2, True),
    # Lamps of one street look alike: arm to the right (mirrored on the right side), or none.
    "lamp": _Pool(
        _single(sp.street_lamp, width=_LAMP_ARM + 0.7, height=8.0, pole_x=0.3, direction=1, arm=_LAMP_ARM), 2, True
    ),
    "pole": _Pool(_single(sp.street_lamp, width=0.7, height=8.0, pole_x=0.35, direction=1, arm=0.0), 1, True),
    **{
        f"{kind}{'-oncoming' if oncoming else ''}": _Pool(
            _vehicle_maker(kind=kind, width=width, height=height, length=length, oncoming=oncoming), 4, False
        )
        for kind, (width, height, length) in _VEHICLE_SIZE.items()
        for oncoming in (False, True)
    },
}
_POOL_INDEX = {name: index for index, name in enumerate(_POOLS)}


class World:
    """Camera, road, lighting and the lazily generated objects of one seed."""

    def __init__(self, seed: int, height: int, width: int, *, lead_car: bool) -> None:
        if height < 16 or width < 16:
            raise ValueError(f"scene size must be at least 16x16 pixels, got {height}x{width}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        rng = np.random.default_rng((self.seed, STREAM_WORLD))
        self.camera = self._make_camera(rng, height, width)
        self._make_road(rng)
        self._make_style(rng)
        self.bank = sp.noise_bank()
        self.render_cache: dict[str, Any] = {}  # per-world layers the renderer reuses (hood, gains)
        self._blocks: dict[int, Block] = {}
        self._sprites: dict[tuple[int, ...], dict[str, sp.Sprite]] = {}
        self._shift: tuple[float, RoadShift] | None = None
        self.lead: tuple[Thing, ...] = ()
        if lead_car and rng.uniform() < 0.5:  # a car ahead in the ego lane, at the ego speed
            uid = (STREAM_LEAD_CAR, 0)
            self.lead = (self._vehicle(rng, uid, self.ego_lane, rng.uniform(12.0, 45.0), "car", self.speed),)

    # -- fixed by the seed --------------------------------------------------------------

    @staticmethod
    def _make_camera(rng: np.random.Generator, height: int, width: int) -> Camera:
        focal = width * rng.uniform(0.85, 1.15)
        horizon = height * rng.uniform(0.38, 0.5)
        cx = width * (0.5 + rng.uniform(-0.02, 0.02))
        hood_top = height * rng.uniform(0.8, 0.9)
        bulge = height * rng.uniform(0.02, 0.06)
        u = (np.arange(width) - cx) / (width / 2)
        hood = np.ceil(hood_top + bulge * u**2).astype(np.int64)
        return Camera(height, width, focal, cx, horizon, rng.uniform(1.3, 1.7), np.minimum(hood, height))

    def _make_road(self, rng: np.random.Generator) -> None:
        self.urban = rng.uniform(0.65, 1.0) if rng.uniform() < 0.75 else rng.uniform(0.0, 0.35)
        lanes = 2 + sp.choose(rng, (0.5, 0.3, 0.2))
        self.lane_width = rng.uniform(2.9, 3.6)
        self.oncoming = 0 if rng.uniform() < 0.2 else lanes // 2
        urban = self.urban > 0.5
        self.parking = {side: urban and rng.uniform() < 0.45 for side in (-1, 1)}
        self.sidewalk = {side: rng.uniform(1.8, 4.5) if urban or rng.uniform() < 0.2 else 0.0 for side in (-1, 1)}
        self.side_urban = {side: float(np.clip(self.urban + rng.uniform(-0.2, 0.2), 0, 1)) for side in (-1, 1)}
        self.half_width = (lanes * self.lane_width + 2.2 * (self.parking[-1] + self.parking[1])) / 2
        left = -self.half_width + 2.2 * self.parking[-1]
        self.lane_centres = tuple(left + (i + 0.5) * self.lane_width for i in range(lanes))
        self.lane_bounds = tuple(left + i * self.lane_width for i in range(lanes + 1))
        self.ego_lane = int(rng.integers(self.oncoming, lanes))
        self.x_cam = self.lane_centres[self.ego_lane] + rng.uniform(-0.25, 0.25)
        self.speed = rng.uniform(8.0, 15.0)
        self.lane_speed = tuple(
            -rng.uniform(8.0, 15.0) if i < self.oncoming else self.speed * rng.uniform(0.7, 1.2) for i in range(lanes)
        )
        straight = rng.uniform() < 0.35
        self.curve_amp = np.zeros(2) if straight else rng.uniform(-1, 1, 2) * np.array([1 / 350, 1 / 700])
        self.curve_period = rng.uniform([300.0, 150.0], [900.0, 400.0])
        self.curve_phase = rng.uniform(0, 2 * np.pi, 2)
        self.centre_yellow = rng.uniform() < 0.3
        self.centre_solid = rng.uniform() < 0.5
        self.dash_period = rng.uniform(8.0, 12.0)
        self._make_lateral_tables()

    def _make_lateral_tables(self) -> None:
        """Per centimetre across the ground: surface, distance to the nearest line, its style, wheel tracks.

        The ground shader looks these up per pixel instead of testing every line. Surfaces:
        0 road, 1 sidewalk, 2 curb, 3 terrain (also beyond both ends of the table).
        """
        x = np.arange(-self.half_width - self.sidewalk[-1] - 1.0, self.half_width + self.sidewalk[1] + 1.0, 0.01)
        outside = np.abs(x) - self.half_width
        walk = np.where(x < 0, self.sidewalk[-1], self.sidewalk[1])
        self.lateral_surface = np.where(
            outside <= 0, 0, np.where(outside > walk, 3, np.where(outside < 0.25, 2, 1))
        ).astype(np.uint8)
        bounds = np.array(self.lane_bounds)
        distance = np.abs(x[:, None] - bounds[None, :])
        nearest = np.argmin(distance, axis=1)
        last = len(bounds) - 1
        centre = (nearest == self.oncoming) & (nearest > 0) & (nearest < last)
        edge = (nearest == 0) | (nearest == last)
        self.lateral_x0 = float(x[0])
        self.lateral_distance = distance.min(axis=1).astype(np.float32)
        self.lateral_dashed = ~edge & ~(centre & self.centre_solid)
        self.lateral_yellow = centre & self.centre_yellow
        track = np.ones_like(x)
        for lane in self.lane_centres:
            track -= 0.06 * np.exp(-(((np.abs(x - lane) - 0.8) / 0.35) ** 2))
        track[np.abs(x) > self.half_width] = 1.0
        self.lateral_track = track.astype(np.float32)

    def _make_style(self, rng: np.random.Generator) -> None:
        weather = sp.choose(rng, (0.5, 0.3, 0.2))  # clear, overcast, evening
        self.weather = weather
        if weather == 0:
            self.sky_top = sp.hsv(rng.uniform(205, 222), rng.uniform(0.4, 0.6), rng.uniform(0.68, 0.88))
            self.sky_horizon = sp.hsv(rng.uniform(200, 215), rng.uniform(0.08, 0.22), rng.uniform(0.85, 0.97))
            self.haze_distance = rng.uniform(400, 900)
            self.clouds = rng.uniform(0.0, 0.5)
        elif weather == 1:
            self.sky_top = sp.hsv(rng.uniform(205, 225), rng.uniform(0.03, 0.12), rng.uniform(0.65, 0.82))
            self.sky_horizon = sp.hsv(rng.uniform(200, 220), rng.uniform(0.02, 0.07), rng.uniform(0.8, 0.92))
            self.haze_distance = rng.uniform(150, 350)
            self.clouds = rng.uniform(0.6, 1.0)
        else:
            self.sky_top = sp.hsv(rng.uniform(212, 230), rng.uniform(0.3, 0.5), rng.uniform(0.5, 0.7))
            self.sky_horizon = sp.hsv(rng.uniform(25, 42), rng.uniform(0.15, 0.32), rng.uniform(0.82, 0.95))
            self.haze_distance = rng.uniform(250, 500)
            self.clouds = rng.uniform(0.1, 0.6)
        self.brightness = rng.uniform(0.8, 1.12) * (0.85 if weather == 2 else 1.0)
        self.tint = np.array([1 + rng.uniform(-0.04, 0.05), 1.0, 1 + rng.uniform(-0.05, 0.04)], np.float32)
        if weather == 2:
            self.tint[0] += 0.03
        self.sun_side = int(rng.choice([-1, 1]))
        self.shadow_strength = 0.0 if weather == 1 else rng.uniform(0.35, 0.55)
        self.shadow_reach = rng.uniform(0.3, 1.2)
        sunny, shaded = 1.0, 1.0 - (0.1 if weather == 1 else rng.uniform(0.2, 0.4))
        self.light = {"-z": rng.uniform(0.85, 1.0), "+x": sunny, "-x": shaded}
        if self.sun_side > 0:
            self.light["+x"], self.light["-x"] = shaded, sunny
        self.asphalt = sp.hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.1), rng.uniform(0.25, 0.5))
        self.paving = sp.pick_color(
            rng,
            [
                (3, (0, 360), (0.0, 0.06), (0.45, 0.72)),
                (1, (10, 40), (0.08, 0.25), (0.45, 0.7)),
                (1, (0, 12), (0.2, 0.38), (0.35, 0.55)),
            ],
        )
        self.paving_size = rng.uniform(0.3, 0.8)
        self.curb = sp.grey_color(rng, (0.55, 0.8))
        self.grass = sp.pick_color(
            rng,
            [
                (3, (58, 100), (0.3, 0.55), (0.28, 0.55)),
                (1, (42, 56), (0.25, 0.45), (0.45, 0.65)),
                (1, (25, 40), (0.2, 0.4), (0.3, 0.5)),
            ],
        )
        self.grass_dark = self.grass * rng.uniform(0.45, 0.7)
        self.marking = sp.grey_color(rng, (0.75, 0.92))
        self.marking_yellow = sp.hsv(rng.uniform(48, 56), rng.uniform(0.55, 0.75), rng.uniform(0.75, 0.9))
        self.hood_paint = sp.car_color(rng) * 0.35
        self.traffic = rng.uniform(0.1, 1.0)
        self.pedestrians = rng.uniform(0.0, 1.0)
        self.tree_spacing = rng.uniform(7.0, 18.0) if rng.uniform() < 0.75 else 0.0
        self.lamp_arms = rng.uniform() < 0.7
        self.sensor_noise = rng.uniform(1.5, 4.0)
        self.vignette = rng.uniform(0.05, 0.25)
        self.noise_offset = rng.uniform(0.0, sp.NoiseBank.SIZE, 2)  # where this world samples the shared noise
        # Distant skyline and tree line: elevation angles over the full circle of headings,
        # one sample per 2 mrad.
        n = int(2 * np.pi / 0.002)
        skyline = np.zeros(n)
        shade = np.ones(n)
        start = 0
        while start < n:
            run = int(rng.integers(8, 50))
            if rng.uniform() < 0.75 * self.urban + 0.05:
                skyline[start : start + run] = rng.uniform(0.004, 0.05)
                shade[start : start + run] = rng.uniform(0.7, 1.1)
            start += run
        treeline = np.abs(np.cumsum(rng.standard_normal(n)) * 0.0008)
        treeline = np.convolve(np.tile(treeline, 3), np.ones(15) / 15, mode="same")[n : 2 * n]
        self.skyline, self.skyline_shade = skyline, shade
        self.treeline = np.clip(treeline, 0.0, 0.03) + rng.uniform(0.002, 0.012)

    # -- road geometry -----------------------------------------------------------------

    def curvature(self, s: np.ndarray) -> np.ndarray:
        angle = 2 * np.pi * s[..., None] / self.curve_period + self.curve_phase
        return np.sum(self.curve_amp * np.sin(angle), axis=-1)

    def heading(self, s: float) -> float:
        """Heading of the road at arc length ``s`` (radians), integral of the curvature."""
        k = 2 * np.pi / self.curve_period
        return float(np.sum(self.curve_amp / k * (np.cos(self.curve_phase) - np.cos(k * s + self.curve_phase))))

    def road_shift(self, s: float) -> RoadShift:
        """c(d): lateral drift of the road centre ``d`` metres ahead, seen from the camera at ``s``."""
        if self._shift is None or self._shift[0] != s:  # one frame asks many times
            kappa = self.curvature(s + _CURVE_GRID)
            slope = np.concatenate([[0.0], np.cumsum((kappa[1:] + kappa[:-1]) / 2)])
            self._shift = (s, RoadShift(np.concatenate([[0.0], np.cumsum((slope[1:] + slope[:-1]) / 2)])))
        return self._shift[1]

    def project(self, shift: RoadShift, x: np.ndarray, d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image (column, row) of road point(s) at lateral ``x``, distance ``d``, height ``y``."""
        cam = self.camera
        lateral = x + shift(d) - self.x_cam
        return cam.cx + cam.focal * lateral / d, cam.horizon + cam.focal * (cam.mount - y) / d

    def bbox(self, thing: Thing, s: float, t: float) -> tuple[float, float, float, float] | None:
        """Image box (u0, v0, u1, v1) of an object's parts in front of the camera, unclipped."""
        shift = self.road_shift(s)
        z = thing.z_at(t)
        corners = np.array(
            [(dx, dz, y) for p in thing.parts for dx, dz in ((p.dx0, p.dz0), (p.dx1, p.dz1)) for y in (p.y0, p.y1)]
        )
        d = z + corners[:, 1] - s
        if np.all(d < NEAR):
            return None
        d = np.maximum(d, NEAR)
        u, v = self.project(shift, thing.x + corners[:, 0], d, corners[:, 2])
        return float(u.min()), float(v.min()), float(u.max()), float(v.max())

    # -- objects -------------------------------------------------------------------------

    def sprites(self, thing: Thing, distance: float) -> dict[str, sp.Sprite]:
        """The textures of an object whose nearest point is ``distance`` metres away.

        Own textures are drawn at the resolution that distance needs (pixels per metre,
        rounded up to a power of two), so far objects cost little. Their content depends
        on the object's own random stream and metric coordinates only, so a sharper
        version of an approaching object shows the same windows, colours and patterns.
        """
        if thing.pool == "building":
            return self._building(thing)
        needed = self.camera.focal / max(distance, NEAR)
        pool = _POOLS.get(thing.pool)
        if pool is not None and (pool.always or needed <= _POOL_DETAIL):
            return self._pooled(thing.pool, thing.uid[-1] % pool.variants, _MAX_DETAIL if pool.always else _POOL_DETAIL)
        assert thing.make is not None, f"object {thing.uid} has neither its own textures nor a pool"
        detail = float(min(2.0 ** np.ceil(np.log2(max(needed, 1.0))), _MAX_DETAIL))
        key = (*thing.uid, int(detail))
        if key not in self._sprites:
            self._sprites[key] = thing.make(np.random.default_rng((self.seed, *thing.uid)), self.bank, detail)
        return self._sprites[key]

    def _pooled(self, kind: str, variant: int, detail: float) -> dict[str, sp.Sprite]:
        key = (STREAM_POOLS, _POOL_INDEX[kind], variant, int(detail))
        if key not in self._sprites:
            rng = np.random.default_rng((self.seed, STREAM_POOLS, _POOL_INDEX[kind], variant))
            self._sprites[key] = _POOLS[kind].make(rng, self.bank, detail)
        return self._sprites[key]

    def _building(self, thing: Thing) -> dict[str, sp.Sprite]:
        """Face and side wall of a building: crops (ground floor at the bottom) of pooled facades."""
        if thing.uid not in self._sprites:
            rng = np.random.default_rng((self.seed, *thing.uid))
            crops = {}
            for part in thing.parts:
                facade = self._pooled("facade", int(rng.integers(_POOLS["facade"].variants)), _MAX_DETAIL)["body"]
                width = abs(part.dx1 - part.dx0) + abs(part.dz1 - part.dz0)
                crops[part.key] = facade.crop(width, part.y1, rng.uniform())
            self._sprites[thing.uid] = crops
        return self._sprites[thing.uid]

    def prune(self, s: float, t: float) -> None:
        """Forget the blocks (and their textures) that the camera has left behind for good."""
        first = int(np.floor((s - 40.0 - 20.0 * t) / BLOCK)) - 1
        for index in [k for k in self._blocks if k < first]:
            del self._blocks[index]
        for key in [k for k in self._sprites if k[0] == STREAM_BLOCKS and k[1] - _BLOCK_OFFSET < first]:
            del self._sprites[key]

    def block(self, index: int) -> Block:
        if index not in self._blocks:
            self._blocks[index] = self._make_block(index)
        return self._blocks[index]

    def blocks(self, s: float, t: float) -> list[Block]:
        """Blocks whose objects can be in view from ``s`` at time ``t`` (moving ones included)."""
        drift = 20.0 * t
        first = int(np.floor((s - 40.0 - drift) / BLOCK))
        last = int(np.floor((s + BACK_FAR + drift) / BLOCK))
        return [self.block(k) for k in range(first, last + 1)]

    def things(self, s: float, t: float) -> list[Thing]:
        return [thing for block in self.blocks(s, t) for thing in block.things] + list(self.lead)

    def crossings(self, s: float, t: float) -> list[float]:
        return [z for block in self.blocks(s, t) for z in block.crossings]

    def _vehicle(
        self, rng: np.random.Generator, uid: tuple[int, ...], lane: int, z: float, kind: str, speed: float
    ) -> Thing:
        x = self.lane_centres[lane] + rng.uniform(-0.2, 0.2)
        return _vehicle_at(rng, uid, x, z, kind, speed, oncoming=lane < self.oncoming)

    def _make_block(self, index: int) -> Block:
        """Every object whose arc length falls in block ``index``, from the block's own stream."""
        rng = np.random.default_rng((self.seed, STREAM_BLOCKS, index + _BLOCK_OFFSET))
        spawn = _Spawner((STREAM_BLOCKS, index + _BLOCK_OFFSET))
        z0, z1 = index * BLOCK, (index + 1) * BLOCK
        crossing = rng.uniform(z0 + 14, z1 - 14) if rng.uniform() < 0.3 * self.urban else None
        side_street = (crossing - 6.0, crossing + 12.0) if crossing is not None else (np.inf, np.inf)
        for side in (-1, 1):
            self._back_row(rng, spawn, side, z0, z1, side_street)
            self._roadside(rng, spawn, side, z0, z1, side_street)
        if crossing is not None:
            self._crossing(rng, spawn, crossing)
        self._traffic(rng, spawn, z0, z1)
        return Block(tuple(spawn.things), () if crossing is None else (crossing,))

    def _back_row(
        self, rng: np.random.Generator, spawn: _Spawner, side: int, z0: float, z1: float, gap: tuple[float, float]
    ) -> None:
        """Buildings, tree rows, hedges, walls, fences and open stretches along one side."""
        hw, sidewalk, urban = self.half_width, self.sidewalk[side], self.side_urban[side]
        facing = "-x" if side > 0 else "+x"
        z = z0
        previous = (np.inf, -np.inf)  # setback and far end of the last building
        while z < z1:
            if gap[0] <= z < gap[1]:
                z = gap[1]
                continue
            roll = rng.uniform()
            if roll < 0.8 * urban:
                kind, length = "building", rng.uniform(8.0, 30.0)
            elif roll < 0.8 * urban + 0.45 * (1 - urban):
                kind, length = "trees", rng.uniform(6.0, 30.0)
            else:
                kind, length = ("hedge", "wall", "fence", "gap")[int(rng.integers(4))], rng.uniform(5.0, 20.0)
            length = min(length, z1 - z, gap[0] - z if z < gap[0] else length)
            if sidewalk > 0:
                setback = hw + sidewalk + (rng.uniform(0.0, 1.5) if rng.uniform() < 0.7 else rng.uniform(2.0, 8.0))
            else:  # rural: behind the verge trees
                setback = hw + rng.uniform(7.0, 16.0)
            if kind == "building":
                height = rng.uniform(8.0, 28.0) if urban > 0.5 else rng.uniform(4.0, 9.0)
                parts = (Part("face", 0.0, 0.0, 0.0, length, 0.0, height, facing),)
                # The near side wall shows unless a building right in front stands further out.
                if not (previous[1] >= z - 0.01 and previous[0] <= setback):
                    parts = (Part("end", 0.0, 0.0, side * rng.uniform(8.0, 15.0), 0.0, 0.0, height, "-z"), *parts)
                spawn.add(BACK, side * setback, z, length, parts, casts_shadow=height, pool="building")
                previous = (setback, z + length)
                z += length + (rng.uniform(1.0, 6.0) if rng.uniform() < 0.25 else 0.0)
                continue
            if kind != "gap":
                low, high = {"trees": (6.0, 15.0), "hedge": (1.0, 2.5), "wall": (1.2, 3.0), "fence": (1.2, 2.2)}[kind]
                height = rng.uniform(low, high)
                part = Part("body", 0.0, 0.0, 0.0, length, 0.0, height, facing)
                spawn.add(
                    BACK,
                    side * setback,
                    z,
                    length,
                    (part,),
                    casts_shadow=height,
                    pool=kind,
                    mirror=bool(rng.integers(2)),
                )
            z += length

    def _roadside(
        self, rng: np.random.Generator, spawn: _Spawner, side: int, z0: float, z1: float, gap: tuple[float, float]
    ) -> None:
        """Trees, lamps, signs, people, cyclists, parked bicycles and parked cars along one side."""
        hw, sidewalk, urban = self.half_width, self.sidewalk[side], self.side_urban[side]
        if self.tree_spacing > 0:  # in the sidewalk, or on the verge
            z = z0 + rng.uniform(0, self.tree_spacing)
            while z < z1:
                if not gap[0] <= z < gap[1]:
                    offset = rng.uniform(0.3, 0.6) * sidewalk if sidewalk > 0 else rng.uniform(1.5, 5.5)
                    width, height = rng.uniform(2.5, 6.5), rng.uniform(4.5, 12.0)
                    parts = billboard(width, height)
                    spawn.add(FRONT, side * (hw + offset), z, 0.5, parts, pool="tree", mirror=bool(rng.integers(2)))
                z += self.tree_spacing * rng.uniform(0.7, 1.3)
        if urban > 0.3 or rng.uniform() < 0.3:  # street lamps, the arm over the road
            z = z0 + rng.uniform(0, 30)
            while z < z1:
                height = rng.uniform(5.5, 9.0)
                if self.lamp_arms:
                    width = _LAMP_ARM + 0.7  # the pole 0.3 m from the plane's road-side end
                    parts = billboard(width, height, left=-0.3 if side < 0 else 0.3 - width)
                    spawn.add(FRONT, side * (hw + 0.45), z, 0.3, parts, pool="lamp", mirror=side > 0)
                else:
                    spawn.add(FRONT, side * (hw + 0.45), z, 0.3, billboard(0.7, height), pool="pole")
                z += rng.uniform(25.0, 45.0)
        for _ in range(int(rng.poisson(1.0 + urban))):  # signs; on the left half face the oncoming lanes
            size, height = rng.uniform(0.5, 0.85), rng.uniform(2.3, 3.2)
            pool = "sign-back" if side < 0 and rng.uniform() < 0.5 else "sign"
            x, z = side * (hw + rng.uniform(0.3, 0.9)), rng.uniform(z0, z1)
            spawn.add(FRONT, x, z, 0.2, billboard(size, height), pool=pool, mirror=bool(rng.integers(2)))
        if sidewalk > 1.0:
            for _ in range(int(rng.poisson(8.0 * self.pedestrians * urban))):  # standing or walking
                height = rng.uniform(1.55, 1.95)
                speed = 0.0 if rng.uniform() < 0.4 else rng.uniform(-1.6, 1.6)
                x, z = side * (hw + rng.uniform(0.4, sidewalk - 0.3)), rng.uniform(z0, z1)
                spawn.add(
                    FRONT, x, z, 0.4, billboard(0.8, height), speed=speed, pool="person", mirror=bool(rng.integers(2))
                )
            if sidewalk >= 2.5:  # cyclists on a bike path
                for _ in range(int(rng.poisson(0.8 * self.pedestrians))):
                    speed = -side * rng.uniform(3.0, 6.0)
                    spawn.add(
                        FRONT,
                        side * (hw + 0.8),
                        rng.uniform(z0, z1),
                        1.7,
                        billboard(0.8, 1.75),
                        speed=speed,
                        pool="rider",
                    )
            for _ in range(int(rng.poisson(0.4 * urban))):
                part = Part("body", 0.0, 0.0, 0.0, 1.75, 0.0, 1.05, "-x" if side > 0 else "+x")
                spawn.add(FRONT, side * (hw + sidewalk - 0.3), rng.uniform(z0, z1), 1.75, (part,), pool="bicycle")
        if self.parking[side]:
            z = z0 + rng.uniform(0.0, 6.0)
            while z < z1 - 5:
                if rng.uniform() < 0.75 and not (gap[0] - 5 <= z < gap[1]):
                    oncoming = side < 0 and self.oncoming > 0
                    car = spawn.push(_vehicle_at(rng, spawn.uid(), side * (hw - 1.1), z, "car", 0.0, oncoming))
                    z += car.length + rng.uniform(0.6, 3.0)
                else:
                    z += rng.uniform(3.0, 10.0)

    def _crossing(self, rng: np.random.Generator, spawn: _Spawner, z_cross: float) -> None:
        """Traffic lights on both sides (one maybe on a mast arm) and people on the crossing."""
        hw = self.half_width
        for side in (-1, 1):
            arm = rng.uniform(3.0, 6.0) if side > 0 and rng.uniform() < 0.5 else 0.0
            height = rng.uniform(5.0, 6.0) if arm > 0 else rng.uniform(2.8, 3.6)
            width, pole_x = arm + 0.6, 0.3 if side < 0 else arm + 0.3
            make = _single(sp.traffic_light, width=width, height=height, pole_x=pole_x, direction=-side, arm=arm)
            spawn.add(FRONT, side * (hw + 0.5), z_cross + 1.0, 0.3, billboard(width, height, left=-pole_x), make)
        walkable = self.lane_bounds[self.ego_lane] - 0.6  # left of the ego lane only
        if walkable > -hw + 0.5:
            for _ in range(int(rng.poisson(1.5 * self.pedestrians))):
                height = rng.uniform(1.55, 1.95)
                x, z = rng.uniform(-hw + 0.4, walkable), z_cross - rng.uniform(0.5, 3.5)
                parts = billboard(0.8, height)
                spawn.add(FRONT, x, z, 0.4, parts, on_road=True, pool="person", mirror=bool(rng.integers(2)))

    def _traffic(self, rng: np.random.Generator, spawn: _Spawner, z0: float, z1: float) -> None:
        """Moving vehicles in every lane but the ego lane; one speed per lane, so no overtaking."""
        for lane in range(len(self.lane_centres)):
            if lane == self.ego_lane:
                continue
            last = -np.inf
            for z in np.sort(rng.uniform(z0, z1, int(rng.poisson(1.5 * self.traffic)))):
                if z - last < 14.0:
                    continue
                kind = ("car", "truck", "bus")[sp.choose(rng, (0.84, 0.08, 0.08))]
                vehicle = spawn.push(self._vehicle(rng, spawn.uid(), lane, float(z), kind, self.lane_speed[lane]))
                last = z + vehicle.length


_BLOCK_OFFSET = 100_000  # keeps block stream ids non-negative for blocks behind the start


class _Spawner:
    """Collects a block's objects and numbers them: uid = block stream id + running index."""

    def __init__(self, prefix: tuple[int, int]) -> None:
        self.prefix = prefix
        self.things: list[Thing] = []

    def uid(self) -> tuple[int, ...]:
        """The uid of the next object."""
        return (*self.prefix, len(self.things))

    def push(self, thing: Thing) -> Thing:
        self.things.append(thing)
        return thing

    def add(
        self,
        layer: int,
        x: float,
        z: float,
        length: float,
        parts: tuple[Part, ...],
        make: SpriteMaker | None = None,
        **fields: object,
    ) -> Thing:
        return self.push(Thing(self.uid(), layer, x, z, length, parts, make, **fields))


def _vehicle_at(
    rng: np.random.Generator, uid: tuple[int, ...], x: float, z: float, kind: str, speed: float, oncoming: bool
) -> Thing:
    """A car, truck or bus on the road (moving, or parked at speed 0)."""
    if kind == "car":
        width, height, length = rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.7), rng.uniform(3.9, 4.9)
    elif kind == "truck":
        width, height, length = 2.4, rng.uniform(3.0, 3.8), rng.uniform(7.0, 10.0)
    else:
        width, height, length = 2.5, rng.uniform(3.0, 3.3), rng.uniform(11.0, 13.0)
    make = _vehicle_maker(kind=kind, width=width, height=height, length=length, oncoming=oncoming)
    pool = kind + ("-oncoming" if oncoming else "")
    return Thing(
        uid, FRONT, x, z, length, _vehicle_parts(width, height, length), make, speed=speed, on_road=True, pool=pool
    )
