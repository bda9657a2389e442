"""Training: a short run measurably improves validation mIoU; checkpoints, calibration, resume,
the configured criterion, logs and the shipped configs."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import anomaly_seg_ros.training.loop as loop
from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.data.layout import generate_datasets
from anomaly_seg_ros.losses import build_criterion
from anomaly_seg_ros.models import available_models, build_model, read_metadata
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import available_scorers
from anomaly_seg_ros.training import (
    BEST_CHECKPOINT,
    CSV_LOG,
    LAST_CHECKPOINT,
    TENSORBOARD_DIR,
    TRAINER_STATE,
    DistContext,
    evaluate_miou,
    load_train_config,
    train,
    val_loader,
    validation_samples,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_datasets(root, num_train=16, num_val=4, num_anomaly=0, height=64, width=128, seed=0)
    return root / "cityscapes"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Four training and two validation scenes at 32x64: enough for one or two optimiser steps."""
    root = tmp_path_factory.mktemp("small")
    generate_datasets(root, num_train=4, num_val=2, num_anomaly=0, height=32, width=64, seed=1)
    return root / "cityscapes"


def _small_config(small, **overrides):
    values = {
        "data": str(small),
        "input_size": [32, 64],
        "epochs": 1,
        "batch_size": 2,
        "max_steps_per_epoch": 1,
        "learning_rate": 0.003,
        "threads": 2,
        "tensorboard": False,
    }
    return load_train_config(None, values | overrides)


def _config(dataset, **overrides):
    values = {
        "data": str(dataset),
        "input_size": [64, 128],
        "epochs": 8,
        "batch_size": 4,
        "learning_rate": 0.003,
        "seed": 0,
        "threads": 2,
        "tensorboard": False,
    }
    return load_train_config(None, values | overrides)


def test_short_training_improves_validation_miou(dataset, tmp_path):
    config = _config(dataset)
    torch.manual_seed(config.seed)
    untrained = build_model(config.model, num_classes=config.num_classes)
    val = val_loader(validation_samples(config), config, DistContext())
    before = evaluate_miou(untrained, val, config).miou()

    history = train(config, tmp_path / "run", progress=False)
    assert [item.epoch for item in history] == list(range(1, 9))
    assert history[-1].train_loss < history[0].train_loss
    best = max(item.val_miou for item in history)
    # 32 steps on 16 images: from chance (~0.02) to clearly above it (~0.08 measured)
    assert best > before + 0.04, (before, [item.val_miou for item in history])

    metadata = read_metadata(tmp_path / "run" / BEST_CHECKPOINT)
    assert metadata["metrics"]["val_miou"] == pytest.approx(best)
    assert metadata["input_size"] == [64, 128] and metadata["num_classes"] == 19
    calibration = metadata["calibration"]
    assert {"msp", "maxlogit", "maxentropy", "energy"} <= set(calibration)
    assert "void" not in calibration  # needs a 20-class model: its bind() rejects this one
    for item in calibration.values():
        low, high = item["range"]
        assert low < item["threshold"] < high
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [entry["val_miou"] for entry in saved] == pytest.approx([item.val_miou for item in history])


def test_calibrated_threshold_puts_the_false_positive_rate_inside_the_alert_region_where_asked(dataset, tmp_path):
    config = _config(dataset, epochs=1, calibration_road_fpr=0.05)
    train(config, tmp_path / "run", progress=False)
    from anomaly_seg_ros.core.config import AlertConfig
    from anomaly_seg_ros.models import load_model
    from anomaly_seg_ros.scoring import get_scorer
    from anomaly_seg_ros.training.loop import calibration_region

    model, metadata = load_model(tmp_path / "run" / BEST_CHECKPOINT)
    val = val_loader(validation_samples(config), config, DistContext())
    scores = []
    with torch.inference_mode():
        for images, labels in val:
            logits = model(images.float() / 255.0)
            # the default deployment's region: the predicted drivable area (test_threshold_region.py
            # checks that region on a hand-made frame)
            region = calibration_region(labels, logits.argmax(dim=1), AlertConfig())
            scores.append(get_scorer("maxlogit")(logits)[region].numpy())
    scores = np.concatenate(scores)
    entry = metadata["calibration"]["maxlogit"]
    above = float((scores > entry["threshold"]).mean())
    assert above == pytest.approx(0.05, abs=0.01)
    assert entry["fpr"] == 0.05 and entry["region"]["roi"] == "drivable"
    assert entry["region"]["pixel_count"] == scores.size


