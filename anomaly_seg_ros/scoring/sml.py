"""Standardized Max Logits (Jung, Lee, Gwak, Kim, Choo, ICCV 2021, arXiv:2107.11264).

Max logits of different predicted classes live on different scales; SML standardises each
pixel's max logit with the mean and standard deviation of the max logits of the pixels
*predicted* as the same class on in-distribution (training) data:

.. math:: SML(x) = \\frac{L_{\\hat c}(x) - \\mu_{\\hat c}}{\\sigma_{\\hat c}}, \\quad
          \\hat c = \\arg\\max_c L_c(x), \\qquad s(x) = -SML(x)

The paper then suppresses class boundaries (boundary pixels take, iteratively, the mean
of their non-boundary 3x3 neighbours: boundary width 4, 4 iterations) and applies a
dilated Gaussian smoothing (7x7, sigma 1, dilation 6); the defaults below are the paper's
and the authors' code's (github.com/shjung13/Standardized-max-logits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring.fitting import Batch, FittedScorer, model_outputs
from anomaly_seg_ros.scoring.registry import register_scorer

#: Floor of a fitted standard deviation (a class seen at one value must not divide by zero).
MIN_STD = 1e-6


class MaxLogitStatistics:
    """Streaming per-class count, mean and (population) standard deviation of max logits,
    grouped by the predicted class; float64 sums, so millions of pixels lose no precision."""

    def __init__(self, num_classes: int) -> None:
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.total = torch.zeros(num_classes, dtype=torch.float64)
        self.squares = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, logits: torch.Tensor) -> None:
        max_logit, predicted = logits.detach().max(dim=1)
        predicted = predicted.reshape(-1).cpu()
        values = max_logit.reshape(-1).double().cpu()
        self.count.index_add_(0, predicted, torch.ones_like(values))
        self.total.index_add_(0, predicted, values)
        self.squares.index_add_(0, predicted, values * values)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) per class. Classes never predicted get the pooled mean and std of all pixels."""
        if self.count.sum() == 0:
            raise ConfigError("SML fit saw no pixels: the fitting data is empty")
        pooled_mean = self.total.sum() / self.count.sum()
        pooled_var = (self.squares.sum() / self.count.sum() - pooled_mean**2).clamp_min(0)
        seen = self.count > 0
        mean = torch.where(seen, self.total / self.count.clamp_min(1), pooled_mean)
        var = torch.where(seen, self.squares / self.count.clamp_min(1) - mean**2, pooled_var).clamp_min(0)
        return mean, var.sqrt().clamp_min(MIN_STD)


