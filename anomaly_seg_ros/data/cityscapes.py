"""Cityscapes label ids -> trainIds.

The Cityscapes release ships ``*_gtFine_labelIds.png`` (34 label ids, 0..33); networks train on
the 19 evaluated classes, the ``trainId``\\ s, with 255 for everything else. The official
conversion (``cityscapesscripts/preparation/createTrainIdLabelImgs.py``) draws the JSON
polygons again; :func:`convert_label_ids` gets the same images from the ``labelIds`` PNGs
with the table of ``cityscapesscripts/helpers/labels.py``, so no extra package is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from anomaly_seg_ros.common.errors import DatasetError
from anomaly_seg_ros.common.labels import IGNORE_INDEX

log = logging.getLogger(__name__)

LABEL_IDS_TAG = "_gtFine_labelIds"
TRAIN_IDS_TAG = "_gtFine_labelTrainIds"

#: (name, label id, trainId) of cityscapesScripts' labels.py; trainId 255 = not evaluated.
#: ``license plate`` (id -1) is never drawn into labelIds images and so is not listed.
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255),
    ("ego vehicle", 1, 255),
    ("rectification border", 2, 255),
    ("out of roi", 3, 255),
    ("static", 4, 255),
    ("dynamic", 5, 255),
    ("ground", 6, 255),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, 255),
    ("rail track", 10, 255),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, 255),
    ("bridge", 15, 255),
    ("tunnel", 16, 255),
    ("pole", 17, 5),
    ("polegroup", 18, 255),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, 255),
    ("trailer", 30, 255),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
)
NUM_LABEL_IDS = len(CITYSCAPES_LABELS)

#: Lookup table label id -> trainId; entries beyond id 33 are never used (ids are checked first).
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _name, _label_id, _train_id in CITYSCAPES_LABELS:
    LABEL_ID_TO_TRAIN_ID[_label_id] = _train_id


def label_ids_to_train_ids(label_ids: np.ndarray, *, source: str | Path = "label image") -> np.ndarray:
    """Map Cityscapes label ids (0..33) to trainIds (0..18, 255 = ignore) by table lookup.

    Raises DatasetError naming ``source`` when a value is not a Cityscapes label id, for
    instance when a trainId or colour image is passed by mistake.
    """
    if label_ids.dtype != np.uint8 or label_ids.ndim != 2:
        raise DatasetError(
            f"{source}: expected a single-channel 8-bit Cityscapes labelIds image, "
            f"got shape {label_ids.shape} and dtype {label_ids.dtype}"
        )
    present = np.flatnonzero(np.bincount(label_ids.ravel(), minlength=256))
    bad = present[present >= NUM_LABEL_IDS].tolist()
    if bad:
        raise DatasetError(f"{source}: values {bad} are not Cityscapes label ids (expected 0..{NUM_LABEL_IDS - 1})")
    return LABEL_ID_TO_TRAIN_ID[label_ids]


def convert_label_ids(root: str | Path, splits: tuple[str, ...] | None = None, *, overwrite: bool = False) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` under ``root/gtFine``.

    ``splits`` restricts the conversion to ``root/gtFine/<split>``; existing trainId files are
    kept unless ``overwrite``. Returns the number of files written. The result equals the
    official ``createTrainIdLabelImgs`` output pixel for pixel wherever the polygons and the
    labelIds image agree (they are drawn from the same JSON).
    """
    gt_dir = Path(root) / "gtFine"
    if not gt_dir.is_dir():
        raise DatasetError(
            f"no Cityscapes label folder {gt_dir}: expected {gt_dir}/<split>/<city>/*{LABEL_IDS_TAG}.png"
        )
    folders = [gt_dir / split for split in splits] if splits else [gt_dir]
    sources: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise DatasetError(f"no Cityscapes label folder {folder}: expected {folder}/<city>/*{LABEL_IDS_TAG}.png")
        sources.extend(sorted(folder.glob(f"**/*{LABEL_IDS_TAG}.png")))
    if not sources:
        raise DatasetError(f"no label id images matching {gt_dir}/<split>/<city>/*{LABEL_IDS_TAG}.png")
    written = 0
    for source in sources:
        target = source.with_name(source.name.replace(f"{LABEL_IDS_TAG}.png", f"{TRAIN_IDS_TAG}.png"))
        if target.exists() and not overwrite:
            continue
        label_ids = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
        if label_ids is None:
            raise DatasetError(f"cannot read label image {source}")
        if not cv2.imwrite(str(target), label_ids_to_train_ids(label_ids, source=source)):
            raise DatasetError(f"could not write {target}")
        written += 1
    log.info("wrote %d trainId label images under %s", written, gt_dir)
    return written
