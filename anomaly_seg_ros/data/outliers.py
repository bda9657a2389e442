"""Outlier exposure data: outlier objects and their pasting into training scenes.

Outlier exposure (Hendrycks et al., ICLR 2019; for road scenes Chan et al., Meta-OoD, ICCV 2021;
Tian et al., PEBAL, ECCV 2022) trains a segmentation network on scenes with foreign objects
pasted in, with a loss that pushes its anomaly score on them apart from the in-distribution
pixels. This module provides the objects and the pasting; the losses are in
:mod:`anomaly_seg_ros.losses.outlier`.

Two sources of objects (RGB uint8 ``h x w x 3`` + bool mask ``h x w``):

- :class:`ProceduralOutliers`: generated shapes, textures and colour fields. Its generator
  is separate from the synthetic test anomalies' (:func:`~anomaly_seg_ros.data.synthetic_sprites.anomaly_object`)
  and shares neither palette nor shape family with it, so training on it leaks nothing of the
  held-out anomaly distribution:

  * palette: every outlier pixel lies outside :func:`~anomaly_seg_ros.data.synthetic_sprites.anomaly_palette_mask`
    (colours inside it are desaturated to below its saturation bound, after blending too);
  * shapes: the test anomalies are single solid pieces (blob, polygon, star, ellipse, box, ring:
    one connected component, at most one hole, convex-hull solidity >= :data:`TEST_SHAPE_MIN_SOLIDITY`,
    see :func:`in_test_shape_family`); the outlier families are ``debris`` (several separate
    fragments), ``lattice`` (a grid of bars: many holes) and ``scribble`` (a thick random
    stroke, solidity below the bound); a draw that falls in the test family is redrawn.
- :class:`FolderOutliers`: object cut-outs on disk, the COCO / ADE20K instances the published
  methods paste. Layouts read: ``NAME.png`` RGBA (alpha > 127 = object), or ``images/NAME.*``
  + ``masks/NAME.png`` pairs, or ``NAME.jpg`` + ``NAME_mask.png`` side by side (mask > 0 = object).

:class:`OutlierPaster` puts 1..``max_objects`` of them into a scene: the foot of each object on
a pixel of the drivable area (``surface_ids``, road by default), its height sized by perspective
(:func:`perspective_height`), with hard, feathered or translucent edges; it returns the pasted
image, the labels (outlier pixels set to the ignore index) and the outlier mask, which the
training augmentation then moves together with the labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.common.labels import IGNORE_INDEX
from anomaly_seg_ros.data.synthetic_sprites import (
    ANOMALY_HUE_BANDS_DEG,
    ANOMALY_MIN_SATURATION,
    ANOMALY_MIN_VALUE,
    anomaly_palette_mask,
)

#: Shape families of :class:`ProceduralOutliers`; none is one of the test anomalies' families.
OUTLIER_SHAPE_FAMILIES = ("debris", "lattice", "scribble")
#: Texture families of :class:`ProceduralOutliers`.
OUTLIER_TEXTURES = ("noise", "gradient", "plaid", "speckle", "flat")
#: Lowest convex-hull solidity of a synthetic test anomaly (star with inner radius 0.35: about 0.5).
TEST_SHAPE_MIN_SOLIDITY = 0.4
#: Saturation that outlier colours inside an anomaly hue band are clipped to (below the palette bound).
_SAFE_SATURATION = ANOMALY_MIN_SATURATION - 0.12
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# -- the shape-family descriptor -------------------------------------------------------------


def shape_descriptor(mask: np.ndarray) -> tuple[int, int, float]:
    """(connected components, holes, convex-hull solidity) of a bool mask; 8-connectivity."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if not mask.any():
        return 0, 0, 0.0
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = [c for c, h in zip(contours, hierarchy[0], strict=True) if h[3] < 0]
    holes = len(contours) - len(outer)
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(outer)))
    solidity = float(mask.sum()) / max(hull_area, 1.0)
    return len(outer), holes, min(solidity, 1.0)


