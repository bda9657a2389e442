"""Frame -> network input, and network output -> frame-sized maps.

Training, evaluation, the bag tool and the node all go through these functions, so a model
sees at run time exactly the pixels it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def frame_to_tensor(frame: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 RGB (numpy) -> (1, 3, H, W) uint8 tensor on ``device``, one copy."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be an HxWx3 uint8 RGB array, got shape {frame.shape} and dtype {frame.dtype}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame must not be empty, got shape {frame.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(frame))
    return tensor.to(device, non_blocking=True).permute(2, 0, 1).unsqueeze(0)


def normalize_images(
    images: torch.Tensor,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, h, w) float32 network input.

    The resize runs on uint8 (antialiased bilinear when shrinking), which PyTorch vectorises
    and which moves a quarter of the bytes of a float resize; scaling to 0..1 and the
    mean/std normalisation then run on the small image only.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be an (N, 3, H, W) uint8 tensor, got {tuple(images.shape)} {images.dtype}")
    images = resize_images(images, input_size)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, h, w) uint8: bilinear, antialiased when shrinking."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrinking)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) integer labels -> (N, H, W) uint8 by nearest neighbour."""
    labels = labels.to(torch.uint8)
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels.unsqueeze(1), size=tuple(size), mode="nearest").squeeze(1)


def resize_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) float scores -> (N, H, W) by bilinear interpolation."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
