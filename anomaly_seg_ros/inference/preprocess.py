"""Frame -> network input, and network output -> frame-sized maps.

Training, evaluation, the bag tool and the node all go through these functions, so a model
sees at run time exactly the pixels it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def check_frame(frame: np.ndarray) -> None:
    """Raise ValueError unless ``frame`` is a non-empty HxWx3 uint8 array."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        shape, dtype = getattr(frame, "shape", None), getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"frame must be an HxWx3 uint8 RGB array, got shape {shape} and dtype {dtype}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame must not be empty, got shape {frame.shape}")


def frame_to_tensor(frame: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 RGB (numpy) -> (1, 3, H, W) uint8 tensor on ``device``, one copy."""
    check_frame(frame)
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
    # (x / 255 - mean) / std as one fused multiply-add, x * (1 / (255 std)) + (-mean / std):
    # one pass over the float image instead of three (equal up to float rounding, ~5e-7).
    return torch.addcmul(-mean_t / std_t, images.to(torch.float32), 1.0 / (255.0 * std_t))


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


# ----------------------------------------------------------------- device-side frame path
#
# The perception core moves a frame through these steps, all on ``device``:
#
#   host uint8 HxWx3 --upload (pinned, non_blocking)--> uint8 (1,3,H,W)
#   --normalize_images (resize on uint8, then scale/normalise the small image)--> network input
#   --network, scorer, labels_from_logits--> uint8 labels, float scores at network size
#   --to_frame_size (nearest / bilinear, cast to the heatmap dtype)--> frame-size maps
#   --FrameTransfer.download (copy stream)--> host uint8 labels, float32 heatmap
#
# No full-resolution float32 image exists on the host: only the published maps come back.


def labels_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits -> (N, H, W) uint8 labels, ``argmax`` over classes (first maximum wins).

    Equal to ``logits.argmax(1)`` (ties go to the lowest class index, as there). On CPU,
    PyTorch's argmax over the class dimension of an NCHW tensor is a strided reduction; for
    those the labels are computed as a running maximum over the C contiguous channel planes
    instead (19x512x1024 on 2 idle cores: 30 ms vs 270 ms for argmax). Channels-last logits
    (what the channels-last CPU backend returns) have the classes innermost, where argmax is
    already a fast contiguous reduction (~45 ms), so they go to argmax directly. NaN logits
    are never selected by the plane loop, unlike argmax. More than 256 classes do not fit
    uint8 and are returned as int64 by argmax.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (N, C, H, W), got {tuple(logits.shape)}")
    if logits.shape[1] > 256:
        return logits.argmax(dim=1)
    channels_last = logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous()
    if logits.device.type != "cpu" or channels_last:
        # On GPUs argmax is one fused kernel already; the plane loop only pays off on CPU NCHW.
        return logits.argmax(dim=1).to(torch.uint8)
    logits = logits.contiguous()
    best = logits[:, 0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for index in range(1, logits.shape[1]):
        plane = logits[:, index]
        labels.masked_fill_(plane > best, index)
        torch.maximum(best, plane, out=best)
    return labels


def frame_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) labels -> (N, H, W) uint8 by nearest neighbour, on the labels' device.

    Same result as :func:`resize_labels` (PyTorch's ``nearest`` and OpenCV's ``INTER_NEAREST``
    both take source pixel ``floor(dst * in / out)``); on CPU OpenCV does it about 5x faster
    (512x1024 -> 1080x1920: 1.1 ms vs 6 ms on 2 cores).
    """
    labels = labels.to(torch.uint8)
    if tuple(labels.shape[-2:]) == tuple(size) or labels.device.type != "cpu":
        return resize_labels(labels, size)
    planes = [cv2.resize(plane.numpy(), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) for plane in labels]
    return torch.from_numpy(np.stack(planes))


def frame_scores(
    scores: torch.Tensor, size: tuple[int, int], heatmap_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(N, h, w) scores -> (N, H, W) ``heatmap_dtype`` by bilinear interpolation, on the scores' device.

    The bilinear formula of :func:`resize_scores` (half-pixel centres, no antialiasing); on
    CPU computed by OpenCV's ``INTER_LINEAR``, about 9x faster (512x1024 -> 1080x1920: 1.3 ms
    vs 12 ms), whose fixed-point weights (1/2048 steps) differ from PyTorch by at most
    ~5e-4 of the local score difference. The cast to ``heatmap_dtype`` follows the float32
    interpolation.
    """
    scores = scores.float()
    if tuple(scores.shape[-2:]) == tuple(size):
        resized = scores
    elif scores.device.type != "cpu":
        resized = resize_scores(scores, size)
    else:
        planes = [cv2.resize(plane.numpy(), (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for plane in scores]
        resized = torch.from_numpy(np.stack(planes))
    return resized if resized.dtype == heatmap_dtype else resized.to(heatmap_dtype)


def to_frame_size(
    labels: torch.Tensor,
    scores: torch.Tensor,
    size: tuple[int, int],
    heatmap_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network-size labels and scores -> frame-size uint8 labels and ``heatmap_dtype`` scores (:func:`frame_labels`,
    :func:`frame_scores`), on their device."""
    return frame_labels(labels, size), frame_scores(scores, size, heatmap_dtype)


class FrameTransfer:
    """Host <-> device copies of the frame path, with reused pinned buffers on CUDA.

    On CPU both directions are free: the upload wraps the numpy array (no copy) and the
    download returns views of the tensors. On CUDA:

    * :meth:`upload` copies the frame into a pinned host buffer (allocated once per frame
      shape) and starts an asynchronous host-to-device copy on the current (compute) stream;
      the resize, normalisation and network kernels queued next are ordered after it by the
      stream, and the CPU goes on queueing them while the copy runs. An event guards the
      pinned buffer: the next upload waits for the previous copy before overwriting it.
    * :meth:`start_download` records an event on the compute stream and queues the copy of
      that map on a separate copy stream, into a pinned buffer, behind the event: the copy of
      the label map runs while the compute stream resizes the score map queued after it.
      :meth:`finish_download` synchronises the copy stream once and returns fresh host
      arrays, so a caller keeping a result never sees it overwritten by the next frame.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._pinned_in: torch.Tensor | None = None
        self._upload_done: torch.cuda.Event | None = None
        self._copy_stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        self._pinned_out: dict[int, torch.Tensor] = {}
        self._pending: list[torch.Tensor] = []

    def upload(self, frame: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> (1, 3, H, W) uint8 on the device (same checks as :func:`frame_to_tensor`)."""
        if not self._cuda:
            return frame_to_tensor(frame, self.device)
        check_frame(frame)
        if self._pinned_in is None or tuple(self._pinned_in.shape) != frame.shape:
            self._pinned_in = torch.empty(frame.shape, dtype=torch.uint8, pin_memory=True)
            self._upload_done = torch.cuda.Event()
        else:
            self._upload_done.synchronize()  # the previous frame's copy may still read this buffer
        np.copyto(self._pinned_in.numpy(), frame, casting="no")
        tensor = self._pinned_in.to(self.device, non_blocking=True)
        self._upload_done.record()
        return tensor.permute(2, 0, 1).unsqueeze(0)

    def start_download(self, tensor: torch.Tensor) -> None:
        """Queue the copy of ``tensor`` to the host once the compute stream has produced it."""
        if not self._cuda:
            self._pending.append(tensor)
            return
        index = len(self._pending)
        buffer = self._pinned_out.get(index)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._pinned_out[index] = buffer
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        self._copy_stream.wait_event(ready)
        with torch.cuda.stream(self._copy_stream):
            buffer.copy_(tensor, non_blocking=True)
        # The tensor belongs to the compute stream's memory pool; without this the allocator
        # could hand its memory to the next kernel while the copy still reads it.
        tensor.record_stream(self._copy_stream)
        self._pending.append(buffer)

    def finish_download(self) -> list[np.ndarray]:
        """Host arrays of everything started since the last call, in order (one synchronisation)."""
        pending, self._pending = self._pending, []
        if not self._cuda:
            return [tensor.numpy() for tensor in pending]
        self._copy_stream.synchronize()
        return [buffer.numpy().copy() for buffer in pending]

    def download(self, *tensors: torch.Tensor) -> list[np.ndarray]:
        """:meth:`start_download` each tensor, then :meth:`finish_download`."""
        for tensor in tensors:
            self.start_download(tensor)
        return self.finish_download()
