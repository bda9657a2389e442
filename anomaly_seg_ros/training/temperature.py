"""Temperature scaling of a trained checkpoint (seed 000 section 3.2, eq. 5).

:func:`calibrate_checkpoint` streams a labelled split through the network, keeps a uniform
random sample of labelled pixels (bounded memory), fits ``T`` by NLL, and stores it in the
checkpoint's metadata, where the perception core picks it up for temperature scorers. The
alert thresholds calibrated at training time were measured at the old temperature, so
they are measured again at the new one: otherwise switching to the calibrated model would
silently change every temperature scorer's false-alarm rate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.core.config import AlertConfig, load_config
from anomaly_seg_ros.inference.preprocess import normalize_images
from anomaly_seg_ros.metrics.calibration import (
    PixelReservoir,
    expected_calibration_error,
    fit_temperature,
    temperature_nll,
)
from anomaly_seg_ros.models import load_model, save_checkpoint
from anomaly_seg_ros.training.config import TrainConfig
from anomaly_seg_ros.training.data import SegmentationSamples
from anomaly_seg_ros.training.loop import calibrate_scorers

log = logging.getLogger(__name__)


@torch.inference_mode()
def _sample_pixels(
    model: torch.nn.Module, loader: DataLoader, meta: dict[str, Any], capacity: int, seed: int, device: torch.device
) -> PixelReservoir:
    reservoir = PixelReservoir(capacity, seed=seed)
    size = tuple(meta["input_size"])
    for images, labels in loader:
        inputs = normalize_images(images.to(device), size, meta["mean"], meta["std"])
        reservoir.add(model(inputs), labels)
    return reservoir


def _recorded_region(entry: dict[str, Any]) -> tuple[AlertConfig, str]:
    """The alert region a checkpoint's thresholds were calibrated in; the default one for older checkpoints."""
    region = entry.get("region")
    if not region:
        return load_config(None).alerts, "default perception config"
    overrides = {key: region[key] for key in ("roi", "roi_polygon", "drivable_classes") if key in region}
    return load_config(None, {"alerts": overrides}).alerts, str(region.get("config", "recorded in the checkpoint"))


def calibrate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    output: str | Path | None = None,
    max_pixels: int = 1_000_000,
    batch_size: int = 4,
    n_bins: int = 15,
    device: str = "cpu",
    seed: int = 0,
    alerts_config: str | Path | None = None,
) -> dict[str, Any]:
    """Fit the softmax temperature of ``checkpoint`` on ``data``/``split``; write the checkpoint to ``output``.

    ``output`` defaults to ``checkpoint`` itself (replaced atomically). Everything in the
    metadata is kept except ``temperature`` (replaced), ``temperature_calibration`` (the
    figures below) and the per-scorer alert thresholds under ``calibration``, which are
    measured again at the new temperature with the same false-positive rate, inside the alert
    region of the deployment's perception config ``alerts_config`` (default: the region the
    checkpoint's thresholds were set for, else the default config's). ECE and
    NLL are measured on the sampled pixels, before (at the checkpoint's temperature) and
    after. Returns those figures.
    """
    for key, value, low in (("max_pixels", max_pixels, 1), ("batch_size", batch_size, 1), ("n_bins", n_bins, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"calibrate {key}: expected an integer >= {low}, got {value!r}")
    checkpoint = Path(checkpoint)
    torch_device = torch.device(device)
    model, meta = load_model(checkpoint, device=torch_device)
    samples = SegmentationSamples(data, split, tuple(meta["input_size"]), num_classes=int(meta["num_classes"]))
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False)
    reservoir = _sample_pixels(model, loader, meta, max_pixels, seed, torch_device)
    logits, labels = reservoir.logits, reservoir.labels
    if logits is None or labels.numel() == 0:
        raise DatasetError(f"no labelled pixels in {data} split {split!r}: nothing to calibrate on")
    old = float(meta.get("temperature", 1.0))
    new = fit_temperature(logits, labels)
    figures = {
        "temperature": new,
        "previous_temperature": old,
        "ece_before": expected_calibration_error(logits / old, labels, n_bins, inputs="logits"),
        "ece_after": expected_calibration_error(logits / new, labels, n_bins, inputs="logits"),
        "nll_before": temperature_nll(logits, labels, old),
        "nll_after": temperature_nll(logits, labels, new),
        "n_bins": n_bins,
        "pixels": int(labels.numel()),
        "pixels_seen": int(reservoir.seen),
        "split": split,
    }
    meta["temperature"] = new
    meta["temperature_calibration"] = figures
    if meta.get("calibration"):
        previous = next(iter(meta["calibration"].values()))
        road_fpr = previous.get("fpr", previous.get("road_fpr", 0.001))
        if alerts_config is not None:
            alerts, source = load_config(alerts_config).alerts, str(alerts_config)
        else:
            alerts, source = _recorded_region(previous)
        config = TrainConfig(
            data=str(data),
            val_split=split,
            model=meta["model"],
            num_classes=int(meta["num_classes"]),
            input_size=tuple(meta["input_size"]),
            calibration_road_fpr=float(road_fpr),
        )
        meta["calibration"] = calibrate_scorers(
            model, loader, config, temperature=new, device=torch_device, alerts=alerts
        )
        if not meta["calibration"]:
            raise ConfigError(
                f"{checkpoint}: no alert threshold can be calibrated: the model predicts no labelled "
                f"in-distribution pixel inside the alert region (alerts.roi {alerts.roi!r}) of {data} split {split}"
            )
        for entry in meta["calibration"].values():
            entry["region"]["config"] = source
    target = Path(output) if output is not None else checkpoint
    save_checkpoint(model, target, metadata=meta)
    log.info(
        "temperature %.4f (ECE %.4f -> %.4f) written to %s", new, figures["ece_before"], figures["ece_after"], target
    )
    return figures