def in_test_shape_family(mask: np.ndarray) -> bool:
    """True when a mask looks like a synthetic test anomaly: one solid piece (see the module docstring)."""
    components, holes, solidity = shape_descriptor(mask)
    return components == 1 and holes <= 1 and solidity >= TEST_SHAPE_MIN_SOLIDITY


# -- the palette guarantee -------------------------------------------------------------------


def remove_anomaly_palette(rgb: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Desaturate the pixels of ``rgb`` (uint8) that lie in the test anomalies' palette.

    Only pixels inside an anomaly hue band with saturation >= 0.7 and value >= 0.5 change:
    their saturation drops to 0.58, which no anomaly colour has. ``where`` (bool) restricts
    the change to those pixels. Returns a new array.
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    bad = anomaly_palette_mask(out)
    if where is not None:
        bad &= where
    if not bad.any():
        return out
    hsv_image = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)
    hsv_image[..., 1][bad] = int(_SAFE_SATURATION * 255)
    fixed = cv2.cvtColor(hsv_image, cv2.COLOR_HSV2RGB_FULL)
    out[bad] = fixed[bad]
    # The uint8 round trip can move a pixel by one hue step; grey out what is still inside.
    still = anomaly_palette_mask(out) & bad
    if still.any():
        out[still] = out[still].mean(axis=-1, keepdims=True).astype(np.uint8)
    return out


def _safe_hsv(rng: np.random.Generator) -> tuple[float, float, float]:
    """A random HSV colour (hue degrees, s, v) outside the anomaly palette."""
    hue = rng.uniform(0.0, 360.0)
    saturation = rng.uniform(0.0, 1.0)
    value = rng.uniform(0.1, 1.0)
    in_band = any(low - 2.0 <= hue <= high + 2.0 for low, high in ANOMALY_HUE_BANDS_DEG)
    if in_band and value >= ANOMALY_MIN_VALUE - 0.02:
        saturation = min(saturation, _SAFE_SATURATION)
    return hue, saturation, value


def _rgb(hsv_color: tuple[float, float, float]) -> np.ndarray:
    hue, saturation, value = hsv_color
    pixel = np.array([[[hue / 360.0 * 255.0, saturation * 255.0, value * 255.0]]], dtype=np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB_FULL)[0, 0].astype(np.float32)


