"""Supervised training of the segmentation networks, and the post-training calibration.

``train(config, out_dir)`` runs one process or, under ``torchrun``, every process of a
DistributedDataParallel run (see ``training.distributed``). Losses come from
``anomaly_seg_ros.losses`` by name (``config.losses``), augmentation from
``anomaly_seg_ros.data.augment``; checkpoints are safetensors with JSON metadata.
"""

from anomaly_seg_ros.training.config import TrainConfig, load_train_config
from anomaly_seg_ros.training.data import (
    SegmentationSamples,
    augmentation_from_config,
    compute_class_weights,
    local_batch_size,
    train_loader,
    training_samples,
    val_loader,
    validation_samples,
)
from anomaly_seg_ros.training.distributed import DistContext, setup_distributed
from anomaly_seg_ros.training.logs import CSV_LOG, TENSORBOARD_DIR
from anomaly_seg_ros.training.loop import (
    BEST_CHECKPOINT,
    HISTORY,
    LAST_CHECKPOINT,
    TRAINER_STATE,
    EpochResult,
    calibrate_scorers,
    cityscapes_miou,
    evaluate_miou,
    predict_batches,
)
from anomaly_seg_ros.training.run import train
from anomaly_seg_ros.training.temperature import calibrate_checkpoint

__all__ = [
    "BEST_CHECKPOINT",
    "CSV_LOG",
    "HISTORY",
    "LAST_CHECKPOINT",
    "TENSORBOARD_DIR",
    "TRAINER_STATE",
    "DistContext",
    "EpochResult",
    "SegmentationSamples",
    "TrainConfig",
    "augmentation_from_config",
    "calibrate_checkpoint",
    "calibrate_scorers",
    "cityscapes_miou",
    "compute_class_weights",
    "evaluate_miou",
    "load_train_config",
    "local_batch_size",
    "predict_batches",
    "setup_distributed",
    "train",
    "train_loader",
    "training_samples",
    "val_loader",
    "validation_samples",
]