def test_resume_reproduces_the_uninterrupted_run(small, tmp_path):
    # ERFNet has dropout and the run augments (scale, crop, flip, colour): equal weights after
    # resuming need the optimizer, scheduler and RNG states restored, not just the weights.
    augment = {"scale_range": [0.75, 1.5], "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "seed": 4}
    straight = train(_small_config(small, epochs=2, **augment), tmp_path / "straight", progress=False)
    first = train(_small_config(small, epochs=1, **augment), tmp_path / "resumed", progress=False)
    assert [item.epoch for item in first] == [1]
    assert read_metadata(tmp_path / "resumed" / LAST_CHECKPOINT)["epoch"] == 1
    resumed = train(_small_config(small, epochs=2, **augment), tmp_path / "resumed", resume=True, progress=False)
    assert [item.epoch for item in resumed] == [1, 2]
    assert read_metadata(tmp_path / "resumed" / LAST_CHECKPOINT)["epoch"] == 2
    assert torch.load(tmp_path / "resumed" / TRAINER_STATE, weights_only=True)["epoch"] == 2
    assert [item.train_loss for item in resumed] == [item.train_loss for item in straight]
    a, b = load_file(tmp_path / "straight" / LAST_CHECKPOINT), load_file(tmp_path / "resumed" / LAST_CHECKPOINT)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_training_step_uses_the_configured_criterion_and_logs_every_epoch(small, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    calls, losses = [], []

    def spy(specs, **kwargs):
        criterion = build_criterion(specs, **kwargs)
        calls.append((specs, kwargs))
        forward = criterion.forward

        def recording(output, target, **kw):
            loss = forward(output, target, **kw)
            losses.append((type(output), output.features is not None, loss.item()))
            return loss

        criterion.forward = recording
        return criterion

    monkeypatch.setattr(loop, "build_criterion", spy)
    specs = [{"name": "focal", "gamma": 2.0, "weight": 0.5}, {"name": "ce", "weight": 0.25}]
    # A two-step model on four tiny scenes predicts no drivable area to calibrate in; the whole
    # frame as alert region keeps this test about the criterion, the logs and the calibrated scorers.
    whole_frame = tmp_path / "alerts.yaml"
    whole_frame.write_text("alerts:\n  roi: none\n")
    config = _small_config(
        small,
        losses=specs,
        class_weights="inverse_frequency",
        num_classes=20,
        epochs=2,
        tensorboard=True,
        alerts_config=str(whole_frame),
    )
    history = train(config, tmp_path / "run", progress=False)

    # The criterion is built from the config: loss terms, 20 classes, and class weights that
    # are the inverse class proportions of the training labels (void = ignore pixels counted).
    ((given, kwargs),) = calls
    assert given == specs and kwargs["num_classes"] == 20 and kwargs["aux_weight"] == 1.0
    counts = np.zeros(20)
    for path in sorted((small / "gtFine" / "train").glob("*/*_labelTrainIds.png")):
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        counts += np.bincount(np.where(labels == 255, 19, labels).ravel(), minlength=256)[:20]
    expected = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    np.testing.assert_allclose(kwargs["class_weights"].numpy(), expected, rtol=1e-5)

    # Each step calls it on the whole SegmentationOutput of forward_with_features, and the
    # epoch loss is the mean of what it returned (one step per epoch here).
    assert [(kind, has_features) for kind, has_features, _ in losses] == [(SegmentationOutput, True)] * 2
    assert [item.train_loss for item in history] == pytest.approx([value for *_, value in losses], rel=1e-6)

    metadata = read_metadata(tmp_path / "run" / BEST_CHECKPOINT)
    assert metadata["training"]["losses"] == specs and metadata["head"] == "linear"
    assert metadata["temperature"] == 1.0 and metadata["class_names"][-1] == "void"
    np.testing.assert_allclose(metadata["class_weights"], expected, rtol=1e-5)
    if "void" in available_scorers():
        assert "void" in metadata["calibration"]

    # CSV: one row per epoch; TensorBoard: the same per-epoch scalars.
    with (tmp_path / "run" / CSV_LOG).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert [float(row["train_loss"]) for row in rows] == pytest.approx([item.train_loss for item in history])
    assert [float(row["val_miou"]) for row in rows] == pytest.approx([item.val_miou for item in history])
    events = EventAccumulator(str(tmp_path / "run" / TENSORBOARD_DIR))
    events.Reload()
    logged = {event.step: event.value for event in events.Scalars("epoch/val_miou")}
    assert logged == pytest.approx({item.epoch: item.val_miou for item in history})
    assert [event.step for event in events.Scalars("epoch/train_loss")] == [1, 2]


def test_training_config_from_yaml_and_set_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: /data\nmodel: erfnet\nlosses:\n  - {name: logitnorm}\ninput_size: [64, 128]\n")
    config = load_train_config(
        path, {"epochs": 3}, ["losses=[{name: focal, gamma: 1.0}, {name: ce}]", "input_size=[32, 64]", "amp=false"]
    )
    assert config.losses == [{"name": "focal", "gamma": 1.0}, {"name": "ce"}]
    assert config.input_size == (32, 64) and config.epochs == 3 and config.amp is False
    assert config.train_size == (32, 64)
    assert load_train_config(path, sets=["crop_size=[16, 32]"]).train_size == (16, 32)
    # A nested key changes that key only: the file's other keys of the section stay.
    (tmp_path / "oe.yaml").write_text("data: /data\noutliers: {source: procedural, max_objects: 4, probability: 0.9}\n")
    oe = load_train_config(tmp_path / "oe.yaml", sets=["outliers.foot_sampling=rows"]).outliers
    assert (oe.foot_sampling, oe.max_objects, oe.probability, oe.source) == ("rows", 4, 0.9, "procedural")
    with pytest.raises(ConfigError, match=r"train.class_weights: expected one of \['none', 'enet'"):
        load_train_config(path, sets=["class_weights=median"])
    with pytest.raises(ConfigError, match=r"train.losses: expected a list"):
        load_train_config(path, sets=["losses=ce"])
    with pytest.raises(ConfigError, match=r"train.scale_range"):
        load_train_config(path, sets=["scale_range=[2.0, 1.0]"])
    with pytest.raises(ConfigError, match=r"train.device"):
        load_train_config(path, sets=["device=gpu"])
    # the deployment config of the threshold calibration: relative to the file that names it
    (tmp_path / "deploy.yaml").write_text("alerts:\n  roi: none\n")
    (tmp_path / "with_alerts.yaml").write_text("data: /data\nalerts_config: deploy.yaml\n")
    assert load_train_config(tmp_path / "with_alerts.yaml").alerts_config == str(tmp_path / "deploy.yaml")
    with pytest.raises(ConfigError, match=r"train.alerts_config: expected null or an existing perception config"):
        load_train_config(path, sets=["alerts_config=missing.yaml"])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("train_*.yaml")), ids=lambda path: path.stem)
def test_shipped_training_configs_load_and_build_their_criterion(path):
    config = load_train_config(path, {"data": "/data/cityscapes"})
    assert config.model in available_models()
    criterion = build_criterion(config.losses, num_classes=config.num_classes)
    assert len(criterion.names) == len(config.losses)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP (autocast + GradScaler) runs on CUDA only")
def test_amp_training_on_cuda_saves_the_grad_scaler(small, tmp_path):
    config = _small_config(small, device="cuda", amp=True, epochs=1)
    history = train(config, tmp_path / "run", progress=False)
    assert np.isfinite(history[0].train_loss)
    state = torch.load(tmp_path / "run" / TRAINER_STATE, weights_only=True)
    assert state["scaler"]["scale"] > 0  # a disabled scaler saves an empty dict


def test_resume_without_a_run_and_bad_config_are_clear_errors(dataset, tmp_path):
    with pytest.raises(CheckpointError, match="cannot resume.*trainer_state.pt"):
        train(_config(dataset), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ConfigError, match="train.epochs"):
        _config(dataset, epochs=0)
    with pytest.raises(ConfigError, match="unknown config key train.epoch"):
        load_train_config(None, {"epoch": 3})
