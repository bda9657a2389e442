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

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.common.labels import ANOMALY, IGNORE_INDEX, IN_DISTRIBUTION, NUM_CITYSCAPES_CLASSES
from anomaly_seg_ros.data.cityscapes import LABEL_IDS_TAG, label_ids_to_train_ids

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


def read_label(path: Path, allowed: frozenset[int], what: str, shape: tuple[int, int] | None) -> np.ndarray:
    """HxW uint8 label image whose values are all in ``allowed`` and whose size is ``shape`` (if given)."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"cannot read label image {path}")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError(
            f"{path}: expected a single-channel 8-bit {what} image, got shape {label.shape} and dtype {label.dtype}"
        )
    if shape is not None and label.shape != shape:
        raise DatasetError(f"{path}: label size {label.shape} does not match its image size {shape}")
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))  # cheaper than np.unique
    bad = sorted(set(present.tolist()) - allowed)
    if bad:
        raise DatasetError(f"{path}: values {bad} are not {what} values (allowed: {sorted(allowed)})")
    return label


class CityscapesDataset:
    """Items ``(image HxWx3 uint8 RGB, labels HxW uint8)`` of a Cityscapes-layout split.

    Finds ``root/leftImg8bit/{split}/<city>/<name>_leftImg8bit.png`` and pairs each with
    ``root/gtFine/{split}/<city>/<name>_gtFine_labelTrainIds.png`` (as made by the Cityscapes
    scripts' ``createTrainIdLabelImgs``, by :func:`~anomaly_seg_ros.data.cityscapes.convert_label_ids`,
    or by the synthetic scene writer), in sorted order. Where a trainId file is missing but the
    release's ``<name>_gtFine_labelIds.png`` exists, that one is read and converted on the fly
    with the official label table.

    ``num_classes`` picks the label mode: 19 returns trainIds with 255 = ignore; 20 turns the
    ignore pixels into the void class 19 (:func:`anomaly_seg_ros.losses.void_targets`), which
    20-class models train like any other class (seed 000 section 4).
    """

    def __init__(self, root: str | Path, split: str, *, num_classes: int = NUM_CITYSCAPES_CLASSES) -> None:
        self.root = Path(root)
        self.split = split
        self.num_classes = num_classes
        if num_classes not in (NUM_CITYSCAPES_CLASSES, NUM_CITYSCAPES_CLASSES + 1):
            raise ConfigError(f"num_classes must be 19 (255 ignored) or 20 (void = 19), got {num_classes!r}")
        image_dir = self.root / "leftImg8bit" / split
        pattern = f"{self.root}/leftImg8bit/{split}/<city>/*{_IMAGE_TAG}.png"
        if not image_dir.is_dir():
            raise DatasetError(f"no Cityscapes images folder {image_dir}: expected {pattern}")
        self.image_paths: list[Path] = sorted(image_dir.glob(f"*/*{_IMAGE_TAG}.png"))
        if not self.image_paths:
            loose = sorted(image_dir.glob(f"*{_IMAGE_TAG}.png"))
            hint = (
                f" ({len(loose)} images lie directly in {image_dir}; move them into a <city> folder)" if loose else ""
            )
            raise DatasetError(f"no images matching {pattern}{hint}")
        label_dir = self.root / "gtFine" / split
        if not label_dir.is_dir():
            raise DatasetError(
                f"no Cityscapes label folder {label_dir}: expected {label_dir}/<city>/*{_LABEL_TAG}.png "
                f"(or the release's *{LABEL_IDS_TAG}.png)"
            )
        self.label_paths: list[Path] = []
        #: True where the label file holds label ids (converted on load), False for trainIds.
        self.label_is_ids: list[bool] = []
        for image_path in self.image_paths:
            name = image_path.name[: -len(f"{_IMAGE_TAG}.png")]
            folder = label_dir / image_path.parent.name
            train_ids, label_ids = folder / f"{name}{_LABEL_TAG}.png", folder / f"{name}{LABEL_IDS_TAG}.png"
            if train_ids.is_file():
                self.label_paths.append(train_ids)
                self.label_is_ids.append(False)
            elif label_ids.is_file():
                self.label_paths.append(label_ids)
                self.label_is_ids.append(True)
            else:
                raise DatasetError(f"image {image_path} has no label file {train_ids} (nor {label_ids.name})")

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_labels(self, index: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Labels of item ``index`` without decoding its image (class histograms, calibration).

        ``shape``, when given, is checked against the label size.
        """
        path = self.label_paths[index]
        if self.label_is_ids[index]:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise DatasetError(f"cannot read label image {path}")
            labels = label_ids_to_train_ids(raw, source=path)
            if shape is not None and labels.shape != shape:
                raise DatasetError(f"{path}: label size {labels.shape} does not match its image size {shape}")
        else:
            labels = read_label(path, _TRAIN_ID_VALUES, "Cityscapes trainId", shape)
        if self.num_classes == NUM_CITYSCAPES_CLASSES:
            return labels
        from anomaly_seg_ros.losses import void_targets  # imported late: losses pulls in the model modules

        return void_targets(labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.image_paths[index])
        return image, self.read_labels(index, image.shape[:2])


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
