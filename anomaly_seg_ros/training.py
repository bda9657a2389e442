"""Minimal supervised training with cross-entropy (ERFNet on Cityscapes-layout data).

One epoch loop, per-epoch validation mIoU, best-and-last checkpoints (safetensors + JSON
metadata), resume, and the post-training calibration of each scorer's alert threshold on
the validation set. Images go through :func:`normalize_images`, the same preprocessing the
perception core runs, so a trained checkpoint sees identical pixels in deployment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from anomaly_seg_ros.config import _build, _to_plain
from anomaly_seg_ros.data.datasets import CityscapesDataset
from anomaly_seg_ros.errors import CheckpointError, ConfigError
from anomaly_seg_ros.inference.preprocess import normalize_images, resize_images, resize_labels
from anomaly_seg_ros.labels import IGNORE_INDEX, TRAIN_ID, class_names
from anomaly_seg_ros.metrics import ConfusionMatrix
from anomaly_seg_ros.models import build_model, load_weights, model_defaults, save_checkpoint
from anomaly_seg_ros.scoring import available_scorers, get_scorer

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
TRAINER_STATE = "trainer_state.pt"


@dataclass
class TrainConfig:
    """Training settings; a YAML file under ``config/`` holds one of these."""

    #: Root of a Cityscapes-layout dataset (leftImg8bit/ + gtFine/ with labelTrainIds).
    data: str = ""
    train_split: str = "train"
    val_split: str = "val"
    model: str = "erfnet"
    num_classes: int = 19
    #: Network input (height, width); images are resized to it exactly as at inference.
    input_size: tuple[int, int] = (256, 512)
    epochs: int = 10
    batch_size: int = 8
    #: Adam with the ERFNet authors' settings; learning rate decays as (1 - epoch/epochs)^0.9.
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    hflip: bool = True
    workers: int = 0
    seed: int = 0
    #: Cap on optimisation steps per epoch (0 = whole dataset); for quick experiments and tests.
    max_steps_per_epoch: int = 0
    #: Alert thresholds are calibrated so that this fraction of validation road pixels lies above them.
    calibration_road_fpr: float = 0.001
    threads: int = 0

    def validate(self) -> None:
        checks = [
            (bool(self.data), "data", "a dataset folder"),
            (self.num_classes in (19, 20), "num_classes", "19 or 20"),
            (
                self.input_size[0] % 8 == 0 and self.input_size[1] % 8 == 0 and min(self.input_size) > 0,
                "input_size",
                "[height, width], positive multiples of 8",
            ),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.learning_rate > 0, "learning_rate", "a number > 0"),
            (self.weight_decay >= 0, "weight_decay", "a number >= 0"),
            (self.workers >= 0, "workers", "an integer >= 0"),
            (self.max_steps_per_epoch >= 0, "max_steps_per_epoch", "an integer >= 0"),
            (0 < self.calibration_road_fpr < 1, "calibration_road_fpr", "a number in (0, 1)"),
            (self.threads >= 0, "threads", "an integer >= 0"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"train.{key}: expected {expected}, got {getattr(self, key)!r}")


def load_train_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides, validated; unknown keys name themselves."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config file {path} does not exist")
        data = dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    config = _build(TrainConfig, data, "train.")
    config.validate()
    return config


class SegmentationSamples(Dataset):
    """Cityscapes-layout items as (uint8 image tensor 3xHxW, int64 labels HxW) at ``input_size``.

    Images use the same uint8 resize as inference (``resize_images``); labels nearest neighbour.
    """

    def __init__(self, root: str | Path, split: str, input_size: tuple[int, int], *, hflip: bool) -> None:
        self.items = CityscapesDataset(root, split)
        self.input_size = input_size
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.items[index]
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        labels_t = torch.from_numpy(np.ascontiguousarray(labels))
        image_t = resize_images(image_t[None], self.input_size)[0]
        labels_t = resize_labels(labels_t[None], self.input_size)[0]
        if self.hflip and random.random() < 0.5:
            image_t, labels_t = image_t.flip(-1), labels_t.flip(-1)
        return image_t, labels_t.long()


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_miou: float
    seconds: float
    per_class_iou: list[float] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loader(dataset: Dataset, config: TrainConfig, *, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        num_workers=config.workers,
        generator=generator,
        drop_last=shuffle and len(dataset) > config.batch_size,
        persistent_workers=config.workers > 0,
    )


def _metadata(config: TrainConfig, epoch: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "model": config.model,
        "num_classes": config.num_classes,
        "class_names": list(class_names(config.num_classes)),
        "mean": list(model_defaults(config.model)["mean"]),
        "std": list(model_defaults(config.model)["std"]),
        "input_size": list(config.input_size),
        "temperature": 1.0,
        "epoch": epoch,
        "metrics": dict(metrics),
        "training": _to_plain(dataclasses.asdict(config)),
    }


@torch.inference_mode()
def predict_batches(
    model: nn.Module, loader: DataLoader, config: TrainConfig, normalization: Mapping[str, Any]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (logits, labels) over a loader, preprocessing exactly as at inference."""
    model.eval()
    for images, labels in loader:
        inputs = normalize_images(images, config.input_size, normalization["mean"], normalization["std"])
        yield model(inputs), labels


