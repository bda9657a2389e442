"""The ``anomaly-seg`` command: bag replay end to end, and errors that exit 2 naming what to fix."""

import json

import numpy as np
import pytest

from anomaly_seg_ros.models import build_model, save_checkpoint
from anomaly_seg_ros.replay.bagio import list_topics
from anomaly_seg_ros.replay.synthetic_bag import write_sequence_bag
from anomaly_seg_ros.tools.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "erfnet.safetensors"
    calibration = {
        name: {"threshold": 0.0, "range": [-1.0, 1.0]} for name in ("msp", "maxlogit", "maxentropy", "energy")
    }
    save_checkpoint(
        build_model("erfnet", num_classes=19),
        path,
        metadata={"input_size": [64, 128], "calibration": calibration},
    )
    return path


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return write_sequence_bag(tmp_path_factory.mktemp("bag") / "drive", seed=1, num_frames=4, height=64, width=128)


def test_bag_command_writes_output_bag_and_report(tmp_path, checkpoint, bag, capsys):
    out = tmp_path / "out"
    code = main(
        ["bag", str(bag), "--out", str(out), "--weights", str(checkpoint), "--no-progress", "--storage", "sqlite3"]
    )
    assert code == 0
    topics = list_topics(out)
    assert topics["/anomaly_seg_node/obstacle_alerts"] == ("anomaly_seg_msgs/msg/ObstacleAlertArray", 4)
    assert topics["/camera/image_raw"][1] == 4
    report = tmp_path / "out_report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["processed"] == 4 and metrics["gt_topic"] == "/camera/anomaly_gt"
    assert set(metrics["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert (report / "report.md").read_text().startswith("# Bag replay report")
    assert "report written to" in capsys.readouterr().out


def test_set_overrides_reach_the_pipeline(tmp_path, checkpoint, bag):
    out = tmp_path / "out"
    args = ["bag", str(bag), "--out", str(out), "--weights", str(checkpoint), "--no-progress"]
    assert main([*args, "--set", "scorer.name=msp", "--set", "alerts.threshold=-0.25"]) == 0
    from anomaly_seg_ros.replay.bagio import iter_messages

    alerts = [m.msg for m in iter_messages(out, topics=["/anomaly_seg_node/obstacle_alerts"])]
    assert {a.scorer for a in alerts} == {"msp"}
    assert np.allclose([a.threshold for a in alerts], -0.25)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "alerts.persistence_k=0"], "alerts.persistence_k"),
        (["--set", "scorer.name=nope"], "unknown scorer 'nope'"),
        (["--weights", "/no/such.safetensors"], "/no/such.safetensors"),
        (["--topic", "/nope"], "'/nope' is not in"),
    ],
)
def test_errors_exit_2_with_one_line_naming_the_problem(tmp_path, checkpoint, bag, capsys, extra, message):
    args = ["bag", str(bag), "--out", str(tmp_path / "out"), "--no-progress"]
    if "--weights" not in extra:
        args += ["--weights", str(checkpoint)]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
