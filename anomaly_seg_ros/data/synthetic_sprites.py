"""Textures of the synthetic road scenes: every object is a few textured planar sprites.

A sprite is an RGB texture plus a label map in the object's own coordinates (metres, y up
from the ground). The renderer warps it into the image with one homography per plane, so
an object keeps its texture from frame to frame of a driving sequence and windows, fence
bars and anomaly patterns shrink with distance the way real ones do.

Colour discipline: the anomaly palette (:data:`ANOMALY_HUE_BANDS_DEG` at high saturation
and value) is used by anomaly objects only. In-distribution colours inside or near those
hue bands stay below saturation ~0.55 (skin, brick, wood, dusk sky), saturated
in-distribution colours keep ten degrees or more away from the bands, and no sprite puts
saturated red next to saturated yellow or green, whose mix would be orange. Texture noise
is multiplicative on all channels at once, which keeps hue and saturation.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Sequence

import cv2
import numpy as np

from anomaly_seg_ros.common.labels import TRAIN_ID

# Sprite label codes besides trainIds.
ANOMALY_MARK = 200  # an anomaly object (the scene labels become 255, the anomaly mask 1)
CLEAR = 250  # not part of the object: the renderer leaves what is behind
SHADE = 251  # a shadow: darkens what is behind and keeps its label
# Every code below CLEAR is an opaque texel.

# Hue bands (degrees) of the anomaly palette; with saturation >= 0.7 and value >= 0.5 they
# mark colours that no in-distribution object has.
ANOMALY_HUE_BANDS_DEG: tuple[tuple[float, float], ...] = ((20.0, 40.0), (170.0, 195.0), (280.0, 320.0))
ANOMALY_MIN_SATURATION = 0.7
ANOMALY_MIN_VALUE = 0.5

_SHIFT = 4  # fractional bits of cv2 drawing coordinates
_ROAD_SIGN_RED = (205.0, 28.0, 28.0)


def lut256(values: np.ndarray) -> np.ndarray:
    """256-entry float32 table for cv2.LUT over small uint8 codes (numpy gathers convert the
    index array to int64 first, which costs more than the lookup)."""
    table = np.zeros(256, dtype=np.float32)
    table[: len(values)] = values
    return table


def hsv(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    """RGB float32 (0..255) of an HSV colour; hue in degrees."""
    rgb = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value)
    return np.array(rgb, dtype=np.float32) * 255.0


def shaded(color: np.ndarray | Sequence[float], gain: np.ndarray) -> np.ndarray:
    """HxWx3 float32 image: one colour times a per-texel gain.

    Built channel by channel with cv2.merge: numpy broadcasting over a 3-long channel axis
    is several times slower, and these images are most of the texture work.
    """
    gain = np.asarray(gain, dtype=np.float32)
    return cv2.merge([gain * np.float32(c) for c in color])


def mix(first: np.ndarray, second: np.ndarray, t: np.ndarray) -> np.ndarray:
    """HxWx3 float32 image: colour ``first`` where t = 0, ``second`` where t = 1, linear between."""
    t = np.asarray(t, dtype=np.float32)
    return cv2.merge([np.float32(a) + np.float32(b - a) * t for a, b in zip(first, second, strict=True)])


def scale(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Multiply an HxWx3 float32 image in place by an HxW gain; returns it."""
    gain = np.asarray(gain, dtype=np.float32)
    return cv2.multiply(rgb, cv2.merge([gain, gain, gain]), dst=rgb)


def anomaly_palette_mask(image: np.ndarray) -> np.ndarray:
    """HxW bool: pixels of an RGB uint8 image inside the anomaly palette's colour bands."""
    hsv_image = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
    hue = hsv_image[..., 0].astype(np.float32) * (360.0 / 256.0)
    in_band = np.zeros(hue.shape, dtype=bool)
    for low, high in ANOMALY_HUE_BANDS_DEG:
        in_band |= (hue >= low) & (hue <= high)
    return (
        in_band
        & (hsv_image[..., 1] >= round(ANOMALY_MIN_SATURATION * 255))
        & (hsv_image[..., 2] >= round(ANOMALY_MIN_VALUE * 255))
    )


