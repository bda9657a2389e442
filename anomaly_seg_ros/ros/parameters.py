"""The node's ROS parameters, derived from the one configuration schema.

Every key of :class:`~anomaly_seg_ros.core.config.PerceptionConfig` becomes one parameter with a
dotted name (``alerts.threshold``), the schema's default and a description taken from the
dataclass field comments, so the node, ``anomaly-seg bag`` and the YAML files cannot drift
apart. A few settings that only the live node has (input transport, ground geometry,
diagnostics) are added here too, so that one list describes everything the node declares.

ROS parameters have no null and no nested mappings, so some schema types are encoded:

* ``str | None``: ``""`` means null (``model.weights``);
* ``float | None``: NaN means null (``alerts.threshold``: NaN = the calibrated threshold);
* optional or variable-length tuples: arrays, empty means null or empty; a polygon is a flat
  ``[x0, y0, x1, y1, ...]`` double array;
* ``dict``: a YAML/JSON mapping in a string (``scorer.params: "{temperature: 1.5}"``).

A parameter whose default is an empty array is declared typed but unset, because rclpy
infers a byte array from an empty list; an unset value decodes to the schema's default.
Nothing here imports rclpy: the node turns :class:`ParameterSpec` into descriptors.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import yaml

from anomaly_seg_ros.common.errors import AnomalySegError, CheckpointError, ConfigError
from anomaly_seg_ros.core.config import PerceptionConfig, load_config
from anomaly_seg_ros.scoring import available_scorers

ParameterKind = Literal["bool", "integer", "double", "string", "integer_array", "double_array"]
Encoding = Literal["plain", "optional_string", "optional_double", "optional_array", "pairs", "yaml"]

#: Config sections fixed once the model is loaded; their parameters are read-only.
READ_ONLY_SECTIONS = ("model",)

_INT_MAX = 2**31 - 1

#: Bounds the schema's ``validate`` enforces, as descriptor ranges (a test checks they agree).
#: ROS ranges are closed, so ``track_iou < 1`` is shown as [0, 1] and enforced by validation.
_RANGES: dict[str, tuple[float, float]] = {
    "model.num_classes": (2, _INT_MAX),
    "model.threads": (0, 1024),
    "model.int8_calibration_images": (1, _INT_MAX),
    "alerts.min_area_px": (1, _INT_MAX),
    "alerts.persistence_k": (1, _INT_MAX),
    "alerts.persistence_n": (1, _INT_MAX),
    "alerts.track_iou": (0.0, 1.0),
    "far_field.zoom": (1.0, 16.0),
    "render.overlay_alpha": (0.0, 1.0),
}


@dataclass(frozen=True)
class ParameterSpec:
    """One ROS parameter: name, type, default (ROS-typed), description, constraints."""

    name: str
    kind: ParameterKind
    default: Any
    description: str
    read_only: bool = False
    #: Closed (from, to) bound for an integer or double parameter; None = unbounded.
    value_range: tuple[float, float] | None = None
    additional_constraints: str = ""
    #: True for keys of PerceptionConfig, False for node-only settings.
    config_key: bool = True
    encoding: Encoding = "plain"

    @property
    def declared_unset(self) -> bool:
        """Declared by type only (default is an empty array, which rclpy cannot type)."""
        return self.kind.endswith("_array") and len(self.default) == 0

    @property
    def null_default(self) -> bool:
        """Whether the default means "not set" (and so is left out of parameter files)."""
        return self.declared_unset or (self.encoding == "optional_double" and math.isnan(self.default))

    def decode(self, value: Any) -> Any:
        """The config value of a ROS value of this parameter (None = unset, the schema default)."""
        if value is None:
            value = self.default
        if self.kind == "double":
            value = float(value)
        elif self.kind == "double_array":
            value = [float(v) for v in value]
        elif self.kind == "integer_array":
            value = [int(v) for v in value]
        if self.encoding == "optional_string":
            return value or None
        if self.encoding == "optional_double":
            return None if math.isnan(value) else value
        if self.encoding == "optional_array":
            return value or None
        if self.encoding == "pairs":
            if len(value) % 2:
                raise ConfigError(f"{self.name}: expected a flat list [x0, y0, x1, y1, ...], got {len(value)} numbers")
            return [value[i : i + 2] for i in range(0, len(value), 2)]
        if self.encoding == "yaml":
            try:
                loaded = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError as error:
                raise ConfigError(f"{self.name}: not valid YAML: {error}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{self.name}: expected a mapping such as '{{temperature: 1.5}}', got {value!r}")
            return loaded
        return value


# ---------------------------------------------------------------------- schema -> specs


def _field_comments(cls: type) -> dict[str, str]:
    """``#:`` comment lines written above each dataclass field, joined per field."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and pending:
            comments[match.group(1)] = " ".join(pending)
        pending = []
    return comments


