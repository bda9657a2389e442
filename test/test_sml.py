"""Standardized Max Logits: statistics on a hand-made set, the formula, boundary suppression, smoothing."""

import math

import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.scoring import get_scorer
from anomaly_seg_ros.scoring.sml import (
    MaxLogitStatistics,
    boundary_suppression,
    class_boundaries,
    dilated_smoothing,
)


class _FixedLogits(torch.nn.Module):
    """Returns the logits it is given as input channels 0..C-1 (the 'image' is the logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward_with_features(self, x):
        from anomaly_seg_ros.models.outputs import SegmentationOutput

        return SegmentationOutput(logits=x, features=x)


def _hand_batches():
    # 3 classes, two "images" of 1x4 pixels; max logits and predicted classes chosen by hand
    a = torch.tensor([[5.0, 1.0, 7.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]).view(1, 3, 1, 4)
    b = torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0, 4.0, 8.0, 0.0], [0.0, 0.0, 0.0, -1.0]]).view(1, 3, 1, 4)
    # predicted: a -> 0 (5), 1 (3), 0 (7), 2 (2); b -> 0 (9), 1 (4), 1 (8), 2 (-1)... max(0,0,-1)=0 -> class 0
    return [a, b]


def test_statistics_are_per_predicted_class_mean_and_std():
    scorer = get_scorer("sml")
    scorer.fit(_FixedLogits(), _hand_batches())
    # class 0: max logits 5, 7, 9 and the last pixel of b (all logits <= 0, argmax = class 0 with value 0)
    # class 1: 3, 4, 8; class 2: 2
    groups = {0: [5.0, 7.0, 9.0, 0.0], 1: [3.0, 4.0, 8.0], 2: [2.0]}
    for c, values in groups.items():
        assert scorer.class_mean[c].item() == pytest.approx(np.mean(values))
        assert scorer.class_std[c].item() == pytest.approx(max(np.std(values), 1e-6))


def test_unseen_class_gets_pooled_statistics():
    stats = MaxLogitStatistics(4)
    stats.update(torch.tensor([[1.0, 3.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).view(1, 4, 1, 2))
    mean, std = stats.result()
    assert mean[0].item() == pytest.approx(2.0) and std[0].item() == pytest.approx(1.0)
    assert mean[3].item() == pytest.approx(2.0) and std[3].item() == pytest.approx(1.0)


def test_score_is_negative_standardized_max_logit_without_post_processing():
    scorer = get_scorer("sml", boundary_suppression=False, dilated_smoothing=False)
    scorer.load_state_dict({"class_mean": torch.tensor([1.0, 2.0]), "class_std": torch.tensor([2.0, 0.5])})
    logits = torch.tensor([[3.0, 0.0, 1.0], [0.0, 4.0, 0.5]], dtype=torch.float64).view(1, 2, 1, 3)
    expected = [-(3.0 - 1.0) / 2.0, -(4.0 - 2.0) / 0.5, -(1.0 - 1.0) / 2.0]
    np.testing.assert_allclose(scorer(logits)[0, 0].numpy(), expected)


def test_boundaries_are_where_dilation_and_erosion_differ():
    labels = torch.zeros(1, 1, 3, 6)
    labels[..., 3:] = 1
    expected = torch.zeros(1, 1, 3, 6)
    expected[..., 2:4] = 1  # each side of the class edge
    assert torch.equal(class_boundaries(labels), expected)


def test_boundary_suppression_replaces_boundary_by_mean_of_non_boundary_neighbours():
    labels = torch.zeros(1, 1, 4, 8)
    labels[..., 4:] = 1
    scores = torch.arange(8, dtype=torch.float64).expand(1, 1, 4, 8).clone()
    out = boundary_suppression(scores, labels, width=0, iterations=1)
    # boundary columns 3 and 4; their only non-boundary 3x3 neighbours are columns 2 and 5
    expected = scores.clone()
    expected[..., 3] = 2.0
    expected[..., 4] = 5.0
    torch.testing.assert_close(out, expected)
    # no boundary: nothing changes
    flat = boundary_suppression(scores, torch.zeros_like(labels), width=4, iterations=4)
    torch.testing.assert_close(flat, scores)


def test_wider_suppression_reaches_further_and_keeps_interior():
    labels = torch.zeros(1, 1, 3, 20)
    labels[..., 10:] = 1
    scores = torch.zeros(1, 1, 3, 20, dtype=torch.float64)
    scores[..., 9:11] = 10.0  # a spike on the class edge
    out = boundary_suppression(scores, labels, width=4, iterations=4)
    assert out[..., 9:11].max() < 10.0  # the edge spike is suppressed
    torch.testing.assert_close(out[..., :4], scores[..., :4])  # far from the edge: untouched


def test_dilated_smoothing_of_an_impulse_is_the_dilated_gaussian():
    impulse = torch.zeros(1, 1, 41, 41, dtype=torch.float64)
    impulse[..., 20, 20] = 1.0
    out = dilated_smoothing(impulse, kernel_size=7, dilation=6)
    for a in range(-3, 4):
        for b in range(-3, 4):
            weight = math.exp(-(a * a + b * b) / 2) / sum(
                math.exp(-(i * i + j * j) / 2) for i in range(-3, 4) for j in range(-3, 4)
            )
            assert out[0, 0, 20 + 6 * a, 20 + 6 * b].item() == pytest.approx(weight)
    assert out.sum().item() == pytest.approx(1.0)
    constant = torch.full((1, 1, 9, 9), 2.5, dtype=torch.float64)
    torch.testing.assert_close(dilated_smoothing(constant), constant)


def test_unfitted_sml_names_the_fit_command():
    with pytest.raises(ConfigError, match="anomaly-seg fit-scorer sml --checkpoint CKPT --data"):
        get_scorer("sml")(torch.zeros(1, 3, 4, 4))


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of"):
        get_scorer("sml", boundary_width=3, boundary_iteration=2)
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        get_scorer("sml", kernel_size=4)
    with pytest.raises(ConfigError, match="fitted for 2 classes"):
        scorer = get_scorer("sml")
        scorer.load_state_dict({"class_mean": torch.zeros(2), "class_std": torch.ones(2)})
        scorer(torch.zeros(1, 3, 4, 4))
