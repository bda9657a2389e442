"""Device-side frame path on CPU: fast arg-max, frame-size maps, transfers, and the whole pipeline vs a reference."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.inference.preprocess import (
    FrameTransfer,
    check_frame,
    frame_to_tensor,
    labels_from_logits,
    resize_labels,
    resize_scores,
    to_frame_size,
)
from anomaly_seg_ros.models import build_model


def test_labels_from_logits_is_argmax_with_first_maximum_on_ties():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 12, 20, generator=generator)
    logits[0, 5, 3, 4] = logits[0, 2, 3, 4] = 100.0  # a tie: argmax takes the lower index
    logits[1, :, 0, 0] = 7.0  # all classes equal -> class 0
    labels = labels_from_logits(logits)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 12, 20)
    torch.testing.assert_close(labels, logits.argmax(dim=1).to(torch.uint8), rtol=0, atol=0)
    assert labels[0, 3, 4] == 2 and labels[1, 0, 0] == 0
    # A channels-last tensor (what the channels-last eager backend returns) gives the same labels.
    torch.testing.assert_close(labels_from_logits(logits.contiguous(memory_format=torch.channels_last)), labels)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        labels_from_logits(logits[0])


def test_frame_size_maps_match_the_pytorch_resize_functions():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 19, (2, 16, 32), generator=generator, dtype=torch.uint8)
    scores = torch.randn(2, 16, 32, generator=generator) * 10.0
    for size in ((40, 72), (9, 20)):  # up and down
        frame_labels, frame_scores = to_frame_size(labels, scores, size)
        assert frame_labels.dtype == torch.uint8 and frame_scores.dtype == torch.float32
        torch.testing.assert_close(frame_labels, resize_labels(labels, size), rtol=0, atol=0)
        # OpenCV's fixed-point bilinear weights: within 1e-3 of the local score difference (here <= ~80).
        torch.testing.assert_close(frame_scores, resize_scores(scores, size), rtol=0, atol=0.08)
        assert (frame_scores - resize_scores(scores, size)).abs().mean() < 5e-3
    half = to_frame_size(labels, scores, (40, 72), torch.float16)[1]
    assert half.dtype == torch.float16  # cast after the float32 resize: only rounding differs
    torch.testing.assert_close(half.float(), resize_scores(scores, (40, 72)), rtol=1e-2, atol=0.1)
    same = to_frame_size(labels, scores, (16, 32))
    assert torch.equal(same[0], labels) and torch.equal(same[1], scores)


def test_cpu_transfers_copy_nothing():
    frame = np.random.default_rng(2).integers(0, 256, (9, 14, 3), dtype=np.uint8)
    transfer = FrameTransfer("cpu")
    tensor = transfer.upload(frame)
    assert tensor.shape == (1, 3, 9, 14) and tensor.dtype == torch.uint8
    assert tensor.data_ptr() == frame.__array_interface__["data"][0]  # a view of the numpy frame
    torch.testing.assert_close(tensor, frame_to_tensor(frame))
    a, b = torch.arange(6).view(2, 3), torch.ones(4, dtype=torch.float16)
    transfer.start_download(a)
    transfer.start_download(b)
    out_a, out_b = transfer.finish_download()
    np.testing.assert_array_equal(out_a, a.numpy())
    np.testing.assert_array_equal(out_b, b.numpy())
    assert transfer.finish_download() == []  # nothing pending after a finish
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        transfer.upload(frame[..., 0])
    with pytest.raises(ValueError, match="must not be empty"):
        check_frame(np.zeros((0, 4, 3), np.uint8))


@pytest.mark.parametrize("heatmap_dtype", ["float32", "float16"])
def test_pipeline_maps_equal_an_independent_reference(heatmap_dtype):
    torch.manual_seed(0)
    model = build_model("erfnet", num_classes=19).eval()
    config = load_config(
        None,
        [
            "model.input_size=[32, 64]",
            "scorer.name=maxlogit",
            "alerts.threshold=100",
            f"model.heatmap_dtype={heatmap_dtype}",
        ],
    )
    perception = Perception(model, config)
    frame = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    result = perception(frame, render_color=False, render_overlay=False)
    assert set(result.timings_ms) >= {"upload", "preprocess", "forward", "score", "postprocess", "download"}

    # Reference: the network input built the documented way (uint8 antialiased bilinear
    # shrink, then /255) fed to the plain contiguous model, torch's arg-max, max-logit and
    # bilinear upsampling, OpenCV's nearest for the labels (channels-last backend, arg-max
    # shortcuts, OpenCV score resize and the transfer code are all bypassed).
    with torch.inference_mode():
        images = torch.from_numpy(frame).permute(2, 0, 1)[None]
        small = F.interpolate(images, size=(32, 64), mode="bilinear", antialias=True)
        logits = model(small.float() / 255.0)
        labels = logits.argmax(1)[0].to(torch.uint8).numpy()
        scores = -logits.amax(1, keepdim=True)
        expected_scores = F.interpolate(scores, size=(48, 80), mode="bilinear", align_corners=False)[0, 0].numpy()
    expected_labels = cv2.resize(labels, (80, 48), interpolation=cv2.INTER_NEAREST)
    assert result.anomaly.dtype == np.float32 and result.labels.dtype == np.uint8
    np.testing.assert_allclose(result.anomaly, expected_scores, rtol=0, atol=2e-3 * np.ptp(expected_scores))
    # Labels may differ only where two classes are within float noise of each other.
    near_tie = np.sort(logits[0].numpy(), axis=0)
    near_tie = (near_tie[-1] - near_tie[-2]) < 1e-4
    differ = result.labels != expected_labels
    near_tie_frame = cv2.resize(near_tie.astype(np.uint8), (80, 48), interpolation=cv2.INTER_NEAREST)
    assert not (differ & (near_tie_frame == 0)).any()
