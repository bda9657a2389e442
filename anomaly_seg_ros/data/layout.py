"""Writers of the on-disk layouts of the real datasets, for synthetic scenes.

Synthetic data is written exactly like Cityscapes (``leftImg8bit`` + ``gtFine``
``labelTrainIds``) and like Fishyscapes / Road Anomaly (``images`` + ``labels_masks``), so
the readers in :mod:`anomaly_seg_ros.data.datasets`, the training and the evaluation code
treat real and synthetic data the same way. Images are lossless PNG.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from anomaly_seg_ros.common.errors import DatasetError
from anomaly_seg_ros.common.labels import IGNORE_INDEX, TRAIN_ID
from anomaly_seg_ros.data.synthetic import Scene, render_scene
from anomaly_seg_ros.data.synthetic_world import STREAM_ANOMALY_COUNT

logger = logging.getLogger(__name__)

# Scene seeds of the splits of generate_datasets: seed * _SEED_STRIDE + split offset + index,
# so the splits never share a scene and each split holds up to _SPLIT_SIZE scenes.
_SPLIT_SIZE = 10_000_000
_SEED_STRIDE = 3 * _SPLIT_SIZE
_SPLIT_OFFSET = {"train": 0, "val": _SPLIT_SIZE, "anomaly": 2 * _SPLIT_SIZE}


def cityscapes_image_name(city: str, index: int) -> str:
    return f"{city}_000000_{index:06d}_leftImg8bit.png"


def cityscapes_label_name(city: str, index: int) -> str:
    return f"{city}_000000_{index:06d}_gtFine_labelTrainIds.png"


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write a PNG (RGB arrays are converted to OpenCV's BGR), raising DatasetError on failure."""
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    if not cv2.imwrite(str(path), data):
        raise DatasetError(f"could not write {path}")


def write_cityscapes_split(root: str | Path, split: str, scenes: Iterable[Scene], *, city: str = "synth") -> int:
    """Write scenes as Cityscapes split ``split``; returns the number written.

    Layout: ``root/leftImg8bit/{split}/{city}/{city}_000000_{i:06d}_leftImg8bit.png`` and
    ``root/gtFine/{split}/{city}/{city}_000000_{i:06d}_gtFine_labelTrainIds.png``.
    """
    root = Path(root)
    image_dir = root / "leftImg8bit" / split / city
    label_dir = root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for index, scene in enumerate(scenes):
        _write_png(image_dir / cityscapes_image_name(city, index), scene.image)
        _write_png(label_dir / cityscapes_label_name(city, index), scene.labels)
        count += 1
    logger.info("wrote %d Cityscapes-layout scenes to %s (split %s)", count, root, split)
    return count


def write_anomaly_set(root: str | Path, scenes: Iterable[Scene], *, name_prefix: str = "synth") -> int:
    """Write anomaly scenes like Fishyscapes / Road Anomaly; returns the number written.

    Layout: ``root/images/{name}.png`` and ``root/labels_masks/{name}.png`` with
    ``name = {name_prefix}_{i:06d}``; masks hold 0 (in-distribution), 1 (anomaly) and 255
    (ignore).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels_masks").mkdir(parents=True, exist_ok=True)
    count = 0
    for index, scene in enumerate(scenes):
        name = f"{name_prefix}_{index:06d}.png"
        _write_png(root / "images" / name, scene.image)
        _write_png(root / "labels_masks" / name, scene.anomaly)
        count += 1
    logger.info("wrote %d anomaly scenes to %s", count, root)
    return count


def road_obstacle_scene(scene: Scene) -> Scene:
    """The same scene under the RoadObstacle21 convention: only the road and the obstacles on
    it are scored, every other pixel is ignore (255). It measures what alerts depend on, how
    well a scorer separates obstacles from the road, without the in-distribution confusion
    of poles, signs and boundaries elsewhere in the image."""
    anomaly = scene.anomaly.copy()
    anomaly[(scene.labels != TRAIN_ID["road"]) & (scene.anomaly != 1)] = IGNORE_INDEX
    return Scene(scene.image, scene.labels, anomaly)


def split_seed(seed: int, split: str, index: int) -> int:
    """Scene seed of scene ``index`` of ``split`` ("train", "val" or "anomaly") for a dataset seed."""
    if not 0 <= index < _SPLIT_SIZE:
        raise ValueError(f"a split holds at most {_SPLIT_SIZE} scenes, got index {index}")
    return seed * _SEED_STRIDE + _SPLIT_OFFSET[split] + index


def generate_datasets(
    out_dir: str | Path, *, num_train: int, num_val: int, num_anomaly: int, height: int, width: int, seed: int
) -> dict[str, Path | int]:
    """Render and write a synthetic Cityscapes-layout set and an anomaly set.

    ``out_dir/cityscapes`` gets train and val splits of in-distribution scenes,
    ``out_dir/anomaly`` the anomaly scenes (1-3 objects each). Splits use disjoint scene
    seeds (:func:`split_seed`), so no validation or anomaly scene repeats a training one.
    Scenes render one at a time in this process: rendering and PNG encoding are both
    CPU-bound and a process pool would only pay off on a machine to itself.
    """
    for name, count in (("num_train", num_train), ("num_val", num_val), ("num_anomaly", num_anomaly)):
        if not 0 <= count <= _SPLIT_SIZE:
            raise ValueError(f"{name} must be between 0 and {_SPLIT_SIZE}, got {count}")
    out_dir = Path(out_dir)
    cityscapes, anomaly = out_dir / "cityscapes", out_dir / "anomaly"

    def scenes(split: str, count: int) -> Iterable[Scene]:
        for index in range(count):
            scene_seed = split_seed(seed, split, index)
            rng = np.random.default_rng((scene_seed, STREAM_ANOMALY_COUNT))
            objects = 1 + int(rng.integers(3)) if split == "anomaly" else 0
            yield render_scene(scene_seed, height=height, width=width, num_anomalies=objects)

    written_train = write_cityscapes_split(cityscapes, "train", scenes("train", num_train))
    written_val = write_cityscapes_split(cityscapes, "val", scenes("val", num_val))
    written_anomaly = write_anomaly_set(anomaly, scenes("anomaly", num_anomaly))
    return {
        "cityscapes_root": cityscapes,
        "anomaly_root": anomaly,
        "train": written_train,
        "val": written_val,
        "anomaly": written_anomaly,
    }