# -- procedural outliers ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProceduralOutliers:
    """Random outlier objects of :data:`OUTLIER_SHAPE_FAMILIES` x :data:`OUTLIER_TEXTURES`.

    ``sample(rng, height, width)`` draws one object of about that size (pixels) from ``rng``
    alone. Colours avoid the test anomalies' palette, shapes their shape family (see the
    module docstring); both are guaranteed per object, not only on average.
    """

    families: tuple[str, ...] = OUTLIER_SHAPE_FAMILIES
    textures: tuple[str, ...] = OUTLIER_TEXTURES

    def __post_init__(self) -> None:
        for name, given, allowed in (
            ("families", self.families, OUTLIER_SHAPE_FAMILIES),
            ("textures", self.textures, OUTLIER_TEXTURES),
        ):
            unknown = [item for item in given if item not in allowed]
            if not given or unknown:
                raise ConfigError(f"outliers.{name}: expected a non-empty subset of {list(allowed)}, got {list(given)}")

    def sample(self, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 ``height x width x 3``, bool mask) of one outlier object."""
        height, width = max(int(height), 6), max(int(width), 6)
        for _ in range(20):
            family = self.families[int(rng.integers(len(self.families)))]
            mask = _SHAPES[family](rng, height, width)
            if mask.sum() >= 6 and not in_test_shape_family(mask):
                break
        else:  # tiny canvases: fall back to debris, which is several pieces by construction
            mask = _debris(rng, height, width, force_split=True)
        texture = self.textures[int(rng.integers(len(self.textures)))]
        rgb = _TEXTURES[texture](rng, height, width)
        return remove_anomaly_palette(rgb), mask


def _debris(rng: np.random.Generator, height: int, width: int, *, force_split: bool = False) -> np.ndarray:
    """2-6 separate angular fragments (triangles and quads) scattered over the box."""
    mask = np.zeros((height, width), np.uint8)
    pieces = int(rng.integers(2, 7))
    # Fragments sit in distinct cells of a grid, so at least two stay apart.
    cols = max(2, int(math.ceil(math.sqrt(pieces * width / max(height, 1)))))
    rows = max(1, int(math.ceil(pieces / cols)))
    cells = rng.permutation(rows * cols)[:pieces]
    cell_h, cell_w = height / rows, width / cols
    for cell in cells:
        r, c = divmod(int(cell), cols)
        cy, cx = (r + 0.5) * cell_h, (c + 0.5) * cell_w
        corners = int(rng.integers(3, 5))
        angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
        radius = rng.uniform(0.3, 0.5, corners) * min(cell_h, cell_w)
        pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], -1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    if force_split or mask.sum() < 6:
        mask[: max(1, height // 3), : max(1, width // 3)] = 1
        mask[-max(1, height // 3) :, -max(1, width // 3) :] = 1
    return mask.astype(bool)


def _lattice(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A grid of bars (fence, crate, rack): many holes."""
    mask = np.zeros((height, width), np.uint8)
    nx, ny = int(rng.integers(3, 6)), int(rng.integers(3, 6))
    thick = max(1, int(min(height / ny, width / nx) * rng.uniform(0.25, 0.45)))
    for x in np.linspace(0, width - 1, nx):
        cv2.line(mask, (int(x), 0), (int(x), height - 1), 1, thick)
    for y in np.linspace(0, height - 1, ny):
        cv2.line(mask, (0, int(y)), (width - 1, int(y)), 1, thick)
    if rng.uniform() < 0.5:  # a diagonal brace
        cv2.line(mask, (0, height - 1), (width - 1, 0), 1, thick)
    return mask.astype(bool)


