"""ODIN: the perturbation against the closed-form input gradient of a linear network; offline only."""

import numpy as np
import pytest
import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import get_scorer


class _Linear(nn.Module):
    """Per-pixel linear classifier f(x)_o = W x_o + b: its input gradient has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1).double()

    def forward(self, x):
        return self.conv(x)


def _closed_form(model: _Linear, x: torch.Tensor, temperature: float, epsilon: float) -> np.ndarray:
    w = model.conv.weight.detach().view(4, 3).numpy()
    b = model.conv.bias.detach().numpy()
    n, _, h, width = x.shape
    out = np.empty((n, h, width))
    for i in range(n):
        for y in range(h):
            for v in range(width):
                xv = x[i, :, y, v].numpy()
                z = (w @ xv + b) / temperature
                p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                onehot = np.eye(4)[z.argmax()]
                grad = w.T @ (p - onehot) / temperature  # d CE(Wx/T + b/T, y) / dx
                xt = xv - epsilon * np.sign(grad)
                zt = (w @ xt + b) / temperature
                pt = np.exp(zt - zt.max()) / np.exp(zt - zt.max()).sum()
                out[i, y, v] = -pt.max()
    return out


@pytest.mark.parametrize("temperature, epsilon", [(1000.0, 0.0014), (2.0, 0.1)])
def test_odin_matches_closed_form_for_a_linear_network(temperature, epsilon):
    torch.manual_seed(0)
    model = _Linear().eval()
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    scorer = get_scorer("odin", temperature=temperature, epsilon=epsilon)
    scorer.bind(model)
    with torch.inference_mode():  # as Perception.infer hands it over
        logits = model(x)
        scores = scorer(SegmentationOutput(logits=logits, inputs=x))
    np.testing.assert_allclose(scores.numpy(), _closed_form(model, x, temperature, epsilon), rtol=1e-10)


def test_zero_epsilon_is_temperature_scaled_msp():
    torch.manual_seed(1)
    model = _Linear().eval()
    x = torch.randn(1, 3, 2, 5, dtype=torch.float64)
    scorer = get_scorer("odin", temperature=3.0, epsilon=0.0)
    scorer.bind(model)
    logits = model(x).detach()
    torch.testing.assert_close(
        scorer(SegmentationOutput(logits=logits, inputs=x)), get_scorer("msp", temperature=3.0)(logits)
    )


def test_odin_is_offline_only_and_checks_its_inputs():
    scorer = get_scorer("odin")
    assert scorer.offline_only and scorer.requires_model
    with pytest.raises(ConfigError, match="not bound"):
        scorer(torch.zeros(1, 3, 2, 2))
    scorer.bind(_Linear())
    with pytest.raises(ValueError, match="inputs"):
        scorer(torch.zeros(1, 4, 2, 2, dtype=torch.float64))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        get_scorer("odin", temperature=0)
    with pytest.raises(ConfigError, match="epsilon must be >= 0"):
        get_scorer("odin", epsilon=-1)
