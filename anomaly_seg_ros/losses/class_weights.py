r"""Class weights from a training set's label histogram, and the void-class targets.

Seed 000 section 4 (void classifier) retrains the networks with the Cityscapes background
("void") as a 20th class, index 19, instead of ignoring it, with class weights computed from the
label histogram of the training set instead of hard-coded ones. Two weightings:

- ENet (Paszke et al., arXiv:1606.02147, section 5.2; the ERFNet base code's default):
  :math:`w_c = 1 / \ln(c + p_c)`, :math:`c = 1.02`, which bounds every weight by
  :math:`1/\ln 1.02 \approx 50.5` however rare the class;
- inverse class proportion (seed 003's baseline, "the inverse of class proportions as weights"):
  :math:`w_c = 1 / p_c`;

with :math:`p_c = n_c / \sum_k n_k` the class frequency among the counted (non-ignored) pixels.

Void targets. :func:`void_targets` turns every ignore label (255) into void (19). In Cityscapes
trainIds 255 is every pixel whose labelId is not one of the 19 evaluated classes: unlabeled, ego
vehicle, rectification border, out of roi, static, dynamic, ground, parking, rail track, guard
rail, bridge, tunnel, polegroup, caravan, trailer, license plate; plus whatever a data pipeline
pads with 255 (the base code pads translated labels with 255 and then relabels 255 to 19 too).

The seed's void weight. The seed authors keep their per-class weights for 0..18 and change the
void weight from 0 (void ignored) to 1 (void trained); :func:`void_classifier_weights` does that
with ENet weights from the histogram; ``void_weight=None`` weights void by its own frequency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.common.labels import IGNORE_INDEX, VOID_INDEX

#: ENet's constant: weights are bounded by 1 / ln(1.02) ~ 50.5.
ENET_C = 1.02

LabelArray = np.ndarray | torch.Tensor


def _as_int_tensor(labels: LabelArray, what: str) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if not isinstance(labels, torch.Tensor):
        raise DatasetError(f"{what} must be a numpy array or torch tensor of trainIds, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DatasetError(f"{what} must hold integer trainIds, got dtype {labels.dtype}")
    return labels


def class_histogram(
    labels_iterable: Iterable[LabelArray], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pixel count of each class ``(num_classes,)`` int64 over label maps of any shape.

    ``ignore_index`` pixels are not counted; any other value outside ``0..num_classes-1`` is a
    DatasetError naming the map and the values (for 20-class void training, pass the maps
    through :func:`void_targets` first so that void is counted as class 19).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for index, labels in enumerate(labels_iterable):
        flat = _as_int_tensor(labels, f"label map {index}").reshape(-1).to(torch.int64).cpu()
        flat = flat[flat != ignore_index]
        bad = (flat < 0) | (flat >= num_classes)
        if bool(bad.any()):
            values = flat[bad].unique().tolist()[:10]
            raise DatasetError(
                f"label map {index} has values {values} outside 0..{num_classes - 1} (ignore index {ignore_index})"
            )
        counts += torch.bincount(flat, minlength=num_classes)
    return counts


def _frequencies(histogram: torch.Tensor) -> torch.Tensor:
    histogram = torch.as_tensor(histogram)
    if histogram.ndim != 1 or histogram.numel() == 0:
        raise ConfigError(f"histogram must be a 1-D tensor of class pixel counts, got shape {tuple(histogram.shape)}")
    counts = histogram.to(torch.float64)
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ConfigError(f"histogram counts must be finite and >= 0, got {histogram.tolist()}")
    total = counts.sum()
    if total <= 0:
        raise DatasetError("the label histogram is empty (no labelled pixel); cannot compute class weights")
    return counts / total


def enet_class_weights(histogram: torch.Tensor, c: float = ENET_C) -> torch.Tensor:
    r"""ENet class weights :math:`w_c = 1 / \ln(c + p_c)` (float32), :math:`p_c` = class frequency.

    ``c > 1`` keeps every logarithm positive; with ``c = 1.02`` the weights lie in
    :math:`[1/\ln 2.02, 1/\ln 1.02] \approx [1.42, 50.5]`.
    """
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or not c > 1.0:
        raise ConfigError(f"ENet weighting constant c must be a finite number > 1, got {c!r}")
    return (1.0 / torch.log(c + _frequencies(histogram))).to(torch.float32)


def inverse_frequency_weights(histogram: torch.Tensor) -> torch.Tensor:
    r"""Inverse class proportions :math:`w_c = 1 / p_c = \sum_k n_k / n_c` (float32), seed 003's baseline.

    A class with no pixel gets weight 0 instead of infinity: it never occurs as a target, so its
    weight never enters the loss, and a finite tensor stays safe to log and to save.
    """
    freq = _frequencies(histogram)
    weights = torch.where(freq > 0, 1.0 / freq.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(freq))
    return weights.to(torch.float32)


def void_targets(
    trainid_labels: LabelArray, *, void_index: int = VOID_INDEX, ignore_index: int = IGNORE_INDEX
) -> LabelArray:
    """A copy of ``trainid_labels`` (numpy or torch, any shape) with ``ignore_index`` mapped to ``void_index``.

    Input values must be trainIds ``0..void_index-1``, ``void_index`` or ``ignore_index``;
    anything else is a DatasetError (a labelId map passed by mistake, for instance).
    """
    labels = _as_int_tensor(trainid_labels, "trainid_labels")
    known = ((labels >= 0) & (labels <= void_index)) | (labels == ignore_index)
    if not bool(known.all()):
        values = labels[~known].unique().tolist()[:10]
        raise DatasetError(
            f"trainid_labels has values {values}; expected trainIds 0..{void_index - 1}, "
            f"void {void_index} or ignore {ignore_index} (is it a labelId map?)"
        )
    mapped = torch.where(labels == ignore_index, torch.full_like(labels, void_index), labels)
    return mapped.numpy() if isinstance(trainid_labels, np.ndarray) else mapped


def void_classifier_weights(
    histogram: torch.Tensor,
    *,
    c: float = ENET_C,
    void_weight: float | None = 1.0,
    void_index: int = VOID_INDEX,
) -> torch.Tensor:
    """Class weights for 20-class void training (seed 000 section 4.1), from a 20-bin histogram.

    Classes ``0..void_index-1`` get ENet weights from their frequencies among the labelled
    (non-void) pixels, as a 19-class training would; void gets ``void_weight`` (the seed sets it
    to 1, where standard training sets it to 0). With ``void_weight=None`` all 20 classes get
    ENet weights from their frequencies among all pixels, void included.
    """
    histogram = torch.as_tensor(histogram)
    if histogram.ndim != 1 or histogram.numel() != void_index + 1:
        raise ConfigError(
            f"void classifier weights need a histogram of {void_index + 1} classes (trainIds + void), "
            f"got shape {tuple(histogram.shape)}"
        )
    if void_weight is None:
        return enet_class_weights(histogram, c)
    if isinstance(void_weight, bool) or not isinstance(void_weight, (int, float)) or not void_weight >= 0:
        raise ConfigError(f"void_weight must be a number >= 0 or None, got {void_weight!r}")
    labelled = enet_class_weights(histogram[:void_index], c)
    return torch.cat([labelled, torch.tensor([float(void_weight)], dtype=torch.float32)])


__all__ = [
    "ENET_C",
    "class_histogram",
    "enet_class_weights",
    "inverse_frequency_weights",
    "void_classifier_weights",
    "void_targets",
]
