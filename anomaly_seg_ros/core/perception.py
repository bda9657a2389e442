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

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core import alerts as alerting
from anomaly_seg_ros.core.config import PerceptionConfig, replace_config
from anomaly_seg_ros.core.far_field import crop_images, far_field_box, fuse_far_field
from anomaly_seg_ros.core.score_stage import COMPILE_MIN_ELEMENTS, ScoreStage, fusable
from anomaly_seg_ros.core.visualization import colorize, overlay
from anomaly_seg_ros.inference.backends import BackendRequest, InferenceBackend, select_backend
from anomaly_seg_ros.inference.preprocess import (
    FrameTransfer,
    check_frame,
    frame_labels,
    frame_scores,
    normalize_images,
)
from anomaly_seg_ros.inference.threads import configure_threads
from anomaly_seg_ros.models import load_model, model_defaults
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import Scorer, get_scorer, prepare_scorer
from anomaly_seg_ros.scoring.base import TemperatureScorer

#: Keys of the configuration that may change while the pipeline runs (no model reload).
RUNTIME_SECTIONS = ("scorer", "alerts", "far_field", "render")


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
        self.mean = tuple(config.model.mean or self.metadata.get("mean") or defaults["mean"])
        self.std = tuple(config.model.std or self.metadata.get("std") or defaults["std"])
        self.threads = configure_threads(config.model.threads)
        self.model = model.to(self.device).eval()
        request = BackendRequest.from_config(config.model, input_size=self.input_size, mean=self.mean, std=self.std)
        #: The network as it runs: ``backend.name`` is the backend actually in use,
        #: ``backend.skipped`` says why faster ones were not (see inference/backends.py).
        self.backend: InferenceBackend = select_backend(self.model, request)
        # float16 halves the device-to-host copy of the heatmap; on CPU there is no copy to save.
        self._heatmap_dtype = (
            torch.float16 if config.model.heatmap_dtype == "float16" and self.device.type == "cuda" else torch.float32
        )
        self._transfer = FrameTransfer(self.device)
        #: Synchronise CUDA after every stage so ``timings_ms`` charges GPU work to its stage
        #: (costs the copy/compute overlap; turn off on the vehicle when stage timings are not read).
        self.sync_stage_timings = True
        self.config = config
        self._apply_runtime(config)
        if self.scorer.requires_features:
            self.backend.build_features()  # compile now, not on the first frame
        self.tracker = alerting.AlertTracker.from_config(config.alerts)

    @property
    def backend_name(self) -> str:
        """The backend that actually runs (``tensorrt``, ``compile`` or ``eager``)."""
        return self.backend.name

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
        if isinstance(scorer, TemperatureScorer) and "temperature" not in config.scorer.params:
            # The checkpoint's calibrated temperature (anomaly-seg calibrate) unless the config sets one.
            temperature = float(self.metadata.get("temperature", 1.0))
            scorer = get_scorer(config.scorer.name, **config.scorer.params, temperature=temperature)
        if scorer.offline_only:
            raise ConfigError(
                f"scorer.name: {config.scorer.name!r} is offline only (it needs input gradients); "
                f"use it offline (anomaly_seg_ros.evaluation.grid.evaluate_scorers), not in the perception pipeline"
            )
        calibration = self.metadata.get("calibration", {}).get(config.scorer.name, {})
        threshold = config.alerts.threshold
        if threshold is None:
            threshold = calibration.get("threshold")
            if threshold is None:
                raise ConfigError(
                    f"alerts.threshold: no threshold set and the checkpoint has none calibrated for "
                    f"scorer {config.scorer.name!r}; set alerts.threshold, or calibrate one with "
                    f"`anomaly-seg calibrate --checkpoint CKPT --data ROOT --config CONFIG`"
                )
        value_range = config.render.heatmap_range or calibration.get("range") or scorer.display_range
        if value_range is None:
            value_range = (threshold - 1.0, threshold + 1.0)
        # binds the network and loads a fitted scorer's statistics stored next to the checkpoint
        prepare_scorer(scorer, self.model, checkpoint=config.model.weights, metadata=self.metadata)
        self.scorer: Scorer = scorer
        previous = getattr(self, "score_stage", None)
        same = previous is not None and type(previous.scorer) is type(scorer)
        if same and previous.scorer.params == scorer.params and fusable(scorer):
            previous.scorer = scorer  # the compiled kernel computes the same formula: keep it
        else:
            #: Scores and labels of a forward pass, compiled into one kernel where that pays (score_stage.py).
            self.score_stage = ScoreStage(scorer)
            self._warm_up_score_stage()
        self.threshold = float(threshold)
        self.heatmap_range = (float(value_range[0]), float(value_range[1]))
        self.config = config

    def _warm_up_score_stage(self) -> None:
        """Compile the score stage now for the logits the backend returns, not on the first frame."""
        classes = int(getattr(self.model, "num_classes", 2))
        expected = classes * self.input_size[0] * self.input_size[1]
        if not fusable(self.scorer) or (self.device.type != "cuda" and expected < COMPILE_MIN_ELEMENTS):
            return
        with torch.inference_mode():
            dummy = torch.zeros((1, 3, *self.input_size), device=self.device)
            logits = self.backend(dummy)
        self.score_stage.warm_up(logits)

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
        images = self._transfer.upload(frame)
        return self._run_model(normalize_images(images, self.input_size, self.mean, self.std), features), images

    def _run_model(self, network_input: torch.Tensor, features: bool) -> SegmentationOutput:
        if features:
            output = self.backend.forward_with_features(network_input)
            output.inputs = network_input
            return output
        return SegmentationOutput(logits=self.backend(network_input), inputs=network_input)

    @torch.inference_mode()
    def process(self, frame: np.ndarray, *, render_color: bool = True, render_overlay: bool = True) -> PerceptionResult:
        """Run the whole pipeline on one HxWx3 uint8 RGB frame."""
        timer = _StageTimer(self.device, sync=self.sync_stage_timings)
        check_frame(frame)
        size = frame.shape[:2]
        with timer("upload"):
            images = self._transfer.upload(frame)
        with timer("preprocess"):
            network_input = normalize_images(images, self.input_size, self.mean, self.std)
        with timer("forward"):
            output = self._run_model(network_input, self.scorer.requires_features)
        with timer("score"):
            scores, labels = self.score_stage(output)
        box = None
        if self.config.far_field.zoom > 1.0:
            with timer("far_field"):
                box = far_field_box(size, self.config.far_field.zoom, self.config.far_field.center)
                far_input = normalize_images(crop_images(images, box), self.input_size, self.mean, self.std)
                far_output = self._run_model(far_input, self.scorer.requires_features)
                far_scores = frame_scores(self.score_stage.scores(far_output), box.size)
        # Resize on the device and bring back only the published maps: uint8 labels and the
        # heatmap; the label copy overlaps the score resize on CUDA (see FrameTransfer).
        with timer("postprocess"):
            self._transfer.start_download(frame_labels(labels, size)[0])
            if box is None:
                heatmap = frame_scores(scores, size, self._heatmap_dtype)
            else:
                # fused in float32, then cast once: a float16 heatmap rounds only once
                heatmap = fuse_far_field(frame_scores(scores, size), far_scores, box).to(self._heatmap_dtype)
            self._transfer.start_download(heatmap[0])
        with timer("download"):
            labels_np, anomaly_np = self._transfer.finish_download()
            if anomaly_np.dtype != np.float32:
                anomaly_np = anomaly_np.astype(np.float32)
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
                    far_field=(box.top, box.bottom, box.left, box.right)
                    if box is not None and self.config.render.draw_far_field
                    else None,
                )
        result.timings_ms = timer.stages
        result.timings_ms["total"] = sum(timer.stages.values())
        return result

    __call__ = process


class _StageTimer:
    """Wall-clock milliseconds per stage.

    With ``sync`` (the default) CUDA is synchronised after every stage so GPU work is charged
    to its stage; without it the stages only measure the CPU time to queue the work, the
    GPU time lands in ``download`` (which waits for the results), and copies overlap compute
    as they would with no timer at all.
    """

    def __init__(self, device: torch.device, *, sync: bool = True) -> None:
        self.stages: dict[str, float] = {}
        self._sync = sync and device.type == "cuda"

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self._sync:
            torch.cuda.synchronize()
        self.stages[stage] = (time.perf_counter() - start) * 1000.0
