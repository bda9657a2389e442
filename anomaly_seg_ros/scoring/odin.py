"""ODIN (Liang, Li, Srikant, ICLR 2018, arXiv:1706.02690), per pixel. Offline only.

Temperature scaling plus a small input perturbation that raises the softmax score of the
predicted class more for in-distribution than for out-of-distribution inputs:

.. math:: \\tilde x = x - \\varepsilon \\operatorname{sign}\\big(\\nabla_x
          \\textstyle\\sum_o \\mathrm{CE}(f_o(x)/T, \\hat y_o)\\big), \\qquad
          s(x)_o = -\\max_k \\operatorname{softmax}(f_o(\\tilde x)/T)_k

For segmentation the per-pixel losses (predicted class as label) are summed, so one
backward pass gives the perturbation of the whole image; ``epsilon`` is in units of the
*normalised* network input (for ERFNet, whose std is 1, that is the 0..1 RGB scale).
Defaults: ``T = 1000``, ``epsilon = 0.0014`` (the paper's CIFAR setting).

It costs a backward and a second forward pass per image, so ``offline_only`` is set: the
perception core refuses it for the live node; the evaluation code runs it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring.base import Scorer
from anomaly_seg_ros.scoring.registry import register_scorer


def odin_perturb(model: nn.Module, inputs: torch.Tensor, *, temperature: float, epsilon: float) -> torch.Tensor:
    """The ODIN input :math:`x - \\varepsilon\\,\\mathrm{sign}(\\nabla_x \\sum_o CE(f_o(x)/T, \\hat y_o))`."""
    # inference-mode tensors cannot enter autograd: work on a normal clone with gradients enabled
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, logits.argmax(dim=1).detach(), reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
        return (x - epsilon * gradient.sign()).detach()


@register_scorer
class ODIN(Scorer):
    """ODIN: temperature-scaled MSP after an input perturbation (needs input gradients; offline only)."""

    name = "odin"
    display_range = (-1.0, 0.0)
    requires_model: ClassVar[bool] = True
    offline_only: ClassVar[bool] = True

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014) -> None:
        temperature, epsilon = float(temperature), float(epsilon)
        if not temperature > 0:
            raise ConfigError(f"scorer 'odin': temperature must be > 0, got {temperature}")
        if not epsilon >= 0:
            raise ConfigError(f"scorer 'odin': epsilon must be >= 0, got {epsilon}")
        self.temperature = temperature
        self.epsilon = epsilon
        self.model: nn.Module | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "epsilon": self.epsilon}

    def bind(self, model: nn.Module) -> None:
        self.model = model

    @staticmethod
    def score(
        logits: torch.Tensor,
        model: nn.Module | None = None,
        inputs: torch.Tensor | None = None,
        temperature: float = 1000.0,
        epsilon: float = 0.0014,
    ) -> torch.Tensor:
        if model is None or inputs is None:
            raise ConfigError("scorer 'odin' needs the model (bind) and SegmentationOutput.inputs")
        perturbed = odin_perturb(model, inputs, temperature=temperature, epsilon=epsilon)
        with torch.no_grad():
            scaled = model(perturbed).to(logits.dtype) / temperature
        return -torch.exp(scaled.amax(dim=1) - torch.logsumexp(scaled, dim=1))

    def compute(self, output: SegmentationOutput) -> torch.Tensor:
        if self.model is None:
            raise ConfigError("scorer 'odin' is not bound to a model: call bind(model) first")
        if output.inputs is None:
            raise ValueError("scorer 'odin' needs SegmentationOutput.inputs (the normalised network input)")
        return self.score(output.logits, self.model, output.inputs, self.temperature, self.epsilon)
