"""Readers of the public road anomaly benchmarks in their published on-disk layouts.

``open_anomaly_dataset(kind, root)`` returns a :class:`BenchmarkDataset`: ``len``, integer
indexing and iteration give ``(image, labels)`` with ``image`` HxWx3 uint8 RGB and ``labels``
HxW uint8 in the project convention (1 = anomaly, 0 = in-distribution, 255 = ignore), the
same items as :class:`~anomaly_seg_ros.data.datasets.AnomalyDataset`; ``names[i]`` is the
frame's file name (stem) and ``items()`` yields ``(image, labels, name)``.

Layouts and label values, as published and as read by the reference code:

``smiyc_anomaly`` (SegmentMeIfYouCan RoadAnomaly21) and ``smiyc_obstacle`` (RoadObstacle21)
    ``root/images/<fid>.jpg`` (``.webp`` for RoadObstacle21) with
    ``root/labels_masks/<fid>_labels_semantic.png``: 0 in-distribution (road for the obstacle
    track), 1 anomaly / obstacle, 255 void; for RoadObstacle21 everything off the road is
    already void. Source: SegmentMeIfYouCan/road-anomaly-benchmark,
    ``road_anomaly_benchmark/datasets/tracks.py`` (``DatasetAnomalyTrack``: ``img_fmt='jpg'``,
    ``DatasetObstacleTrack``: ``img_fmt='webp'``, classes usual 0 / anomaly 1 / ignore 255).
    Only the validation frames of the public download have labels; frames without a label
    file are left out and listed in ``unlabelled`` (a warning is logged). The
    ``*_labels_semantic_color.png`` previews beside the masks are not read. The copies
    distributed with the ERFNet course code (``RoadAnomaly21/``, ``RoadObsticle21/``) name the
    mask ``labels_masks/<fid>.png`` instead; both names are accepted.
``road_anomaly`` (Lis et al., ICCV 2019, "Detecting the Unexpected via Image Resynthesis")
    As published: ``root/frames/<name>.jpg`` with ``root/frames/<name>.labels/labels_semantic.png``;
    as distributed with the common evaluation code: ``root/images/<name>.jpg`` with
    ``root/labels_masks/<name>.png``. Mask values 0 = in-distribution and 2 = anomaly (the
    evaluation code maps ``2 -> 1``); 1 and 255 are passed through, so masks that were already
    converted read the same.
``fs_lost_and_found``, ``fs_static`` (Fishyscapes Lost & Found and Static validation sets)
    As distributed for the common evaluation code (``FS_LostFound_full/``, ``fs_static/``):
    ``root/images/<name>.png`` (``.jpg`` for Static) with ``root/labels_masks/<name>.png``
    holding 0 in-distribution, 1 anomaly, 255 void (bdlb's Fishyscapes convention).
``lost_and_found`` (Pinggera et al., Cityscapes layout)
    ``root/leftImg8bit/<split>/<NN_scene>/<fid>_leftImg8bit.png`` (or ``.webp`` / ``.jpg``) with
    ``root/gtCoarse/<split>/<NN_scene>/<fid>_gtCoarse_labelIds.png``: 0 ignore, 1 free road
    space (in-distribution), 2..200 obstacle ids (anomaly); anything else is ignore, as in
    ``DatasetLostAndFound`` of road-anomaly-benchmark (``LAF_CLASSES``).
``synthetic``
    The project's synthetic anomaly set (:func:`~anomaly_seg_ros.data.layout.write_anomaly_set`),
    read through :class:`AnomalyDataset`'s file pairing: ``images/<name>.png`` with
    ``labels_masks/<name>.png`` holding 0 / 1 / 255.
``auto``
    Picks one of the above from the folder layout; see :func:`detect_kind`.

Every label file is converted through a 256-entry lookup table and any value that the
dataset does not define raises :class:`DatasetError` naming the file and the values, so a
colour preview or a mask of another dataset is never read as ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from anomaly_seg_ros.common.errors import DatasetError
from anomaly_seg_ros.common.labels import ANOMALY, IGNORE_INDEX, IN_DISTRIBUTION
from anomaly_seg_ros.data.datasets import IMAGE_SUFFIXES, AnomalyDataset, read_rgb

logger = logging.getLogger(__name__)

BENCHMARK_KINDS = (
    "road_anomaly",
    "fs_lost_and_found",
    "fs_static",
    "smiyc_anomaly",
    "smiyc_obstacle",
    "lost_and_found",
    "synthetic",
)

_INVALID = -1
_SMIYC_LABEL_TAG = "_labels_semantic"
_LAF_IMAGE_TAG = "_leftImg8bit"
_LAF_LABEL_TAG = "_gtCoarse_labelIds"


def _lookup(mapping: dict[int, int], default: int = _INVALID) -> np.ndarray:
    """Raw label value -> 0 / 1 / 255; ``_INVALID`` marks values the dataset does not define."""
    table = np.full(256, default, dtype=np.int16)
    for raw, value in mapping.items():
        table[raw] = value
    return table


# 0 / 1 / 255 masks (SMIYC, Fishyscapes, synthetic): identity on the three defined values.
_BINARY_LUT = _lookup({0: IN_DISTRIBUTION, 1: ANOMALY, 255: IGNORE_INDEX})
# Road Anomaly: 2 is the anomaly class of the published masks.
_ROAD_ANOMALY_LUT = _lookup({0: IN_DISTRIBUTION, 1: ANOMALY, 2: ANOMALY, 255: IGNORE_INDEX})
# Lost and Found labelIds: 0 ignore, 1 free space, 2..200 obstacles, the rest ignore.
_LAF_LUT = _lookup({1: IN_DISTRIBUTION, **dict.fromkeys(range(2, 201), ANOMALY)}, default=IGNORE_INDEX)
_LAF_LUT[0] = IGNORE_INDEX


class BenchmarkDataset:
    """Paired image / label files of one benchmark, converted to 0 / 1 / 255 on load.

    Items ``(image HxWx3 uint8 RGB, labels HxW uint8: 1 anomaly, 0 in-distribution, 255 ignore)``;
    ``names[i]`` is the frame name (image file stem without dataset suffixes). File lists are
    built and checked when the dataset is opened; label values and sizes on every load.
    """

    def __init__(
        self,
        kind: str,
        root: Path,
        image_paths: list[Path],
        label_paths: list[Path],
        names: list[str],
        lookup: np.ndarray,
        unlabelled: list[Path] | None = None,
    ) -> None:
        if not image_paths:
            raise DatasetError(f"{kind} dataset at {root}: no labelled images found")
        if not len(image_paths) == len(label_paths) == len(names):
            raise ValueError("image_paths, label_paths and names must have the same length")
        self.kind = kind
        self.root = root
        self.image_paths = image_paths
        self.label_paths = label_paths
        self.names = names
        self.unlabelled = unlabelled or []
        self._lookup = lookup

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.image_paths[index])
        return image, self.read_labels(index, image.shape[:2])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for index in range(len(self)):
            yield self[index]

    def items(self) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        """``(image, labels, name)`` for every frame, in order."""
        for index in range(len(self)):
            image, labels = self[index]
            yield image, labels, self.names[index]

    def read_labels(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """The converted 0 / 1 / 255 mask of frame ``index``; its size must be ``shape``."""
        path = self.label_paths[index]
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"cannot read label image {path}")
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise DatasetError(
                f"{path}: expected a single-channel 8-bit {self.kind} label image, "
                f"got shape {raw.shape} and dtype {raw.dtype}"
            )
        if raw.shape != shape:
            raise DatasetError(f"{path}: label size {raw.shape} does not match its image size {shape}")
        converted = self._lookup[raw]
        if (converted == _INVALID).any():
            present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
            bad = [int(v) for v in present if self._lookup[v] == _INVALID]
            allowed = [int(v) for v in np.flatnonzero(self._lookup != _INVALID)]
            raise DatasetError(f"{path}: values {bad} are not {self.kind} label values (allowed: {allowed})")
        return converted.astype(np.uint8)


def _images_in(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _require_dir(path: Path, kind: str, expected: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{kind}: no folder {path}; expected the layout {expected}")


def _images_and_masks(
    kind: str, root: Path, lookup: np.ndarray, *, smiyc_names: bool, skip_unlabelled: bool
) -> BenchmarkDataset:
    """``root/images/<stem>.<ext>`` paired with ``root/labels_masks/<stem>[_labels_semantic].png``."""
    mask_name = "<stem>_labels_semantic.png or <stem>.png" if smiyc_names else "<stem>.png"
    expected = f"{root}/images/<stem>.png|jpg|webp with {root}/labels_masks/{mask_name}"
    _require_dir(root / "images", kind, expected)
    _require_dir(root / "labels_masks", kind, expected)
    images = _images_in(root / "images")
    if not images:
        raise DatasetError(f"{kind}: no images ({', '.join(IMAGE_SUFFIXES)}) in {root / 'images'}")
    paired_images, labels, unlabelled = [], [], []
    for image in images:
        candidates = [root / "labels_masks" / f"{image.stem}.png"]
        if smiyc_names:
            candidates.insert(0, root / "labels_masks" / f"{image.stem}{_SMIYC_LABEL_TAG}.png")
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            if not skip_unlabelled:
                raise DatasetError(f"{kind}: image {image} has no mask {' or '.join(map(str, candidates))}")
            unlabelled.append(image)
            continue
        paired_images.append(image)
        labels.append(found)
    if unlabelled:
        # The public SMIYC downloads hold unlabelled test frames by design: skipped, but said.
        logger.warning("%s at %s: %d images without labels are left out", kind, root, len(unlabelled))
    if not paired_images:
        raise DatasetError(
            f"{kind}: none of the {len(images)} images in {root / 'images'} has a mask; expected {expected}"
        )
    return BenchmarkDataset(kind, root, paired_images, labels, [p.stem for p in paired_images], lookup, unlabelled)


def _road_anomaly(root: Path) -> BenchmarkDataset:
    frames = root / "frames"
    if not frames.is_dir():
        return _images_and_masks("road_anomaly", root, _ROAD_ANOMALY_LUT, smiyc_names=False, skip_unlabelled=False)
    images = _images_in(frames)
    if not images:
        raise DatasetError(f"road_anomaly: no images in {frames}; expected {frames}/<name>.jpg")
    labels = []
    for image in images:
        label = frames / f"{image.stem}.labels" / "labels_semantic.png"
        if not label.is_file():
            raise DatasetError(f"road_anomaly: image {image} has no label file {label}")
        labels.append(label)
    return BenchmarkDataset("road_anomaly", root, images, labels, [p.stem for p in images], _ROAD_ANOMALY_LUT)


def _lost_and_found(root: Path, split: str) -> BenchmarkDataset:
    image_dir = root / "leftImg8bit" / split
    expected = (
        f"{root}/leftImg8bit/{split}/<scene>/<fid>{_LAF_IMAGE_TAG}.png with "
        f"{root}/gtCoarse/{split}/<scene>/<fid>{_LAF_LABEL_TAG}.png"
    )
    _require_dir(image_dir, "lost_and_found", expected)
    images: list[Path] = []
    for suffix in (".png", ".webp", ".jpg"):  # the reference code's search order
        images = sorted(image_dir.glob(f"*/*{_LAF_IMAGE_TAG}{suffix}"))
        if images:
            break
    if not images:
        raise DatasetError(f"lost_and_found: no images in {image_dir}; expected {expected}")
    names, labels = [], []
    for image in images:
        name = image.name[: -len(f"{_LAF_IMAGE_TAG}{image.suffix}")]
        label = root / "gtCoarse" / split / image.parent.name / f"{name}{_LAF_LABEL_TAG}.png"
        if not label.is_file():
            raise DatasetError(f"lost_and_found: image {image} has no label file {label}")
        names.append(name)
        labels.append(label)
    return BenchmarkDataset("lost_and_found", root, images, labels, names, _LAF_LUT)


def _synthetic(root: Path) -> BenchmarkDataset:
    reference = AnomalyDataset(root)  # same pairing and errors as the training-side reader
    names = [p.stem for p in reference.image_paths]
    return BenchmarkDataset("synthetic", root, reference.image_paths, reference.label_paths, names, _BINARY_LUT)


# Folder names used by the public downloads and the common evaluation code.
_NAME_HINTS = (
    ("roadanomaly21", "smiyc_anomaly"),
    ("anomalytrack", "smiyc_anomaly"),
    ("roadobsticle21", "smiyc_obstacle"),
    ("roadobstacle21", "smiyc_obstacle"),
    ("obstacletrack", "smiyc_obstacle"),
    ("fs_static", "fs_static"),
    ("fs_lostfound", "fs_lost_and_found"),
    ("roadanomaly", "road_anomaly"),
)


def detect_kind(root: str | Path) -> str:
    """Guess the benchmark from the folder layout (cheap: names, one mask at most).

    ``leftImg8bit`` + ``gtCoarse`` -> lost_and_found; ``frames/*.labels`` -> road_anomaly;
    ``labels_masks/*_labels_semantic.png`` -> smiyc_obstacle if the images are webp, else
    smiyc_anomaly; otherwise ``images`` + ``labels_masks`` by the folder name of the public
    downloads (RoadAnomaly21, RoadObsticle21, fs_static, FS_LostFound_full, RoadAnomaly), and
    failing that, road_anomaly if the first mask holds the value 2, else synthetic (0/1/255).
    """
    root = Path(root)
    if (root / "leftImg8bit").is_dir() and (root / "gtCoarse").is_dir():
        return "lost_and_found"
    if (root / "frames").is_dir() and any((root / "frames").glob("*.labels")):
        return "road_anomaly"
    images, masks = root / "images", root / "labels_masks"
    if not (images.is_dir() and masks.is_dir()):
        raise DatasetError(
            f"cannot detect the dataset kind of {root}: expected images/ + labels_masks/, frames/ + "
            f"frames/<name>.labels/, or leftImg8bit/ + gtCoarse/"
        )
    webp = any(p.suffix.lower() == ".webp" for p in images.iterdir())
    if any(masks.glob(f"*{_SMIYC_LABEL_TAG}.png")):
        return "smiyc_obstacle" if webp else "smiyc_anomaly"
    folder = root.resolve().name.lower()
    for hint, kind in _NAME_HINTS:
        if folder.startswith(hint):
            return kind
    if webp:
        return "smiyc_obstacle"
    first = next(iter(sorted(masks.glob("*.png"))), None)
    if first is not None:
        mask = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
        if mask is not None and mask.ndim == 2 and (mask == 2).any():
            return "road_anomaly"
    return "synthetic"


def open_anomaly_dataset(kind: str, root: str | Path, *, split: str = "test") -> BenchmarkDataset:
    """Open benchmark ``kind`` (one of ``BENCHMARK_KINDS`` or ``"auto"``) stored at ``root``.

    ``split`` selects the Lost and Found split (``train`` or ``test``) and is unused otherwise.
    Raises DatasetError naming the missing folder or file and the expected layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist (kind {kind!r})")
    if kind == "auto":
        kind = detect_kind(root)
        logger.info("detected dataset kind %s at %s", kind, root)
    if kind == "road_anomaly":
        return _road_anomaly(root)
    if kind in ("fs_lost_and_found", "fs_static"):
        return _images_and_masks(kind, root, _BINARY_LUT, smiyc_names=False, skip_unlabelled=False)
    if kind in ("smiyc_anomaly", "smiyc_obstacle"):
        return _images_and_masks(kind, root, _BINARY_LUT, smiyc_names=True, skip_unlabelled=True)
    if kind == "lost_and_found":
        return _lost_and_found(root, split)
    if kind == "synthetic":
        return _synthetic(root)
    raise DatasetError(f"unknown anomaly dataset kind {kind!r}; expected one of {', '.join(BENCHMARK_KINDS)} or auto")
