"""BiSeNet V1 with a ResNet-18 context path, as in the common PyTorch implementation.

Yu, Wang, Peng, Gao, Yu, Sang, "BiSeNet: Bilateral Segmentation Network for Real-time
Semantic Segmentation", ECCV 2018 (arXiv:1808.00897). Reference code:
github.com/CoinCheung/BiSeNet, ``lib/models/bisenetv1.py`` and ``lib/models/resnet.py``.

Module and attribute names are the reference's (``cp.resnet.layer1.0.conv1``,
``cp.arm16.conv_atten``, ``sp.conv_out.conv``, ``ffm.convblk``, ``ffm.conv``/``ffm.bn``,
``conv_out.conv_out``, ``conv_out16``, ``conv_out32``, ...), so the reference's Cityscapes
checkpoints, which are saved with the auxiliary heads, load strictly. As there:

- spatial path: three stride-2 conv-BN-ReLU (7x7, 3x3, 3x3) and a 1x1 to 128 channels (1/8);
- context path: ResNet-18; attention refinement (ARM: ``feat * sigmoid(bn(conv1x1(mean_hw(feat))))``)
  on the 1/16 and 1/32 maps, plus the global average of the 1/32 map, each merged by 2x
  nearest upsampling and a 3x3 conv-BN-ReLU head, giving 128 channels at 1/8 and 1/16;
- feature fusion (FFM): ``f = convbnrelu1x1(cat(sp, cp8))``, ``f + f * sigmoid(bn(conv1x1(mean_hw(f))))``
  (the reference's current form; the paper's two-layer MLP was replaced there by conv+BN);
- output head ``conv_out``: 3x3 conv-BN-ReLU 256->256, 1x1 conv 256->C with bias, bilinear x8
  (``align_corners=False``);
- auxiliary heads for training only: ``conv_out16`` on the 1/8 context feature (x8) and
  ``conv_out32`` on the 1/16 context feature (x16), each 3x3 conv-BN-ReLU to 64 and 1x1 to C.

The paper supervises the two auxiliary outputs with weight alpha = 1 (its Eq. 2-3); the loss
lives with the training code. In eval mode the auxiliary heads are not run at all, so they
are absent from the inference graph (``torch.export``, TensorRT) while their weights stay in
the state_dict, exactly as the reference's training checkpoints hold them.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.models.registry import register_model
from anomaly_seg_ros.models.resnet import ResNet18, load_imagenet_weights

#: Input height and width must be multiples of this: the 1/32 map is upsampled 2x twice to meet
#: the 1/16 and 1/8 maps, and the heads upsample by fixed factors back to the input size.
OUTPUT_STRIDE = 32
#: ImageNet statistics the ResNet-18 context path was pre-trained with (on RGB in 0..1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _kaiming_a1(module: nn.Module) -> None:
    """The reference's head initialisation: kaiming_normal_(a=1) weights, zero biases."""
    for child in module.children():
        if isinstance(child, nn.Conv2d):
            nn.init.kaiming_normal_(child.weight, a=1)
            if child.bias is not None:
                nn.init.zeros_(child.bias)


class ConvBNReLU(nn.Module):
    """Conv (no bias), BatchNorm, ReLU."""

    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)
        self.relu = nn.ReLU(inplace=True)
        _kaiming_a1(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class BiSeNetOutput(nn.Module):
    """Segmentation head: 3x3 conv-BN-ReLU, 1x1 conv to classes (with bias), bilinear upsampling."""

    def __init__(self, in_chan: int, mid_chan: int, n_classes: int, up_factor: int) -> None:
        super().__init__()
        self.up_factor = up_factor
        self.conv = ConvBNReLU(in_chan, mid_chan, ks=3, stride=1, padding=1)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, kernel_size=1, bias=True)
        self.up = nn.Upsample(scale_factor=up_factor, mode="bilinear", align_corners=False)
        _kaiming_a1(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv_out(self.conv(x)))


class AttentionRefinementModule(nn.Module):
    """ARM: ``f = convbnrelu3x3(x)``; ``f * sigmoid(bn(conv1x1(mean_hw(f))))``."""

    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan, ks=3, stride=1, padding=1)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, kernel_size=1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)
        _kaiming_a1(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.mean(feat, dim=(2, 3), keepdim=True)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(atten)))