def anomaly_color(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright colour well inside one of the anomaly hue bands."""
    low, high = ANOMALY_HUE_BANDS_DEG[rng.integers(len(ANOMALY_HUE_BANDS_DEG))]
    return hsv(rng.uniform(low + 4.0, high - 4.0), rng.uniform(0.88, 1.0), rng.uniform(0.9, 1.0))


class NoiseBank:
    """Smooth periodic noise fields shared by all textures, the ground and the clouds.

    Drawing fresh noise for each texture would cost most of the render time; windows of a
    few periodic fields at random offsets and scales look just as random, and sampling them
    at world coordinates anchors the ground texture to the world. The fields are a fixed
    table (built once from a fixed seed): all randomness of a scene is in where it samples.
    """

    SIZE = 256
    KINDS = ("fine", "medium", "coarse")

    def __init__(self) -> None:
        size = self.SIZE
        white = np.random.default_rng(20240229).standard_normal((len(self.KINDS), size, size))
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        radius2 = fy**2 + fx**2
        self.fields: dict[str, np.ndarray] = {}
        for kind, sigma, plane in zip(self.KINDS, (0.6, 2.5, 10.0), white, strict=True):
            smooth = np.fft.irfft2(np.fft.rfft2(plane) * np.exp(-2.0 * np.pi**2 * sigma**2 * radius2), s=plane.shape)
            self.fields[kind] = ((smooth - smooth.mean()) / smooth.std()).astype(np.float32)
        # Three periods in each direction, so any window up to two periods is a plain slice.
        self._tiled = {kind: np.tile(field, (3, 3)) for kind, field in self.fields.items()}
        for tiled in self._tiled.values():
            tiled.flags.writeable = False

    def wrap(self, coords: np.ndarray) -> np.ndarray:
        """Coordinates folded into one period (float32); cheaper than np.mod."""
        coords = np.asarray(coords, dtype=np.float32)
        return coords - np.floor(coords * np.float32(1.0 / self.SIZE)) * np.float32(self.SIZE)

    def remap(self, kind: str, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """Field values at (map_x, map_y) in field pixels (any range; the fields are periodic)."""
        return cv2.remap(
            self.fields[kind], self.wrap(map_x), self.wrap(map_y), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
        )

    def sample(
        self, kind: str, height: int, width: int, rng: np.random.Generator, scale: float = 1.0, aspect: float = 1.0
    ) -> np.ndarray:
        """A read-only height x width window at a random offset; ``scale`` field pixels per output pixel.

        A slice of the tiled field, resized; a window wider than two periods is cut at a
        coarser step and enlarged (the fields are smooth at that scale).
        """
        ox, oy = rng.uniform(0.0, self.SIZE, 2)
        span_x, span_y = width * scale, height * scale * aspect
        step = max(1, int(np.ceil(max(span_x, span_y) / (2 * self.SIZE - 2))))
        span_x, span_y = span_x / step, span_y / step
        x0, y0 = int(ox), int(oy)
        region = self._tiled[kind][y0 : y0 + int(np.ceil(span_y)) + 1, x0 : x0 + int(np.ceil(span_x)) + 1]
        if region.shape == (height + 1, width + 1):
            return region[:height, :width]
        return cv2.resize(region, (width, height), interpolation=cv2.INTER_LINEAR)


@functools.cache
def noise_bank() -> NoiseBank:
    """The one shared :class:`NoiseBank` (built on first use)."""
    return NoiseBank()


_GROW = np.ones((3, 3), np.uint8)


class Sprite:
    """RGB texture (float32 0..255), label map and coverage of one plane, with a lazy mipmap.

    Each level holds the colours, the labels grown one texel into the clear surroundings
    (so a smoothly interpolated silhouette finds a label on both sides of its edge) and the
    coverage (255 opaque, 0 clear), which the renderer interpolates for smooth outlines.
    Far objects are warped from a pre-shrunk level so that windows and stripes average out
    instead of aliasing into noise.
    """

    def __init__(self, rgb: np.ndarray, labels: np.ndarray, ppm: float) -> None:
        # Erosion takes the smallest code around: clear (and shade) texels next to the object
        # take its label, since every object code is below CLEAR.
        cover = np.where(labels < CLEAR, np.uint8(255), np.uint8(0))
        self._levels = [(rgb, cv2.erode(labels, _GROW), cover)]
        self.ppm = ppm  # texels per metre of level 0

    @property
    def shape(self) -> tuple[int, int]:
        return self._levels[0][1].shape

    def crop(self, width_m: float, height_m: float, offset: float) -> Sprite:
        """A window of the texture, ``offset`` (0..1) along the free width, bottom-aligned so a
        facade keeps its ground floor at the bottom; views, no copies."""
        sprite = Sprite.__new__(Sprite)
        sprite.ppm = self.ppm
        h, w = self.shape
        cw = min(w, max(2, round(width_m * self.ppm)))
        ch = min(h, max(2, round(height_m * self.ppm)))
        x0 = int(offset * (w - cw))
        sprite._levels = [tuple(array[h - ch :, x0 : x0 + cw] for array in self._levels[0])]
        return sprite

    def level(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colours, grown labels and coverage of mip level ``index`` (or the smallest there is)."""
        while len(self._levels) <= index:
            rgb, labels, cover = self._levels[-1]
            if min(labels.shape) < 4:
                break
            size = ((labels.shape[1] + 1) // 2, (labels.shape[0] + 1) // 2)
            area = cv2.INTER_AREA
            smaller = cv2.resize(rgb, size, interpolation=area), cv2.erode(labels[::2, ::2], _GROW)
            self._levels.append((*smaller, cv2.resize(cover, size, interpolation=area)))
        return self._levels[min(index, len(self._levels) - 1)]


class Painter:
    """Draws flat shapes into a sprite canvas; coordinates in metres, y up from the ground.

    Colour and label share one 4-channel canvas (RGB + label code), so every shape is a
    single OpenCV call.
    """

    def __init__(self, width_m: float, height_m: float, ppm: float) -> None:
        self.ppm = ppm
        self.width_m = width_m
        self.height_m = height_m
        self.w = max(2, int(round(width_m * ppm)))
        self.h = max(2, int(round(height_m * ppm)))
        self._canvas: np.ndarray | None = None

    @property
    def canvas(self) -> np.ndarray:
        """RGB + label code per texel, allocated on first drawing (all clear)."""
        if self._canvas is None:
            self._canvas = np.tile(np.float32([0.0, 0.0, 0.0, CLEAR]), (self.h, self.w, 1))
        return self._canvas

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Texel centres: x (w,) and y (h,) in metres, y up."""
        x = (np.arange(self.w, dtype=np.float32) + 0.5) / self.ppm
        y = self.height_m - (np.arange(self.h, dtype=np.float32) + 0.5) / self.ppm
        return x, y

    def points(self, points: Sequence[Sequence[float]]) -> np.ndarray:
        """Metre coordinates -> cv2 fixed-point texel coordinates (``_SHIFT`` fractional bits)."""
        scale = self.ppm * (1 << _SHIFT)
        top = self.height_m
        return np.array([(round(x * scale), round((top - y) * scale)) for x, y in points], dtype=np.int32)

    @staticmethod
    def _value(color: np.ndarray | Sequence[float], label: int) -> tuple[float, float, float, float]:
        return (float(color[0]), float(color[1]), float(color[2]), float(label))

    def poly(self, points: Sequence[Sequence[float]], color: np.ndarray | Sequence[float], label: int) -> None:
        cv2.fillPoly(self.canvas, [self.points(points)], self._value(color, label), cv2.LINE_8, _SHIFT)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: np.ndarray | Sequence[float], label: int) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color, label)

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        color: np.ndarray | Sequence[float],
        label: int,
        thickness: float = -1,
    ) -> None:
        scale = self.ppm * (1 << _SHIFT)
        center = (round(cx * scale), round((self.height_m - cy) * scale))
        axes = (max(1, round(rx * scale)), max(1, round(ry * scale)))
        width = -1 if thickness < 0 else max(1, round(thickness * self.ppm))
        cv2.ellipse(self.canvas, center, axes, 0, 0, 360, self._value(color, label), width, cv2.LINE_8, _SHIFT)

    def line(
        self, p0: Sequence[float], p1: Sequence[float], width_m: float, color: np.ndarray | Sequence[float], label: int
    ) -> None:
        a, b = self.points([p0, p1]).tolist()
        width = max(1, round(width_m * self.ppm))
        cv2.line(self.canvas, tuple(a), tuple(b), self._value(color, label), width, cv2.LINE_8, _SHIFT)

    def fill(self, mask: np.ndarray, color: np.ndarray, label: int) -> None:
        """Paint the texels of ``mask``; ``color`` is one RGB triple or an HxWx3 image."""
        if color.ndim == 1:
            self.canvas[mask] = self._value(color, label)
        else:
            src = cv2.merge([*cv2.split(color.astype(np.float32, copy=False)), np.full(mask.shape, label, np.float32)])
            cv2.copyTo(src, mask.view(np.uint8), self.canvas)

    def covered(self, rgb: np.ndarray, label: int) -> Sprite:
        """Sprite of a texture that covers the whole plane (facade, wall): no canvas needed."""
        return Sprite(rgb, np.full((self.h, self.w), label, dtype=np.uint8), self.ppm)

    def noise_gain(
        self, bank: NoiseBank, rng: np.random.Generator, coarse: float, fine: float, coarse_m: float = 2.0
    ) -> np.ndarray:
        """Brightness gain of smooth blobs (``coarse_m`` metres) plus texel-size grain."""
        scale = 40.0 / (coarse_m * self.ppm)  # coarse blobs are ~40 field pixels
        gain = 1.0 + coarse * bank.sample("coarse", self.h, self.w, rng, scale)
        gain += fine * bank.sample("fine", self.h, self.w, rng, 1.0)
        return np.maximum(gain, 0.2)

    def texture(
        self, bank: NoiseBank, rng: np.random.Generator, coarse: float, fine: float, coarse_m: float = 2.0
    ) -> None:
        """Multiply by grey noise: hue and saturation stay, brightness varies."""
        gain = self.noise_gain(bank, rng, coarse, fine, coarse_m)
        cv2.multiply(self.canvas, cv2.merge([gain, gain, gain, np.ones_like(gain)]), dst=self.canvas)

    def sprite(self) -> Sprite:
        """Finish: transparent texels take the mean colour, so edges blend with the object itself."""
        planes = cv2.split(self.canvas)
        labels = planes[3].astype(np.uint8)
        rgb = cv2.merge(planes[:3])
        clear = labels == CLEAR
        if clear.any() and not clear.all():
            rgb[clear] = cv2.mean(rgb, mask=(~clear).view(np.uint8))[:3]
        return Sprite(rgb, labels, self.ppm)


# ---------------------------------------------------------------------------------------
# Palettes (in-distribution). Each returns an RGB float32 triple.


def choose(rng: np.random.Generator, weights: Sequence[float]) -> int:
    """Index drawn with the given relative weights (cheaper than ``rng.choice(p=...)``)."""
    target = rng.uniform() * sum(weights)
    for index, weight in enumerate(weights):
        target -= weight
        if target < 0:
            return index
    return len(weights) - 1


def pick_color(
    rng: np.random.Generator,
    options: Sequence[tuple[float, tuple[float, float], tuple[float, float], tuple[float, float]]],
) -> np.ndarray:
    """One colour from weighted (weight, hue range, saturation range, value range) options."""
    _, hue, sat, val = options[choose(rng, [o[0] for o in options])]
    return hsv(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val))


def facade_color(rng: np.random.Generator) -> np.ndarray:
    return pick_color(
        rng,
        [
            (3, (0, 360), (0.0, 0.06), (0.4, 0.85)),  # grey / white render
            (2, (28, 45), (0.12, 0.32), (0.55, 0.85)),  # sand, beige
            (2, (6, 22), (0.3, 0.48), (0.32, 0.58)),  # brick
            (1, (48, 60), (0.12, 0.3), (0.65, 0.9)),  # pale yellow
            (1, (90, 140), (0.06, 0.2), (0.55, 0.85)),  # pale green
            (1, (205, 230), (0.06, 0.2), (0.55, 0.85)),  # pale blue
            (1, (0, 360), (0.0, 0.08), (0.2, 0.4)),  # dark
        ],
    )


def grey_color(rng: np.random.Generator, value: tuple[float, float]) -> np.ndarray:
    return hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.06), rng.uniform(*value))


def car_color(rng: np.random.Generator) -> np.ndarray:
    return pick_color(
        rng,
        [
            (4, (0, 360), (0.0, 0.03), (0.82, 0.95)),  # white
            (3, (0, 360), (0.0, 0.05), (0.06, 0.16)),  # black
            (4, (0, 360), (0.0, 0.05), (0.4, 0.75)),  # silver, grey
            (1, (212, 235), (0.5, 0.8), (0.22, 0.45)),  # dark blue
            (1, (210, 230), (0.45, 0.7), (0.5, 0.72)),  # blue
            (1, (352, 366), (0.6, 0.82), (0.45, 0.72)),  # red
            (1, (100, 150), (0.3, 0.6), (0.18, 0.4)),  # dark green
            (1, (25, 40), (0.18, 0.38), (0.3, 0.65)),  # beige, brown
            (0.5, (48, 58), (0.3, 0.45), (0.72, 0.88)),  # pale yellow
        ],
    )


def clothes_color(rng: np.random.Generator) -> np.ndarray:
    return pick_color(
        rng,
        [
            (4, (0, 360), (0.0, 0.1), (0.06, 0.3)),  # black, dark grey
            (2, (0, 360), (0.0, 0.08), (0.35, 0.9)),  # grey, white
            (2, (208, 228), (0.3, 0.6), (0.25, 0.6)),  # denim, navy
            (1, (350, 366), (0.5, 0.8), (0.35, 0.7)),  # red
            (1, (60, 130), (0.2, 0.5), (0.2, 0.5)),  # olive, green
            (1, (20, 40), (0.25, 0.5), (0.2, 0.6)),  # brown, khaki
            (1, (335, 350), (0.15, 0.35), (0.6, 0.85)),  # pale pink
            (1, (235, 260), (0.2, 0.5), (0.2, 0.5)),  # dark violet-blue
        ],
    )


def skin_color(rng: np.random.Generator) -> np.ndarray:
    return hsv(rng.uniform(16, 32), rng.uniform(0.22, 0.5), rng.uniform(0.3, 0.88))


def hair_color(rng: np.random.Generator) -> np.ndarray:
    return pick_color(
        rng,
        [
            (3, (20, 40), (0.2, 0.5), (0.08, 0.35)),
            (1, (38, 48), (0.3, 0.5), (0.5, 0.75)),
            (1, (0, 360), (0.0, 0.05), (0.5, 0.8)),
        ],
    )


def leaf_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dark and light green of one plant."""
    hue = rng.uniform(68, 125)
    sat = rng.uniform(0.35, 0.68)
    dark = hsv(hue + rng.uniform(-6, 6), min(0.8, sat + 0.1), rng.uniform(0.08, 0.22))
    light = hsv(hue, sat, rng.uniform(0.32, 0.58))
    return dark, light


# ---------------------------------------------------------------------------------------
# Static world: facades, walls, fences, vegetation, poles, signs, traffic lights.


def facade(rng: np.random.Generator, bank: NoiseBank, length: float, height: float, detail: float) -> Sprite:
    """A building front: storeys of framed windows, office ribbon windows or industrial cladding.

    Built as a colour class per texel (wall, frame, glass, dark trim) times a brightness
    gain, so the whole facade costs one colour pass.
    """
    p = Painter(length, height, min(8.0, detail))
    x, y = p.grid()
    base = facade_color(rng)
    style = choose(rng, (0.55, 0.25, 0.2))
    ground = rng.uniform(3.2, 4.6)
    storey = rng.uniform(2.8, 3.5)
    glass_hue = rng.uniform(200, 240)
    offset = rng.uniform(0, 3)
    top = height - rng.uniform(0.5, 1.2)
    frame = base * rng.uniform(0.55, 0.8) if rng.uniform() < 0.6 else grey_color(rng, (0.75, 0.92))
    palette = np.stack([base, frame, hsv(glass_hue, rng.uniform(0.05, 0.3), 1.0), base * 0.72]).astype(np.float32)
    cls = np.zeros((p.h, p.w), dtype=np.uint8)  # 0 wall, 1 frame, 2 glass, 3 trim
    gain = np.ones((p.h, p.w), dtype=np.float32)
    if style < 2:
        spacing = rng.uniform(2.0, 3.4) if style == 0 else rng.uniform(1.2, 1.8)
        win_w = rng.uniform(0.9, min(1.5, spacing - 0.5)) if style == 0 else spacing - rng.uniform(0.08, 0.18)
        sill = rng.uniform(0.7, 1.0) if style == 0 else rng.uniform(0.3, 0.6)
        win_h = rng.uniform(1.2, 1.7) if style == 0 else storey - sill - rng.uniform(0.3, 0.6)
        col = np.floor((x - offset) / spacing).astype(np.int64)
        xm = np.abs(np.mod(x - offset, spacing) - spacing / 2)
        floor_index = np.floor((y - ground) / storey).astype(np.int64)
        ym = np.mod(y - ground, storey)
        upper = (y > ground) & (y < top)
        frame_rows = (ym > sill - 0.12) & (ym < sill + win_h + 0.08) & upper
        window_rows = (ym > sill) & (ym < sill + win_h) & upper
        cls[frame_rows[:, None] & (xm < win_w / 2 + 0.1)[None, :]] = 1
        window = window_rows[:, None] & (xm < win_w / 2)[None, :]
        cls[window] = 2
        # Each window pane its own brightness (lights, curtains, reflections), brighter at the top.
        lut = rng.uniform(0.25, 1.0, (int(height / storey) + 3, int(length / spacing) + 3)).astype(np.float32)
        pane_row = np.clip(floor_index + 1, 0, lut.shape[0] - 1)
        pane_col = np.clip(col + 1, 0, lut.shape[1] - 1)
        reflection = np.clip(1.0 - (ym - sill) / max(win_h, 0.1), 0.0, 1.0).astype(np.float32)[:, None]
        np.copyto(gain, 0.12 + 0.3 * lut[pane_row[:, None], pane_col[None, :]] * (0.5 + reflection), where=window)
    else:
        gain *= (1.0 + 0.07 * np.sin(2 * np.pi * x / rng.uniform(0.2, 0.35)))[None, :]
        band = (y > top - rng.uniform(1.0, 1.6)) & (y < top - 0.4)
        cls[band, :] = 2
        gain[band, :] = 0.3
    # Ground floor: shop windows and doors, then a cornice above them and a roof edge.
    shop_spacing = rng.uniform(3.0, 6.0)
    shop = np.mod(x - offset, shop_spacing)
    shop_rows = (y > rng.uniform(0.3, 0.8)) & (y < ground - 0.7)
    shop_cols = (shop > 0.4) & (shop < 0.4 + shop_spacing * rng.uniform(0.4, 0.75))
    shop_mask = shop_rows[:, None] & shop_cols[None, :]
    cls[shop_mask] = 2
    gain[shop_mask] = rng.uniform(0.1, 0.3)
    cls[(y > ground - 0.35) & (y < ground), :] = 3
    cls[y > top, :] = 3
    gain *= (1.0 - 0.25 * np.clip(1.0 - y / 1.2, 0.0, 1.0))[:, None]  # grime near the ground
    gain *= p.noise_gain(bank, rng, coarse=0.06, fine=0.03, coarse_m=4.0)
    rgb = cv2.merge([cv2.LUT(cls, lut256(palette[:, c])) * gain for c in range(3)])
    return p.covered(rgb, TRAIN_ID["building"])


def wall(rng: np.random.Generator, bank: NoiseBank, length: float, height: float, detail: float) -> Sprite:
    """Concrete panels with joints and stains, or a brick wall."""
    brick = rng.uniform() < 0.4
    p = Painter(length, height, min(32.0 if brick else 16.0, detail))
    x, y = p.grid()
    if brick:
        base = hsv(rng.uniform(5, 25), rng.uniform(0.3, 0.48), rng.uniform(0.3, 0.55))
        row = np.floor(y / 0.075).astype(np.int64)
        shifted = x[None, :] + (row[:, None] % 2) * 0.12
        col = np.floor(shifted / 0.24).astype(np.int64)
        lut = rng.uniform(0.8, 1.15, (64, 64)).astype(np.float32)
        shade = lut[row[:, None] % 64, col % 64]
        rgb = shaded(base, shade)
        mortar = (np.mod(y, 0.075) < 0.012)[:, None] | (np.mod(shifted, 0.24) < 0.015)
        rgb[mortar] = grey_color(rng, (0.55, 0.7))
    else:
        base = pick_color(rng, [(2, (0, 360), (0.0, 0.05), (0.4, 0.75)), (1, (30, 50), (0.08, 0.22), (0.45, 0.75))])
        joints = np.mod(x, rng.uniform(2.0, 4.0)) < 0.04
        streaks = bank.sample("medium", p.h, p.w, rng, 1.0, aspect=0.1)
        gain = 1.0 - 0.08 * np.clip(streaks, 0, None)
        gain[:, joints] *= 0.6
        rgb = shaded(base, gain)
    rgb[y > height - 0.12, :] *= 1.2
    return p.covered(scale(rgb, p.noise_gain(bank, rng, coarse=0.1, fine=0.04)), TRAIN_ID["wall"])


def fence(rng: np.random.Generator, bank: NoiseBank, length: float, height: float, detail: float) -> Sprite:
    """Metal bars (see-through), wooden planks or a corrugated site fence."""
    p = Painter(length, height, min(32.0, detail))
    x, y = p.grid()
    label = TRAIN_ID["fence"]
    style = choose(rng, (0.45, 0.35, 0.2))
    if style == 0:
        color = pick_color(rng, [(2, (0, 360), (0.0, 0.05), (0.15, 0.5)), (1, (120, 160), (0.2, 0.4), (0.15, 0.3))])
        spacing = rng.uniform(0.1, 0.18)
        bars = np.mod(x, spacing) < rng.uniform(0.025, 0.045)
        posts = np.mod(x, 2.5) < 0.07
        rails = (np.abs(y - 0.15) < 0.03) | (np.abs(y - (height - 0.1)) < 0.03)
        mask = (bars | posts)[None, :] | rails[:, None]
        p.fill(mask, color, label)
    elif style == 1:
        color = pick_color(rng, [(2, (22, 36), (0.25, 0.48), (0.22, 0.55)), (1, (0, 360), (0.0, 0.06), (0.3, 0.6))])
        width = rng.uniform(0.09, 0.16)
        gap = rng.uniform(0.005, 0.025)
        board = np.floor(x / width).astype(np.int64)
        lut = rng.uniform(0.8, 1.15, 4096).astype(np.float32)
        tops = height - 0.05 * lut[board % 4096]
        mask = (np.mod(x, width) > gap)[None, :] & (y[:, None] < tops[None, :])
        grain = bank.sample("medium", p.h, p.w, rng, 2.0, aspect=0.05)
        rgb = shaded(color, lut[board % 4096][None, :] * (1.0 + 0.08 * grain))
        p.fill(mask, rgb, label)
    else:
        color = pick_color(rng, [(2, (0, 360), (0.0, 0.05), (0.45, 0.8)), (1, (200, 230), (0.25, 0.5), (0.3, 0.55))])
        rgb = shaded(color, np.broadcast_to(1.0 + 0.12 * np.sin(2 * np.pi * x / 0.15), (p.h, p.w)))
        mask = np.ones((p.h, p.w), dtype=bool)
        mask[:, np.mod(x, rng.uniform(2.0, 3.5)) < 0.02] = False
        p.fill(mask, rgb, label)
    p.texture(bank, rng, coarse=0.08, fine=0.04)
    return p.sprite()


def _leafy(
    bank: NoiseBank, rng: np.random.Generator, h: int, w: int, ppm: float, dark: np.ndarray, light: np.ndarray
) -> np.ndarray:
    """Foliage: clumps of leaves between a dark and a light green, plus leaf-size speckle."""
    clumps = bank.sample("medium", h, w, rng, 10.0 / (0.3 * ppm))  # medium blobs are ~10 field pixels
    speckle = bank.sample("fine", h, w, rng, 1.2)
    return mix(dark, light, np.clip(0.5 + 0.28 * clumps + 0.22 * speckle, 0.0, 1.0))


def vegetation_band(
    rng: np.random.Generator, bank: NoiseBank, length: float, height: float, tall: bool, detail: float
) -> Sprite:
    """A hedge (flat, bumpy top) or a row of trees (crowns of different heights)."""
    p = Painter(length, height, min(16.0, detail))
    x, y = p.grid()
    if tall:
        n = max(2, int(length / 3.0))
        centres = rng.uniform(0, length, n)
        radii = rng.uniform(1.5, 3.5, n)
        bases = height - radii - rng.uniform(0, height * 0.35, n)
        reach = np.sqrt(np.clip(radii[:, None] ** 2 - (x[None, :] - centres[:, None]) ** 2, 0, None))
        top = np.max(np.where(reach > 0, bases[:, None] + reach, 0.0), axis=0)
        top = np.maximum(top, height * 0.35)
    else:
        bumps = bank.sample("medium", 1, p.w, rng, 2.0)[0]
        top = height * (0.85 + 0.08 * bumps)
    ragged = 0.3 * bank.sample("medium", p.h, p.w, rng, 10.0 / (0.4 * p.ppm))  # leaf clusters at the edge
    mask = y[:, None] < top[None, :] + ragged
    dark, light = leaf_colors(rng)
    rgb = _leafy(bank, rng, p.h, p.w, p.ppm, dark, light)
    rgb *= (0.6 + 0.4 * np.clip(y / max(height, 0.1), 0, 1))[:, None, None]
    p.fill(mask, rgb, TRAIN_ID["vegetation"])
    return p.sprite()


def tree(
    rng: np.random.Generator, bank: NoiseBank, width: float, height: float, trunk_height: float, detail: float
) -> Sprite:
    """A tree seen from the road: a trunk and a crown of overlapping leaf clumps (or a conifer)."""
    p = Painter(width, height, min(32.0, detail))
    cx = width / 2
    label = TRAIN_ID["vegetation"]
    trunk = hsv(rng.uniform(20, 40), rng.uniform(0.15, 0.4), rng.uniform(0.18, 0.42))
    tw = rng.uniform(0.18, 0.45)
    p.poly(
        [(cx - tw / 2, 0), (cx + tw / 2, 0), (cx + tw / 3, trunk_height + 1.0), (cx - tw / 3, trunk_height + 1.0)],
        trunk,
        label,
    )
    # Crown: inside-ness field (> 0 inside) of a cone or of overlapping leaf clumps, made
    # ragged at the edge by leaf-cluster noise.
    x, y = p.grid()
    if rng.uniform() < 0.2:
        reach = (width / 2) * np.clip((height - y) / (height - trunk_height), 0, 1) * rng.uniform(0.8, 1.0)
        inside = 1.0 - np.abs(x[None, :] - cx) / np.maximum(reach[:, None], 1e-3)
        inside[y < trunk_height, :] = -1.0
    else:
        crown_h = height - trunk_height
        inside = np.full((p.h, p.w), -1.0, dtype=np.float32)
        for _ in range(int(rng.integers(6, 14))):
            rx = rng.uniform(0.22, 0.4) * width
            ry = rng.uniform(0.2, 0.35) * crown_h
            ex = rng.uniform(rx, width - rx)
            ey = rng.uniform(trunk_height + ry * 0.6, height - ry)
            # Only the clump's box (1.3 radii, where the edge noise can still reach).
            c0, c1 = np.searchsorted(x, [ex - 1.3 * rx, ex + 1.3 * rx])
            r0, r1 = np.searchsorted(-y, [-(ey + 1.3 * ry), -(ey - 1.3 * ry)])
            clump = 1.0 - ((x[None, c0:c1] - ex) / rx) ** 2 - ((y[r0:r1, None] - ey) / ry) ** 2
            np.maximum(inside[r0:r1, c0:c1], clump, out=inside[r0:r1, c0:c1])
    inside += 0.35 * bank.sample("medium", p.h, p.w, rng, 10.0 / (0.4 * p.ppm))
    dark, light = leaf_colors(rng)
    rgb = _leafy(bank, rng, p.h, p.w, p.ppm, dark, light)
    rgb *= (0.65 + 0.35 * np.clip((y - trunk_height) / max(height - trunk_height, 0.1), 0, 1))[:, None, None]
    p.fill(inside > 0, rgb, label)
    p.texture(bank, rng, coarse=0.05, fine=0.0)
    return p.sprite()


def street_lamp(
    rng: np.random.Generator,
    bank: NoiseBank,
    width: float,
    height: float,
    pole_x: float,
    direction: int,
    arm: float,
    detail: float,
) -> Sprite:
    """A lamp post whose arm reaches ``arm`` metres to the right (``direction`` +1) or left, or a plain pole."""
    p = Painter(width, height, min(32.0, detail))
    label = TRAIN_ID["pole"]
    color = pick_color(
        rng,
        [
            (3, (0, 360), (0.0, 0.05), (0.3, 0.65)),
            (1, (120, 165), (0.2, 0.4), (0.12, 0.3)),
            (1, (22, 34), (0.3, 0.45), (0.2, 0.4)),
        ],
    )
    pw = rng.uniform(0.12, 0.22)
    p.poly(
        [(pole_x - pw / 2, 0), (pole_x + pw / 2, 0), (pole_x + pw / 3, height - 0.3), (pole_x - pw / 3, height - 0.3)],
        color,
        label,
    )
    arm_end = pole_x + direction * arm
    if arm > 0.4:
        top = height - 0.25
        p.line((pole_x, top - 0.6), (pole_x + (arm_end - pole_x) * 0.3, top), 0.07, color, label)
        p.line((pole_x + (arm_end - pole_x) * 0.3, top), (arm_end, top - 0.05), 0.07, color, label)
        p.ellipse(arm_end, top - 0.12, 0.3, 0.09, grey_color(rng, (0.2, 0.5)), label)
    p.texture(bank, rng, coarse=0.08, fine=0.04)
    return p.sprite()


def sign_post(
    rng: np.random.Generator, bank: NoiseBank, width: float, height: float, back: bool, detail: float
) -> Sprite:
    """A pole with a traffic sign plate on top: round, triangular, square or octagonal."""
    p = Painter(width, height, min(48.0, detail))
    cx = width / 2
    pole = grey_color(rng, (0.35, 0.65))
    p.rect(cx - 0.03, 0, cx + 0.03, height - width * 0.5, pole, TRAIN_ID["pole"])
    label = TRAIN_ID["traffic sign"]
    r = width / 2 * 0.95
    cy = height - r - 0.01
    shape = rng.choice(4)
    white = np.array((235.0, 235.0, 230.0), np.float32)
    blue = hsv(rng.uniform(212, 225), rng.uniform(0.75, 0.95), rng.uniform(0.55, 0.8))
    green = hsv(rng.uniform(140, 152), rng.uniform(0.7, 0.9), rng.uniform(0.4, 0.6))
    red = np.array(_ROAD_SIGN_RED, np.float32)
    yellow = hsv(rng.uniform(50, 56), rng.uniform(0.7, 0.9), rng.uniform(0.85, 0.95))
    angles = {1: np.deg2rad([90, 210, 330]), 3: np.deg2rad(np.arange(8) * 45 + 22.5)}
    if back:
        outline_color = inner_color = grey_color(rng, (0.45, 0.7))
    elif shape == 0:
        outline_color, inner_color = (red, white) if rng.uniform() < 0.6 else (white, blue)
    elif shape == 1:
        outline_color, inner_color = red, white
    elif shape == 2:
        outline_color, inner_color = white, [blue, green, yellow][rng.integers(3)]
    else:
        outline_color, inner_color = white, red
    if shape == 0:
        p.ellipse(cx, cy, r, r, outline_color, label)
        p.ellipse(cx, cy, r * 0.78, r * 0.78, inner_color, label)
    elif shape == 2:
        p.rect(cx - r, cy - r, cx + r, cy + r, outline_color, label)
        p.rect(cx - r * 0.88, cy - r * 0.88, cx + r * 0.88, cy + r * 0.88, inner_color, label)
    else:
        a = angles[int(shape)]
        p.poly([(cx + r * np.cos(t), cy + r * np.sin(t)) for t in a], outline_color, label)
        p.poly([(cx + 0.72 * r * np.cos(t), cy + 0.72 * r * np.sin(t)) for t in a], inner_color, label)
    if not back:
        glyph = np.array((25.0, 25.0, 25.0), np.float32) if shape != 2 else white
        p.rect(cx - r * 0.35, cy - r * 0.08, cx + r * 0.35, cy + r * 0.08, glyph, label)
    p.texture(bank, rng, coarse=0.04, fine=0.03)
    return p.sprite()


def traffic_light(
    rng: np.random.Generator,
    bank: NoiseBank,
    width: float,
    height: float,
    pole_x: float,
    direction: int,
    arm: float,
    detail: float,
) -> Sprite:
    """A signal on a post, or with ``arm`` > 0 on a mast arm over the road; one lamp lit."""
    p = Painter(width, height, min(40.0, detail))
    pole_color = grey_color(rng, (0.2, 0.55))
    p.rect(pole_x - 0.08, 0, pole_x + 0.08, height, pole_color, TRAIN_ID["pole"])
    housing = pick_color(rng, [(3, (0, 360), (0.0, 0.05), (0.05, 0.18)), (1, (45, 55), (0.2, 0.35), (0.25, 0.35))])
    lit = int(rng.integers(3))
    lamps = [np.array((230.0, 32.0, 28.0), np.float32), hsv(52, 0.85, 0.95), hsv(143, 0.82, 0.88)]
    off = np.array((38.0, 38.0, 36.0), np.float32)
    heads = [pole_x + direction * 0.25]
    if arm > 0:
        arm_end = pole_x + direction * arm
        p.rect(min(pole_x, arm_end), height - 0.2, max(pole_x, arm_end), height - 0.08, pole_color, TRAIN_ID["pole"])
        heads = [arm_end, pole_x + direction * arm * 0.5]
    label = TRAIN_ID["traffic light"]
    for hx in heads:
        top = height - 0.25
        p.rect(hx - 0.18, top - 1.0, hx + 0.18, top, housing, label)
        for i in range(3):
            p.ellipse(hx, top - 0.18 - i * 0.31, 0.1, 0.1, lamps[i] if i == lit else off, label)
    p.texture(bank, rng, coarse=0.04, fine=0.02)
    return p.sprite()


# ---------------------------------------------------------------------------------------
# People and vehicles.


def _figure(
    p: Painter, rng: np.random.Generator, cx: float, foot_y: float, height: float, label: int, seated: bool
) -> None:
    """A person seen from the front or back: legs, torso, arms, head (rider when seated)."""
    skin = skin_color(rng)
    top = clothes_color(rng)
    bottom = clothes_color(rng)
    scale = height / 1.75
    hip = foot_y + 0.5 * height
    shoulder = foot_y + 0.81 * height
    sh = rng.uniform(0.18, 0.23) * scale
    hh = rng.uniform(0.14, 0.18) * scale
    stride = 0.0 if seated else rng.uniform(0.0, 0.3)
    lw = 0.075 * scale
    for side in (-1, 1):
        foot = cx + side * (0.09 + stride / 2) * scale if not seated else cx + side * 0.2
        p.poly(
            [
                (cx + side * 0.01, hip),
                (cx + side * hh, hip),
                (foot + side * lw, foot_y + 0.04),
                (foot - side * lw, foot_y + 0.04),
            ],
            bottom,
            label,
        )
        p.ellipse(foot, foot_y + 0.04, 0.07 * scale, 0.045 * scale, (30.0, 28.0, 26.0), label)
    coat = rng.uniform(0.0, 0.25) * height if rng.uniform() < 0.4 else 0.03 * height
    p.poly(
        [(cx - sh, shoulder), (cx + sh, shoulder), (cx + hh * 1.05, hip - coat), (cx - hh * 1.05, hip - coat)],
        top,
        label,
    )
    swing = rng.uniform(-0.06, 0.06)
    for side in (-1, 1):
        hand = (
            (cx + side * (sh + 0.03) + swing * side, hip - 0.04 * height)
            if not seated
            else (cx + side * 0.25, shoulder - 0.25)
        )
        p.line((cx + side * (sh - 0.04), shoulder - 0.03), hand, 0.085 * scale, top, label)
        p.ellipse(hand[0], hand[1], 0.04 * scale, 0.045 * scale, skin, label)
    p.rect(cx - 0.04 * scale, shoulder, cx + 0.04 * scale, shoulder + 0.06 * height, skin, label)
    head_y = foot_y + 0.93 * height
    p.ellipse(cx, head_y, 0.075 * scale, 0.11 * scale, skin, label)
    hair = hair_color(rng) if not seated else grey_color(rng, (0.1, 0.9))
    p.ellipse(cx, head_y + 0.04 * scale, 0.08 * scale, 0.075 * scale, hair, label)
    if rng.uniform() < 0.3 and not seated:
        side = rng.choice([-1, 1])
        p.rect(cx + side * sh, hip - 0.05, cx + side * (sh + 0.12), hip + 0.25, clothes_color(rng), label)


def person(rng: np.random.Generator, bank: NoiseBank, width: float, height: float, detail: float) -> Sprite:
    p = Painter(width, height, min(64.0, detail))
    _figure(p, rng, width / 2, 0.0, height * 0.97, TRAIN_ID["person"], seated=False)
    p.texture(bank, rng, coarse=0.06, fine=0.04, coarse_m=0.5)
    return p.sprite()


def _bike_color(rng: np.random.Generator) -> np.ndarray:
    return pick_color(
        rng,
        [
            (3, (0, 360), (0.0, 0.06), (0.08, 0.7)),
            (1, (210, 235), (0.4, 0.7), (0.3, 0.6)),
            (1, (100, 150), (0.3, 0.6), (0.2, 0.4)),
        ],
    )


def rider(rng: np.random.Generator, bank: NoiseBank, width: float, height: float, detail: float) -> Sprite:
    """A cyclist seen from behind: rider (label rider) over a narrow bicycle (label bicycle)."""
    p = Painter(width, height, min(64.0, detail))
    cx = width / 2
    bike = TRAIN_ID["bicycle"]
    tyre = (25.0, 25.0, 25.0)
    p.rect(cx - 0.03, 0.0, cx + 0.03, 0.68, tyre, bike)
    frame = _bike_color(rng)
    p.rect(cx - 0.025, 0.68, cx + 0.025, 0.95, frame, bike)
    p.line((cx - 0.3, 1.05), (cx + 0.3, 1.05), 0.03, frame, bike)
    _figure(p, rng, cx, 0.3, height - 0.35, TRAIN_ID["rider"], seated=True)
    p.texture(bank, rng, coarse=0.05, fine=0.04, coarse_m=0.5)
    return p.sprite()


def bicycle(rng: np.random.Generator, bank: NoiseBank, length: float, height: float, detail: float) -> Sprite:
    """A parked bicycle seen from the side: two wheels, a diamond frame, saddle and handlebar."""
    p = Painter(length, height, min(48.0, detail))
    label = TRAIN_ID["bicycle"]
    r = 0.34
    frame = _bike_color(rng)
    rear, front = (0.05 + r, r + 0.01), (length - 0.05 - r, r + 0.01)
    for cx, cy in (rear, front):
        p.ellipse(cx, cy, r, r, (25.0, 25.0, 25.0), label, thickness=0.05)
        p.ellipse(cx, cy, 0.04, 0.04, frame, label)
    crank = (rear[0] + 0.45 * (front[0] - rear[0]), r * 0.9)
    seat = (rear[0] + 0.3 * (front[0] - rear[0]), height - 0.12)
    head = (front[0] - 0.12, height - 0.2)
    for a, b in ((rear, crank), (crank, seat), (seat, rear), (seat, head), (crank, head), (head, front)):
        p.line(a, b, 0.035, frame, label)
    p.rect(seat[0] - 0.12, seat[1], seat[0] + 0.1, seat[1] + 0.05, (30.0, 30.0, 30.0), label)
    p.line(head, (head[0] + 0.05, height - 0.03), 0.03, frame, label)
    return p.sprite()


def _rounded_box(x0: float, y0: float, x1: float, y1: float, r: float) -> list[tuple[float, float]]:
    return [
        (x0 + r, y0),
        (x1 - r, y0),
        (x1, y0 + r),
        (x1, y1 - r),
        (x1 - r, y1),
        (x0 + r, y1),
        (x0, y1 - r),
        (x0, y0 + r),
    ]


def _glass(rng: np.random.Generator) -> np.ndarray:
    return hsv(rng.uniform(200, 235), rng.uniform(0.05, 0.25), rng.uniform(0.1, 0.3))


def _car_end(
    p: Painter, rng: np.random.Generator, body: np.ndarray, glass: np.ndarray, front: bool, label: int
) -> None:
    """Rear or front view of a car on a canvas a little wider than the car (mirrors)."""
    width = p.width_m - 0.2
    x0, x1 = 0.1, 0.1 + width
    height = p.height_m
    belt = height * rng.uniform(0.58, 0.66)
    tyre = (22.0, 22.0, 22.0)
    p.rect(x0 + 0.25, 0.0, x1 - 0.25, 0.28, (0.0, 0.0, 0.0), SHADE)
    p.rect(x0 + 0.05, 0.0, x0 + 0.3, 0.42, tyre, label)
    p.rect(x1 - 0.3, 0.0, x1 - 0.05, 0.42, tyre, label)
    p.poly(_rounded_box(x0, 0.2, x1, belt, 0.1), body, label)
    inset = width * rng.uniform(0.07, 0.12)
    p.poly(
        [(x0 + 0.06, belt - 0.02), (x1 - 0.06, belt - 0.02), (x1 - inset, height - 0.02), (x0 + inset, height - 0.02)],
        body,
        label,
    )
    window_top = height - 0.08
    p.poly(
        [
            (x0 + 0.14, belt + 0.04),
            (x1 - 0.14, belt + 0.04),
            (x1 - inset - 0.05, window_top),
            (x0 + inset + 0.05, window_top),
        ],
        glass,
        label,
    )
    bumper = body * rng.uniform(0.4, 0.8)
    p.rect(x0 + 0.02, 0.2, x1 - 0.02, 0.4, bumper, label)
    bezel = (18.0, 18.0, 18.0)
    lamp = np.array((235.0, 238.0, 240.0), np.float32) if front else np.array((175.0, 18.0, 22.0), np.float32)
    for lx in (x0 + 0.04, x1 - 0.34):
        p.rect(lx, belt - 0.24, lx + 0.3, belt - 0.05, bezel, label)
        p.rect(lx + 0.03, belt - 0.21, lx + 0.27, belt - 0.08, lamp, label)
    if front:
        p.rect(x0 + 0.45, belt - 0.24, x1 - 0.45, belt - 0.06, (20.0, 20.0, 22.0), label)
    plate_y = 0.45 if front else belt - 0.32
    p.rect(p.width_m / 2 - 0.26, plate_y, p.width_m / 2 + 0.26, plate_y + 0.11, (225.0, 228.0, 228.0), label)
    for side in (-1, 1):
        mx = x0 - 0.1 if side < 0 else x1
        p.rect(mx, belt + 0.05, mx + 0.1, belt + 0.17, body, label)


def _car_side(p: Painter, rng: np.random.Generator, body: np.ndarray, glass: np.ndarray, kind: int, label: int) -> None:
    """Side view, rear at x = 0 and front at x = length: silhouette, windows, doors, wheels."""
    length, height = p.width_m, p.height_m
    profiles = [
        (
            [
                (0, 0.2),
                (0, 0.62),
                (0.02, 0.68),
                (0.2, 0.7),
                (0.3, 0.98),
                (0.64, 1.0),
                (0.76, 0.7),
                (0.97, 0.62),
                (1, 0.5),
                (1, 0.2),
            ],
            [(0.22, 0.7), (0.31, 0.94), (0.62, 0.95), (0.73, 0.7)],
        ),
        (
            [(0, 0.2), (0, 0.92), (0.04, 1.0), (0.66, 1.0), (0.8, 0.68), (0.97, 0.6), (1, 0.48), (1, 0.2)],
            [(0.03, 0.68), (0.05, 0.94), (0.65, 0.95), (0.77, 0.68)],
        ),
        (
            [(0, 0.18), (0, 0.95), (0.03, 1.0), (0.82, 1.0), (0.9, 0.7), (1, 0.6), (1, 0.18)],
            [(0.62, 0.66), (0.62, 0.94), (0.81, 0.95), (0.88, 0.66)],
        ),
    ]
    outline, window = profiles[kind]
    p.rect(0.6, 0.0, length - 0.6, 0.25, (0.0, 0.0, 0.0), SHADE)
    p.poly([(u * length, v * height) for u, v in outline], body, label)
    p.poly([(u * length, v * height) for u, v in window], glass, label)
    door_x = np.linspace(window[0][0], window[-1][0], 4)[1:-1] * length
    for dx in door_x:
        p.line((dx, 0.25), (dx, window[1][1] * height), 0.02, body * 0.6, label)
        p.rect(dx + 0.12, 0.62 * height - 0.04, dx + 0.27, 0.62 * height - 0.01, body * 0.5, label)
    if kind < 2:
        p.line((door_x[0], 0.7 * height), (door_x[0], 0.95 * height), 0.06, body, label)
    r = 0.32
    for wx in (0.17 * length, 0.83 * length):
        p.ellipse(wx, r, r + 0.05, r + 0.05, (15.0, 15.0, 15.0), label)
        p.ellipse(wx, r, r, r, (24.0, 24.0, 24.0), label)
        p.ellipse(wx, r, r * 0.55, r * 0.55, grey_color(rng, (0.35, 0.7)), label)
    lamp = (175.0, 18.0, 22.0)
    p.rect(0.0, 0.58 * height, 0.06, 0.66 * height, lamp, label)
    p.rect(length - 0.08, 0.5 * height, length, 0.58 * height, (230.0, 232.0, 235.0), label)


def _big_vehicle_end(
    p: Painter, rng: np.random.Generator, body: np.ndarray, front: bool, bus: bool, label: int
) -> None:
    width = p.width_m - 0.2
    x0, x1 = 0.1, 0.1 + width
    height = p.height_m
    tyre = (22.0, 22.0, 22.0)
    p.rect(x0 + 0.4, 0.0, x1 - 0.4, 0.5, (0.0, 0.0, 0.0), SHADE)
    p.rect(x0 + 0.05, 0.0, x0 + 0.55, 0.55, tyre, label)
    p.rect(x1 - 0.55, 0.0, x1 - 0.05, 0.55, tyre, label)
    glass = _glass(rng)
    if bus or front:
        p.rect(x0, 0.35, x1, height, body, label)
        low = 1.0 if front else height * 0.6
        p.rect(x0 + 0.12, low, x1 - 0.12, height - 0.25, glass, label)
    else:
        p.rect(x0, 0.45, x1, 1.1, grey_color(rng, (0.1, 0.3)), label)
        p.rect(x0, 1.1, x1, height, body, label)
        p.line((p.width_m / 2, 1.15), (p.width_m / 2, height - 0.05), 0.03, body * 0.55, label)
        for hy in (1.5, height - 0.5):
            for hx in (x0 + 0.1, x1 - 0.2):
                p.rect(hx, hy, hx + 0.1, hy + 0.06, body * 0.5, label)
    lamp = np.array((235.0, 238.0, 240.0), np.float32) if front else np.array((175.0, 18.0, 22.0), np.float32)
    for lx in (x0 + 0.08, x1 - 0.38):
        p.rect(lx - 0.03, 0.62, lx + 0.33, 0.86, (18.0, 18.0, 18.0), label)
        p.rect(lx, 0.65, lx + 0.3, 0.83, lamp, label)
    p.rect(p.width_m / 2 - 0.26, 0.5, p.width_m / 2 + 0.26, 0.61, (225.0, 228.0, 228.0), label)


def _big_vehicle_side(p: Painter, rng: np.random.Generator, body: np.ndarray, bus: bool, label: int) -> None:
    """Side of a bus (window band, doors) or truck (cargo box, cab at the front end)."""
    length, height = p.width_m, p.height_m
    glass = _glass(rng)
    p.rect(1.5, 0.0, length - 1.5, 0.5, (0.0, 0.0, 0.0), SHADE)
    wheels = (1.6, length - 2.6) if bus else (1.5, 2.6, length - 1.6)
    if bus:
        p.poly(_rounded_box(0.0, 0.35, length, height, 0.15), body, label)
        p.rect(0.3, 1.2, length - 0.3, height - 0.35, glass, label)
        for wx in np.arange(0.3 + 1.4, length - 0.5, 1.4):
            p.rect(wx, 1.2, wx + 0.1, height - 0.35, body, label)
        for door in (length - 1.5, length * 0.5):
            p.rect(door, 0.4, door + 1.1, height - 0.4, glass * 0.7, label)
        p.rect(0.0, 0.35, length, 0.65, body * 0.75, label)
    else:
        cab = 2.3
        p.rect(0.0, 1.1, length - cab - 0.2, height, body, label)
        p.rect(0.0, 0.45, length - 0.1, 1.1, grey_color(rng, (0.1, 0.3)), label)
        cab_color = car_color(rng)
        p.poly(
            [(length - cab, 0.5), (length, 0.5), (length, 2.2), (length - 0.3, 3.0), (length - cab, 3.0)],
            cab_color,
            label,
        )
        p.poly(
            [(length - cab + 0.9, 1.9), (length - 0.25, 1.9), (length - 0.4, 2.8), (length - cab + 0.9, 2.8)],
            glass,
            label,
        )
    r = 0.5
    for wx in wheels:
        p.ellipse(wx, r, r, r, (22.0, 22.0, 22.0), label)
        p.ellipse(wx, r, r * 0.5, r * 0.5, grey_color(rng, (0.3, 0.6)), label)


def vehicle(
    rng: np.random.Generator,
    bank: NoiseBank,
    kind: str,
    width: float,
    height: float,
    length: float,
    oncoming: bool,
    detail: float,
) -> dict[str, Sprite]:
    """The near end (``near``: rear, or front when oncoming) and the side of a car, truck or bus.

    The side texture runs from the near end (texel column 0) to the far end, so it is
    mirrored for oncoming vehicles.
    """
    label = TRAIN_ID[kind]
    glass = _glass(rng)
    if kind == "car":
        body = car_color(rng)
        shape = choose(rng, (0.5, 0.35, 0.15))
        end = Painter(width + 0.2, height, min(64.0, detail))
        _car_end(end, rng, body, glass, oncoming, label)
        side = Painter(length, height, min(64.0, detail))
        _car_side(side, rng, body, glass, shape, label)
    else:
        bus = kind == "bus"
        body = pick_color(
            rng,
            [
                (3, (0, 360), (0.0, 0.05), (0.7, 0.92)),
                (1, (352, 366), (0.6, 0.8), (0.5, 0.75)),
                (1, (210, 230), (0.5, 0.75), (0.35, 0.65)),
                (1, (48, 56), (0.4, 0.6), (0.7, 0.85)),
            ],
        )
        end = Painter(width + 0.2, height, min(32.0, detail))
        _big_vehicle_end(end, rng, body, oncoming, bus, label)
        side = Painter(length, height, min(32.0, detail))
        _big_vehicle_side(side, rng, body, bus, label)
    for painter in (end, side):
        painter.texture(bank, rng, coarse=0.05, fine=0.02, coarse_m=1.0)
    if oncoming:
        side.canvas[:] = side.canvas[:, ::-1].copy()
    return {"near": end.sprite(), "side": side.sprite()}


# ---------------------------------------------------------------------------------------
# Anomalies.


def anomaly_object(rng: np.random.Generator, bank: NoiseBank, width: float, height: float, detail: float) -> Sprite:
    """An object that appears in no training scene: an odd shape in an anomaly-palette pattern.

    Shapes: irregular blob, random polygon, star, ellipse, box, ring. Patterns:
    checkerboard, stripes, concentric rings, dots, zigzag or flat saturated colour, in one
    or two anomaly-palette colours (sometimes with black or white).
    """
    p = Painter(width, height, min(64.0, detail))
    p.ellipse(width / 2, 0.02, width * 0.5, min(0.08, height * 0.1), (0.0, 0.0, 0.0), SHADE)
    h, w = p.h, p.w
    mask = np.zeros((h, w), dtype=np.uint8)
    shape = int(rng.integers(6))
    cx, cy, rx, ry = w / 2.0, h / 2.0, w / 2.0 - 1.0, h / 2.0 - 1.0
    fixed = 1 << _SHIFT  # cv2 fixed-point factor
    if shape in (0, 1, 2):
        if shape == 0:
            n = 48
            theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
            radius = np.ones(n)
            for k in range(2, 6):
                radius += rng.uniform(0.05, 0.22) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        elif shape == 1:
            n = int(rng.integers(5, 10))
            theta = np.sort(rng.uniform(0, 2 * np.pi, n))
            radius = rng.uniform(0.45, 1.0, n)
        else:
            n = 2 * int(rng.integers(4, 8))
            theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
            radius = np.where(np.arange(n) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
        px, py = radius * np.cos(theta), radius * np.sin(theta)
        px = (px - px.min()) / max(np.ptp(px), 1e-6) * (w - 1)
        py = (py - py.min()) / max(np.ptp(py), 1e-6) * (h - 1)
        cv2.fillPoly(mask, [np.round(np.stack([px, py], -1) * fixed).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    elif shape == 3:
        center, axes = (int(cx * fixed), int(cy * fixed)), (int(rx * fixed), int(ry * fixed))
        cv2.ellipse(mask, center, axes, 0, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
    elif shape == 4:
        skew = rng.uniform(0.0, 0.2) * w
        pts = np.array([(0, h - 1), (w - 1, h - 1), (w - 1 - skew, 0), (skew, 0)], dtype=np.float64)
        cv2.fillPoly(mask, [np.round(pts * fixed).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    else:
        thickness = max(2, int(min(w, h) * rng.uniform(0.12, 0.25)))
        axes = (max(1, int(rx - thickness / 2)), max(1, int(ry - thickness / 2)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, 0, 0, 360, 1, thickness)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / p.ppm
    period = rng.uniform(0.06, 0.25)
    pattern = int(rng.integers(6))
    if pattern == 0:
        field = (np.floor(xx / period) + np.floor(yy / period)) % 2
    elif pattern == 1:
        angle = rng.uniform(0, np.pi)
        field = (np.mod((xx * np.cos(angle) + yy * np.sin(angle)) / period, 1.0) < 0.5).astype(np.float32)
    elif pattern == 2:
        ox, oy = rng.uniform(0, width), rng.uniform(0, height)
        field = (np.mod(np.hypot(xx - ox, yy - oy) / period, 1.0) < 0.5).astype(np.float32)
    elif pattern == 3:
        gx, gy = np.mod(xx / period, 1.0) - 0.5, np.mod(yy / period, 1.0) - 0.5
        field = (np.hypot(gx, gy) < 0.3).astype(np.float32)
    elif pattern == 4:
        zig = np.abs(np.mod(xx / period, 2.0) - 1.0) * period
        field = (np.mod((yy + zig) / (period * 0.8), 1.0) < 0.5).astype(np.float32)
    else:
        field = np.zeros((h, w), dtype=np.float32)
    first = anomaly_color(rng)
    roll = rng.uniform()
    if roll < 0.6:
        second = anomaly_color(rng)
    elif roll < 0.8:
        second = np.array((245.0, 245.0, 245.0), np.float32)
    else:
        second = np.array((15.0, 15.0, 15.0), np.float32)
    rgb = scale(mix(first, second, field), 0.9 + 0.1 * (1.0 - yy / max(height, 1e-3)))
    p.fill(mask.astype(bool), rgb, ANOMALY_MARK)
    return p.sprite()
