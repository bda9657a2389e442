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


def scene_perception(*overrides: str, model: nn.Module | None = None) -> Perception:
    """A Perception around SceneLogits: threshold -5 between road (-10) and anomaly (0), 2-of-3 persistence."""
    config = load_config(
        None,
        [
            f"model.input_size=[{NET[0]}, {NET[1]}]",
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
    calibration = {"maxlogit": {"threshold": -3.5, "range": [-9.0, -2.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=19), weights, metadata={"input_size": [64, 128], "calibration": calibration}
    )
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == SequenceTopics().image]
        stamps = {timestamp for _, timestamp, _ in reader.messages(connections=connections)}
    return bag, weights, stamps