def evaluate_miou(model: nn.Module, loader: DataLoader, config: TrainConfig) -> ConfusionMatrix:
    normalization = model_defaults(config.model)
    confusion = ConfusionMatrix(config.num_classes, ignore_index=IGNORE_INDEX)
    for logits, labels in predict_batches(model, loader, config, normalization):
        confusion.update(logits.argmax(dim=1), labels)
    return confusion


def calibrate_scorers(model: nn.Module, loader: DataLoader, config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Per scorer: the alert threshold that a fraction ``calibration_road_fpr`` of validation
    road pixels exceeds, and a heatmap display range from the in-distribution score spread.

    This puts every scorer's threshold at the same false-alarm rate on the surface where
    alerts are raised, so switching scorers at run time needs no hand tuning.
    """
    normalization = model_defaults(config.model)
    road_scores: dict[str, list[np.ndarray]] = {name: [] for name in available_scorers()}
    all_scores: dict[str, list[np.ndarray]] = {name: [] for name in available_scorers()}
    scorers = {name: get_scorer(name) for name in available_scorers()}
    for logits, labels in predict_batches(model, loader, config, normalization):
        road = labels == TRAIN_ID["road"]
        valid = labels != IGNORE_INDEX
        for name, scorer in scorers.items():
            scores = scorer(logits)
            road_scores[name].append(scores[road].numpy())
            all_scores[name].append(scores[valid][::16].numpy())  # a subsample suffices for a display range
    calibration = {}
    for name in scorers:
        road = np.concatenate(road_scores[name])
        if road.size == 0:
            raise ConfigError("calibration needs road pixels (trainId 0) in the validation split")
        threshold = float(np.quantile(road, 1.0 - config.calibration_road_fpr))
        low = float(np.quantile(np.concatenate(all_scores[name]), 0.05))
        high = threshold + 0.5 * max(threshold - low, 1e-6)
        calibration[name] = {
            "threshold": threshold,
            "range": [low, high],
            "road_fpr": config.calibration_road_fpr,
        }
    return calibration


def train(
    config: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> list[EpochResult]:
    """Train ``config.model`` with cross-entropy; write checkpoints and ``history.json`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    train_set = SegmentationSamples(config.data, config.train_split, config.input_size, hflip=config.hflip)
    val_set = SegmentationSamples(config.data, config.val_split, config.input_size, hflip=False)
    train_loader = _loader(train_set, config, shuffle=True)
    val_loader = _loader(val_set, config, shuffle=False)

    model = build_model(config.model, num_classes=config.num_classes)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: math.pow(1.0 - epoch / config.epochs, 0.9))
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    history: list[EpochResult] = []
    start_epoch, best_miou = 0, -1.0
    state_path = out_dir / TRAINER_STATE
    if resume:
        if not state_path.is_file():
            raise CheckpointError(f"cannot resume: {state_path} does not exist (train without --resume first)")
        load_weights(model, out_dir / LAST_CHECKPOINT)
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_miou = int(state["epoch"]), float(state["best_miou"])
        history = [EpochResult(**item) for item in json.loads((out_dir / "history.json").read_text())]
        torch.set_rng_state(state["rng"])
        log.info("resuming after epoch %d (best mIoU %.4f)", start_epoch, best_miou)

    normalization = model_defaults(config.model)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        total_loss, steps = 0.0, 0
        batches = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for images, labels in batches:
            inputs = normalize_images(images, config.input_size, normalization["mean"], normalization["std"])
            loss = criterion(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            steps += 1
            batches.set_postfix(loss=f"{total_loss / steps:.3f}")
            if config.max_steps_per_epoch and steps >= config.max_steps_per_epoch:
                break
        scheduler.step()
        confusion = evaluate_miou(model, val_loader, config)
        result = EpochResult(
            epoch=epoch + 1,
            train_loss=total_loss / max(steps, 1),
            val_miou=float(confusion.miou()),
            seconds=time.perf_counter() - started,
            per_class_iou=[None if math.isnan(v) else float(v) for v in confusion.iou()],
        )
        history.append(result)
        log.info(
            "epoch %d/%d: loss %.4f, val mIoU %.4f (%.0f s)",
            result.epoch,
            config.epochs,
            result.train_loss,
            result.val_miou,
            result.seconds,
        )
        metrics = {"val_miou": result.val_miou, "train_loss": result.train_loss}
        save_checkpoint(model, out_dir / LAST_CHECKPOINT, metadata=_metadata(config, epoch + 1, metrics))
        if result.val_miou > best_miou:
            best_miou = result.val_miou
            save_checkpoint(model, out_dir / BEST_CHECKPOINT, metadata=_metadata(config, epoch + 1, metrics))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "best_miou": best_miou,
                "rng": torch.get_rng_state(),
            },
            state_path,
        )
        (out_dir / "history.json").write_text(json.dumps([dataclasses.asdict(h) for h in history], indent=2))

    # Calibrate alert thresholds on the best model and store them in its checkpoint.
    best_path = out_dir / BEST_CHECKPOINT
    metadata = load_weights(model, best_path)
    metadata["calibration"] = calibrate_scorers(model, val_loader, config)
    save_checkpoint(model, best_path, metadata=metadata)
    return history