def _cross_dilate(x: torch.Tensor) -> torch.Tensor:
    """Max over the 4-neighbourhood and centre; replicate padding (= ignoring outside pixels)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    centre = padded[..., 1:-1, 1:-1]
    neighbours = (padded[..., :-2, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :-2], padded[..., 1:-1, 2:])
    out = centre
    for item in neighbours:
        out = torch.maximum(out, item)
    return out


def class_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) 0/1 map: 4-neighbour dilation of the labels differs from their 3x3 erosion."""
    values = labels.float()
    eroded = -F.max_pool2d(-F.pad(values, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (_cross_dilate(values) != eroded).to(torch.float32)


def boundary_suppression(
    scores: torch.Tensor, labels: torch.Tensor, *, width: int = 4, iterations: int = 4
) -> torch.Tensor:
    """SML's iterative boundary suppression of ``scores`` (N, 1, H, W) along ``labels`` boundaries.

    In iteration ``i`` the boundary region, widened by ``width - i * width/iterations - 1``
    (L1 radius; 0 in the last iteration), is replaced by the mean of the non-boundary pixels
    of each pixel's 3x3 neighbourhood, where it has any.
    """
    if iterations < 1 or width < 0 or (width and width % iterations):
        raise ConfigError(f"SML boundary suppression: width ({width}) must be a multiple of iterations ({iterations})")
    boundaries = class_boundaries(labels)
    step = width // iterations
    radii = [0 if width == 0 or i == iterations - 1 else width - step * i - 1 for i in range(iterations)]
    # the regions of all radii from one chain of dilations (radius r = r cross dilations)
    regions = {0: boundaries}
    for radius in range(1, max(radii) + 1):
        regions[radius] = _cross_dilate(regions[radius - 1])
    out = scores
    for radius in radii:
        keep = (regions[radius] == 0).to(scores.dtype)
        # 3x3 means instead of sums: their ratio is the same, and average pooling is ~3x
        # cheaper than a 1-channel convolution on a CPU (benchmarks/README.md, "Scorer cost")
        total = F.avg_pool2d(F.pad(out * keep, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        count = F.avg_pool2d(F.pad(keep, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        averaged = torch.where(count == 0, out, total / count.clamp_min(1e-6))
        out = torch.where(keep == 0, averaged, out)
    return out


def gaussian_kernel(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, size, size) normalised Gaussian."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).view(1, 1, size, size)


def dilated_smoothing(scores: torch.Tensor, *, kernel_size: int = 7, dilation: int = 6) -> torch.Tensor:
    """Gaussian (sigma 1) with dilation, replicate padding, same size (SML's second stage)."""
    pad = dilation * (kernel_size // 2)
    kernel = gaussian_kernel(kernel_size, 1.0, scores.dtype, scores.device)
    return F.conv2d(F.pad(scores, (pad, pad, pad, pad), mode="replicate"), kernel, dilation=dilation)


@register_scorer
class StandardizedMaxLogit(FittedScorer):
    r"""Standardized Max Logits (Jung et al., ICCV 2021): :math:`s = -(L_{\hat c} - \mu_{\hat c})/\sigma_{\hat c}`.

    Needs ``anomaly-seg fit-scorer sml`` (per-class max-logit mean/std over the training
    split); optional boundary suppression and dilated smoothing as in the paper.
    """

    name = "sml"

    def __init__(
        self,
        boundary_suppression: bool = True,
        boundary_width: int = 4,
        boundary_iteration: int = 4,
        dilated_smoothing: bool = True,
        kernel_size: int = 7,
        dilation: int = 6,
    ) -> None:
        for key, value in (("boundary_suppression", boundary_suppression), ("dilated_smoothing", dilated_smoothing)):
            if not isinstance(value, bool):
                raise ConfigError(f"scorer 'sml': {key} must be true or false, got {value!r}")
        if boundary_iteration < 1 or boundary_width < 0 or boundary_width % boundary_iteration:
            raise ConfigError(
                f"scorer 'sml': boundary_width ({boundary_width}) must be a non-negative multiple of "
                f"boundary_iteration ({boundary_iteration} >= 1)"
            )
        if kernel_size < 1 or kernel_size % 2 == 0 or dilation < 1:
            raise ConfigError(
                f"scorer 'sml': kernel_size must be odd >= 1 and dilation >= 1, got {kernel_size}, {dilation}"
            )
        self.boundary_suppression = boundary_suppression
        self.boundary_width = int(boundary_width)
        self.boundary_iteration = int(boundary_iteration)
        self.dilated_smoothing = dilated_smoothing
        self.kernel_size = int(kernel_size)
        self.dilation = int(dilation)
        self.class_mean: torch.Tensor | None = None
        self.class_std: torch.Tensor | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {
            "boundary_suppression": self.boundary_suppression,
            "boundary_width": self.boundary_width,
            "boundary_iteration": self.boundary_iteration,
            "dilated_smoothing": self.dilated_smoothing,
            "kernel_size": self.kernel_size,
            "dilation": self.dilation,
        }

    # -- fitting -------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.class_mean is not None

    def fit(self, model: nn.Module, batches: Iterable[Batch]) -> None:
        """Per predicted class: mean and std of the max logit over every pixel of ``batches``."""
        stats: MaxLogitStatistics | None = None
        for output, _ in model_outputs(model, batches):
            if stats is None:
                stats = MaxLogitStatistics(output.logits.shape[1])
            stats.update(output.logits)
        if stats is None:
            raise ConfigError("scorer 'sml': fit needs at least one batch of in-distribution images")
        self.class_mean, self.class_std = stats.result()

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.fitted:
            raise ConfigError("scorer 'sml' is not fitted")
        return {"class_mean": self.class_mean, "class_std": self.class_std}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != {"class_mean", "class_std"} or state["class_mean"].shape != state["class_std"].shape:
            raise ConfigError(f"scorer 'sml': a fit holds class_mean and class_std of one shape, got {sorted(state)}")
        self.class_mean = state["class_mean"].double()
        self.class_std = state["class_std"].double().clamp_min(MIN_STD)

    # -- scoring -------------------------------------------------------------------------

    @staticmethod
    def score(
        logits: torch.Tensor,
        class_mean: torch.Tensor,
        class_std: torch.Tensor,
        boundary_suppression: bool = True,
        boundary_width: int = 4,
        boundary_iteration: int = 4,
        dilated_smoothing: bool = True,
        kernel_size: int = 7,
        dilation: int = 6,
    ) -> torch.Tensor:
        if class_mean.numel() != logits.shape[1]:
            raise ConfigError(f"scorer 'sml': fitted for {class_mean.numel()} classes, the model has {logits.shape[1]}")
        max_logit, predicted = logits.max(dim=1)
        mean = class_mean.to(logits)[predicted]
        std = class_std.to(logits)[predicted]
        standardized = ((max_logit - mean) / std).unsqueeze(1)
        if boundary_suppression:
            standardized = boundary_suppression_fn(
                standardized, predicted.unsqueeze(1), width=boundary_width, iterations=boundary_iteration
            )
        if dilated_smoothing:
            standardized = dilated_smoothing_fn(standardized, kernel_size=kernel_size, dilation=dilation)
        return -standardized.squeeze(1)

    def compute(self, output: SegmentationOutput) -> torch.Tensor:
        self.require_fitted()
        return self.score(output.logits, self.class_mean, self.class_std, **self.params)


# the scorer's parameters shadow the module functions' names inside ``score``
boundary_suppression_fn = boundary_suppression
dilated_smoothing_fn = dilated_smoothing

__all__ = [
    "MaxLogitStatistics",
    "StandardizedMaxLogit",
    "boundary_suppression",
    "class_boundaries",
    "dilated_smoothing",
]
