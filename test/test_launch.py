"""Launch files, parameter file and RViz config checked without ROS (syntax, names, topics)."""

import ast
import py_compile
from pathlib import Path

import pytest
import yaml

from anomaly_seg_ros.ros.messages import ANOMALY_HEATMAP, ANOMALY_OVERLAY, SEMANTIC_COLOR, output_topics
from anomaly_seg_ros.ros.parameters import parameter_specs

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
NODE_NAMESPACE = "/anomaly_seg_node"  # private topics of the node in the default namespace


@pytest.mark.parametrize(
    "path", [LAUNCH / "pipeline.launch.py", LAUNCH / "demo.launch.py", ROOT / "anomaly_seg_ros/ros/node.py"]
)
def test_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def _declared_arguments(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "DeclareLaunchArgument"
        and isinstance(node.args[0], ast.Constant)
    ]


def test_pipeline_launch_arguments():
    assert sorted(_declared_arguments(LAUNCH / "pipeline.launch.py")) == sorted(
        ["camera_topic", "compressed", "camera_info_topic", "namespace", "params_file", "model_name"]
        + ["weights", "scorer", "backend", "device", "use_sim_time", "rviz", "cameras"]
    )


def test_demo_launch_arguments_are_passed_to_the_pipeline():
    demo = LAUNCH / "demo.launch.py"
    assert sorted(_declared_arguments(demo)) == ["bag", "device", "rviz", "weights"]
    passed = {
        key.value
        for node in ast.walk(ast.parse(demo.read_text(encoding="utf-8")))
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant)
    }
    assert passed <= set(_declared_arguments(LAUNCH / "pipeline.launch.py"))
    text = demo.read_text(encoding="utf-8")
    assert '"--loop"' in text
    assert '"params_file": PathJoinSubstitution([share, "config", "demo_node.yaml"])' in text


def test_demo_node_parameters_are_the_demo_config():
    """config/demo_node.yaml (the node's parameters in demo.launch.py) is config/demo.yaml converted, plus
    the synthetic camera's height: the launched demo runs what `anomaly-seg demo` runs."""
    from anomaly_seg_ros.core.config import load_config
    from anomaly_seg_ros.data import camera_intrinsics
    from anomaly_seg_ros.ros.parameters import config_from_parameters, parameters_from_config
    from anomaly_seg_ros.tools.demo import BAG_SEED

    values = yaml.safe_load((ROOT / "config/demo_node.yaml").read_text(encoding="utf-8"))["/**"]["ros__parameters"]
    demo = load_config(ROOT / "config/demo.yaml")
    camera = camera_intrinsics(BAG_SEED, height=512, width=1024)
    assert values == parameters_from_config(demo) | {"ground.camera_height_m": camera.mount_height}
    assert values["scorer.name"] == "energy" and values["alerts.roi"] == "drivable_and_polygon"
    assert config_from_parameters(values).alerts == demo.alerts
    # the far field looks where the demo camera's straight road vanishes: its principal point
    assert demo.far_field.zoom == 2.0
    assert demo.far_field.center == pytest.approx((camera.cx / 1024, camera.cy / 512), abs=5e-4)


def test_launch_parameter_overrides_exist():
    from anomaly_seg_ros.ros.cameras import PARAMETER_ARGUMENTS

    names = {spec.name for spec in parameter_specs()}
    assert set(PARAMETER_ARGUMENTS.values()) <= names
    assert set(PARAMETER_ARGUMENTS) <= set(_declared_arguments(LAUNCH / "pipeline.launch.py"))


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_parameter_file_matches_the_declared_parameters():
    text = (ROOT / "config/pipeline.yaml").read_text(encoding="utf-8")
    values = _flatten(yaml.safe_load(text)["/**"]["ros__parameters"])
    specs = {spec.name: spec for spec in parameter_specs()}
    assert set(values) <= set(specs)
    # Everything is in the file except the parameters whose default means "unset", which are
    # documented there as comments.
    missing = set(specs) - set(values)
    assert missing == {name for name, spec in specs.items() if spec.null_default}
    assert all(f"#   {name}:" in text for name in missing)
    # The file states the defaults (a different value belongs in a vehicle's own file).
    for name, value in values.items():
        assert value == specs[name].default, name
        assert type(value) is type(specs[name].default), name  # rclpy rejects 1 for a double


def test_rviz_views_are_node_outputs():
    config = yaml.safe_load((ROOT / "config/anomaly_seg.rviz").read_text(encoding="utf-8"))
    displays = config["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    outputs = output_topics(NODE_NAMESPACE)
    views = {f"{NODE_NAMESPACE}/{name}" for name in (ANOMALY_OVERLAY, ANOMALY_HEATMAP, SEMANTIC_COLOR)}
    assert views <= topics and views <= set(outputs)
    assert topics - views == {"/camera/image_raw"}  # the camera, as pipeline.launch.py remaps it by default
    assert '"/camera/image_raw"' in (LAUNCH / "pipeline.launch.py").read_text(encoding="utf-8")


def test_one_node_per_camera():
    from anomaly_seg_ros.common.errors import ConfigError
    from anomaly_seg_ros.ros.cameras import CameraStream, camera_streams

    single = camera_streams("", image_topic="/cam/image_raw", camera_info_topic="/cam/camera_info", namespace="car")
    assert single == [CameraStream("car", "/cam/image_raw", "/cam/camera_info")]
    several = camera_streams(" front, left ", image_topic="/x", camera_info_topic="/y", namespace="/car")
    assert several == [
        CameraStream("/car/front", "/front/image_raw", "/front/camera_info"),
        CameraStream("/car/left", "/left/image_raw", "/left/camera_info"),
    ]
    for bad in ("front,front", "front,2cam", "front;left"):
        with pytest.raises(ConfigError, match="cameras"):
            camera_streams(bad, image_topic="/x", camera_info_topic="/y")
