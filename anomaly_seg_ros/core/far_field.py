"""A second, zoomed look at the far road: where small obstacles first appear.

The network sees the camera frame resized to its input size, so a far obstacle of 100 camera
pixels covers about 25 network pixels at 1024x512 -> 512x256: too few for its anomaly score
to rise above the threshold until it is much nearer. The far field is a crop of the frame
around the vanishing point of the road, ``1 / zoom`` of the frame's height and width,
resized to the same network input and scored by the same network and scorer (one more
forward pass of the same shape, so a compiled engine serves both). Its scores replace
nothing: inside the crop the published anomaly score is the maximum of the two looks, so
the far field can only add detections, and outside it the map is the full frame's.
The labels (and with them the drivable area) stay those of the full frame, so segmentation
is exactly what it is without the far field.

``zoom`` = frame size / input size is the camera's native resolution (no pixel invented);
the demo uses that (2 for 1024x512 frames and a 512x256 network). It doubles the network
time per frame; running the whole frame at native resolution would quadruple it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CropBox:
    """Rows ``top:bottom`` and columns ``left:right`` of the frame (end exclusive)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def size(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left


def far_field_box(frame_size: tuple[int, int], zoom: float, center: tuple[float, float]) -> CropBox:
    """The crop of a ``frame_size`` (height, width) frame seen by the far field.

    Its height and width are the frame's divided by ``zoom`` (rounded, at least one pixel); it
    is centred on ``center`` (x, y in 0..1 of the frame's width and height) and shifted, not
    shrunk, where that would cross the frame's border. ``zoom`` must be > 1.
    """
    if zoom <= 1.0:
        raise ValueError(f"zoom must be > 1 for a far-field crop, got {zoom}")
    height, width = frame_size
    crop_height = max(1, round(height / zoom))
    crop_width = max(1, round(width / zoom))
    top = min(max(round(center[1] * height - crop_height / 2), 0), height - crop_height)
    left = min(max(round(center[0] * width - crop_width / 2), 0), width - crop_width)
    return CropBox(top, top + crop_height, left, left + crop_width)


def crop_images(images: torch.Tensor, box: CropBox) -> torch.Tensor:
    """(N, C, H, W) -> the (N, C, h, w) crop ``box``, contiguous (runtimes read dense buffers)."""
    return images[..., box.top : box.bottom, box.left : box.right].contiguous()


def fuse_far_field(scores: torch.Tensor, far_scores: torch.Tensor, box: CropBox) -> torch.Tensor:
    """Frame-size ``scores`` (N, H, W) with the crop ``box`` raised to ``far_scores`` (N, h, w) where higher.

    In place on ``scores`` (returned): higher = more anomalous, so the maximum keeps whichever
    look found the anomaly.
    """
    if tuple(far_scores.shape[-2:]) != box.size:
        raise ValueError(f"far-field scores must have the crop's size {box.size}, got {tuple(far_scores.shape[-2:])}")
    region = scores[..., box.top : box.bottom, box.left : box.right]
    torch.maximum(region, far_scores.to(region.dtype), out=region)
    return scores
