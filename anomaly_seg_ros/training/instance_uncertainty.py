"""Instance-wise uncertainty weighting (seed 003, sections 3–4), in its two training modes.

The weighting is CE ⊙ (1 + IU)²: IU is the mean predictive entropy of an ensemble of three
networks over each 8-connected ground-truth instance (see
:mod:`anomaly_seg_ros.losses.instance_uncertainty`). The paper trains an ensemble first and
then the final networks with the weighted loss; it also trains the three together so that the
masks follow the networks as they learn. Both are here:

- ``iu_mode: precomputed``: :func:`write_iu_masks` (``anomaly-seg iu-masks``) runs trained
  member checkpoints over a split once and stores one float16 IU map per image
  (``<masks>/<split>/<city>/<name>_iu.npy``, at the label's resolution); the trainer reads
  them with the labels and moves them with the augmentation.
- ``iu_mode: cotrain``: :func:`train_cotrained` trains the networks named in ``iu_members``
  together, each step weighting every member's loss by the IU of their joint (detached)
  prediction on that batch. It runs in one process without resume: co-training three
  networks is the paper's experiment, not the production path, and each member ends as an
  ordinary checkpoint that ``train --resume`` can fine-tune further.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.common.labels import IGNORE_INDEX, class_names
from anomaly_seg_ros.data.datasets import CityscapesDataset
from anomaly_seg_ros.inference.preprocess import normalize_images
from anomaly_seg_ros.losses import build_criterion, ensemble_entropy, instance_uncertainty, iu_pixel_weights
from anomaly_seg_ros.models import build_model, load_model, model_defaults, save_checkpoint
from anomaly_seg_ros.training.config import TrainConfig
from anomaly_seg_ros.training.data import (
    compute_class_weights,
    train_loader,
    training_samples,
    val_loader,
    validation_samples,
)
from anomaly_seg_ros.training.distributed import DistContext, _device
from anomaly_seg_ros.training.iu_masks import iu_mask_path
from anomaly_seg_ros.training.logs import RunLogger
from anomaly_seg_ros.training.loop import (
    BEST_CHECKPOINT,
    HISTORY,
    LAST_CHECKPOINT,
    EpochResult,
    _metadata,
    calibrate_scorers,
    cityscapes_miou,
    evaluate_miou,
)

log = logging.getLogger(__name__)


def _member_logits(members: Sequence[tuple[nn.Module, dict]], images: torch.Tensor) -> list[torch.Tensor]:
    """Each member's logits for uint8 ``images`` (N, 3, H, W), resized to (H, W).

    Every member sees the preprocessing it was trained with (its own input size and
    normalisation, from its checkpoint), as it would in deployment.
    """
    size = tuple(images.shape[-2:])
    logits = []
    for model, metadata in members:
        inputs = normalize_images(images, tuple(metadata["input_size"]), metadata["mean"], metadata["std"])
        output = model(inputs).float()
        if tuple(output.shape[-2:]) != size:
            output = F.interpolate(output, size=size, mode="bilinear", align_corners=False)
        logits.append(output)
    return logits


@torch.inference_mode()
def write_iu_masks(
    checkpoints: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str],
    *,
    device: str = "cpu",
    progress: bool = True,
) -> int:
    """Write the IU map of every image of ``data``/``split`` from the ensemble ``checkpoints``; returns the count.

    Entropy is that of the members' mean softmax at the label's resolution (in nats, as the
    paper's weighting expects); instances are the 8-connected components of each class of
    the 19-class labels, ignore pixels get 0.
    """
    if len(checkpoints) < 2:
        raise ConfigError(
            f"iu-masks: an ensemble needs at least 2 member checkpoints (the paper uses 3), got {len(checkpoints)}"
        )
    members = [load_model(path, device=device) for path in checkpoints]
    counts = {int(metadata["num_classes"]) for _, metadata in members}
    if len(counts) != 1:
        raise CheckpointError(f"iu-masks: the member checkpoints disagree on the number of classes: {sorted(counts)}")
    for model, _ in members:
        model.eval()
    dataset = CityscapesDataset(data, split)
    for index in tqdm(range(len(dataset)), desc="iu-masks", unit="image", disable=not progress):
        image, labels = dataset[index]
        images = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
        entropy = ensemble_entropy(_member_logits(members, images))
        iu = instance_uncertainty(entropy.cpu(), torch.from_numpy(labels.astype(np.int64))[None])
        path = iu_mask_path(out, dataset, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, iu[0].numpy().astype(np.float16))
    return len(dataset)


def cotrain_members(config: TrainConfig) -> list[TrainConfig]:
    """One training config per member of ``iu_members`` (the member's network, all else shared)."""
    if len(config.iu_members) < 2:
        raise ConfigError(
            f"train.iu_members: co-training needs at least 2 networks (the paper uses 3), got {config.iu_members!r}"
        )
    return [dataclasses.replace(config, model=name, iu_mode="none", iu_members=[]) for name in config.iu_members]


def member_dir(out_dir: Path, index: int, name: str) -> Path:
    return out_dir / f"member{index}_{name}"


def train_cotrained(config: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> list[dict]:
    """Train the ``iu_members`` networks together with IU weighting computed on the fly.

    Each member gets its own best/last checkpoint, calibrated like a single-model run, under
    ``out_dir/member<i>_<name>/``; ``out_dir/history.json`` lists every member's epochs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    members = cotrain_members(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    context = DistContext(device=_device(config.device, 0, False))
    device = context.device
    train_set, val_set = training_samples(config), validation_samples(config)
    loader, val = train_loader(train_set, config, context), val_loader(val_set, config, context)
    class_weights = compute_class_weights(config, train_set)
    criterion = build_criterion(
        config.losses, num_classes=config.num_classes, class_weights=class_weights, aux_weight=config.aux_weight
    ).to(device)
    models = []
    for member in members:
        model = build_model(member.model, num_classes=config.num_classes, head=config.head, **config.model_args)
        criterion.check_model(model)
        models.append(model.to(device))
    normalizations = [model_defaults(member.model) for member in members]
    parameters = [p for model in models for p in model.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: math.pow(max(0.0, 1.0 - epoch / config.epochs), config.lr_power)
    )
    loggers = [
        RunLogger(member_dir(out_dir, i, m.model), tensorboard=config.tensorboard) for i, m in enumerate(members)
    ]
    history: list[dict] = []
    best = [-1.0] * len(members)
    names = class_names(config.num_classes)
    try:
        for epoch in range(config.epochs):
            started = time.perf_counter()
            train_set.set_epoch(epoch)
            loader.sampler.set_epoch(epoch)
            for model in models:
                model.train()
            sums, steps = [0.0] * len(models), 0
            for images, labels, *_ in tqdm(
                loader, desc=f"co-train epoch {epoch + 1}", disable=not progress, leave=False
            ):
                images, labels = images.to(device), labels.to(device)
                outputs = [
                    model.forward_with_features(
                        normalize_images(images, tuple(images.shape[-2:]), norm["mean"], norm["std"])
                    )
                    for model, norm in zip(models, normalizations, strict=True)
                ]
                with torch.no_grad():
                    entropy = ensemble_entropy([output.logits.detach() for output in outputs])
                    weights = iu_pixel_weights(instance_uncertainty(entropy, labels, IGNORE_INDEX))
                losses = [criterion(output, labels, pixel_weights=weights) for output in outputs]
                optimizer.zero_grad(set_to_none=True)
                torch.stack(losses).sum().backward()
                optimizer.step()
                sums = [total + loss.item() for total, loss in zip(sums, losses, strict=True)]
                steps += 1
                if config.max_steps_per_epoch and steps >= config.max_steps_per_epoch:
                    break
            scheduler.step()
            row = {"epoch": epoch + 1, "seconds": 0.0, "members": []}
            for index, (model, member) in enumerate(zip(models, members, strict=True)):
                confusion = evaluate_miou(model, val, member, context)
                result = EpochResult(
                    epoch=epoch + 1,
                    train_loss=sums[index] / max(steps, 1),
                    val_miou=cityscapes_miou(confusion),
                    seconds=time.perf_counter() - started,
                    per_class_iou=[None if math.isnan(v) else float(v) for v in confusion.iou()],
                    learning_rate=optimizer.param_groups[0]["lr"],
                )
                row["members"].append({"model": member.model, **dataclasses.asdict(result)})
                folder = member_dir(out_dir, index, member.model)
                metadata = _metadata(
                    member, result.epoch, {"val_miou": result.val_miou, "train_loss": result.train_loss}
                )
                metadata["training"]["iu_mode"] = "cotrain"
                metadata["training"]["iu_members"] = list(config.iu_members)
                save_checkpoint(model, folder / LAST_CHECKPOINT, metadata=metadata)
                if result.val_miou > best[index] or not (folder / BEST_CHECKPOINT).exists():
                    best[index] = result.val_miou if math.isfinite(result.val_miou) else best[index]
                    save_checkpoint(model, folder / BEST_CHECKPOINT, metadata=metadata)
                rows = [item["members"][index] for item in [*history, row]]
                loggers[index].log_epoch([{k: v for k, v in r.items() if k != "model"} for r in rows], names)
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            (out_dir / HISTORY).write_text(json.dumps(history, indent=2), encoding="utf-8")
            log.info(
                "co-train epoch %d/%d: %s",
                epoch + 1,
                config.epochs,
                ", ".join(f"{m['model']} mIoU {m['val_miou']:.4f}" for m in row["members"]),
            )
    finally:
        for logger in loggers:
            logger.close()
    for index, member in enumerate(members):
        path = member_dir(out_dir, index, member.model) / BEST_CHECKPOINT
        model, metadata = load_model(path, device=device)
        metadata["calibration"] = calibrate_scorers(model, val, member, device=device)
        save_checkpoint(model, path, metadata=metadata)
    return history
