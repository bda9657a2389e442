"""ENet, layer for layer as in the common PyTorch port.

Paszke, Chaurasia, Kim, Culurciello, "ENet: A Deep Neural Network Architecture for
Real-Time Semantic Segmentation", arXiv:1606.02147, 2016 (Table 1). Reference code:
github.com/davidtvs/PyTorch-ENet, ``models/enet.py`` (a port of the authors' Lua-Torch
``e-lab/ENet-training``); it trains on RGB scaled to 0..1 without mean/std, with the
void class as an extra output (20 classes on Cityscapes), like the ERFNet code.

Module and attribute names are the reference's (``initial_block.main_branch``,
``downsample1_0.ext_conv1.0``, ``asymmetric2_3.ext_conv2.3``, ``upsample4_0.main_conv1.0``,
``transposed_conv``, ...), so its state_dicts load strictly. The encoder uses PReLU (one
learned slope per activation module), the decoder ReLU, BatchNorm has PyTorch's default
eps 1e-5, and convolutions have no bias, all as in the reference.

Two implementation details differ from the reference without changing any result:
the zero channels that pad the max-pool shortcut of a downsampling bottleneck are made
with ``F.pad`` on the input's device and dtype (the reference builds them on the CPU and
copies them to CUDA), and the final transposed convolution carries ``output_padding=1``
instead of receiving ``output_size`` at call time. Both need the input height and width
to be multiples of 8, which this implementation requires; then every stage halves or
doubles exactly, ``forward`` is a plain tensor function (``torch.export`` and TensorRT
take it as it is) and ``last_layer(features)`` alone reproduces the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.models.registry import register_model

#: Input height and width must be multiples of this (initial block and two downsampling bottlenecks).
OUTPUT_STRIDE = 8
#: Bottleneck projection ratio: the inner convolutions work on ``channels // 4`` channels.
INTERNAL_RATIO = 4
#: (kind, dilation) of the eight bottlenecks of stage 2 (after its downsampling) and of stage 3.
_STAGE_PATTERN = (
    ("regular", 1),
    ("dilated", 2),
    ("asymmetric", 1),
    ("dilated", 4),
    ("regular", 1),
    ("dilated", 8),
    ("asymmetric", 1),
    ("dilated", 16),
)
#: Attribute names of those sixteen bottlenecks in execution order: regular2_1 .. dilated2_8, regular3_0 .. dilated3_7.
_ENCODER_BLOCKS = tuple(
    f"{kind}{stage}_{first + index}"
    for stage, first in ((2, 1), (3, 0))
    for index, (kind, _) in enumerate(_STAGE_PATTERN)
)


def _activation(relu: bool) -> nn.Module:
    # nn.PReLU() has a single learned slope (num_parameters=1), as in the reference.
    return nn.ReLU() if relu else nn.PReLU()


class InitialBlock(nn.Module):
    """3x3 stride-2 conv to ``out - 3`` channels concatenated with a 3x3 stride-2 max-pool, BN, activation."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool = True) -> None:
        super().__init__()
        self.main_branch = nn.Conv2d(in_channels, out_channels - 3, 3, stride=2, padding=1, bias=False)
        self.ext_branch = nn.MaxPool2d(3, stride=2, padding=1)
        self.batch_norm = nn.BatchNorm2d(out_channels)
        self.out_activation = _activation(relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_activation(self.batch_norm(torch.cat((self.main_branch(x), self.ext_branch(x)), 1)))


class RegularBottleneck(nn.Module):
    """Residual bottleneck: ``act(x + drop(expand(conv(project(x)))))``.

    ``project`` is a 1x1 conv to ``channels // 4``; ``conv`` is a 3x3 (optionally dilated)
    conv, or a 5x1 then 1x5 pair when ``asymmetric``; ``expand`` is a 1x1 conv back to
    ``channels``. Each conv is followed by BN and the activation (the reference keeps the
    activation after ``expand`` too).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        padding: int = 0,
        dilation: int = 1,
        asymmetric: bool = False,
        dropout_prob: float = 0.0,
        relu: bool = True,
    ) -> None:
        super().__init__()
        inner = channels // INTERNAL_RATIO
        self.ext_conv1 = nn.Sequential(
            nn.Conv2d(channels, inner, 1, stride=1, bias=False), nn.BatchNorm2d(inner), _activation(relu)
        )
        if asymmetric:
            self.ext_conv2 = nn.Sequential(
                nn.Conv2d(inner, inner, (kernel_size, 1), padding=(padding, 0), dilation=dilation, bias=False),
                nn.BatchNorm2d(inner),
                _activation(relu),
                nn.Conv2d(inner, inner, (1, kernel_size), padding=(0, padding), dilation=dilation, bias=False),
                nn.BatchNorm2d(inner),
                _activation(relu),
            )
        else:
            self.ext_conv2 = nn.Sequential(
                nn.Conv2d(inner, inner, kernel_size, padding=padding, dilation=dilation, bias=False),
                nn.BatchNorm2d(inner),
                _activation(relu),
            )
        self.ext_conv3 = nn.Sequential(
            nn.Conv2d(inner, channels, 1, stride=1, bias=False), nn.BatchNorm2d(channels), _activation(relu)
        )
        self.ext_regul = nn.Dropout2d(p=dropout_prob)
        self.out_activation = _activation(relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = self.ext_regul(self.ext_conv3(self.ext_conv2(self.ext_conv1(x))))
        return self.out_activation(x + ext)


class DownsamplingBottleneck(nn.Module):
    """Halves H and W: ``act(pad_channels(maxpool(x)) + drop(expand(conv(project2x2s2(x)))))``.

    Also returns the max-pool indices, which the matching upsampling bottleneck unpools with.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout_prob: float = 0.0, relu: bool = True) -> None:
        super().__init__()
        inner = in_channels // INTERNAL_RATIO
        self.main_max1 = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.ext_conv1 = nn.Sequential(
            nn.Conv2d(in_channels, inner, 2, stride=2, bias=False), nn.BatchNorm2d(inner), _activation(relu)
        )
        self.ext_conv2 = nn.Sequential(
            nn.Conv2d(inner, inner, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(inner), _activation(relu)
        )
        self.ext_conv3 = nn.Sequential(
            nn.Conv2d(inner, out_channels, 1, stride=1, bias=False), nn.BatchNorm2d(out_channels), _activation(relu)
        )
        self.ext_regul = nn.Dropout2d(p=dropout_prob)
        self.out_activation = _activation(relu)
        self._extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, indices = self.main_max1(x)
        ext = self.ext_regul(self.ext_conv3(self.ext_conv2(self.ext_conv1(x))))
        # Zero channels appended after the pooled ones, as the reference's torch.cat((main, zeros)).
        main = F.pad(main, (0, 0, 0, 0, 0, self._extra_channels))
        return self.out_activation(main + ext), indices


class UpsamplingBottleneck(nn.Module):
    """Doubles H and W: ``act(unpool(bn(conv1x1(x)), indices) + drop(expand(tconv2x2s2(project(x)))))``."""

    def __init__(self, in_channels: int, out_channels: int, dropout_prob: float = 0.0, relu: bool = True) -> None:
        super().__init__()
        inner = in_channels // INTERNAL_RATIO
        self.main_conv1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.main_unpool1 = nn.MaxUnpool2d(kernel_size=2)
        self.ext_conv1 = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), _activation(relu)
        )
        self.ext_tconv1 = nn.ConvTranspose2d(inner, inner, 2, stride=2, bias=False)
        self.ext_tconv1_bnorm = nn.BatchNorm2d(inner)
        self.ext_tconv1_activation = _activation(relu)
        # No activation after the expansion here: the reference has none in this block.
        self.ext_conv2 = nn.Sequential(nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.ext_regul = nn.Dropout2d(p=dropout_prob)
        self.out_activation = _activation(relu)

    def forward(self, x: torch.Tensor, max_indices: torch.Tensor) -> torch.Tensor:
        main = self.main_unpool1(self.main_conv1(x), max_indices)
        ext = self.ext_tconv1_activation(self.ext_tconv1_bnorm(self.ext_tconv1(self.ext_conv1(x))))
        ext = self.ext_regul(self.ext_conv2(ext))
        return self.out_activation(main + ext)


class ENet(nn.Module):
    """ENet (Paszke et al. 2016): 0.35 M parameters for 20 classes (the paper rounds to 0.37 M).

    Expects RGB scaled to 0..1 (no mean/std) with height and width divisible by 8; returns
    logits ``(N, num_classes, H, W)``. There are no auxiliary heads.
    """

    def __init__(self, num_classes: int, encoder_relu: bool = False, decoder_relu: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        enc, dec = encoder_relu, decoder_relu
        self.initial_block = InitialBlock(3, 16, relu=enc)

        self.downsample1_0 = DownsamplingBottleneck(16, 64, dropout_prob=0.01, relu=enc)
        self.regular1_1 = RegularBottleneck(64, padding=1, dropout_prob=0.01, relu=enc)
        self.regular1_2 = RegularBottleneck(64, padding=1, dropout_prob=0.01, relu=enc)
        self.regular1_3 = RegularBottleneck(64, padding=1, dropout_prob=0.01, relu=enc)
        self.regular1_4 = RegularBottleneck(64, padding=1, dropout_prob=0.01, relu=enc)

        self.downsample2_0 = DownsamplingBottleneck(64, 128, dropout_prob=0.1, relu=enc)
        # Stages 2 and 3 share one pattern (paper Table 1); stage 3 has no downsampling.
        for name, (kind, dilation) in zip(_ENCODER_BLOCKS, _STAGE_PATTERN * 2, strict=True):
            if kind == "asymmetric":
                block = RegularBottleneck(128, kernel_size=5, padding=2, asymmetric=True, dropout_prob=0.1, relu=enc)
            else:
                block = RegularBottleneck(128, dilation=dilation, padding=dilation, dropout_prob=0.1, relu=enc)
            setattr(self, name, block)

        self.upsample4_0 = UpsamplingBottleneck(128, 64, dropout_prob=0.1, relu=dec)
        self.regular4_1 = RegularBottleneck(64, padding=1, dropout_prob=0.1, relu=dec)
        self.regular4_2 = RegularBottleneck(64, padding=1, dropout_prob=0.1, relu=dec)

        self.upsample5_0 = UpsamplingBottleneck(64, 16, dropout_prob=0.1, relu=dec)
        self.regular5_1 = RegularBottleneck(16, padding=1, dropout_prob=0.1, relu=dec)
        # output_padding=1 gives exactly 2h x 2w, what the reference gets from output_size=input size.
        self.transposed_conv = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1, output_padding=1, bias=False)

    @property
    def last_layer(self) -> nn.ConvTranspose2d:
        """The 3x3 stride-2 transposed convolution mapping 16 half-resolution features to class logits."""
        return self.transposed_conv

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 16-channel, 1/2-resolution input of ``transposed_conv``."""
        x = self.initial_block(self._check_size(x))
        x, indices1 = self.downsample1_0(x)
        x = self.regular1_4(self.regular1_3(self.regular1_2(self.regular1_1(x))))
        x, indices2 = self.downsample2_0(x)
        for name in _ENCODER_BLOCKS:
            x = getattr(self, name)(x)
        x = self.upsample4_0(x, indices2)
        x = self.regular4_2(self.regular4_1(x))
        x = self.upsample5_0(x, indices1)
        return self.regular5_1(x)

    def forward_with_features(self, x: torch.Tensor) -> SegmentationOutput:
        """Logits ``(N, C, H, W)`` and the last layer's input ``(N, 16, H/2, W/2)``.

        The last layer already outputs full resolution, so ``head_logits`` is ``logits``.
        """
        features = self.features(x)
        return SegmentationOutput(logits=self.transposed_conv(features), features=features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transposed_conv(self.features(x))

    @staticmethod
    def _check_size(x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(f"ENet input height and width must be divisible by {OUTPUT_STRIDE}, got {height}x{width}")
        return x


@register_model("enet", num_classes=20, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(512, 1024))
def enet(*, num_classes: int) -> ENet:
    """ENet at the ERFNet code's Cityscapes setting: 512x1024 input, RGB in 0..1, no mean/std."""
    return ENet(num_classes)
