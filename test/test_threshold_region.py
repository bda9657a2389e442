"""Alert thresholds are calibrated inside the alert region the deployment thresholds, nowhere else."""

import numpy as np
import pytest
import torch
from torch import nn

from anomaly_seg_ros.core.config import AlertConfig
from anomaly_seg_ros.training.config import TrainConfig
from anomaly_seg_ros.training.loop import calibrate_scorers

HEIGHT, WIDTH = 9, 16


class FixedLogits(nn.Module):
    """A 'network' that returns the same hand-made logits for every input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.num_classes = logits.shape[1]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(inputs.shape[0], -1, -1, -1)


def _hand_made_frame():
    """Predicted road (class 0) in columns 4..11, sidewalk (1) elsewhere; maxlogit score = a chosen value."""
    rng = np.random.default_rng(0)
    predicted = np.ones((HEIGHT, WIDTH), dtype=np.int64)
    predicted[:, 4:12] = 0
    score = 100.0 + rng.random((HEIGHT, WIDTH))  # outside the ROI: far above everything inside
    # Inside the ROI (rows 0..4 by the polygon, columns 4..11 by the road hull): 1..40, shuffled.
    score[0:5, 4:12] = rng.permutation(np.arange(1.0, 41.0)).reshape(5, 8)
    logits = np.full((1, 19, HEIGHT, WIDTH), -500.0)
    for y in range(HEIGHT):
        for x in range(WIDTH):
            logits[0, predicted[y, x], y, x] = -score[y, x]  # maxlogit score = -max logit
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.int64)  # road everywhere, as the old rule counted it
    labels[8] = 255  # the hood: ignore
    labels[2, 6] = 255  # one unlabelled pixel inside the ROI does not count
    return torch.tensor(logits, dtype=torch.float32), torch.from_numpy(labels), score


def test_threshold_is_the_quantile_of_the_in_distribution_pixels_inside_the_roi_only():
    logits, labels, score = _hand_made_frame()
    loader = [(torch.zeros(1, 3, HEIGHT, WIDTH, dtype=torch.uint8), labels[None])]
    config = TrainConfig(data="unused", input_size=(HEIGHT, WIDTH), calibration_road_fpr=0.1)
    # the demo's shape of region: predicted drivable area and a polygon that cuts off the bottom
    alerts = AlertConfig(roi="drivable_and_polygon", roi_polygon=((0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (0.0, 0.5)))
    calibration = calibrate_scorers(FixedLogits(logits), loader, config, alerts=alerts)

    inside = np.zeros((HEIGHT, WIDTH), dtype=bool)
    inside[0:5, 4:12] = True
    inside[2, 6] = False
    expected = np.quantile(score[inside], 0.9)  # 39 values of 1..40 without the ignored one
    entry = calibration["maxlogit"]
    assert entry["threshold"] == pytest.approx(expected, abs=1e-4)
    assert entry["threshold"] < 41  # the old all-road rule gives a threshold above 100
    assert entry["fpr"] == 0.1
    assert entry["region"]["roi"] == "drivable_and_polygon" and entry["region"]["pixel_count"] == 39
    assert entry["region"]["roi_polygon"] == [[0.0, 0.0], [1.0, 0.0], [1.0, 0.5], [0.0, 0.5]]

    # without a polygon the whole road hull counts, hood row excluded as ignore
    whole = calibrate_scorers(FixedLogits(logits), loader, config, alerts=AlertConfig(roi="drivable"))
    hull = np.zeros((HEIGHT, WIDTH), dtype=bool)
    hull[0:8, 4:12] = True
    hull[2, 6] = False
    assert whole["maxlogit"]["threshold"] == pytest.approx(np.quantile(score[hull], 0.9), abs=1e-4)
