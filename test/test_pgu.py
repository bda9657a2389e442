"""PGU (seed 001): the closed-form gradient norm against autograd's per-pixel gradient of the loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models.erfnet import ERFNet
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import get_scorer
from anomaly_seg_ros.scoring.pgu import gradient_norm

P_VALUES = [0.1, 0.3, 0.5, 1.0, 2.0, math.inf]


def _autograd_norm(layer: nn.Module, features: torch.Tensor, pixel: tuple[int, int, int], p: float, bias: bool):
    """||d CE(z_o, argmax z_o) / d(W, b)||_p for one output pixel, by backpropagation."""
    n, y, x = pixel
    head = layer(features)
    target = head[n, :, y, x].argmax().detach()
    loss = F.cross_entropy(head[n, :, y, x].unsqueeze(0), target.unsqueeze(0))
    params = [layer.weight, layer.bias] if bias else [layer.weight]
    grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    return grads.abs().max() if math.isinf(p) else grads.abs().pow(p).sum().pow(1 / p)


def _check_layer(layer: nn.Module, features: torch.Tensor, pixels, p: float, bias: bool) -> None:
    with torch.no_grad():
        head = layer(features)
        closed = gradient_norm(head, features, layer, p=p, bias=bias)
    assert closed.shape == (head.shape[0], *head.shape[2:])
    for pixel in pixels:
        expected = _autograd_norm(layer, features, pixel, p, bias)
        torch.testing.assert_close(closed[pixel], expected, rtol=1e-5, atol=1e-10)


def _pixels(n: int, h: int, w: int, count: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    corners = [(0, 0, 0), (n - 1, h - 1, w - 1), (0, 0, w - 1)]
    return corners + [
        (
            int(torch.randint(n, (1,), generator=g)),
            int(torch.randint(h, (1,), generator=g)),
            int(torch.randint(w, (1,), generator=g)),
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def erfnet_output():
    torch.manual_seed(0)
    model = ERFNet(num_classes=5).double().eval()
    with torch.no_grad():
        for module in model.modules():  # random BN statistics so the features are not all tiny
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        output = model.forward_with_features(torch.rand(2, 3, 16, 24, dtype=torch.float64))
    return model, output


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("p", P_VALUES)
def test_erfnet_last_layer_matches_autograd(erfnet_output, p, bias):
    model, output = erfnet_output
    layer = model.last_layer
    assert isinstance(layer, nn.ConvTranspose2d) and output.features.shape[-2:] == (8, 12)
    if math.isinf(p):
        with pytest.raises(ConfigError, match="inf"):
            gradient_norm(output.logits, output.features, layer, p=p, bias=bias)
        return
    _check_layer(layer, output.features, _pixels(2, 16, 24), p, bias)
    # the scorer reads the same tensors through SegmentationOutput + bind
    scorer = get_scorer("pgu", p=p, bias=bias)
    scorer.bind(model)
    scores = scorer(output)
    torch.testing.assert_close(scores, gradient_norm(output.logits, output.features, layer, p=p, bias=bias))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("p", P_VALUES)
def test_1x1_conv_head_matches_autograd(p, bias):
    torch.manual_seed(1)
    layer = nn.Conv2d(6, 4, 1).double()
    features = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    _check_layer(layer, features, _pixels(2, 5, 7), p, bias)


@pytest.mark.parametrize(
    "conv",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, padding=2, dilation=2),
        dict(kernel_size=3, padding=1, stride=2),
        dict(kernel_size=3, padding=1, padding_mode="reflect"),
    ],
    ids=["pad1", "dilated", "stride2", "reflect"],
)
@pytest.mark.parametrize("p", [0.3, 1.0, 2.0, math.inf])
def test_3x3_conv_head_matches_autograd(conv, p):
    torch.manual_seed(2)
    layer = nn.Conv2d(3, 4, **conv).double()
    features = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    head_shape = layer(features).shape
    _check_layer(layer, features, _pixels(1, head_shape[2], head_shape[3]), p, bias=True)


class _UpsampledHead(nn.Module):
    """A 1x1 conv head at 1/2 resolution followed by parameter-free bilinear upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(4, 3, 1).double()

    @property
    def last_layer(self) -> nn.Module:
        return self.head


def test_scores_computed_at_head_resolution_then_upsampled():
    torch.manual_seed(3)
    model = _UpsampledHead()
    features = torch.randn(1, 4, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        head = model.head(features)
        logits = F.interpolate(head, scale_factor=2, mode="bilinear", align_corners=False)
    scorer = get_scorer("pgu", p=1.0)
    scorer.bind(model)
    scores = scorer(SegmentationOutput(logits=logits, features=features, head_logits=head))
    at_head = gradient_norm(head, features, model.head, p=1.0)
    expected = F.interpolate(at_head[:, None], size=(8, 10), mode="bilinear", align_corners=False)[:, 0]
    assert scores.shape == (1, 8, 10)
    torch.testing.assert_close(scores, expected)


def test_confident_pixel_scores_lower_than_uncertain_pixel():
    layer = nn.Conv2d(2, 3, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[8.0, 0.0], [0.0, 8.0], [0.0, 0.0]]).view(3, 2, 1, 1))
    features = torch.tensor([[1.0, 0.0], [0.1, 0.1]], dtype=torch.float64).T.reshape(1, 2, 1, 2)
    scores = gradient_norm(layer(features), features, layer, p=2.0, bias=False)
    assert scores[0, 0, 1] > scores[0, 0, 0]


def test_pgu_errors_name_the_problem():
    with pytest.raises(ConfigError, match="p must be > 0"):
        get_scorer("pgu", p=0)
    with pytest.raises(ConfigError, match="bias must be true or false"):
        get_scorer("pgu", bias="yes")
    with pytest.raises(ConfigError, match="last_layer"):
        get_scorer("pgu").bind(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="not bound"):
        get_scorer("pgu")(SegmentationOutput(logits=torch.zeros(1, 3, 2, 2), features=torch.zeros(1, 2, 2, 2)))
    with pytest.raises(ValueError, match="forward_with_features"):
        get_scorer("pgu")(torch.zeros(1, 3, 2, 2))
