"""Training: a short run measurably improves validation mIoU; checkpoints, calibration and resume."""

import json

import numpy as np
import pytest
import torch

from anomaly_seg_ros.data.layout import generate_datasets
from anomaly_seg_ros.errors import CheckpointError, ConfigError
from anomaly_seg_ros.models import build_model, read_metadata
from anomaly_seg_ros.training import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    SegmentationSamples,
    _loader,
    evaluate_miou,
    load_train_config,
    train,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_datasets(root, num_train=16, num_val=4, num_anomaly=0, height=64, width=128, seed=0)
    return root / "cityscapes"


def _config(dataset, **overrides):
    values = {
        "data": str(dataset),
        "input_size": [64, 128],
        "epochs": 8,
        "batch_size": 4,
        "learning_rate": 0.003,
        "seed": 0,
        "threads": 2,
    }
    return load_train_config(None, values | overrides)


def test_short_training_improves_validation_miou(dataset, tmp_path):
    config = _config(dataset)
    torch.manual_seed(config.seed)
    untrained = build_model(config.model, num_classes=config.num_classes)
    val = _loader(SegmentationSamples(dataset, "val", config.input_size, hflip=False), config, shuffle=False)
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
    assert set(calibration) == {"msp", "maxlogit", "maxentropy", "energy"}
    for item in calibration.values():
        low, high = item["range"]
        assert low < item["threshold"] < high
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [entry["val_miou"] for entry in saved] == pytest.approx([item.val_miou for item in history])


def test_calibrated_threshold_puts_the_road_false_positive_rate_where_asked(dataset, tmp_path):
    config = _config(dataset, epochs=1, calibration_road_fpr=0.05)
    train(config, tmp_path / "run", progress=False)
    from anomaly_seg_ros.models import load_model
    from anomaly_seg_ros.scoring import get_scorer

    model, metadata = load_model(tmp_path / "run" / BEST_CHECKPOINT)
    val = _loader(SegmentationSamples(dataset, "val", config.input_size, hflip=False), config, shuffle=False)
    scores = []
    with torch.inference_mode():
        for images, labels in val:
            logits = model(images.float() / 255.0)
            scores.append(get_scorer("maxlogit")(logits)[labels == 0].numpy())
    scores = np.concatenate(scores)
    above = float((scores > metadata["calibration"]["maxlogit"]["threshold"]).mean())
    assert above == pytest.approx(0.05, abs=0.01)


def test_resume_continues_from_the_saved_epoch(dataset, tmp_path):
    train(_config(dataset, epochs=1), tmp_path / "run", progress=False)
    assert read_metadata(tmp_path / "run" / LAST_CHECKPOINT)["epoch"] == 1
    history = train(_config(dataset, epochs=2), tmp_path / "run", resume=True, progress=False)
    assert [item.epoch for item in history] == [1, 2]
    assert read_metadata(tmp_path / "run" / LAST_CHECKPOINT)["epoch"] == 2


def test_resume_without_a_run_and_bad_config_are_clear_errors(dataset, tmp_path):
    with pytest.raises(CheckpointError, match="cannot resume.*trainer_state.pt"):
        train(_config(dataset), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ConfigError, match="train.epochs"):
        _config(dataset, epochs=0)
    with pytest.raises(ConfigError, match="unknown config key train.epoch"):
        load_train_config(None, {"epoch": 3})
