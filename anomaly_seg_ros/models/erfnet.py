"""ERFNet, layer for layer as in the authors' PyTorch code.

Romera, Álvarez, Bergasa, Arroyo, "ERFNet: Efficient Residual Factorized ConvNet for
Real-Time Semantic Segmentation", IEEE Transactions on Intelligent Transportation Systems
19(1), 2018. Reference code: github.com/Eduardo-Romera/erfnet_pytorch, ``train/erfnet.py``.

Module and attribute names follow the reference code exactly, so that the authors'
state_dicts (``encoder.initial_block.conv.weight``, ``encoder.layers.3.conv3x1_1.weight``,
``decoder.output_conv.bias``, ...) load strictly without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.models.registry import register_model

#: Input height and width must be multiples of this (three stride-2 downsamplers).
OUTPUT_STRIDE = 8

_BN_EPS = 1e-3


class DownsamplerBlock(nn.Module):
    """3x3 stride-2 conv concatenated with 2x2 max-pool (ENet initial block), BN, ReLU."""

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ninput, noutput - ninput, (3, 3), stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(noutput, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class NonBottleneck1d(nn.Module):
    """Residual block of two factorised (3x1 then 1x3) conv pairs, the second one dilated.

    The reference code calls this class ``non_bottleneck_1d``; only attribute names reach
    the state_dict, and those are kept.
    """

    def __init__(self, chann: int, dropprob: float, dilated: int) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(chann, chann, (3, 1), stride=1, padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(chann, chann, (1, 3), stride=1, padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(chann, eps=_BN_EPS)
        self.conv3x1_2 = nn.Conv2d(
            chann, chann, (3, 1), stride=1, padding=(dilated, 0), bias=True, dilation=(dilated, 1)
        )
        self.conv1x3_2 = nn.Conv2d(
            chann, chann, (1, 3), stride=1, padding=(0, dilated), bias=True, dilation=(1, dilated)
        )
        self.bn2 = nn.BatchNorm2d(chann, eps=_BN_EPS)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.bn2(self.conv1x3_2(out))
        if self.dropout.p != 0:
            out = self.dropout(out)
        return F.relu(out + x)


class UpsamplerBlock(nn.Module):
    """3x3 stride-2 transposed conv (doubles H and W), BN, ReLU."""

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(ninput, noutput, 3, stride=2, padding=1, output_padding=1, bias=True)
        self.bn = nn.BatchNorm2d(noutput, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Encoder(nn.Module):
    """Image -> 128-channel features at 1/8 resolution.

    ``output_conv`` only serves the authors' encoder pre-training stage (``predict=True``);
    it is kept so that their full-model checkpoints, which contain it, load strictly.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.initial_block = DownsamplerBlock(3, 16)
        self.layers = nn.ModuleList([DownsamplerBlock(16, 64)])
        self.layers.extend(NonBottleneck1d(64, 0.03, 1) for _ in range(5))
        self.layers.append(DownsamplerBlock(64, 128))
        for _ in range(2):
            self.layers.extend(NonBottleneck1d(128, 0.3, dilation) for dilation in (2, 4, 8, 16))
        self.output_conv = nn.Conv2d(128, num_classes, 1, stride=1, padding=0, bias=True)

    def forward(self, x: torch.Tensor, predict: bool = False) -> torch.Tensor:
        out = self.initial_block(x)
        for layer in self.layers:
            out = layer(out)
        return self.output_conv(out) if predict else out


class Decoder(nn.Module):
    """128-channel 1/8-resolution features -> class logits at full resolution."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                UpsamplerBlock(128, 64),
                NonBottleneck1d(64, 0, 1),
                NonBottleneck1d(64, 0, 1),
                UpsamplerBlock(64, 16),
                NonBottleneck1d(16, 0, 1),
                NonBottleneck1d(16, 0, 1),
            ]
        )
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, padding=0, output_padding=0, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 16-channel, 1/2-resolution input of ``output_conv``."""
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_conv(self.features(x))


class ERFNet(nn.Module):
    """ERFNet (Romera et al., IEEE T-ITS 2018): 2.07 M parameters for 20 classes.

    Expects RGB scaled to 0..1 (the reference training code applies no mean/std) with
    height and width divisible by 8; returns logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = Encoder(num_classes)
        self.decoder = Decoder(num_classes)

    @property
    def last_layer(self) -> nn.ConvTranspose2d:
        """The 2x2 stride-2 transposed convolution that maps 16 features to class logits."""
        return self.decoder.output_conv

    def forward_with_features(self, x: torch.Tensor) -> SegmentationOutput:
        """Logits ``(N, C, H, W)`` and last-layer input features ``(N, 16, H/2, W/2)``.

        Feature-based anomaly scorers need the penultimate activations; returning them
        from the same pass avoids a second forward or a hook.
        """
        features = self.decoder.features(self.encoder(self._check_size(x)))
        return SegmentationOutput(logits=self.decoder.output_conv(features), features=features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(self._check_size(x)))

    @staticmethod
    def _check_size(x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(
                f"ERFNet input height and width must be divisible by {OUTPUT_STRIDE}, got {height}x{width}"
            )
        return x


@register_model("erfnet", num_classes=20, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(512, 1024))
def erfnet(*, num_classes: int) -> ERFNet:
    """ERFNet at the authors' Cityscapes setting: 512x1024 input, RGB in 0..1, no mean/std."""
    return ERFNet(num_classes)
