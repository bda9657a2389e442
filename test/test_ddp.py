"""DistributedDataParallel: two gloo processes on one global batch train the same weights as one process.

Why the comparison is exact here. DDP averages the ranks' gradients, and each rank's loss is
the mean over its own half of the batch; that equals the single-process gradient of the
whole batch when (a) every rank holds the same number of counted pixels and (b) the forward
pass of one sample does not depend on the other samples of its batch. (a) holds in the
20-class mode, where no pixel is ignored (255 becomes void) and nothing is padded. (b) fails
for BatchNorm in training mode, whose statistics are per rank; on CUDA the trainer converts
BatchNorm to SyncBatchNorm (statistics over the global batch), which PyTorch does not support
on CPU. The model here has no BatchNorm (and no dropout), so the two runs may differ only by
floating-point summation order.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from anomaly_seg_ros.data.layout import generate_datasets
from anomaly_seg_ros.models import available_models, register_model
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.training import LAST_CHECKPOINT, TrainConfig, load_train_config, train

TINY = "tiny_ddp_test"


class TinySegNet(nn.Module):
    """3x3 conv -> ReLU -> 1x1 conv: per-sample forward, so batch splits do not change it."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.classifier = nn.Conv2d(8, num_classes, 1)

    @property
    def last_layer(self) -> nn.Module:
        return self.classifier

    def forward_with_features(self, x: torch.Tensor) -> SegmentationOutput:
        features = torch.relu(self.body(x))
        return SegmentationOutput(logits=self.classifier(features), features=features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x).logits


if TINY not in available_models():  # the spawned workers import this module again

    @register_model(TINY, num_classes=20, input_size=(32, 64))
    def _tiny(*, num_classes: int) -> TinySegNet:
        return TinySegNet(num_classes)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, config: dict, out_dir: str) -> None:
    # What torchrun sets for each process; train() joins the group with init_method="env://".
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    train(load_train_config(None, config), out_dir, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_data")
    generate_datasets(root, num_train=8, num_val=2, num_anomaly=0, height=32, width=64, seed=3)
    return root / "cityscapes"


def test_two_process_gloo_run_matches_one_process_on_the_same_global_batch(dataset, tmp_path, monkeypatch):
    config = {
        "data": str(dataset),
        "model": TINY,
        "num_classes": 20,
        "input_size": [32, 64],
        "epochs": 2,
        "batch_size": 4,
        "learning_rate": 0.01,
        "hflip": True,
        "threads": 1,
        "device": "cpu",
        "tensorboard": False,
        "seed": 5,
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    single = train(load_train_config(None, config), tmp_path / "single", progress=False)

    mp.spawn(_worker, args=(2, _free_port(), config, str(tmp_path / "ddp")), nprocs=2, join=True)

    one = load_file(tmp_path / "single" / LAST_CHECKPOINT)
    two = load_file(tmp_path / "ddp" / LAST_CHECKPOINT)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    # Training moved the weights, so the agreement is not that of two untouched copies.
    torch.manual_seed(5)
    untouched = TinySegNet(20).state_dict()
    assert max((one[key] - untouched[key]).abs().max().item() for key in one) > 1e-3

    # Only rank 0 wrote logs: one CSV row per epoch, and the reduced metrics match the single run.
    rows = (tmp_path / "ddp" / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + config["epochs"]
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert [item["val_miou"] for item in history] == pytest.approx([item.val_miou for item in single], abs=1e-6)
    assert [item["train_loss"] for item in history] == pytest.approx([item.train_loss for item in single], rel=1e-5)


def test_global_batch_must_split_evenly_over_the_processes(dataset):
    from anomaly_seg_ros.common.errors import ConfigError
    from anomaly_seg_ros.training import DistContext, local_batch_size

    config = TrainConfig(data=str(dataset), batch_size=6)
    assert local_batch_size(config, DistContext(rank=1, world_size=3)) == 2
    with pytest.raises(ConfigError, match=r"batch_size.*6.*divisible.*\(4\)"):
        local_batch_size(config, DistContext(rank=0, world_size=4))
