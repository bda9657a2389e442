"""Instance-uncertainty maps on disk (seed 003): where each image's map lives and how it is read back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomaly_seg_ros.common.errors import DatasetError
from anomaly_seg_ros.data.datasets import CityscapesDataset

IU_SUFFIX = "_iu.npy"
_IMAGE_SUFFIX = "_leftImg8bit.png"


def iu_mask_path(masks: str | os.PathLike[str], dataset: CityscapesDataset, index: int) -> Path:
    """Where the IU map of ``dataset``'s image ``index`` lives under ``masks``."""
    relative = dataset.image_paths[index].relative_to(dataset.root / "leftImg8bit")
    return Path(masks) / relative.parent / relative.name.replace(_IMAGE_SUFFIX, IU_SUFFIX)


def read_iu_mask(masks: str | os.PathLike[str], dataset: CityscapesDataset, index: int, shape: tuple[int, int]):
    """The stored IU map of image ``index`` as float32, checked against the label ``shape``."""
    path = iu_mask_path(masks, dataset, index)
    if not path.is_file():
        raise DatasetError(
            f"instance-uncertainty mask {path} is missing; write the masks with "
            f"`anomaly-seg iu-masks --members CKPT CKPT CKPT --data {dataset.root} --split {dataset.split} "
            f"--out {masks}`"
        )
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"instance-uncertainty mask {path} is not a readable .npy file: {error}") from None
    if values.shape != tuple(shape) or not np.issubdtype(values.dtype, np.floating):
        raise DatasetError(
            f"instance-uncertainty mask {path}: expected a float map of the label's shape {tuple(shape)}, "
            f"got {values.dtype} {values.shape}"
        )
    return values.astype(np.float32)