def _scribble(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A thick random-walk stroke (cable, hose, branch): thin and winding, low solidity."""
    mask = np.zeros((height, width), np.uint8)
    steps = int(rng.integers(5, 10))
    xs = np.clip(np.cumsum(rng.uniform(-0.5, 0.5, steps)) * width * 0.6 + width / 2, 0, width - 1)
    ys = np.linspace(0, height - 1, steps) if rng.uniform() < 0.5 else rng.uniform(0, height - 1, steps)
    pts = np.round(np.stack([xs, ys], -1)).astype(np.int32)
    thick = max(1, int(min(height, width) * rng.uniform(0.1, 0.2)))
    cv2.polylines(mask, [pts], False, 1, thick)
    return mask.astype(bool)


_SHAPES = {"debris": _debris, "lattice": _lattice, "scribble": _scribble}


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random noise between two colours."""
    small = rng.uniform(0, 1, (max(2, height // 6), max(2, width // 6))).astype(np.float32)
    field_ = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)[..., None]
    first, second = _rgb(_safe_hsv(rng)), _rgb(_safe_hsv(rng))
    return (first * (1 - field_) + second * field_).clip(0, 255).astype(np.uint8)


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear colour gradient at a random angle."""
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = ((t - t.min()) / max(float(np.ptp(t)), 1e-6))[..., None]
    first, second = _rgb(_safe_hsv(rng)), _rgb(_safe_hsv(rng))
    return (first * (1 - t) + second * t).clip(0, 255).astype(np.uint8)


def _plaid(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Crossing bands of three colours (tartan)."""
    colors = [_rgb(_safe_hsv(rng)) for _ in range(3)]
    period = max(2, int(min(height, width) * rng.uniform(0.15, 0.4)))
    yy, xx = np.mgrid[0:height, 0:width]
    index = ((xx // period) % 2 + (yy // period) % 2).astype(np.int64)
    return np.stack(colors)[index].clip(0, 255).astype(np.uint8)


def _speckle(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A base colour with random pixel-level speckles of another."""
    base, spot = _rgb(_safe_hsv(rng)), _rgb(_safe_hsv(rng))
    spots = (rng.uniform(0, 1, (height, width)) < rng.uniform(0.1, 0.5))[..., None]
    return np.where(spots, spot, base).clip(0, 255).astype(np.uint8)


def _flat(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One colour with a mild vertical shading."""
    shade = np.linspace(1.0, 0.8, height, dtype=np.float32)[:, None, None]
    return (_rgb(_safe_hsv(rng)) * shade * np.ones((1, width, 1), np.float32)).clip(0, 255).astype(np.uint8)


_TEXTURES = {"noise": _noise, "gradient": _gradient, "plaid": _plaid, "speckle": _speckle, "flat": _flat}


# -- object cut-outs from a folder -----------------------------------------------------------


class FolderOutliers:
    """Object cut-outs with masks from a folder (COCO / ADE20K instances extracted by the user).

    Accepted layouts, checked in this order:

    1. ``ROOT/images/NAME.(png|jpg|...)`` + ``ROOT/masks/NAME.png`` (mask > 0 = object);
    2. ``ROOT/NAME.jpg`` + ``ROOT/NAME_mask.png`` side by side;
    3. ``ROOT/NAME.png`` RGBA (alpha > 127 = object).

    Each object is cropped to its mask's bounding box when read; ``sample`` resizes it to
    the requested size (bilinear image, nearest mask). Folder objects keep their colours:
    they are real objects of another dataset, not drawn from the synthetic test palette.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"outliers.folder: {self.root} is not a directory of object cut-outs")
        self.items = self._index()
        if not self.items:
            raise DatasetError(
                f"outliers.folder {self.root}: no objects found; expected images/NAME.* + masks/NAME.png, "
                "NAME.jpg + NAME_mask.png, or RGBA NAME.png files"
            )

    def _index(self) -> list[tuple[Path, Path | None]]:
        images, masks = self.root / "images", self.root / "masks"
        if images.is_dir() and masks.is_dir():
            pairs = []
            for image in sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
                mask = masks / f"{image.stem}.png"
                if not mask.is_file():
                    raise DatasetError(f"outlier image {image} has no mask {mask}")
                pairs.append((image, mask))
            return pairs
        files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        mask_names = {p.name for p in files if p.stem.endswith("_mask")}
        items: list[tuple[Path, Path | None]] = []
        for path in files:
            if path.stem.endswith("_mask"):
                continue
            mask = path.with_name(f"{path.stem}_mask.png")
            items.append((path, mask if mask.name in mask_names else None))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8, bool mask) of object ``index``, cropped to the mask's bounding box."""
        image_path, mask_path = self.items[index]
        raw = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"cannot read outlier image {image_path}")
        if raw.ndim == 2:
            raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
        if mask_path is not None:
            mask_raw = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if mask_raw is None or mask_raw.shape != raw.shape[:2]:
                raise DatasetError(f"outlier mask {mask_path} is unreadable or not the size of {image_path}")
            mask = mask_raw > 0
            rgb = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB)
        elif raw.shape[2] == 4:
            mask = raw[..., 3] > 127
            rgb = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB)
        else:
            raise DatasetError(
                f"outlier image {image_path} has no mask: expected an RGBA PNG "
                f"or a {image_path.stem}_mask.png beside it"
            )
        if not mask.any():
            raise DatasetError(f"outlier {image_path}: the mask is empty")
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        return np.ascontiguousarray(rgb[box]), np.ascontiguousarray(mask[box])

    def sample(self, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, mask = self.read(int(rng.integers(len(self.items))))
        size = (max(int(width), 1), max(int(height), 1))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        return rgb, mask


# -- pasting ---------------------------------------------------------------------------------


def perspective_height(foot_row: float, horizon_row: float, height_ratio: float) -> float:
    r"""Image height (px) of an object standing on a flat road with its foot at ``foot_row``.

    A pinhole camera at height :math:`h_c` sees an object of height :math:`H` at distance
    :math:`Z = f h_c / (y_{foot} - y_{hor})`, so its image height is
    :math:`f H / Z = (H / h_c)(y_{foot} - y_{hor})`: proportional to the foot's depth below
    the horizon, with ``height_ratio`` = :math:`H / h_c` (the focal length cancels).
    """
    return max(0.0, height_ratio * (foot_row - horizon_row))


def horizon_row(labels: np.ndarray, surface_ids: Sequence[int], min_pixels: int = 3) -> int | None:
    """The topmost row with ``min_pixels`` or more drivable pixels: where the road meets the horizon.

    On a flat road the drivable area narrows to the vanishing point, so its top edge is the
    horizon (up to occluders on a straight road; a lead car hides only the road behind it,
    which makes the estimate a little low and the pasted objects a little small).
    """
    surface = np.isin(labels, np.asarray(surface_ids))
    rows = np.nonzero(surface.sum(axis=1) >= min_pixels)[0]
    return int(rows[0]) if rows.size else None


@dataclass(frozen=True)
class OutlierSettings:
    """``train.outliers``: where outlier objects come from and how they are pasted."""

    #: "none" (off), "procedural", "folder", or "both" (each object from either, half and half).
    source: Literal["none", "procedural", "folder", "both"] = "none"
    #: Folder of object cut-outs (layouts of :class:`FolderOutliers`) for "folder" / "both".
    folder: str = ""
    #: Fraction of training images that get outliers.
    probability: float = 0.5
    #: Objects per image that gets them: uniform in [1, max_objects].
    max_objects: int = 2
    #: Object height / camera height, uniform in this range; sets the size by perspective.
    height_ratio: tuple[float, float] = (0.2, 1.0)
    #: Width / height of an object, uniform in this range.
    aspect: tuple[float, float] = (0.6, 2.0)
    #: Label ids the object's foot may stand on (the drivable area; road by default).
    surface_ids: tuple[int, ...] = (0,)
    #: Where feet are drawn: "pixels" (uniform over the drivable pixels below the horizon, so mostly
    #: near, large objects, as the road's pixels are mostly near) or "rows" (a row uniform among the
    #: rows with drivable pixels, then a pixel of it: every distance as often, far small objects too).
    foot_sampling: Literal["pixels", "rows"] = "pixels"
    #: Horizon row as a fraction of the image height, or null: estimated from the drivable area.
    horizon: float | None = None
    #: "hard" edges, "feather" (Gaussian-blurred alpha), or "alpha" (translucent, opacity in alpha_range).
    blend: Literal["hard", "feather", "alpha"] = "feather"
    alpha_range: tuple[float, float] = (0.7, 1.0)
    #: Objects smaller than this (pixels) after sizing are skipped: too far to learn from.
    min_pixels: int = 16
    families: tuple[str, ...] = OUTLIER_SHAPE_FAMILIES
    textures: tuple[str, ...] = OUTLIER_TEXTURES

    @property
    def enabled(self) -> bool:
        return self.source != "none"

    def validate(self) -> None:
        checks = [
            (self.source in ("none", "procedural") or bool(self.folder), "folder", "a folder for source folder/both"),
            (0.0 <= self.probability <= 1.0, "probability", "a number in [0, 1]"),
            (self.max_objects >= 1, "max_objects", "an integer >= 1"),
            (0 < self.height_ratio[0] <= self.height_ratio[1], "height_ratio", "[low, high] with 0 < low <= high"),
            (0 < self.aspect[0] <= self.aspect[1], "aspect", "[low, high] with 0 < low <= high"),
            (len(self.surface_ids) > 0, "surface_ids", "a non-empty list of label ids"),
            (self.foot_sampling in ("pixels", "rows"), "foot_sampling", "pixels or rows"),
            (self.horizon is None or 0.0 <= self.horizon < 1.0, "horizon", "null or a fraction in [0, 1)"),
            (0 < self.alpha_range[0] <= self.alpha_range[1] <= 1, "alpha_range", "[low, high] in (0, 1]"),
            (self.min_pixels >= 1, "min_pixels", "an integer >= 1"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"train.outliers.{key}: expected {expected}, got {getattr(self, key)!r}")
        ProceduralOutliers(tuple(self.families), tuple(self.textures))


@dataclass
class PasteResult:
    image: np.ndarray  # HxWx3 uint8
    labels: np.ndarray  # HxW, outlier pixels = ignore index
    mask: np.ndarray  # HxW bool outlier pixels
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x0, y0, x1, y1) exclusive ends


class OutlierPaster:
    """Pastes outlier objects onto the drivable area of scenes (see :class:`OutlierSettings`)."""

    def __init__(self, settings: OutlierSettings) -> None:
        settings.validate()
        self.settings = settings
        self.sources: list[ProceduralOutliers | FolderOutliers] = []
        if settings.source in ("procedural", "both"):
            self.sources.append(ProceduralOutliers(tuple(settings.families), tuple(settings.textures)))
        if settings.source in ("folder", "both"):
            self.sources.append(FolderOutliers(settings.folder))

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> PasteResult:
        s = self.settings
        image = np.array(image, dtype=np.uint8, copy=True)
        labels = np.array(labels, copy=True)
        mask = np.zeros(labels.shape, dtype=bool)
        result = PasteResult(image, labels, mask)
        if not self.sources or rng.uniform() >= s.probability:
            return result
        height = labels.shape[0]
        horizon = round(s.horizon * height) if s.horizon is not None else horizon_row(labels, s.surface_ids)
        surface = np.isin(labels, np.asarray(s.surface_ids))
        if horizon is None or not surface.any():
            return result
        feet_y, feet_x = np.nonzero(surface & (np.arange(height)[:, None] > horizon))
        if feet_y.size == 0:
            return result
        rows = np.unique(feet_y) if s.foot_sampling == "rows" else None
        for _ in range(int(rng.integers(1, s.max_objects + 1))):
            if rows is not None:
                in_row = np.flatnonzero(feet_y == rows[int(rng.integers(rows.size))])
                pick = int(in_row[int(rng.integers(in_row.size))])
            else:
                pick = int(rng.integers(feet_y.size))
            self._paste_one(result, int(feet_y[pick]), int(feet_x[pick]), horizon, rng)
        return result

    def _paste_one(self, result: PasteResult, foot_y: int, foot_x: int, horizon: int, rng: np.random.Generator) -> None:
        s = self.settings
        obj_h = round(perspective_height(foot_y, horizon, rng.uniform(*s.height_ratio)))
        obj_w = round(obj_h * rng.uniform(*s.aspect))
        if obj_h * obj_w < s.min_pixels or obj_h < 2 or obj_w < 2:
            return
        source = self.sources[int(rng.integers(len(self.sources)))]
        rgb, shape = source.sample(rng, obj_h, obj_w)
        # Foot at the bottom centre of the object's box; clip the box to the image.
        y1, x0 = foot_y + 1, foot_x - obj_w // 2
        y0, x1 = y1 - obj_h, x0 + obj_w
        height, width = result.labels.shape
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
        if cy1 <= cy0 or cx1 <= cx0:
            return
        crop = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        shape, rgb = shape[crop], rgb[crop]
        alpha = shape.astype(np.float32)
        if s.blend == "feather":
            # Soft edges inside the object; outside it nothing is drawn (the mask stays exact).
            alpha = np.maximum(cv2.GaussianBlur(alpha, (3, 3), 0.8), 0.5) * alpha
        elif s.blend == "alpha":
            alpha = alpha * rng.uniform(*s.alpha_range)
        target = (slice(cy0, cy1), slice(cx0, cx1))
        region = result.image[target].astype(np.float32)
        blended = (region * (1 - alpha[..., None]) + rgb.astype(np.float32) * alpha[..., None]).round()
        pasted = blended.clip(0, 255).astype(np.uint8)
        if isinstance(source, ProceduralOutliers):
            # The palette guarantee holds for what the network sees, blending included.
            pasted = remove_anomaly_palette(pasted, where=shape)
        result.image[target] = np.where(shape[..., None], pasted, result.image[target])
        result.mask[target] |= shape
        result.labels[target] = np.where(shape, IGNORE_INDEX, result.labels[target])
        result.boxes.append((cx0, cy0, cx1, cy1))
