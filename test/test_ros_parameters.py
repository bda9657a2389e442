"""ROS parameters derived from the config schema: coverage, defaults, ranges, run-time changes."""

import dataclasses
import math

import pytest

from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.core.config import PerceptionConfig, load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.ros.parameters import (
    apply_changes,
    config_from_parameters,
    parameter_specs,
    runtime_overrides,
    specs_by_name,
    startup_error_message,
)

from conftest import scene_perception


def _config_keys() -> list[str]:
    config = PerceptionConfig()
    return [
        f"{section.name}.{item.name}"
        for section in dataclasses.fields(config)
        for item in dataclasses.fields(getattr(config, section.name))
    ]


def test_every_config_key_has_exactly_one_parameter():
    names = [spec.name for spec in parameter_specs() if spec.config_key]
    assert sorted(names) == sorted(_config_keys())
    all_names = [spec.name for spec in parameter_specs()]
    assert len(all_names) == len(set(all_names))
    assert all(spec.description for spec in parameter_specs())


def test_defaults_decode_to_the_schema_defaults():
    defaults = {spec.name: spec.default for spec in parameter_specs()}
    assert config_from_parameters(defaults) == load_config()
    # Typed-but-unset parameters (empty-array defaults) decode to the same defaults.
    unset = {spec.name: None for spec in parameter_specs() if spec.declared_unset}
    assert set(unset) == {"model.input_size", "model.mean", "model.std", "alerts.roi_polygon", "render.heatmap_range"}
    assert config_from_parameters(unset) == PerceptionConfig()


def test_read_only_and_types():
    specs = specs_by_name()
    assert all(spec.read_only for name, spec in specs.items() if name.startswith("model."))
    assert not any(
        spec.read_only for name, spec in specs.items() if name.split(".")[0] in ("alerts", "scorer", "far_field")
    )
    assert specs["alerts.threshold"].kind == "double" and math.isnan(specs["alerts.threshold"].default)
    assert specs["alerts.roi_polygon"].kind == "double_array"
    assert specs["model.input_size"].kind == "integer_array"
    assert specs["scorer.params"].kind == "string" and specs["scorer.params"].default == "{}"
    assert "drivable_and_polygon" in specs["alerts.roi"].additional_constraints


RANGED = sorted(spec.name for spec in parameter_specs() if spec.config_key and spec.value_range)


def test_bounded_keys_have_ranges():
    assert RANGED == sorted(
        ["model.num_classes", "model.threads", "model.int8_calibration_images"]
        + ["alerts.min_area_px", "alerts.persistence_k", "alerts.persistence_n"]
        + ["alerts.track_iou", "far_field.zoom", "render.overlay_alpha"]
    )


@pytest.mark.parametrize("name", RANGED)
def test_ranges_agree_with_validation(name):
    spec = specs_by_name()[name]
    low, high = spec.value_range
    section, key = name.split(".")
    step = 1 if spec.kind == "integer" else 1e-6
    base = {"alerts": {"persistence_k": 1}} if name == "alerts.persistence_n" else {}

    def load(value):
        return load_config(None, {**base, section: {**base.get(section, {}), key: value}})

    load(low)
    with pytest.raises(ConfigError, match=name):
        load(low - step)
    if high < 2**31 - 1 and name != "alerts.track_iou":  # track_iou < 1 is open above
        load(high)
        with pytest.raises(ConfigError, match=name):
            load(high + step)


def test_changes_map_to_nested_overrides():
    overrides = runtime_overrides(
        {
            "alerts.threshold": -4,
            "alerts.roi_polygon": [0.1, 0.9, 0.5, 0.4, 0.9, 0.9],
            "alerts.roi": "drivable_and_polygon",
            "scorer.name": "msp",
            "scorer.params": "{temperature: 2.0}",
            "render.heatmap_range": [],
            "ground.camera_height_m": 1.4,  # node-only: not a config override
        }
    )
    assert overrides == {
        "alerts": {
            "threshold": -4.0,
            "roi_polygon": [[0.1, 0.9], [0.5, 0.4], [0.9, 0.9]],
            "roi": "drivable_and_polygon",
        },
        "scorer": {"name": "msp", "params": {"temperature": 2.0}},
        "render": {"heatmap_range": None},
    }
    assert runtime_overrides({"alerts.threshold": math.nan}) == {"alerts": {"threshold": None}}


def test_changes_apply_to_perception():
    perception = scene_perception()
    assert apply_changes(perception.update, {"alerts.threshold": -2.0, "alerts.persistence_k": 1}) is None
    assert perception.threshold == -2.0 and perception.config.alerts.persistence_k == 1


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"alerts.persistence_k": 9}, "alerts.persistence_k"),
        ({"alerts.roi": "polygon"}, "alerts.roi_polygon"),
        ({"alerts.roi_polygon": [0.1, 0.2, 0.3]}, "alerts.roi_polygon"),
        ({"scorer.params": "[1, 2]"}, "scorer.params"),
        ({"scorer.name": "nope"}, "scorer.name"),
        ({"model.device": "cuda"}, "model.device"),
        ({"bogus.key": 1}, "bogus.key"),
    ],
)
def test_invalid_change_names_the_key_and_changes_nothing(changes, key):
    perception = scene_perception()
    before = perception.config
    reason = apply_changes(perception.update, {"alerts.threshold": -3.0, **changes})
    assert reason is not None and reason.startswith(key)
    assert perception.config == before and perception.threshold == -5.0


def test_startup_errors_name_the_parameter(tmp_path):
    defaults = {spec.name: spec.default for spec in parameter_specs()}
    messages = []
    for changes in ({}, {"model.weights": str(tmp_path / "missing.safetensors")}, {"model.device": "tpu"}):
        try:
            Perception.from_config(config_from_parameters({**defaults, **changes}))
        except (ConfigError, CheckpointError) as error:
            messages.append(startup_error_message(error))
    assert len(messages) == 3
    assert messages[0].startswith("cannot start: parameter model.weights:")
    assert messages[1].startswith("cannot start: parameter model.weights:") and "missing.safetensors" in messages[1]
    assert messages[2].startswith("cannot start: parameter model.device:")


def test_scorer_name_description_lists_every_registered_scorer():
    """The description names every scorer of the registry, not a hand-kept subset (it listed 4 of 12)."""
    from anomaly_seg_ros.scoring import available_scorers

    spec = specs_by_name()["scorer.name"]
    listed = spec.additional_constraints.removeprefix("one of: ").split(", ")
    assert listed == available_scorers()
    known = {"energy", "ensemble_entropy", "ensemble_mi", "flowenedet", "isomax", "maxentropy"}
    known |= {"maxlogit", "msp", "odin", "pgu", "sml", "void"}
    assert known <= set(listed)
    assert all(name in spec.description for name in known)


def test_parameters_from_config_round_trip():
    """A config -> parameter values -> config gives the same config (how the demo starts the node)."""
    from anomaly_seg_ros.ros.parameters import parameters_from_config

    config = load_config(
        None,
        [
            "alerts.threshold=0.25",
            "alerts.roi_polygon=[[0.0, 0.0], [1.0, 0.0], [1.0, 0.8]]",
            "scorer.name=msp",
            "scorer.params={temperature: 2.0}",
            "model.input_size=[64, 128]",
        ],
    )
    values = parameters_from_config(config)
    assert values["alerts.roi_polygon"] == [0.0, 0.0, 1.0, 0.0, 1.0, 0.8]
    assert values["alerts.threshold"] == 0.25 and values["model.input_size"] == [64, 128]
    assert config_from_parameters(values) == config
    assert "render.heatmap_range" not in values  # unset stays unset
