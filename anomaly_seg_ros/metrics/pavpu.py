"""Patch Accuracy versus Patch Uncertainty (PAvPU).

Mukhoti & Gal, "Evaluating Bayesian Deep Learning Methods for Semantic Segmentation"
(arXiv 1811.12709), as used in seed 003 (instance-wise uncertainty, eq. 10): the image is cut
into ``w x w`` patches; a patch is

* accurate if (correct pixels) / (pixels) in the patch is GREATER than ``accuracy_threshold``
  (usually 0.5), inaccurate otherwise;
* certain if the mean uncertainty of its pixels is LOWER than ``uncertainty_threshold``
  (seed 003 uses the mean pixel uncertainty of the training set), uncertain otherwise.

With ``n_ac``, ``n_au``, ``n_ic``, ``n_iu`` the accurate-certain, accurate-uncertain,
inaccurate-certain and inaccurate-uncertain patch counts::

    PAvPU = (n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu)

the fraction of patches where the model is confident exactly when it is right.

Conventions of this implementation: patches are non-overlapping and start at the top-left
corner; the last ``H mod w`` rows and ``W mod w`` columns are not scored. Pixels whose target
is ``ignore_index`` do not count in a patch's accuracy or mean uncertainty, and a patch with no
valid pixel is skipped. Counts are summed over images (pooled over the dataset).
"""

from __future__ import annotations

import numpy as np

from anomaly_seg_ros.common.labels import IGNORE_INDEX
from anomaly_seg_ros.metrics.ood import ArrayLike, _to_numpy


def _patch_sums(values: np.ndarray, window: int) -> np.ndarray:
    """Sum of each non-overlapping ``window x window`` patch of ``(N, H, W)`` maps."""
    n, h, w = values.shape
    rows, cols = h // window, w // window
    cropped = values[:, : rows * window, : cols * window]
    return cropped.reshape(n, rows, window, cols, window).sum(axis=(2, 4))


class PAvPU:
    """Accumulator of the four patch counts; ``value()`` is PAvPU (seed 003 eq. 10)."""

    def __init__(
        self,
        uncertainty_threshold: float,
        *,
        window: int = 4,
        accuracy_threshold: float = 0.5,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 pixel, got {window}")
        if not 0.0 <= accuracy_threshold <= 1.0:
            raise ValueError(f"accuracy_threshold must be in [0, 1], got {accuracy_threshold}")
        if not np.isfinite(uncertainty_threshold):
            raise ValueError(f"uncertainty_threshold must be finite, got {uncertainty_threshold}")
        self.uncertainty_threshold = float(uncertainty_threshold)
        self.window = int(window)
        self.accuracy_threshold = float(accuracy_threshold)
        self.ignore_index = int(ignore_index)
        self.n_ac = self.n_au = self.n_ic = self.n_iu = 0

    def update(self, pred: ArrayLike, target: ArrayLike, uncertainty: ArrayLike) -> None:
        """Add ``(H, W)`` or ``(N, H, W)`` predicted labels, target labels and pixel uncertainties."""
        pred, target, uncertainty = (_to_numpy(a) for a in (pred, target, uncertainty))
        if not pred.shape == target.shape == uncertainty.shape or pred.ndim not in (2, 3):
            raise ValueError(
                "pred, target and uncertainty must be (H, W) or (N, H, W) maps of one shape, got "
                f"{pred.shape}, {target.shape} and {uncertainty.shape}"
            )
        if min(pred.shape[-2:]) < self.window:
            raise ValueError(f"maps of size {pred.shape[-2:]} hold no {self.window}x{self.window} patch")
        if not all(np.issubdtype(a.dtype, np.integer) for a in (pred, target)):
            raise TypeError(f"pred and target must be integer label maps, got {pred.dtype} and {target.dtype}")
        if not np.isfinite(uncertainty).all():
            raise ValueError("uncertainty contains NaN or infinite values")
        if pred.ndim == 2:
            pred, target, uncertainty = pred[None], target[None], uncertainty[None]
        valid = target != self.ignore_index
        valid_count = _patch_sums(valid.astype(np.int64), self.window)
        correct = _patch_sums(((pred == target) & valid).astype(np.int64), self.window)
        uncertainty_sum = _patch_sums(np.where(valid, uncertainty.astype(np.float64), 0.0), self.window)
        scored = valid_count > 0
        accuracy = correct[scored] / valid_count[scored]
        mean_uncertainty = uncertainty_sum[scored] / valid_count[scored]
        accurate = accuracy > self.accuracy_threshold
        certain = mean_uncertainty < self.uncertainty_threshold
        self.n_ac += int(np.count_nonzero(accurate & certain))
        self.n_au += int(np.count_nonzero(accurate & ~certain))
        self.n_ic += int(np.count_nonzero(~accurate & certain))
        self.n_iu += int(np.count_nonzero(~accurate & ~certain))

    def counts(self) -> dict[str, int]:
        """``{"n_ac", "n_au", "n_ic", "n_iu"}``."""
        return {"n_ac": self.n_ac, "n_au": self.n_au, "n_ic": self.n_ic, "n_iu": self.n_iu}

    def value(self) -> float:
        """``(n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu)``; NaN if no patch was scored."""
        total = self.n_ac + self.n_au + self.n_ic + self.n_iu
        return (self.n_ac + self.n_iu) / total if total else float("nan")


def pavpu(
    pred: ArrayLike,
    target: ArrayLike,
    uncertainty: ArrayLike,
    *,
    uncertainty_threshold: float,
    window: int = 4,
    accuracy_threshold: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """PAvPU of one batch; see :class:`PAvPU` and the module doc."""
    metric = PAvPU(
        uncertainty_threshold, window=window, accuracy_threshold=accuracy_threshold, ignore_index=ignore_index
    )
    metric.update(pred, target, uncertainty)
    return metric.value()