def _describe_type(annotation: Any) -> tuple[ParameterKind, Encoding, str]:
    """ROS kind, encoding and extra constraint text of a schema annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = (a for a in args if a is not type(None))
        kind, _, constraints = _describe_type(inner)
        if kind == "string":
            return kind, "optional_string", "empty = null"
        if kind == "double":
            return kind, "optional_double", "NaN (.nan) = null"
        return kind, "optional_array", f"{constraints}; empty = null".lstrip("; ")
    if origin is Literal:
        return "string", "plain", f"one of: {', '.join(map(str, args))}"
    if origin is tuple:
        if typing.get_origin(args[0]) is tuple:
            return "double_array", "pairs", "flat list [x0, y0, x1, y1, ...]"
        element = args[0]
        kind: ParameterKind = "integer_array" if element is int else "double_array"
        fixed = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} values"
        return kind, "plain", fixed
    if origin is dict:
        return "string", "yaml", "a YAML mapping, e.g. '{temperature: 1.5}'"
    simple: dict[Any, ParameterKind] = {bool: "bool", int: "integer", float: "double", str: "string"}
    return simple[annotation], "plain", ""


def _encode_default(value: Any, kind: ParameterKind, encoding: Encoding) -> Any:
    if encoding == "optional_string":
        return value or ""
    if encoding == "optional_double":
        return math.nan if value is None else float(value)
    if encoding == "yaml":
        return yaml.safe_dump(value, default_flow_style=True).strip() if value else "{}"
    if encoding == "pairs":
        return [float(c) for point in value for c in point]
    if kind.endswith("_array"):
        cast: Callable[[Any], Any] = int if kind == "integer_array" else float
        return [cast(v) for v in (value or ())]
    return value


def _described_by_registry() -> dict[str, tuple[str, str]]:
    """(description, constraints) of parameters whose choices come from a registry, not the schema."""
    scorers = ", ".join(available_scorers())
    return {
        "scorer.name": (
            f"Anomaly scorer (anomaly_seg_ros.scoring registry): {scorers}. Higher score = more anomalous.",
            f"one of: {scorers}",
        )
    }


def _config_specs() -> list[ParameterSpec]:
    defaults = PerceptionConfig()
    registry = _described_by_registry()
    specs = []
    for section in dataclasses.fields(PerceptionConfig):
        cls = type(getattr(defaults, section.name))
        section_doc = inspect.getdoc(cls) or ""
        comments = _field_comments(cls)
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            name = f"{section.name}.{item.name}"
            kind, encoding, constraints = _describe_type(hints[item.name])
            description = comments.get(item.name) or f"{section_doc} ({item.name})"
            description, constraints = registry.get(name, (description, constraints))
            specs.append(
                ParameterSpec(
                    name=name,
                    kind=kind,
                    default=_encode_default(getattr(getattr(defaults, section.name), item.name), kind, encoding),
                    description=description,
                    read_only=section.name in READ_ONLY_SECTIONS,
                    value_range=_RANGES.get(name),
                    additional_constraints=constraints,
                    encoding=encoding,
                )
            )
    return specs


#: Settings of the live node only (not in PerceptionConfig, so not in the bag tool).
NODE_SPECS = (
    ParameterSpec(
        "input.compressed",
        "bool",
        False,
        "Subscribe to image/compressed (sensor_msgs/CompressedImage) instead of image (sensor_msgs/Image).",
        read_only=True,
        config_key=False,
    ),
    ParameterSpec(
        "input.use_camera_info",
        "bool",
        True,
        "Subscribe to camera_info; its intrinsics with ground.camera_height_m give alert distances.",
        read_only=True,
        config_key=False,
    ),
    ParameterSpec(
        "ground.camera_height_m",
        "double",
        0.0,
        "Camera height above a flat road in metres; 0 disables the ground-plane position of alerts.",
        value_range=(0.0, 10.0),
        config_key=False,
    ),
    ParameterSpec(
        "ground.camera_pitch_rad",
        "double",
        0.0,
        "Camera pitch in radians, positive looking down; used with camera_height_m.",
        value_range=(-1.5, 1.5),
        config_key=False,
    ),
    ParameterSpec(
        "diagnostics.period_s",
        "double",
        1.0,
        "Period of the /diagnostics status in seconds.",
        read_only=True,
        value_range=(0.1, 60.0),
        config_key=False,
    ),
    ParameterSpec(
        "diagnostics.hardware_id",
        "string",
        "",
        "hardware_id of the diagnostics status; empty = the camera frame_id.",
        read_only=True,
        config_key=False,
    ),
)


@cache
def parameter_specs() -> tuple[ParameterSpec, ...]:
    """Every parameter the node declares: the config schema's, then the node's own."""
    return (*_config_specs(), *NODE_SPECS)


def specs_by_name() -> dict[str, ParameterSpec]:
    return {spec.name: spec for spec in parameter_specs()}


# ------------------------------------------------------------------ values -> config


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"alerts.threshold": 1.0}`` -> ``{"alerts": {"threshold": 1.0}}`` with values decoded."""
    specs = specs_by_name()
    tree: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None or not spec.config_key:
            continue
        section, key = name.split(".", 1)
        tree.setdefault(section, {})[key] = spec.decode(value)
    return tree