class ContextPath(nn.Module):
    """ResNet-18 with ARMs and a global-context branch; returns 128-channel maps at 1/8 and 1/16."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, ks=3, stride=1, padding=1)
        self.conv_head16 = ConvBNReLU(128, 128, ks=3, stride=1, padding=1)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, stride=1, padding=0)
        self.up32 = nn.Upsample(scale_factor=2.0)
        self.up16 = nn.Upsample(scale_factor=2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        # Global context: a 1x1 map broadcast over the 1/32 grid.
        avg = self.conv_avg(torch.mean(feat32, dim=(2, 3), keepdim=True))
        feat32_up = self.conv_head32(self.up32(self.arm32(feat32) + avg))
        feat16_up = self.conv_head16(self.up16(self.arm16(feat16) + feat32_up))
        return feat16_up, feat32_up  # 1/8, 1/16


class SpatialPath(nn.Module):
    """Three stride-2 conv-BN-ReLU and a 1x1 projection: 128 channels at 1/8 resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, ks=7, stride=2, padding=3)
        self.conv2 = ConvBNReLU(64, 64, ks=3, stride=2, padding=1)
        self.conv3 = ConvBNReLU(64, 64, ks=3, stride=2, padding=1)
        self.conv_out = ConvBNReLU(64, 128, ks=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv3(self.conv2(self.conv1(x))))


class FeatureFusionModule(nn.Module):
    """FFM: ``f = convbnrelu1x1(cat(fsp, fcp))``; ``f + f * sigmoid(bn(conv1x1(mean_hw(f))))``."""

    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, stride=1, padding=0)
        self.conv = nn.Conv2d(out_chan, out_chan, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)
        _kaiming_a1(self)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.bn(self.conv(torch.mean(feat, dim=(2, 3), keepdim=True))))
        return feat + feat * atten


class BiSeNetV1(nn.Module):
    """BiSeNet V1, ResNet-18 context path: 13.43 M parameters for 20 classes with the two
    training-only auxiliary heads (13.28 M without them, the inference network).

    Expects RGB normalised with ImageNet mean/std, height and width divisible by 32; returns
    logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cp = ContextPath()
        self.sp = SpatialPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, num_classes, up_factor=8)
        self.conv_out16 = BiSeNetOutput(128, 64, num_classes, up_factor=8)
        self.conv_out32 = BiSeNetOutput(128, 64, num_classes, up_factor=16)

    @property
    def last_layer(self) -> nn.Conv2d:
        """The 1x1 convolution of the main head mapping 256 features at 1/8 to class logits."""
        return self.conv_out.conv_out

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Main-head features ``(N, 256, H/8, W/8)`` and the context features at 1/8 and 1/16."""
        feat_cp8, feat_cp16 = self.cp(self._check_size(x))
        feat_fuse = self.ffm(self.sp(x), feat_cp8)
        return self.conv_out.conv(feat_fuse), feat_cp8, feat_cp16

    def forward_with_features(self, x: torch.Tensor) -> SegmentationOutput:
        """Logits at input resolution, ``features`` (1/8, 256 ch), ``head_logits`` (1/8) and,
        in training mode only, the auxiliary logits ``(conv_out16, conv_out32)`` at input resolution.
        """
        features, feat_cp8, feat_cp16 = self._trunk(x)
        head_logits = self.conv_out.conv_out(features)
        aux: tuple[torch.Tensor, ...] = ()
        if self.training:
            aux = (self.conv_out16(feat_cp8), self.conv_out32(feat_cp16))
        return SegmentationOutput(
            logits=self.conv_out.up(head_logits), features=features, head_logits=head_logits, aux_logits=aux
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, _, _ = self._trunk(x)
        return self.conv_out.up(self.conv_out.conv_out(features))

    @staticmethod
    def _check_size(x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(
                f"BiSeNet input height and width must be divisible by {OUTPUT_STRIDE}, got {height}x{width}"
            )
        return x


@register_model("bisenet", num_classes=20, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(512, 1024))
def bisenet(*, num_classes: int, backbone_weights: str | os.PathLike[str] | None = None) -> BiSeNetV1:
    """BiSeNet V1 (ResNet-18) at 512x1024 with ImageNet normalisation.

    ``backbone_weights``: optional path to torchvision's ``resnet18`` ImageNet state_dict,
    loaded strictly (minus ``fc``) into the context path, as the reference initialises it.
    """
    model = BiSeNetV1(num_classes)
    if backbone_weights is not None:
        load_imagenet_weights(model.cp.resnet, backbone_weights)
    return model
