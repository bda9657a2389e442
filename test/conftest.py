"""Shared test doubles.

``SceneLogits`` stands in for the segmentation network where a test must know every output
exactly; it replaces the model only, never ROS or a backend.
"""

import torch
from torch import nn

from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception

NET = (64, 128)  # network input (h, w) used with SceneLogits


class SceneLogits(nn.Module):
    """A stand-in network with known outputs: road (class 0) in the lower half with a square of
    flat logits (the anomaly) on it; sky (class 10) above. Input-independent on purpose, so
    the test knows every score exactly: road maxlogit -10, anomaly 0."""

    def __init__(self, square: tuple[int, int, int, int] = (40, 56, 56, 72)) -> None:
        super().__init__()
        self.square = square
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        n, _, h, w = x.shape
        logits = torch.zeros(n, 19, h, w)
        logits[:, 10, : h // 2] = 10.0
        logits[:, 0, h // 2 :] = 10.0
        top, bottom, left, right = self.square
        logits[:, :, top:bottom, left:right] = 0.0
        return logits


class RedDetector(nn.Module):
    """A stand-in network that knows one thing: red is anomalous. On 0..1 RGB input, redness
    r = R - G; road (class 0) gets logit 10 (1 - r), the other classes 0, so the maxlogit
    score -max(10 (1 - r), 0) is -10 on grey and 0 on pure red. Counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = torch.zeros(x.shape[0], 19, *x.shape[-2:])
        logits[:, 0] = 10.0 * (1.0 - (x[:, 0] - x[:, 1]))
        return logits


def scene_perception(*overrides: str, model: nn.Module | None = None) -> Perception:
    """A Perception around SceneLogits: threshold -5 between road (-10) and anomaly (0), 2-of-3 persistence."""
    config = load_config(
        None,
        [
            f"model.input_size=[{NET[0]}, {NET[1]}]",
            "scorer.name=maxlogit",  # the scene's logits are written in maxlogit terms
            "alerts.threshold=-5.0",
            "alerts.min_area_px=10",
            "alerts.persistence_k=2",
            "alerts.persistence_n=3",
            *overrides,
        ],
    )
    return Perception(model or SceneLogits(), config)


def ros_test_assets(root) -> tuple:
    """Synthetic bag, a calibrated random-weight checkpoint and the bag's image stamps, for the
    tests that run the node under ROS (test_ros_node.py, test_ros_launch.py)."""
    from pathlib import Path

    from rosbags.highlevel import AnyReader

    from anomaly_seg_ros.models import build_model, save_checkpoint
    from anomaly_seg_ros.replay.synthetic_bag import SequenceTopics, write_sequence_bag

    root = Path(root)
    bag = write_sequence_bag(root / "bag", num_frames=10, height=128, width=256, fps=10.0)
    weights = root / "erfnet.safetensors"
    calibration = {"energy": {"threshold": -3.5, "range": [-9.0, -2.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=19), weights, metadata={"input_size": [64, 128], "calibration": calibration}
    )
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == SequenceTopics().image]
        stamps = {timestamp for _, timestamp, _ in reader.messages(connections=connections)}
    return bag, weights, stamps


# ------------------------------------------------------------------ ROS 2 graph fixtures
#
# The integration tests (test_ros_graph.py, test_ros_launch_args.py) run anomaly_seg_node in
# its own process, started by its console entry point as a user starts it, on a real ROS 2
# graph (Fast DDS) shared with an rclpy probe node that spins in a background thread.


def ros_skip_reason() -> str | None:
    """Why the ROS graph tests cannot run here (None when they can)."""
    import importlib.util

    if importlib.util.find_spec("rclpy") is None:
        return "rclpy is not installed: run scripts/setup.sh (x86_64 pip wheels) or source a ROS 2"
    if importlib.util.find_spec("anomaly_seg_msgs") is None:
        return "anomaly_seg_msgs is not built: run scripts/setup.sh or colcon build the msg/ package"
    return None


def ros_graph_env() -> dict[str, str]:
    """Environment of one test session's graph: its own domain, discovery on this host only."""
    import os

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return env


class RosGraph:
    """rclpy initialised once, a probe node spinning in a thread, helpers to wait on it."""

    def __init__(self) -> None:
        import os
        import threading

        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        os.environ.update(ros_graph_env())
        self.rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node("anomaly_seg_test_probe")
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    @staticmethod
    def wait_for(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown()


class NodeProcess:
    """``anomaly_seg_node --ros-args ...`` in its own process; output captured to a file."""

    def __init__(
        self, args: list[str], log_path, env: dict[str, str] | None = None, *, ignore_sigint: bool = False
    ) -> None:
        """``ignore_sigint``: start it with SIGINT ignored, as a background job's children are."""
        import signal
        import subprocess
        import sys
        from pathlib import Path

        executable = Path(sys.executable).parent / "anomaly_seg_node"
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(executable), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or ros_graph_env(),
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_output(self, text: str, timeout: float = 60.0) -> None:
        RosGraph.wait_for(
            lambda: text in self.output or self.proc.poll() is not None, timeout, f"{text!r} in the node's output"
        )
        assert text in self.output, f"node exited ({self.proc.returncode}) before {text!r}:\n{self.output}"

    def stop(self, sig=None, timeout: float = 30.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGINT)
        try:
            returncode = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()
        return returncode


def node_args(parameters: dict | None = None, remaps: dict | None = None) -> list[str]:
    """``--ros-args -p name:=value ... -r from:=to ...`` (values as YAML, as ros2 run takes them)."""
    import json

    args = ["--ros-args"]
    for name, value in (parameters or {}).items():
        text = json.dumps(value) if isinstance(value, list | bool) else str(value)
        args += ["-p", f"{name}:={text}"]
    for source, target in (remaps or {}).items():
        args += ["-r", f"{source}:={target}"]
    return args
