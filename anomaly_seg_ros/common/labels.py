"""Cityscapes label conventions used everywhere in the package.

Labels are Cityscapes trainIds 0..18, 255 = ignore; 20-class models add a void class at
index 19. Anomaly ground truth is 1 = anomaly, 0 = in-distribution, 255 = ignore.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
VOID_INDEX = 19
ANOMALY = 1
IN_DISTRIBUTION = 0

TRAIN_ID_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
NUM_CITYSCAPES_CLASSES = len(TRAIN_ID_NAMES)
TRAIN_ID = {name: index for index, name in enumerate(TRAIN_ID_NAMES)}

# The official Cityscapes colours of the 19 trainIds, then void (black).
PALETTE = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
        (0, 0, 0),
    ],
    dtype=np.uint8,
)


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of a 19-class (Cityscapes) or 20-class (Cityscapes + void) label set."""
    if num_classes == NUM_CITYSCAPES_CLASSES:
        return TRAIN_ID_NAMES
    if num_classes == NUM_CITYSCAPES_CLASSES + 1:
        return TRAIN_ID_NAMES + ("void",)
    raise ValueError(f"num_classes must be 19 or 20 (Cityscapes trainIds, optional void), got {num_classes}")


def colorize(labels: np.ndarray) -> np.ndarray:
    """HxW trainIds -> HxWx3 uint8 RGB in the Cityscapes palette; ignore (255) is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(PALETTE)] = PALETTE
    return lut[labels]
