"""The far field (core/far_field.py): crop geometry, fusion, and what it changes in the pipeline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.far_field import CropBox, far_field_box, fuse_far_field
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.core.visualization import FAR_FIELD_COLOUR

from conftest import RedDetector, scene_perception


@pytest.mark.parametrize(
    ("frame", "zoom", "center", "expected"),
    [
        # 512x1024 at zoom 2: a 256x512 crop, rows 128..384 and columns 256..768 when centred
        ((512, 1024), 2.0, (0.5, 0.5), CropBox(128, 384, 256, 768)),
        # zoom 3: 170.67 x 341.33 rounds to 171 x 341; the demo camera's principal point
        # (523.264, 249.856): top = round(249.856 - 85.5) = 164, left = round(523.264 - 170.5) = 353
        ((512, 1024), 3.0, (0.511, 0.488), CropBox(164, 335, 353, 694)),
        # a centre near a corner: the crop is shifted inside the frame, not shrunk
        ((512, 1024), 2.0, (0.95, 0.02), CropBox(0, 256, 512, 1024)),
        ((512, 1024), 4.0, (0.0, 1.0), CropBox(384, 512, 0, 256)),
        # odd sizes: 97 / 2.5 = 38.8 -> 39 rows, 131 / 2.5 = 52.4 -> 52 columns
        ((97, 131), 2.5, (0.5, 0.5), CropBox(29, 68, 40, 92)),
    ],
)
def test_crop_box_is_the_frame_over_zoom_centred_and_kept_inside(frame, zoom, center, expected):
    box = far_field_box(frame, zoom, center)
    assert box == expected
    assert box.size == (expected.bottom - expected.top, expected.right - expected.left)


def test_crop_box_needs_a_zoom_above_one():
    with pytest.raises(ValueError, match="zoom must be > 1"):
        far_field_box((512, 1024), 1.0, (0.5, 0.5))


def test_fusion_is_the_maximum_inside_the_crop_and_nothing_outside():
    scores = torch.arange(4 * 6, dtype=torch.float32).view(1, 4, 6)
    before = scores.clone()
    far = torch.tensor([[[100.0, 0.0, 9.0], [-1.0, 50.0, 14.5]]])  # rows 1..3, columns 2..5
    fused = fuse_far_field(scores, far, CropBox(1, 3, 2, 5))
    expected = before.clone()
    expected[0, 1, 2:5] = torch.tensor([100.0, 9.0, 10.0])  # max(8, 100), max(9, 0), max(10, 9)
    expected[0, 2, 2:5] = torch.tensor([14.0, 50.0, 16.0])  # max(14, -1), max(15, 50), max(16, 14.5)
    torch.testing.assert_close(fused, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"crop's size \(2, 3\)"):
        fuse_far_field(scores, far[..., :2], CropBox(1, 3, 2, 5))


def _red_dot_frame() -> np.ndarray:
    """128x256 grey frame with a 2x2 red obstacle at rows 61-62, columns 129-130."""
    frame = np.full((128, 256, 3), 128, dtype=np.uint8)
    frame[61:63, 129:131] = (255, 0, 0)
    return frame


def _red_perception(*overrides: str) -> Perception:
    """conftest's scene pipeline (64x128 network, maxlogit, threshold -5, 2-of-3 persistence)
    around RedDetector, on 0..1 inputs, alerting from 4 pixels."""
    return scene_perception(
        "model.mean=[0, 0, 0]", "model.std=[1, 1, 1]", "alerts.min_area_px=4", *overrides, model=RedDetector()
    )


def test_a_small_far_obstacle_missed_at_network_size_is_alerted_by_the_far_field():
    frame = _red_dot_frame()
    # Without the far field the 2x2 obstacle is halved to the network's 64x128: every network
    # pixel it touches is a quarter red (antialiased 2x shrink, weights 1/8 3/8 3/8 1/8 per
    # axis, the obstacle offset by one pixel): R - G = (160 - 96) / 255 after uint8 rounding,
    # so its score is -10 (1 - 64/255) = -7.49, under the threshold -5.
    plain = _red_perception()
    results = [plain(frame) for _ in range(3)]
    assert results[-1].anomaly.max() == pytest.approx(-10 * (1 - 64 / 255), abs=1e-4)
    assert all(r.alerts == [] for r in results)
    assert plain.model.calls == 3

    # With zoom 2 centred on the frame the crop (rows 32..96, columns 64..192) is the network's
    # input size: the network sees the obstacle at native resolution, pure red, score 0.
    zoomed = _red_perception("far_field.zoom=2")
    first, second = zoomed(frame), zoomed(frame)
    assert zoomed.model.calls == 4  # two forward passes per frame
    np.testing.assert_allclose(second.anomaly[61:63, 129:131], 0.0, atol=1e-4)
    assert first.alerts == []  # persistence 2 of 3: alerted on the second frame
    (alert,) = second.alerts
    assert tuple(alert.component.bbox) == (129, 61, 2, 2) and alert.component.in_drivable_area

    # Everything else is the plain pipeline's: the labels everywhere, the scores outside the
    # crop, and inside it the maximum of the plain scores and the crop's own (computed here
    # directly: the crop needs no resize, maxlogit = -max over classes).
    np.testing.assert_array_equal(second.labels, results[-1].labels)
    outside = np.ones(frame.shape[:2], dtype=bool)
    outside[32:96, 64:192] = False
    np.testing.assert_array_equal(second.anomaly[outside], results[-1].anomaly[outside])
    crop = torch.from_numpy(frame[32:96, 64:192]).permute(2, 0, 1)[None].float() / 255.0
    direct = -RedDetector()(crop).max(dim=1).values[0].numpy()
    np.testing.assert_allclose(
        second.anomaly[32:96, 64:192], np.maximum(results[-1].anomaly[32:96, 64:192], direct), atol=1e-5
    )


def test_far_field_with_a_resized_crop_matches_an_independent_torch_computation():
    """Energy, zoom 3: the crop (43x85 of a 128x256 frame) is enlarged to the network's 64x128
    and its scores shrunk back; the reference uses float torch ops only. The network is two
    random convolutions: its scores vary from pixel to pixel (a randomly initialised ERFNet's
    are nearly flat, which would let a misplaced crop pass)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.Conv2d(16, 19, 3, padding=1)).eval()
    with torch.no_grad():
        model[2].weight.mul_(30.0)  # logits of a few units, so energy varies by several
    frame = np.random.default_rng(1).integers(0, 256, (128, 256, 3), dtype=np.uint8)
    settings = ["model.input_size=[64, 128]", "alerts.threshold=0", "model.backend=eager"]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    settings += [f"model.mean=[{', '.join(map(str, mean))}]", f"model.std=[{', '.join(map(str, std))}]"]
    plain = Perception(model, load_config(None, settings)).process(frame, render_color=False, render_overlay=False)
    zoomed_pipeline = Perception(
        model, load_config(None, [*settings, "far_field.zoom=3", "far_field.center=[0.3, 0.6]"])
    )
    zoomed = zoomed_pipeline.process(frame, render_color=False, render_overlay=False)

    top, left = round(0.6 * 128 - 43 / 2), round(0.3 * 256 - 85 / 2)  # 55, 34
    assert far_field_box((128, 256), 3.0, (0.3, 0.6)) == CropBox(top, top + 43, left, left + 85)
    crop = torch.from_numpy(frame[top : top + 43, left : left + 85]).permute(2, 0, 1)[None].double()
    # bilinear enlargement, rounded to uint8 as the pipeline resizes uint8 images
    network_input = F.interpolate(crop, size=(64, 128), mode="bilinear", align_corners=False).round() / 255.0
    network_input = (network_input - torch.tensor(mean).view(1, 3, 1, 1).double()) / torch.tensor(std).view(
        1, 3, 1, 1
    ).double()
    with torch.no_grad():
        logits = model(network_input.float()).double()
    energy = -torch.logsumexp(logits, dim=1, keepdim=True)
    far = F.interpolate(energy, size=(43, 85), mode="bilinear", align_corners=False)[0, 0].numpy()
    expected = plain.anomaly.astype(np.float64).copy()
    region = expected[top : top + 43, left : left + 85]
    expected[top : top + 43, left : left + 85] = np.maximum(region, far)
    # tolerance: PyTorch's uint8 resize and OpenCV's score resize both use fixed-point weights
    # (measured: at most 0.07 here, where a crop one pixel off is wrong by up to 3)
    np.testing.assert_allclose(zoomed.anomaly, expected, atol=0.15)
    assert np.abs(zoomed.anomaly - plain.anomaly).max() > 0.5  # the far field did change something
    np.testing.assert_array_equal(zoomed.labels, plain.labels)


