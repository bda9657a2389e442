"""Closed-set segmentation metrics from an accumulated confusion matrix.

The matrix is summed over a whole dataset and the metrics are computed from the totals, so
every pixel weighs the same (the Cityscapes convention), rather than averaging per-image
scores, which would overweight small or empty classes in individual images.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from anomaly_seg_ros.common.labels import IGNORE_INDEX, class_names

ArrayLike = np.ndarray | torch.Tensor


class ConfusionMatrix:
    """Dataset-level ``C x C`` confusion matrix; rows are ground truth, columns prediction.

    ``matrix[i, j]`` counts pixels of true class ``i`` predicted as ``j``; pixels whose target
    is ``ignore_index`` are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one batch of integer class maps (any shape, same shape for both).

        Counted with a single bincount over ``target * C + pred``; torch inputs are counted
        on their own device and only the ``C x C`` result is copied to the host.
        """
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            device = pred.device if isinstance(pred, torch.Tensor) else target.device
            self.matrix += self._count_torch(
                torch.as_tensor(pred, device=device), torch.as_tensor(target, device=device)
            )
        else:
            self.matrix += self._count_numpy(np.asarray(pred), np.asarray(target))

    def _check(self, pred_shape: tuple[int, ...], target_shape: tuple[int, ...], integer: bool) -> None:
        if pred_shape != target_shape:
            raise ValueError(f"pred and target must have the same shape, got {pred_shape} and {target_shape}")
        if not integer:
            raise TypeError("pred and target must be integer class maps")

    def _out_of_range(self, name: str, values: list[int]) -> ValueError:
        return ValueError(
            f"{name} contains values outside 0..{self.num_classes - 1} "
            f"(ignore_index={self.ignore_index}): {values[:10]}"
        )

    def _count_numpy(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        integer = all(np.issubdtype(a.dtype, np.integer) for a in (pred, target))
        self._check(pred.shape, target.shape, integer)
        keep = target != self.ignore_index
        target = target[keep].astype(np.int64)
        pred = pred[keep].astype(np.int64)
        for name, values in (("target", target), ("pred", pred)):
            bad = (values < 0) | (values >= self.num_classes)
            if bad.any():
                raise self._out_of_range(name, np.unique(values[bad]).tolist())
        counts = np.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        return counts.reshape(self.num_classes, self.num_classes)

    def _count_torch(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        integer = not any(t.is_floating_point() or t.is_complex() or t.dtype == torch.bool for t in (pred, target))
        self._check(tuple(pred.shape), tuple(target.shape), integer)
        keep = target != self.ignore_index
        target = target[keep].long()
        pred = pred[keep].long()
        for name, values in (("target", target), ("pred", pred)):
            bad = (values < 0) | (values >= self.num_classes)
            if bool(bad.any()):
                raise self._out_of_range(name, torch.unique(values[bad]).tolist())
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        return counts.cpu().numpy().astype(np.int64).reshape(self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN) (seed paper eq. 1), float64 of length C.

        TP is the diagonal, FN the rest of the row (ground truth), FP the rest of the column
        (prediction). A class absent from both ground truth and prediction has 0 / 0: NaN, so
        that it is left out of the mean instead of counting as 0 or 1.
        """
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - np.diag(self.matrix)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur (NaN-mean of ``iou()``); NaN if none does."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice -> NaN is intended
            return float(np.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels = trace / sum; NaN if nothing was counted."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total > 0 else float("nan")

    def per_class_table(self, names: Sequence[str] | None = None) -> list[dict[str, object]]:
        """One row per class: ``class`` name, ``iou`` (NaN if absent), ``tp``, ``fp``, ``fn``.

        ``names`` default to the Cityscapes names (``labels.class_names``) for 19 or 20 classes,
        else ``class <i>``. IoU = TP / (TP + FP + FN), seed paper eq. 1.
        """
        if names is None:
            try:
                names = class_names(self.num_classes)
            except ValueError:
                names = [f"class {index}" for index in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"got {len(names)} class names for {self.num_classes} classes")
        tp = np.diag(self.matrix)
        fp = self.matrix.sum(axis=0) - tp
        fn = self.matrix.sum(axis=1) - tp
        return [
            {"class": name, "iou": float(iou), "tp": int(t), "fp": int(p), "fn": int(n)}
            for name, iou, t, p, n in zip(names, self.iou(), tp, fp, fn, strict=True)
        ]

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix[:] = 0

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another accumulator's counts (e.g. from another worker); returns ``self``."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                "cannot merge confusion matrices with different (num_classes, ignore_index): "
                f"{(self.num_classes, self.ignore_index)} and "
                f"{(other.num_classes, other.ignore_index)}"
            )
        self.matrix += other.matrix
        return self
