"""Training augmentation on tensors, applied identically to an image and its labels.

One call draws all its random numbers from a ``torch.Generator`` the caller seeds per sample
(:func:`sample_generator`), so an augmented sample depends only on (seed, epoch, index):
not on the number of data-loader workers, nor on how DistributedDataParallel shards the
data. With every augmentation off the result is exactly the inference preprocessing
(:func:`~anomaly_seg_ros.inference.preprocess.resize_images` /
:func:`~anomaly_seg_ros.inference.preprocess.resize_labels` to ``input_size``).

Geometric steps (scale, crop, flip) move image and labels together: images bilinearly,
labels by nearest neighbour, so no label value is ever invented. Photometric steps
(brightness, contrast, saturation) touch the image only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.labels import IGNORE_INDEX
from anomaly_seg_ros.inference.preprocess import resize_images, resize_labels

#: ITU-R BT.601 luma weights, as in torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)
#: Uniform draws per sample: scale, crop y, crop x, flip, brightness, contrast, saturation.
_DRAWS = 7


def _resize_nearest(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) float map -> ``size`` by nearest neighbour, the rule :func:`resize_labels` uses."""
    if tuple(values.shape) == tuple(size):
        return values
    return F.interpolate(values[None, None], size=tuple(size), mode="nearest")[0, 0]


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index) through numpy's SeedSequence hashing.

    Hashing rather than ``seed + index`` keeps neighbouring samples' streams unrelated.
    """
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass(frozen=True)
class Augmentation:
    r"""Random scale -> random crop/pad -> horizontal flip -> colour jitter.

    - **scale**: the image is resized to ``round(s · input_size)`` with
      :math:`s \sim U[s_{lo}, s_{hi}]` (``scale_range``); ``(1, 1)`` is the plain resize.
    - **crop**: a window of ``crop_size`` (default ``input_size``) at a uniformly random
      offset; where the scaled image is smaller, it is placed at a random offset on a canvas
      of black pixels whose labels are 255 (ignored by the loss).
    - **flip**: left-right with probability 1/2 when ``hflip``.
    - **colour jitter** (torchvision's definitions, fixed order): brightness
      :math:`x \cdot b`, contrast :math:`(x - \bar g) c + \bar g`, saturation
      :math:`g + (x - g) s` with :math:`g` the BT.601 luma, :math:`\bar g` its image mean and
      :math:`b, c, s \sim U[1 - \beta, 1 + \beta]` for the strengths ``brightness``,
      ``contrast``, ``saturation`` (0 = off).
    """

    input_size: tuple[int, int]
    crop_size: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ConfigError(
                f"train.scale_range: expected [low, high] with 0 < low <= high, got {list(self.scale_range)}"
            )
        for key in ("brightness", "contrast", "saturation"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"train.{key}: expected a jitter strength in [0, 1), got {value!r}")
        if min(self.output_size) < 1 or min(self.input_size) < 1:
            raise ConfigError(f"train.crop_size / input_size: expected positive sizes, got {self.output_size}")

    @property
    def output_size(self) -> tuple[int, int]:
        return tuple(self.crop_size or self.input_size)

    def __call__(
        self,
        image: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(3, H, W) uint8 image and (H, W) integer labels -> the same at ``output_size`` (uint8 both).

        ``weights``, an optional (H, W) float map aligned with the labels (the instance
        uncertainty of seed 003), moves with the labels (nearest neighbour, 0 where padded) and
        is returned as a third tensor.
        """
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a (3, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
        if labels.shape != image.shape[1:]:
            raise ValueError(f"labels {tuple(labels.shape)} must match the image size {tuple(image.shape[1:])}")
        if weights is not None and weights.shape != labels.shape:
            raise ValueError(f"weights {tuple(weights.shape)} must match the labels {tuple(labels.shape)}")
        draws = torch.rand(_DRAWS, generator=generator, dtype=torch.float64).tolist()
        low, high = self.scale_range
        scale = low + (high - low) * draws[0]
        size = (max(1, round(self.input_size[0] * scale)), max(1, round(self.input_size[1] * scale)))
        image = resize_images(image[None], size)[0]
        labels = resize_labels(labels[None], size)[0]
        if weights is not None:
            weights = _resize_nearest(weights.float(), size)
        image, labels = self._crop_or_pad(image, labels, draws[1], draws[2])
        if weights is not None:
            weights = self._crop_or_pad_map(weights, draws[1], draws[2])
        if self.hflip and draws[3] < 0.5:
            image, labels = image.flip(-1), labels.flip(-1)
            weights = None if weights is None else weights.flip(-1)
        if self.brightness or self.contrast or self.saturation:
            image = self._jitter(image, draws[4:7])
        if weights is None:
            return image.contiguous(), labels.contiguous()
        return image.contiguous(), labels.contiguous(), weights.contiguous()

    def _crop_or_pad(
        self, image: torch.Tensor, labels: torch.Tensor, u_y: float, u_x: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        canvas = self._crop_or_pad_map(image, u_y, u_x, fill=0)
        return canvas, self._crop_or_pad_map(labels, u_y, u_x, fill=IGNORE_INDEX)

    def _crop_or_pad_map(self, values: torch.Tensor, u_y: float, u_x: float, *, fill: float = 0) -> torch.Tensor:
        """A window of ``output_size`` from ``(..., H, W)`` values, padded with ``fill`` where they are smaller."""
        out_h, out_w = self.output_size
        height, width = values.shape[-2:]
        if (height, width) == (out_h, out_w):
            return values
        # Per axis: a random window when the map is larger, a random placement when smaller.
        dy, dx = int(u_y * (abs(height - out_h) + 1)), int(u_x * (abs(width - out_w) + 1))
        src_y, dst_y = (dy, 0) if height >= out_h else (0, dy)
        src_x, dst_x = (dx, 0) if width >= out_w else (0, dx)
        h, w = min(height, out_h), min(width, out_w)
        canvas = torch.full((*values.shape[:-2], out_h, out_w), fill, dtype=values.dtype)
        canvas[..., dst_y : dst_y + h, dst_x : dst_x + w] = values[..., src_y : src_y + h, src_x : src_x + w]
        return canvas

    def _jitter(self, image: torch.Tensor, draws: list[float]) -> torch.Tensor:
        x = image.float()
        luma = torch.tensor(_LUMA).view(3, 1, 1)
        b, c, s = (
            1.0 + strength * (2.0 * u - 1.0)
            for strength, u in zip((self.brightness, self.contrast, self.saturation), draws, strict=True)
        )
        x = (x * b).clamp(0, 255)
        mean_gray = (x * luma).sum(0).mean()
        x = ((x - mean_gray) * c + mean_gray).clamp(0, 255)
        gray = (x * luma).sum(0, keepdim=True)
        x = (gray + (x - gray) * s).clamp(0, 255)
        return x.round().to(torch.uint8)
