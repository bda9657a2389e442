"""``train``: the one entry point of a training run, single network or co-trained ensemble."""

from __future__ import annotations

from pathlib import Path

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.training.config import TrainConfig
from anomaly_seg_ros.training.instance_uncertainty import train_cotrained
from anomaly_seg_ros.training.loop import EpochResult, train_single


def train(
    config: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> list[EpochResult]:
    """Run the training ``config`` describes into ``out_dir``; returns the per-epoch history.

    ``iu_mode: cotrain`` trains the ensemble members together
    (:func:`~anomaly_seg_ros.training.instance_uncertainty.train_cotrained`) and returns nothing
    here: each member's history is written to its own folder. Everything else is one network
    (:func:`~anomaly_seg_ros.training.loop.train_single`).
    """
    if config.iu_mode == "cotrain":
        if resume:
            raise ConfigError("train.iu_mode: cotrain runs cannot be resumed; fine-tune a member checkpoint instead")
        train_cotrained(config, out_dir, progress=progress)
        return []
    return train_single(config, out_dir, resume=resume, progress=progress)
