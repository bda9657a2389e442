"""An interrupted or failing replay keeps what it did: a closed, readable output bag and a partial report.

The SIGINT test runs a real ``anomaly-seg bag`` process, sends it a real SIGINT halfway and
opens the output with the rosbags reader (the issue-13 acceptance test).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader

from anomaly_seg_ros.models import build_model, save_checkpoint
from anomaly_seg_ros.replay.bagio import list_topics, truncated_mcap
from anomaly_seg_ros.replay.synthetic_bag import write_sequence_bag
from anomaly_seg_ros.tools.cli import main

REPO = Path(__file__).resolve().parents[1]
ALERTS = "/anomaly_seg_node/obstacle_alerts"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "erfnet.safetensors"
    calibration = {"energy": {"threshold": 0.0, "range": [-1.0, 1.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=19), path, metadata={"input_size": [64, 128], "calibration": calibration}
    )
    return path


def _read_alert_stamps(bag: Path) -> list[int]:
    """Timestamps of the alert messages, through the rosbags reader (fails on an unclosed bag)."""
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == ALERTS]
        return [timestamp for _, timestamp, _ in reader.messages(connections=connections)]


def test_sigint_closes_the_output_bag_and_writes_a_partial_report(tmp_path, checkpoint):
    frames = 150
    bag = write_sequence_bag(tmp_path / "drive", seed=3, num_frames=frames, height=64, width=128)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "anomaly_seg_ros.tools.cli", "bag", str(bag), "--out", str(out)]
    # a larger network input than the checkpoint's keeps each frame slow enough to stop halfway
    command += ["--weights", str(checkpoint), "--set", "model.input_size=[256, 512]", "--no-plots"]
    # A shell without job control starts background jobs with SIGINT ignored, and a Python started
    # so keeps ignoring it (as `nohup` intends); the child gets the default disposition, as from a terminal.
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    stderr = bytearray()

    def pump() -> None:
        while chunk := process.stderr.read1(4096):
            stderr.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    done = 0
    while done < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = re.findall(rb"replay:.*?(\d+)/%d" % frames, bytes(stderr))
        done = int(counts[-1]) if counts else 0
    assert process.poll() is None, f"finished before the interrupt: {bytes(stderr)[-2000:]!r}"
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=120)
    reader.join(timeout=10)
    text = bytes(stderr).decode(errors="replace")

    assert code == 130, text[-2000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "stopped at camera frame" in text.splitlines()[-1]
    stamps = _read_alert_stamps(out)  # the rosbags reader opens it: index and metadata.yaml were written
    assert (out / "metadata.yaml").is_file()
    report = json.loads((tmp_path / "out_report" / "report.json").read_text())
    stopped = report["partial"]["stopped_at_frame"]
    assert report["partial"]["reason"] == "interrupted"
    assert done - 1 <= stopped < frames  # the bar counts a frame when it starts
    # every frame before the stop has its outputs in the bag, and nothing after it
    assert len(stamps) == report["bags"][0]["processed"] == stopped
    assert "Partial report" in (tmp_path / "out_report" / "report.md").read_text()


def test_an_error_mid_bag_keeps_the_frames_before_it(tmp_path, checkpoint, monkeypatch, capsys):
    from anomaly_seg_ros.core.perception import Perception

    bag = write_sequence_bag(tmp_path / "drive", seed=4, num_frames=6, height=64, width=128)
    original = Perception.process
    calls = {"n": 0}

    def failing(self, frame, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise MemoryError("simulated allocation failure")
        return original(self, frame, **kwargs)

    monkeypatch.setattr(Perception, "process", failing)
    out = tmp_path / "out"
    code = main(["bag", str(bag), "--out", str(out), "--weights", str(checkpoint), "--no-progress", "--no-plots"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "stopped at camera frame 3 (MemoryError: simulated allocation failure)" in err[-1]
    assert len(_read_alert_stamps(out)) == 3
    report = json.loads((tmp_path / "out_report" / "report.json").read_text())
    assert report["partial"]["stopped_at_frame"] == 3 and report["bags"][0]["processed"] == 3


def test_a_truncated_mcap_replays_its_readable_part(tmp_path, checkpoint, capsys):
    # ~130 kB a frame: the writer's 1 MiB chunks make a 3-chunk file, of which the cut keeps one or two
    bag = write_sequence_bag(tmp_path / "drive", seed=5, num_frames=24, height=128, width=256)
    complete = {topic: count for topic, (_, count) in list_topics(bag).items()}
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    cut = tmp_path / "cut"  # what a power cut leaves: the folder, a truncated mcap, no metadata.yaml
    cut.mkdir()
    (cut / mcap.name).write_bytes(data[: len(data) * 6 // 10])
    truncated = truncated_mcap(cut)
    assert truncated is not None and 0 < truncated.readable_bytes <= len(data) * 6 // 10
    readable = {topic: count for topic, (_, count) in list_topics(cut).items()}
    assert 0 < readable["/camera/image_raw"] < complete["/camera/image_raw"]

    out = tmp_path / "out"
    assert main(["bag", str(cut), "--out", str(out), "--weights", str(checkpoint), "--no-progress"]) == 0
    assert len(_read_alert_stamps(out)) == readable["/camera/image_raw"]
    report = (tmp_path / "out_report" / "report.md").read_text()
    assert "is truncated" in report and f"{truncated.readable_bytes} of {len(data) * 6 // 10} bytes" in report
    assert complete["/camera/image_raw"] == 24