def test_far_field_switches_at_run_time_without_reloading_the_model():
    perception = _red_perception()
    backend = perception.backend
    frame = _red_dot_frame()
    perception(frame)
    perception.update({"far_field": {"zoom": 2.0, "center": [0.5, 0.5]}})
    assert perception.backend is backend and perception.config.far_field.zoom == 2.0
    assert perception(frame).anomaly[61:63, 129:131].max() > -1e-4
    assert "far_field" in perception(frame).timings_ms
    with pytest.raises(ConfigError, match=r"far_field.zoom: expected a number in \[1, 16\]"):
        perception.update({"far_field": {"zoom": 0.5}})
    assert perception.config.far_field.zoom == 2.0  # a rejected update changes nothing
    perception.update({"far_field": {"zoom": 1.0}})
    assert perception(frame).anomaly.max() < -7.0 and "far_field" not in perception(frame).timings_ms


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("far_field.zoom=0.9", r"far_field.zoom: expected a number in \[1, 16\] \(1 = off\), got 0.9"),
        ("far_field.zoom=off", "far_field.zoom: expected a finite number"),
        ("far_field.center=[1.2, 0.5]", r"far_field.center: expected \[x, y\] with both coordinates in 0..1"),
        ("far_field.center=[0.5]", "far_field.center: expected a list of 2 items"),
        ("far_field.crop=[0, 0, 1, 1]", "unknown config key far_field.crop"),
    ],
)
def test_bad_far_field_settings_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_the_overlay_outlines_the_far_field_crop_unless_told_not_to():
    frame = _red_dot_frame()
    plain = _red_perception()(frame).overlay
    outlined = _red_perception("far_field.zoom=2")(frame).overlay
    hidden = _red_perception("far_field.zoom=2", "render.draw_far_field=false")(frame).overlay
    # the crop is rows 32..96 and columns 64..192: its border, one pixel wide, in grey
    border = np.zeros(frame.shape[:2], dtype=bool)
    border[[32, 95], 64:192] = True
    border[32:96, [64, 191]] = True
    assert (outlined[border] == FAR_FIELD_COLOUR).all()
    assert not (plain[border] == FAR_FIELD_COLOUR).all(axis=1).any()
    np.testing.assert_array_equal(outlined[~border], hidden[~border])
    np.testing.assert_array_equal(hidden[border], plain[border])
