"""Readers of Cityscapes-layout segmentation data and Fishyscapes / Road Anomaly-layout anomaly data.

Plain sequences (``len``, integer indexing, iteration) that return numpy arrays, so they serve training
(wrapped in a torch dataset elsewhere), evaluation and tests alike, for real and for
synthetic data. File lists are built once, sorted, and checked up front: a missing label
file is reported when the dataset is opened, not hours into training. Label values are
checked on every load, because a wrong label file (colour ids instead of trainIds, or a
mask saved with 0/255) silently ruins training and metrics.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anomaly_seg_ros.errors import DatasetError
from anomaly_seg_ros.labels import ANOMALY, IGNORE_INDEX, IN_DISTRIBUTION, NUM_CITYSCAPES_CLASSES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_IMAGE_TAG = "_leftImg8bit"
_LABEL_TAG = "_gtFine_labelTrainIds"

_TRAIN_ID_VALUES = frozenset(range(NUM_CITYSCAPES_CLASSES)) | {IGNORE_INDEX}
_ANOMALY_VALUES = frozenset({IN_DISTRIBUTION, ANOMALY, IGNORE_INDEX})


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB image, DatasetError if it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path, allowed: frozenset[int], what: str, shape: tuple[int, int]) -> np.ndarray:
    """HxW uint8 label image whose values are all in ``allowed`` and whose size is ``shape``."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"cannot read label image {path}")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError(
            f"{path}: expected a single-channel 8-bit {what} image, got shape {label.shape} and dtype {label.dtype}"
        )
    if label.shape != shape:
        raise DatasetError(f"{path}: label size {label.shape} does not match its image size {shape}")
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))  # cheaper than np.unique
    bad = sorted(set(present.tolist()) - allowed)
    if bad:
        raise DatasetError(f"{path}: values {bad} are not {what} values (allowed: {sorted(allowed)})")
    return label


class CityscapesDataset:
    """Items ``(image HxWx3 uint8 RGB, labels HxW uint8 trainIds with 255 = ignore)``.

    Finds ``root/leftImg8bit/{split}/<city>/<name>_leftImg8bit.png`` and pairs each with
    ``root/gtFine/{split}/<city>/<name>_gtFine_labelTrainIds.png`` (as made by the
    Cityscapes scripts' ``createTrainIdLabelImgs``), in sorted order.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise DatasetError(
                f"no Cityscapes images folder {image_dir}: expected "
                f"{self.root}/leftImg8bit/{split}/<city>/*{_IMAGE_TAG}.png"
            )
        self.image_paths: list[Path] = sorted(image_dir.glob(f"*/*{_IMAGE_TAG}.png"))
        if not self.image_paths:
            raise DatasetError(f"no images matching {image_dir}/<city>/*{_IMAGE_TAG}.png")
        self.label_paths: list[Path] = []
        for image_path in self.image_paths:
            name = image_path.name[: -len(f"{_IMAGE_TAG}.png")]
            label_path = self.root / "gtFine" / split / image_path.parent.name / f"{name}{_LABEL_TAG}.png"
            if not label_path.is_file():
                raise DatasetError(f"image {image_path} has no label file {label_path}")
            self.label_paths.append(label_path)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.image_paths[index])
        labels = read_label(self.label_paths[index], _TRAIN_ID_VALUES, "Cityscapes trainId", image.shape[:2])
        return image, labels


class AnomalyDataset:
    """Items ``(image HxWx3 uint8 RGB, mask HxW uint8: 1 anomaly, 0 in-distribution, 255 ignore)``.

    Layout of Fishyscapes and Road Anomaly as commonly prepared: ``root/images/<name>.<ext>``
    (png, jpg, jpeg or webp) with ``root/labels_masks/<name>.png``, matched by file stem,
    in sorted order.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        image_dir = self.root / "images"
        if not image_dir.is_dir():
            raise DatasetError(
                f"no anomaly images folder {image_dir}: expected {self.root}/images/<name>.png|jpg|webp "
                f"with masks {self.root}/labels_masks/<name>.png"
            )
        self.image_paths: list[Path] = sorted(
            path for path in image_dir.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.image_paths:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
        self.label_paths: list[Path] = []
        for image_path in self.image_paths:
            label_path = self.root / "labels_masks" / f"{image_path.stem}.png"
            if not label_path.is_file():
                raise DatasetError(f"image {image_path} has no anomaly mask {label_path}")
            self.label_paths.append(label_path)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.image_paths[index])
        mask = read_label(self.label_paths[index], _ANOMALY_VALUES, "anomaly mask (0/1/255)", image.shape[:2])
        return image, mask