def config_from_parameters(values: Mapping[str, Any]) -> PerceptionConfig:
    """The validated configuration of the node's parameter values (start-up).

    Raises:
        ConfigError: naming the parameter (= dotted config key) that is wrong.
    """
    return load_config(None, _nest(values))


def runtime_overrides(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Nested ``Perception.update`` overrides of changed config parameters (others are ignored).

    Raises:
        ConfigError: a change to an unknown or read-only parameter, or an undecodable value.
    """
    specs = specs_by_name()
    for name in changes:
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"{name}: not a parameter of this node")
        if spec.read_only:
            raise ConfigError(f"{name}: read-only; restart the node to change it")
    return _nest(changes)


def apply_changes(update: Callable[[Mapping[str, Any]], Any], changes: Mapping[str, Any]) -> str | None:
    """Validate and apply changed parameters through ``update`` (``Perception.update``).

    Returns None on success, else the reason to report to the parameter client (the change
    is then rejected as a whole, and ``update`` guarantees nothing changed).
    """
    try:
        overrides = runtime_overrides(changes)
        if overrides:
            update(overrides)
    except ConfigError as error:
        return str(error)
    return None


def startup_error_message(error: AnomalySegError) -> str:
    """One log line for a start-up failure, naming the parameter to fix.

    Configuration errors already start with the dotted key, which is the parameter's name;
    a checkpoint that cannot be read is always fixed through ``model.weights``.
    """
    if isinstance(error, CheckpointError):
        return f"cannot start: parameter model.weights: {error}"
    return f"cannot start: parameter {error}"


def parameters_from_config(config: PerceptionConfig) -> dict[str, Any]:
    """ROS parameter values of a configuration (for a parameter file); unset values are left out.

    The inverse of :func:`config_from_parameters`: the node started with these values runs
    exactly ``config``, which is how the demo starts the node with a perception YAML.
    """
    values: dict[str, Any] = {}
    for spec in parameter_specs():
        if not spec.config_key:
            continue
        section, key = spec.name.split(".", 1)
        value = _encode_default(getattr(getattr(config, section), key), spec.kind, spec.encoding)
        if (spec.kind.endswith("_array") and len(value) == 0) or (
            spec.encoding == "optional_double" and math.isnan(value)
        ):
            continue
        values[spec.name] = value
    return values
