"""Training and validation data: samples, loaders and samplers, class weights."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.labels import IGNORE_INDEX
from anomaly_seg_ros.data.augment import Augmentation, sample_generator
from anomaly_seg_ros.data.datasets import CityscapesDataset
from anomaly_seg_ros.training.config import TrainConfig
from anomaly_seg_ros.training.distributed import DistContext
from anomaly_seg_ros.training.iu_masks import read_iu_mask

log = logging.getLogger(__name__)


class SegmentationSamples(Dataset):
    """Cityscapes-layout items as (uint8 image tensor 3xHxW, int64 labels HxW), augmented or not.

    Without augmentation an item is the inference preprocessing: the uint8 resize of
    ``resize_images`` to ``input_size``, labels by nearest neighbour. With it, the sample's
    random numbers come from (seed, epoch, index) (:func:`~anomaly_seg_ros.data.augment.sample_generator`):
    call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        input_size: tuple[int, int],
        *,
        hflip: bool = False,
        augmentation: Augmentation | None = None,
        num_classes: int = 19,
        seed: int = 0,
        iu_masks: str | Path | None = None,
    ) -> None:
        self.items = CityscapesDataset(root, split, num_classes=num_classes)
        self.iu_masks = iu_masks
        self.augmentation = augmentation or Augmentation(tuple(input_size), hflip=hflip)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        """(image, labels), plus the instance-uncertainty map moved with the labels when ``iu_masks`` is set."""
        image, labels = self.items[index]
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        labels_t = torch.from_numpy(np.ascontiguousarray(labels))
        generator = sample_generator(self.seed, self.epoch, index)
        if self.iu_masks:
            iu = torch.from_numpy(read_iu_mask(self.iu_masks, self.items, index, labels.shape))
            image_t, labels_t, iu = self.augmentation(image_t, labels_t, generator, iu)
            return image_t, labels_t.long(), iu
        image_t, labels_t = self.augmentation(image_t, labels_t, generator)
        return image_t, labels_t.long()


def augmentation_from_config(config: TrainConfig) -> Augmentation:
    return Augmentation(
        input_size=tuple(config.input_size),
        crop_size=tuple(config.crop_size) if config.crop_size else None,
        scale_range=tuple(config.scale_range),
        hflip=config.hflip,
        brightness=config.brightness,
        contrast=config.contrast,
        saturation=config.saturation,
    )


def training_samples(config: TrainConfig) -> SegmentationSamples:
    return SegmentationSamples(
        config.data,
        config.train_split,
        config.input_size,
        augmentation=augmentation_from_config(config),
        num_classes=config.num_classes,
        seed=config.seed,
        iu_masks=config.iu_masks if config.iu_mode == "precomputed" else None,
    )


def validation_samples(config: TrainConfig) -> SegmentationSamples:
    return SegmentationSamples(config.data, config.val_split, config.input_size, num_classes=config.num_classes)


def local_batch_size(config: TrainConfig, context: DistContext) -> int:
    """This process's share of the global batch."""
    if config.batch_size % context.world_size:
        raise ConfigError(
            f"train.batch_size: the global batch {config.batch_size} must be divisible by the number of "
            f"processes ({context.world_size})"
        )
    return config.batch_size // context.world_size


def train_loader(dataset: SegmentationSamples, config: TrainConfig, context: DistContext) -> DataLoader:
    """Shuffled batches of this process's shard.

    Every world size, 1 included, uses a ``DistributedSampler`` seeded with ``config.seed``: it
    draws the same permutation everywhere and hands rank ``r`` positions ``r, r + W, ...``, so
    global batch ``k`` (the union of the ranks' batch ``k``) is the same set of samples as the
    single-process batch ``k``. Call ``loader.sampler.set_epoch(epoch)`` each epoch.
    """
    batch = local_batch_size(config, context)
    if len(dataset) < config.batch_size:
        raise ConfigError(
            f"train.batch_size: {config.batch_size} is larger than the training split ({len(dataset)} images)"
        )
    sampler = DistributedSampler(
        dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=True,
        pin_memory=context.device.type == "cuda",
        # Not persistent: workers must see the dataset's epoch, which set_epoch changes in this process.
        persistent_workers=False,
    )


def val_loader(dataset: Dataset, config: TrainConfig, context: DistContext) -> DataLoader:
    """This process's share (every ``world_size``-th image) of the validation split, in order.

    A strided ``Subset`` rather than a ``DistributedSampler``: the sampler pads the last shard
    with repeated images, which would count them twice in the reduced confusion matrix.
    """
    shard = Subset(dataset, range(context.rank, len(dataset), context.world_size)) if context.distributed else dataset
    return DataLoader(
        shard,
        batch_size=max(1, config.batch_size // context.world_size),
        shuffle=False,
        num_workers=config.workers,
        pin_memory=context.device.type == "cuda",
    )


def compute_class_weights(config: TrainConfig, dataset: SegmentationSamples) -> torch.Tensor | None:
    """Class weights from the training labels' histogram at full label resolution, or None.

    Reads only the label images; the histogram is that of the targets the criterion sees
    (in 20-class mode, void counts as class 19).
    """
    if config.class_weights == "none":
        return None
    from anomaly_seg_ros.losses import class_histogram, enet_class_weights, inverse_frequency_weights

    labels = (dataset.items.read_labels(index) for index in range(len(dataset.items)))
    histogram = class_histogram(labels, config.num_classes, IGNORE_INDEX)
    weights = enet_class_weights(histogram) if config.class_weights == "enet" else inverse_frequency_weights(histogram)
    log.info("class weights (%s): %s", config.class_weights, [round(w, 3) for w in weights.tolist()])
    return weights
