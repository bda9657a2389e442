"""Calibration: ECE against a hand-worked example, temperature fitting recovers a known T,
the bounded-memory pixel sample, ``anomaly-seg calibrate`` and the perception core's use of T."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import AlertConfig, load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.data.layout import generate_datasets
from anomaly_seg_ros.inference.preprocess import normalize_images
from anomaly_seg_ros.metrics.calibration import (
    CalibrationHistogram,
    PixelReservoir,
    expected_calibration_error,
    fit_temperature,
)
from anomaly_seg_ros.models import build_model, load_model, read_metadata, save_checkpoint
from anomaly_seg_ros.scoring.softmax import MaxSoftmax
from anomaly_seg_ros.tools import cli
from anomaly_seg_ros.training import SegmentationSamples
from anomaly_seg_ros.training.loop import calibration_region

# Four pixels, two classes (float64 so that 0.8 sits exactly on the bin edge 4/5):
#   conf 0.90 correct -> bin (0.8, 1.0]   |1 - 0.9|                  weight 1/4
#   conf 0.80 wrong   -> bin (0.6, 0.8]   |1/2 - (0.8 + 0.65)/2|     weight 2/4
#   conf 0.65 correct -> bin (0.6, 0.8]
#   conf 0.55 correct -> bin (0.4, 0.6]   |1 - 0.55|                 weight 1/4
# ECE = 0.1/4 + 0.225/2 + 0.45/4 = 0.25
PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.35, 0.65], [0.55, 0.45]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 0])


def test_ece_matches_the_hand_worked_example_in_every_layout():
    assert expected_calibration_error(PROBS, LABELS, n_bins=5) == pytest.approx(0.25)
    # Log-probabilities are logits of the same distribution.
    assert expected_calibration_error(PROBS.log(), LABELS, n_bins=5) == pytest.approx(0.25)
    # (N, C, H, W) with an ignored pixel whose confident miss would otherwise count.
    probs = torch.cat([PROBS, torch.tensor([[0.99, 0.01]], dtype=torch.float64)]).T.reshape(1, 2, 1, 5)
    labels = torch.tensor([[[0, 1, 1, 0, 255]]])
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.25)
    labels[0, 0, 4] = 1
    assert expected_calibration_error(probs, labels, n_bins=5) > 0.25
    # One bin: |accuracy - mean confidence| = |3/4 - 0.725|.
    assert expected_calibration_error(PROBS, LABELS, n_bins=1) == pytest.approx(abs(0.75 - 0.725))


def test_streaming_histogram_equals_the_one_shot_ece():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=generator) * 3
    labels = torch.randint(0, 4, (2, 8, 8), generator=generator)
    labels[0, :2] = 255
    histogram = CalibrationHistogram(10)
    histogram.update(logits[:1], labels[:1])
    histogram.update(logits[1:], labels[1:])
    assert histogram.value() == pytest.approx(expected_calibration_error(logits, labels, n_bins=10))
    assert histogram.count.sum() == (labels != 255).sum().item()
    assert math.isnan(CalibrationHistogram().value())


def _sampled(temperature: float, n: int = 10000, classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator, dtype=torch.float64) * 3.0
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator)[:, 0]
    return logits, labels


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_z - scaled[np.arange(len(labels)), labels]))


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_fit_temperature_recovers_the_temperature_labels_were_sampled_at(true_temperature):
    logits, labels = _sampled(true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    # The fit is the NLL minimum: no temperature on a fine grid (numpy NLL) does better.
    grid = np.linspace(0.25, 4.0, 376)
    nll = [_nll(logits.numpy(), labels.numpy(), t) for t in grid]
    assert abs(fitted - grid[int(np.argmin(nll))]) <= grid[1] - grid[0]
    assert _nll(logits.numpy(), labels.numpy(), fitted) <= min(nll) + 1e-9
    # Calibrated probabilities are better calibrated than the raw ones.
    assert expected_calibration_error(logits / fitted, labels) < expected_calibration_error(logits, labels)


def test_fit_temperature_on_images_leaves_out_ignored_pixels():
    logits, labels = _sampled(1.5, n=2 * 16 * 16, classes=3, seed=1)
    images = logits.reshape(2, 16, 16, 3).permute(0, 3, 1, 2)
    image_labels = labels.reshape(2, 16, 16).clone()
    image_labels[:, :4] = 255
    keep = image_labels.reshape(-1) != 255
    assert fit_temperature(images, image_labels) == pytest.approx(fit_temperature(logits[keep], labels[keep]), rel=1e-6)
    with pytest.raises(ValueError, match="at least one labelled pixel"):
        fit_temperature(images, torch.full_like(image_labels, 255))


def test_pixel_reservoir_is_a_bounded_uniform_sample_across_batches():
    reservoir = PixelReservoir(4000, seed=0)
    total = 0
    for batch in range(4):
        # channel 0 carries each pixel's global id so that kept pixels can be traced back
        ids = torch.arange(10_000, dtype=torch.float32).reshape(1, 1, 100, 100) + batch * 10_000
        logits = torch.cat([ids, -ids], dim=1)
        labels = (ids[:, 0] % 2).long()
        labels[:, :10] = 255  # 1000 ignored pixels per batch
        reservoir.add(logits, labels)
        total += 9000
    assert reservoir.seen == total and reservoir.logits.shape == (4000, 2) and reservoir.labels.shape == (4000,)
    ids = reservoir.logits[:, 0].long()
    assert len(set(ids.tolist())) == 4000  # without replacement
    assert torch.equal(reservoir.labels, ids % 2)  # every kept pixel keeps its own label
    assert torch.equal(reservoir.logits[:, 1], -reservoir.logits[:, 0])
    assert ((ids % 10_000) >= 1000).all()  # ignored rows (the first 10 of 100) never kept
    share = torch.bincount(ids // 10_000, minlength=4).double() / 4000
    # Uniform over all batches: each holds 1/4 of the pixels (binomial sd ~ 0.007).
    torch.testing.assert_close(share, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03, rtol=0)
    everything = PixelReservoir(10**6)
    everything.add(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    assert everything.labels.numel() == 16


@pytest.fixture(scope="module")
def overconfident_checkpoint(tmp_path_factory):
    """A 19-class ERFNet whose logits are scaled up (overconfident), with made-up thresholds."""
    root = tmp_path_factory.mktemp("calibrate")
    data = generate_datasets(root, num_train=0, num_val=2, num_anomaly=0, height=32, width=64, seed=2)
    torch.manual_seed(0)
    model = build_model("erfnet", num_classes=19).eval()
    with torch.no_grad():
        model.decoder.output_conv.weight.mul_(20.0)
    calibration = {"msp": {"threshold": 123.0, "range": [0.0, 1.0], "road_fpr": 0.05}}
    path = save_checkpoint(
        model,
        root / "model.safetensors",
        metadata={"input_size": [32, 64], "epoch": 7, "metrics": {"val_miou": 0.5}, "calibration": calibration},
    )
    return path, data["cityscapes_root"]


def test_calibrate_command_stores_the_fitted_temperature_and_keeps_the_rest(overconfident_checkpoint, tmp_path, capsys):
    checkpoint, data = overconfident_checkpoint
    out = tmp_path / "calibrated.safetensors"
    torch.set_num_threads(2)
    assert cli.main(["calibrate", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ECE" in printed and "temperature 1.0000 ->" in printed

    before, after = read_metadata(checkpoint), read_metadata(out)
    model, _ = load_model(out)
    original, _ = load_model(checkpoint)
    pairs = zip(model.state_dict().values(), original.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    for key in ("epoch", "metrics", "input_size", "class_names", "mean", "std"):
        assert after[key] == before[key]

    # Independently: every labelled validation pixel through the network, then the fit.
    samples = SegmentationSamples(data, "val", (32, 64))
    logits, labels = [], []
    with torch.inference_mode():
        for index in range(len(samples)):
            image, label = samples[index]
            logits.append(model(normalize_images(image[None], (32, 64), after["mean"], after["std"])))
            labels.append(label[None])
    logits, labels = torch.cat(logits), torch.cat(labels)
    temperature = fit_temperature(logits, labels)
    assert temperature > 1.5  # the scaled-up logits are overconfident
    assert after["temperature"] == pytest.approx(temperature, rel=1e-4)
    figures = after["temperature_calibration"]
    assert figures["pixels"] == int((labels != 255).sum()) and figures["nll_after"] <= figures["nll_before"]
    assert figures["ece_after"] < figures["ece_before"]

    # The msp alert threshold is measured again at the new temperature, at the same FPR, inside the
    # default perception config's alert region (the checkpoint records none: an older checkpoint).
    region = calibration_region(labels, logits.argmax(dim=1), AlertConfig())
    region_scores = MaxSoftmax.score(logits, temperature=after["temperature"])[region].numpy()
    expected = float(np.quantile(region_scores, 1.0 - 0.05))
    assert after["calibration"]["msp"]["threshold"] == pytest.approx(expected, abs=1e-5)
    assert after["calibration"]["msp"]["fpr"] == 0.05
    assert after["calibration"]["msp"]["region"]["config"] == "default perception config"

    # --config names the deployment: its region is used and recorded
    demo = tmp_path / "demo.yaml"
    demo.write_text("alerts:\n  roi: polygon\n  roi_polygon: [[0, 0], [1, 0], [1, 0.5], [0, 0.5]]\n")
    again = tmp_path / "again.safetensors"
    argv = ["calibrate", "--checkpoint", str(out), "--data", str(data), "--output", str(again), "--config", str(demo)]
    assert cli.main(argv) == 0
    recorded = read_metadata(again)["calibration"]["msp"]
    assert recorded["region"]["roi"] == "polygon" and recorded["region"]["config"] == str(demo)
    top = torch.zeros_like(labels, dtype=torch.bool)
    top[:, : round(0.5 * (labels.shape[1] - 1)) + 1] = True  # polygon rows 0 .. 0.5 * (H - 1)
    inside = top & (labels < 19)
    at = read_metadata(again)["temperature"]
    expected = float(np.quantile(MaxSoftmax.score(logits, temperature=at)[inside].numpy(), 1.0 - 0.05))
    assert recorded["threshold"] == pytest.approx(expected, abs=1e-5)


def test_calibrate_rejects_bad_arguments(overconfident_checkpoint, tmp_path, capsys):
    checkpoint, data = overconfident_checkpoint
    assert cli.main(["calibrate", "--checkpoint", str(tmp_path / "none.safetensors"), "--data", str(data)]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    args = ["calibrate", "--checkpoint", str(checkpoint), "--data", str(data), "--max-pixels", "0"]
    assert cli.main(args) == 2
    assert "max_pixels: expected an integer >= 1" in capsys.readouterr().err


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_perception_applies_the_checkpoint_temperature_unless_the_config_sets_one():
    logits = torch.randn(1, 19, 16, 32, generator=torch.Generator().manual_seed(0)) * 4
    frame = np.zeros((16, 32, 3), np.uint8)

    def scores(metadata, *overrides):
        config = load_config(None, ["model.input_size=[16, 32]", "alerts.threshold=-0.5", *overrides])
        perception = Perception(_FixedLogits(logits), config, metadata=metadata)
        return perception, perception.process(frame).anomaly

    perception, anomaly = scores({"temperature": 2.5}, "scorer.name=msp")
    assert perception.scorer.temperature == 2.5
    np.testing.assert_allclose(anomaly, MaxSoftmax.score(logits, temperature=2.5)[0].numpy(), atol=1e-6)
    perception, _ = scores({"temperature": 2.5}, "scorer.name=msp", "scorer.params={temperature: 1.5}")
    assert perception.scorer.temperature == 1.5
    perception, _ = scores({}, "scorer.name=maxentropy")
    assert perception.scorer.temperature == 1.0
    perception, anomaly = scores({"temperature": 2.5}, "scorer.name=maxlogit")  # no temperature to apply
    np.testing.assert_allclose(anomaly, -logits.amax(dim=1)[0].numpy(), atol=1e-6)
    with pytest.raises(ConfigError):
        scores({"temperature": 2.5}, "scorer.name=msp", "scorer.params={temperature: -1}")
