"""Perception core: shapes, dtypes, resizing, alerts with persistence, run-time changes."""

import numpy as np
import pytest
import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.inference.preprocess import normalize_images
from anomaly_seg_ros.models import build_model, save_checkpoint

from conftest import scene_perception as _perception


def _frame(height: int = 96, width: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_outputs_have_the_frame_size_and_the_published_dtypes():
    result = _perception()(_frame(96, 256))
    assert result.labels.shape == (96, 256) and result.labels.dtype == np.uint8
    assert result.anomaly.shape == (96, 256) and result.anomaly.dtype == np.float32
    assert result.color.shape == (96, 256, 3) and result.color.dtype == np.uint8
    assert result.overlay.shape == (96, 256, 3) and result.overlay.dtype == np.uint8
    assert set(result.timings_ms) >= {"preprocess", "forward", "score", "postprocess", "alerts", "render", "total"}
    assert result.scorer == "maxlogit" and result.threshold == -5.0


def test_label_and_score_maps_are_resized_from_the_network_output():
    result = _perception()(_frame(128, 256))  # exactly 2x the network input
    assert (result.labels[:60] == 10).all() and (result.labels[68:80, :] == 0).all()
    np.testing.assert_allclose(result.anomaly[:60], -10.0)
    # square rows 40..56, cols 56..72 at network size -> 80..112, 112..144 in the frame
    np.testing.assert_allclose(result.anomaly[84:108, 116:140], 0.0, atol=1e-6)
    assert (result.color[:60] == (70, 130, 180)).all()  # Cityscapes sky colour


def test_alert_is_raised_after_k_frames_with_a_stable_track_and_frame_coordinates():
    perception = _perception()
    frame = _frame(128, 256)
    assert perception(frame).alerts == []  # first sighting: not yet persistent
    second = perception(frame).alerts
    assert len(second) == 1
    alert = second[0]
    x, y, w, h = alert.component.bbox
    assert (x, y) == pytest.approx((112, 80), abs=2) and (w, h) == pytest.approx((32, 32), abs=3)
    assert alert.component.in_drivable_area
    assert alert.frames_seen == 2
    third = perception(frame).alerts
    assert [a.track_id for a in third] == [alert.track_id]
    perception.reset()
    assert perception(frame).alerts == []  # a new sequence starts over


def test_views_can_be_skipped():
    result = _perception()(_frame(), render_color=False, render_overlay=False)
    assert result.color is None and result.overlay is None


def test_runtime_update_applies_and_rejects_without_side_effects():
    perception = _perception()
    perception.update({"alerts": {"threshold": 1.0}})
    assert perception.threshold == 1.0
    frame = _frame(128, 256)
    assert perception(frame).alerts == [] and perception(frame).alerts == []  # 0 is below 1
    perception.update({"scorer": {"name": "msp"}, "alerts": {"threshold": -0.5}})
    assert perception.scorer.name == "msp"
    with pytest.raises(ConfigError, match="persistence_k"):
        perception.update({"alerts": {"persistence_k": 0}})
    assert perception.config.alerts.persistence_k == 2 and perception.threshold == -0.5
    with pytest.raises(ConfigError, match="model: cannot change at run time"):
        perception.update({"model": {"device": "cpu"}})


def test_preprocessing_matches_an_independent_reference():
    frame = _frame(64, 128)
    config = load_config(None, ["model.input_size=[64, 128]", "alerts.threshold=0"])
    perception = Perception(nn.Identity(), config)
    expected = torch.from_numpy(frame).permute(2, 0, 1)[None].double() / 255.0
    got = perception.infer(frame)[0].logits
    torch.testing.assert_close(got.double(), expected)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.5, 2.0)
    normed = normalize_images(torch.from_numpy(frame).permute(2, 0, 1)[None], (64, 128), mean, std)
    reference = (expected - torch.tensor(mean).view(1, 3, 1, 1).double()) / torch.tensor(std).view(1, 3, 1, 1).double()
    torch.testing.assert_close(normed.double(), reference, rtol=1e-6, atol=1e-6)


def test_threshold_comes_from_the_checkpoint_calibration(tmp_path):
    model = build_model("erfnet", num_classes=19)
    path = tmp_path / "m.safetensors"
    calibration = {"energy": {"threshold": -3.5, "range": [-9.0, -2.0]}}
    save_checkpoint(model, path, metadata={"input_size": [64, 128], "calibration": calibration})
    perception = Perception.from_config(load_config(None, [f"model.weights={path}"]))
    assert perception.threshold == -3.5 and perception.heatmap_range == (-9.0, -2.0)
    assert perception.input_size == (64, 128)
    result = perception(_frame(64, 128))
    assert result.labels.max() < 19
    with pytest.raises(ConfigError, match="alerts.threshold: no threshold set.*'msp'"):
        perception.update({"scorer": {"name": "msp"}})


def test_missing_weights_and_bad_frames_are_clear_errors():
    with pytest.raises(ConfigError, match="model.weights"):
        Perception.from_config(load_config(None, []))
    perception = _perception()
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        perception(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        perception(np.zeros((10, 10, 3), dtype=np.float32))
