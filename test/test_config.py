"""Configuration: defaults, YAML + overrides, and errors that name the key."""

from pathlib import Path

import pytest

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import PerceptionConfig, load_config, parse_override, replace_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_yaml_equals_the_defaults():
    # config/perception.yaml documents the defaults; it must not drift from the dataclasses.
    assert load_config(REPO / "config" / "perception.yaml") == PerceptionConfig()


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("alerts:\n  threshold: 0.25\n  min_area_px: 10\nscorer:\n  name: msp\n  params: {temperature: 2}\n")
    config = load_config(path, ["alerts.min_area_px=42", "model.input_size=[256, 512]"])
    assert config.alerts.threshold == 0.25
    assert config.alerts.min_area_px == 42
    assert config.model.input_size == (256, 512)
    assert config.scorer.params == {"temperature": 2}


@pytest.mark.parametrize(
    "override, message",
    [
        ("alerts.thresold=1", r"unknown config key alerts\.thresold"),
        ("nosuch.key=1", r"unknown config key nosuch"),
        ("alerts.persistence_k=9", r"alerts\.persistence_k: expected an integer in 1\.\.persistence_n"),
        ("alerts.min_area_px=0", r"alerts\.min_area_px"),
        ("alerts.min_area_px=1.5", r"alerts\.min_area_px: expected an integer"),
        ("model.input_size=[100, 7]", r"model\.input_size"),
        ("model.device=tpu", r"model\.device"),
        ("model.backend=magic", r"model\.backend: expected one of"),
        ("scorer.name=foo", r"scorer\.name/params: unknown scorer 'foo'"),
        ("render.overlay_alpha=2", r"render\.overlay_alpha"),
        ("alerts.roi=polygon", r"alerts\.roi_polygon: expected at least 3 points"),
        ("alerts.roi_polygon=[[0, 0], [2, 0], [1, 1]]", r"alerts\.roi_polygon"),
        ("render.draw_alerts=maybe", r"render\.draw_alerts: expected true or false"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)


def test_parse_override_types_values_as_yaml():
    assert parse_override("alerts.threshold=0.5") == {"alerts": {"threshold": 0.5}}
    assert parse_override("alerts.roi_polygon=[[0,0],[1,0],[1,1]]") == {
        "alerts": {"roi_polygon": [[0, 0], [1, 0], [1, 1]]}
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("alerts.threshold")


def test_replace_config_validates_and_keeps_the_rest():
    config = load_config(None, ["alerts.threshold=1.0"])
    changed = replace_config(config, {"alerts": {"min_area_px": 7}})
    assert changed.alerts.min_area_px == 7 and changed.alerts.threshold == 1.0
    assert config.alerts.min_area_px == 100  # the original is untouched
    with pytest.raises(ConfigError, match="persistence_k"):
        replace_config(config, {"alerts": {"persistence_k": 0}})
