"""ResNet-18 feature extractor with torchvision's module names (no torchvision needed).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1
(18-layer column). Module names follow ``torchvision.models.resnet18`` (``conv1``, ``bn1``,
``layer1``..``layer4``, ``layerN.M.downsample.0/1``), which is also what BiSeNet V1's reference
code (github.com/CoinCheung/BiSeNet, ``lib/models/resnet.py``) uses for its context path, so
both torchvision's ImageNet file and BiSeNet checkpoints load by name. The classifier
(``avgpool``, ``fc``) is left out: segmentation uses the three deepest feature maps only.

Parameters (weights + BN affine, no ``fc``)::

    conv1 7x7 3->64            9_408      bn1            128
    layer1 2 x (2 x 3x3 64->64 + 2 BN)                  147_968
    layer2 (3x3 64->128, 3x3 128->128, 1x1 downsample) + block  525_568
    layer3                                             2_099_712
    layer4                                             8_393_728
    total                                             11_176_512   (= 11_689_512 - fc 513_000)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import CheckpointError

#: Keys of torchvision's ImageNet classifier, which the feature extractor does not have.
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN ``downsample``) shortcut.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1))


class ResNet18(nn.Module):
    """ResNet-18 trunk returning the 1/8, 1/16 and 1/32 resolution feature maps (128, 256, 512 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)
        # torchvision's initialisation, so that training from scratch behaves like resnet18().
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


def load_imagenet_weights(backbone: ResNet18, path: str | os.PathLike[str]) -> None:
    """Load torchvision's ``resnet18`` ImageNet state_dict file into ``backbone`` strictly.

    The classifier keys ``fc.weight``/``fc.bias`` are dropped; every other key must match
    (missing, unexpected or mis-shaped keys raise CheckpointError naming them). The file is
    read with ``weights_only=True``.
    """
    # Imported here: checkpoint imports the registry, which must not depend on model modules.
    from anomaly_seg_ros.models.checkpoint import (
        _check_state_dict,
        _read_torch_state_dict,
        strip_module_prefix,
    )

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ResNet-18 ImageNet weights not found: {path}")
    state = strip_module_prefix(_read_torch_state_dict(path))
    state = {key: value for key, value in state.items() if key not in CLASSIFIER_KEYS}
    backbone.load_state_dict(_check_state_dict(backbone, state, path), strict=True)
