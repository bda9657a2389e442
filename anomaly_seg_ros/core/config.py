"""The one configuration schema of the perception pipeline.

The live node, the bag tool and the evaluator are configured from the same typed tree:
defaults live in the dataclasses below, a YAML file overrides them, and ``key=value``
overrides (dotted keys, YAML-typed values) override the file. Unknown keys, wrong types and
out-of-range values raise :class:`ConfigError` naming the dotted key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from anomaly_seg_ros.common.errors import ConfigError


@dataclass
class ModelConfig:
    """Which network runs, from which weights, on what input size and device."""

    #: Registered network name (see ``anomaly_seg_ros.models.available_models``).
    name: str = "erfnet"
    #: Output classes: 19 Cityscapes trainIds, or 20 with a void class; checkpoints record theirs.
    num_classes: int = 20
    #: Checkpoint path (our safetensors or an official .pth). Required to run on real data.
    weights: str | None = None
    #: Network input (height, width); frames of any size are resized to it. Null: the
    #: checkpoint's recorded input size.
    input_size: tuple[int, int] | None = None
    #: Input normalisation, RGB on the 0..1 scale: (x - mean) / std. Null: the checkpoint's
    #: recorded values (a bare .pth state_dict records none: the model's registry defaults).
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    #: Torch device: cpu, cuda or cuda:N.
    device: str = "cpu"
    #: Inference backend: auto (the fastest available on the device: tensorrt, then compile on
    #: CUDA; on CPU onnxruntime, then openvino when installed, else eager; measured), tensorrt
    #: (Torch-TensorRT), compile (torch.compile), onnxruntime, openvino or eager PyTorch.
    backend: Literal["auto", "tensorrt", "compile", "onnxruntime", "openvino", "eager"] = "auto"
    #: Arithmetic precision of the network: fp32, fp16 (CUDA only), bf16 (OpenVINO on a CPU
    #: with BF16) or int8 (TensorRT only, calibrated on int8_calibration images).
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    #: When the requested backend or precision cannot run here, fall back along
    #: tensorrt -> compile -> eager (and to fp32) with a logged reason instead of failing.
    fallback: bool = True
    #: torch.compile mode of the compile backend.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    #: Replay the fixed-shape forward as a CUDA graph (CUDA only; eager and compile backends).
    cuda_graphs: bool = False
    #: CPU intra-op threads (torch, ONNX Runtime, OpenVINO); 0 = the thread policy's default
    #: (OMP_NUM_THREADS, else every available core; inference/threads.py).
    threads: int = 0
    #: Folder of compiled engines (see `anomaly-seg export`); null = compile at every start.
    engine_cache: str | None = None
    #: Image folder (png/jpg, searched recursively) of INT8 calibration frames; required for int8.
    int8_calibration: str | None = None
    #: Number of calibration images read from int8_calibration.
    int8_calibration_images: int = 64
    #: Data type of the published anomaly heatmap (float16 halves the device-to-host copy).
    heatmap_dtype: Literal["float32", "float16"] = "float32"

    def validate(self, prefix: str) -> None:
        _check(self.num_classes >= 2, prefix, "num_classes", "an integer >= 2", self.num_classes)
        if self.input_size is not None:
            height, width = self.input_size
            _check(
                height >= 8 and width >= 8 and height % 8 == 0 and width % 8 == 0,
                prefix,
                "input_size",
                "[height, width], both positive multiples of 8",
                list(self.input_size),
            )
        if self.std is not None:
            _check(all(v > 0 for v in self.std), prefix, "std", "3 positive numbers", list(self.std))
        _check(
            self.device == "cpu" or self.device.startswith("cuda"),
            prefix,
            "device",
            "'cpu', 'cuda' or 'cuda:N'",
            self.device,
        )
        _check(0 <= self.threads <= 1024, prefix, "threads", "an integer in 0..1024 (0 = all cores)", self.threads)
        _check(
            self.int8_calibration_images >= 1,
            prefix,
            "int8_calibration_images",
            "an integer >= 1",
            self.int8_calibration_images,
        )


@dataclass
class ScorerConfig:
    """The anomaly scorer and its parameters (see ``anomaly_seg_ros.scoring``)."""

    #: Scorer name (any registered scorer). Energy (Liu et al. 2020) by default: the score that outlier
    #: exposure trains (the demo model), and on a par with MaxLogit on real data without it (docs/real_benchmarks.md).
    name: str = "energy"
    #: Scorer keyword parameters, e.g. {temperature: 1.5}.
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        from anomaly_seg_ros.scoring import get_scorer

        try:
            get_scorer(self.name, **self.params)
        except ConfigError as error:
            raise ConfigError(f"{prefix}name/params: {error}") from None


@dataclass
class AlertConfig:
    """How the anomaly map becomes obstacle alerts."""

    #: Score above which a pixel counts as anomalous, in the scorer's own scale. Null: the
    #: threshold calibrated for this scorer at training time and stored in the checkpoint.
    threshold: float | None = None
    #: Region of interest: the predicted drivable area, a static polygon, both, or the whole image.
    roi: Literal["drivable", "polygon", "drivable_and_polygon", "none"] = "drivable"
    #: trainIds whose predicted pixels form the drivable area.
    drivable_classes: tuple[int, ...] = (0,)
    #: Static polygon in normalised image coordinates [[x, y], ...], x right, y down, 0..1.
    roi_polygon: tuple[tuple[float, float], ...] = ()
    #: Connected components smaller than this (pixels of the source frame) are dropped.
    min_area_px: int = 100
    #: An alert is raised once its track was seen in k of the last n frames.
    persistence_k: int = 3
    #: Window length n of the k-of-n persistence rule, in frames.
    persistence_n: int = 5
    #: Bounding-box IoU above which a component continues an existing track.
    track_iou: float = 0.1

    def validate(self, prefix: str) -> None:
        _check(self.min_area_px >= 1, prefix, "min_area_px", "an integer >= 1", self.min_area_px)
        _check(self.persistence_n >= 1, prefix, "persistence_n", "an integer >= 1", self.persistence_n)
        _check(
            1 <= self.persistence_k <= self.persistence_n,
            prefix,
            "persistence_k",
            f"an integer in 1..persistence_n ({self.persistence_n})",
            self.persistence_k,
        )
        _check(0.0 <= self.track_iou < 1.0, prefix, "track_iou", "a number in [0, 1)", self.track_iou)
        _check(
            all(0 <= c <= 255 for c in self.drivable_classes),
            prefix,
            "drivable_classes",
            "trainIds in 0..255",
            list(self.drivable_classes),
        )
        for point in self.roi_polygon:
            _check(
                len(point) == 2 and all(0.0 <= v <= 1.0 for v in point),
                prefix,
                "roi_polygon",
                "a list of [x, y] points with coordinates in 0..1",
                [list(p) for p in self.roi_polygon],
            )
        if self.roi in ("polygon", "drivable_and_polygon"):
            _check(
                len(self.roi_polygon) >= 3,
                prefix,
                "roi_polygon",
                f"at least 3 points when roi is {self.roi!r}",
                [list(p) for p in self.roi_polygon],
            )


@dataclass
class FarFieldConfig:
    """A second, zoomed look at the far road for small distant obstacles (core/far_field.py)."""

    #: Frame size / crop size of the far-field crop, run through the network at its input size
    #: besides the whole frame; inside the crop the anomaly score is the higher of the two.
    #: 1 = off. Frame size / network input size (e.g. 2 for 1024x512 frames and a 512x256
    #: network) looks at the camera's native resolution. Costs one more forward pass per frame.
    zoom: float = 1.0
    #: Centre of the crop, [x, y] in 0..1 of the frame's width and height: where the road ahead
    #: vanishes, (cx / width, cy / height) of the camera's principal point for a level camera.
    center: tuple[float, float] = (0.5, 0.5)

    def validate(self, prefix: str) -> None:
        _check(1.0 <= self.zoom <= 16.0, prefix, "zoom", "a number in [1, 16] (1 = off)", self.zoom)
        _check(
            all(0.0 <= v <= 1.0 for v in self.center),
            prefix,
            "center",
            "[x, y] with both coordinates in 0..1",
            list(self.center),
        )


@dataclass
class RenderConfig:
    """Colour views for RViz and reports."""

    #: Heatmap colour scale (low, high) in score units; null = the scorer's default range,
    #: else the threshold +- a margin.
    heatmap_range: tuple[float, float] | None = None
    #: Weight of the heatmap in the overlay view (0 = camera only, 1 = heatmap only).
    overlay_alpha: float = 0.5
    #: Draw alert boxes and track ids on the overlay view.
    draw_alerts: bool = True
    #: Outline the far-field crop (far_field.zoom > 1) on the overlay view, to check where it looks.
    draw_far_field: bool = True

    def validate(self, prefix: str) -> None:
        _check(0.0 <= self.overlay_alpha <= 1.0, prefix, "overlay_alpha", "a number in [0, 1]", self.overlay_alpha)
        if self.heatmap_range is not None:
            low, high = self.heatmap_range
            _check(low < high, prefix, "heatmap_range", "[low, high] with low < high", list(self.heatmap_range))


@dataclass
class PerceptionConfig:
    """Everything the perception core needs; the root of the configuration tree."""

    model: ModelConfig = field(default_factory=ModelConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    far_field: FarFieldConfig = field(default_factory=FarFieldConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def validate(self, prefix: str = "") -> None:
        for item in dataclasses.fields(self):
            getattr(self, item.name).validate(f"{prefix}{item.name}.")

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def _check(ok: bool, prefix: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{prefix}{key}: expected {expected}, got {value!r}")


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    return value


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: got {value!r}, which fits none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} items, got {value!r}")
        return tuple(_coerce(item, arg, f"{key}[{i}]") for i, (item, arg) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        # nan and inf would pass every range check (all comparisons with nan are False) and
        # fail only on the first frame; no setting has a use for them
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, f"{key}.")
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys under {prefix.rstrip('.') or 'the root'}: "
            f"{', '.join(sorted(names))}"
        )
    values = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    return cls(**values)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and key != "params":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``"alerts.threshold=0.4"`` -> ``{"alerts": {"threshold": 0.4}}`` (value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. alerts.threshold=0.5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override {text!r}: the value of {key.strip()} is not valid YAML ({_yaml_problem(error)})"
        ) from None
    tree: dict[str, Any] = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line from a PyYAML error: the problem and where it is (its str() spans several lines)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path``; errors name the file (as ``what PATH``)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {error.start}); expected a UTF-8 YAML file") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {_yaml_problem(error)}") from None
    if loaded is not None and not isinstance(loaded, Mapping):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return dict(loaded or {})


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> PerceptionConfig:
    """Defaults, then the YAML file at ``path``, then the overrides; validated."""
    data = read_yaml_mapping(path, "config file") if path is not None else {}
    if isinstance(overrides, Mapping):
        data = _merge(data, overrides)
    else:
        for text in overrides:
            data = _merge(data, parse_override(text))
    config = _build(PerceptionConfig, data, "")
    config.validate()
    return config


def replace_config(config: PerceptionConfig, overrides: Mapping[str, Any]) -> PerceptionConfig:
    """A validated copy of ``config`` with nested ``overrides`` applied (used for run-time changes)."""
    return load_config(None, _merge(config.to_dict(), overrides))
