"""The transport-free perception core.

``Perception`` turns one RGB uint8 frame into a label map, an anomaly map, obstacle alerts
and (optionally) colour views. The ROS node and the bag tool call the same object with the
same configuration, so replay evaluation measures exactly what runs on the vehicle.
Nothing here imports rclpy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly_seg_ros import alerts as alerting
from anomaly_seg_ros.config import PerceptionConfig, replace_config
from anomaly_seg_ros.errors import ConfigError
from anomaly_seg_ros.inference.preprocess import frame_to_tensor, normalize_images, resize_labels, resize_scores
from anomaly_seg_ros.models import load_model, model_defaults
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import Scorer, get_scorer
from anomaly_seg_ros.visualization import colorize, overlay

#: Keys of the configuration that may change while the pipeline runs (no model reload).
RUNTIME_SECTIONS = ("scorer", "alerts", "render")


@dataclass
class PerceptionResult:
    """Outputs of one frame, all at the frame's resolution."""

    labels: np.ndarray  # HxW uint8 trainIds
    anomaly: np.ndarray  # HxW float32, higher = more anomalous
    alerts: list[alerting.Alert]
    scorer: str
    threshold: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    color: np.ndarray | None = None  # HxWx3 uint8 Cityscapes palette
    overlay: np.ndarray | None = None  # HxWx3 uint8 heatmap over the frame, alert boxes drawn


class Perception:
    """Preprocess -> model -> scorer -> alerts -> colour views, with per-stage timings."""

    def __init__(self, model: nn.Module, config: PerceptionConfig, *, metadata: Mapping[str, Any] | None = None):
        self.metadata = dict(metadata or {})
        defaults = model_defaults(config.model.name)
        self.device = torch.device(config.model.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"model.device: {config.model.device!r} requested but CUDA is not available")
        self.input_size: tuple[int, int] = tuple(
            config.model.input_size or self.metadata.get("input_size") or defaults["input_size"]
        )
        self.mean = tuple(self.metadata.get("mean") or defaults["mean"])
        self.std = tuple(self.metadata.get("std") or defaults["std"])
        self.model = model.to(self.device).eval()
        self._forward = torch.compile(self.model) if config.model.backend == "compile" else self.model
        self.config = config
        self._apply_runtime(config)
        self.tracker = alerting.AlertTracker.from_config(config.alerts)

    @classmethod
    def from_config(cls, config: PerceptionConfig) -> Perception:
        """Load the checkpoint named by ``model.weights`` and build the pipeline around it."""
        if not config.model.weights:
            raise ConfigError("model.weights: a checkpoint path is required (train one with `anomaly-seg train`)")
        model, metadata = load_model(config.model.weights, device="cpu")
        if getattr(model, "model_name", config.model.name) != config.model.name:
            config = replace_config(config, {"model": {"name": model.model_name}})
        return cls(model, config, metadata=metadata)

    # -- configuration -------------------------------------------------------------------

    def _apply_runtime(self, config: PerceptionConfig) -> None:
        scorer = get_scorer(config.scorer.name, **config.scorer.params)
        calibration = self.metadata.get("calibration", {}).get(config.scorer.name, {})
        threshold = config.alerts.threshold
        if threshold is None:
            threshold = calibration.get("threshold")
            if threshold is None:
                raise ConfigError(
                    f"alerts.threshold: no threshold set and the checkpoint has none calibrated for "
                    f"scorer {config.scorer.name!r}; set alerts.threshold"
                )
        value_range = config.render.heatmap_range or calibration.get("range") or scorer.display_range
        if value_range is None:
            value_range = (threshold - 1.0, threshold + 1.0)
        scorer.bind(self.model)
        self.scorer: Scorer = scorer
        self.threshold = float(threshold)
        self.heatmap_range = (float(value_range[0]), float(value_range[1]))
        self.config = config

    def update(self, overrides: Mapping[str, Any]) -> PerceptionConfig:
        """Change scorer, alert or render settings without reloading the model.

        ``overrides`` is a nested mapping such as ``{"alerts": {"threshold": 0.4}}``. It is
        validated as a whole before anything changes, so a rejected update leaves the
        pipeline as it was.
        """
        frozen = sorted(set(overrides) - set(RUNTIME_SECTIONS))
        if frozen:
            raise ConfigError(
                f"{frozen[0]}: cannot change at run time (only {', '.join(RUNTIME_SECTIONS)}); restart to change it"
            )
        config = replace_config(self.config, overrides)
        self._apply_runtime(config)
        self.tracker.configure(config.alerts)
        return config

    def reset(self) -> None:
        """Forget alert tracks (a new sequence starts)."""
        self.tracker.reset()

    # -- processing ----------------------------------------------------------------------

    @torch.inference_mode()
    def infer(self, frame: np.ndarray, *, features: bool = False) -> tuple[SegmentationOutput, torch.Tensor]:
        """One forward pass at network resolution and the uint8 input tensor, on the device.

        With ``features=True`` the output also carries the penultimate features that
        feature-based scorers read.
        """
        images = frame_to_tensor(frame, self.device)
        return self._run_model(normalize_images(images, self.input_size, self.mean, self.std), features), images

    def _run_model(self, network_input: torch.Tensor, features: bool) -> SegmentationOutput:
        if features:
            output = self.model.forward_with_features(network_input)
            output.inputs = network_input
            return output
        return SegmentationOutput(logits=self._forward(network_input), inputs=network_input)

    @torch.inference_mode()
    def process(self, frame: np.ndarray, *, render_color: bool = True, render_overlay: bool = True) -> PerceptionResult:
        """Run the whole pipeline on one HxWx3 uint8 RGB frame."""
        timer = _StageTimer(self.device)
        size = frame.shape[:2]
        with timer("preprocess"):
            network_input = normalize_images(frame_to_tensor(frame, self.device), self.input_size, self.mean, self.std)
        with timer("forward"):
            output = self._run_model(network_input, self.scorer.requires_features)
        with timer("score"):
            scores = self.scorer(output)
            labels = output.logits.argmax(dim=1)
        with timer("postprocess"):
            labels_np = resize_labels(labels, size)[0].cpu().numpy()
            anomaly_np = resize_scores(scores.float(), size)[0].cpu().numpy()
        with timer("alerts"):
            roi, drivable = alerting.region_of_interest(labels_np, self.config.alerts)
            components = alerting.find_components(
                anomaly_np, self.threshold, roi=roi, drivable=drivable, min_area_px=self.config.alerts.min_area_px
            )
            alerts = self.tracker.update(components)
        result = PerceptionResult(labels_np, anomaly_np, alerts, self.scorer.name, self.threshold)
        with timer("render"):
            if render_color:
                result.color = colorize(labels_np)
            if render_overlay:
                result.overlay = overlay(
                    frame,
                    anomaly_np,
                    self.heatmap_range,
                    alpha=self.config.render.overlay_alpha,
                    alerts=alerts if self.config.render.draw_alerts else (),
                )
        result.timings_ms = timer.stages
        result.timings_ms["total"] = sum(timer.stages.values())
        return result

    __call__ = process


class _StageTimer:
    """Wall-clock milliseconds per stage; synchronises CUDA so GPU work is charged to its stage."""

    def __init__(self, device: torch.device) -> None:
        self.stages: dict[str, float] = {}
        self._sync = device.type == "cuda"

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self._sync:
            torch.cuda.synchronize()
        self.stages[stage] = (time.perf_counter() - start) * 1000.0
