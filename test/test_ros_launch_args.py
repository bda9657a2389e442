"""pipeline.launch.py's node, started for real: every parameter, remapping and argument it passes
is one the node accepts.

No launch / launch_ros wheel exists, so the launch file cannot run here. It builds its nodes
with :func:`anomaly_seg_ros.ros.cameras.pipeline_nodes`; this test calls that function with
the launch file's default argument values (plus a weights path, a namespace and every
override argument), turns the result into a command line the way launch_ros does
(``-r __node:=``, ``-r __ns:=``, ``--params-file`` for the parameter file and for each
override mapping written as ``/**: ros__parameters:`` YAML, ``-r from:=to``), starts
``anomaly_seg_node`` with it and checks the running node's name, topics and parameters.
"""

from __future__ import annotations

import ast
import signal
from pathlib import Path

import pytest
import yaml

from conftest import NodeProcess, RosGraph, ros_skip_reason

REASON = ros_skip_reason()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

from rclpy.parameter_client import AsyncParameterClient  # noqa: E402

from anomaly_seg_ros.models import build_model, save_checkpoint  # noqa: E402
from anomaly_seg_ros.ros.cameras import pipeline_nodes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "pipeline.launch.py"


def _launch_defaults() -> dict[str, str]:
    """Default values of the launch file's DeclareLaunchArgument calls (plain strings only)."""
    defaults = {}
    for node in ast.walk(ast.parse(LAUNCH.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            for keyword in node.keywords:
                if keyword.arg == "default_value" and isinstance(keyword.value, ast.Constant):
                    defaults[node.args[0].value] = keyword.value.value
    return defaults


def _ros_args(launch, tmp_path: Path) -> list[str]:
    """The command-line arguments launch_ros gives a Node action."""
    args = ["--ros-args", "-r", f"__node:={launch.name}"]
    if launch.namespace:
        args += ["-r", f"__ns:={launch.namespace}"]
    for index, parameters in enumerate(launch.parameters):
        if isinstance(parameters, dict):
            path = tmp_path / f"launch_params_{index}.yaml"
            path.write_text(yaml.safe_dump({"/**": {"ros__parameters": parameters}}))
            parameters = path
        args += ["--params-file", str(parameters)]
    for source, target in launch.remappings:
        args += ["-r", f"{source}:={target}"]
    return args


def test_the_launch_files_node_starts_with_everything_it_passes(tmp_path):
    weights = tmp_path / "erfnet.safetensors"
    calibration = {"msp": {"threshold": 0.5, "range": [0.0, 1.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=20), weights, metadata={"input_size": [32, 64], "calibration": calibration}
    )
    arguments = _launch_defaults() | {
        "params_file": str(REPO / "config" / "pipeline.yaml"),  # the installed share/.../config/pipeline.yaml
        "namespace": "/vehicle",
        "camera_topic": "/front/image_raw",
        "camera_info_topic": "/front/camera_info",
        "model_name": "erfnet",
        "weights": str(weights),
        "scorer": "msp",
        "backend": "eager",
        "device": "cpu",
        "compressed": "false",
        "use_sim_time": "false",
    }
    (launch,) = pipeline_nodes(arguments)
    graph = RosGraph()
    node = NodeProcess(_ros_args(launch, tmp_path), tmp_path / "node.log")
    try:
        graph.wait_for(
            lambda: graph.node.count_subscribers("/front/image_raw") > 0 or node.proc.poll() is not None,
            60,
            "the node subscribing to the remapped camera topic",
        )
        assert node.proc.poll() is None, node.output
        assert graph.node.count_subscribers("/front/camera_info") > 0
        assert graph.node.count_publishers("/vehicle/anomaly_seg_node/obstacle_alerts") > 0
        client = AsyncParameterClient(graph.node, "/vehicle/anomaly_seg_node")
        assert client.wait_for_services(timeout_sec=10.0)
        future = client.get_parameters(["model.weights", "scorer.name", "model.backend", "use_sim_time"])
        graph.wait_for(future.done, 10, "get_parameters")
        values = future.result().values
        assert [values[0].string_value, values[1].string_value, values[2].string_value] == [
            str(weights),
            "msp",
            "eager",
        ]
        assert values[3].bool_value is False
    finally:
        returncode = node.stop(signal.SIGINT)
        graph.close()
    assert returncode == 0 and "Traceback" not in node.output and "[ERROR]" not in node.output, node.output
