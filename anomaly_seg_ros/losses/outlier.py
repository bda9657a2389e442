r"""Outlier-exposure loss terms: they act on the pixels of pasted outliers (``data/outliers.py``).

Each term gets the logits :math:`z` ``(N, C, H, W)``, the in-distribution pixel mask
:math:`I` (labelled, not ignored, not outlier) and the outlier mask :math:`O`, and returns one
scalar; means are over the pixels of the batch, a batch without outlier pixels gives 0 for
the outlier part (with a graph). Spec names and parameters (every spec also takes ``weight``):

=====================  ==================================  ============================================
name                   parameters                          loss
=====================  ==================================  ============================================
``energy_margin``      ``margin_in`` :math:`m_{in}` (-8),  :math:`\frac{1}{|I|}\sum_I \max(0, E - m_{in})^2
                       ``margin_out`` :math:`m_{out}` (-2)  + \frac{1}{|O|}\sum_O \max(0, m_{out} - E)^2`,
                                                           :math:`E = -\log\sum_c e^{z_c}`
                                                           (Liu et al., NeurIPS 2020, arXiv:2010.03759, eq. 5)
``outlier_void``       —                                   :math:`-\frac{1}{|O|}\sum_O \log p_{void}`, void = the
                                                           last class of a 20-class model (Blum et al. /
                                                           seed 000 "void classifier" trained on outliers)
``outlier_entropy``    —                                   :math:`\frac{1}{|O|}\sum_O (\log C - H(p))`,
                                                           entropy maximisation on outliers (Hendrycks et al.,
                                                           ICLR 2019 OE; Chan et al., Meta-OoD, ICCV 2021)
=====================  ==================================  ============================================

Every term also takes ``per_object`` (false): with it, the outlier part is a mean per pasted
object instead of per pixel, :math:`\frac{1}{K}\sum_k \frac{1}{|O_k|}\sum_{O_k}`, the objects
:math:`O_k` being the 8-connected components of each image's outlier mask (after augmentation,
so a cropped object counts for what is left of it). Per pixel, a 2000-pixel object near the
camera outweighs a 20-pixel one 60 m ahead a hundredfold; per object they pull alike. (On the
demo model it did not bring far obstacles' alerts earlier and cost held-out AuPRC:
docs/outlier_exposure.md.)

The margins are in the units of the network's energy: Liu et al. use -25 / -7 on CIFAR
WideResNets; the demo ERFNet's in-distribution energies lie around -6 to -14 (print them with
``anomaly-seg evaluate``), hence the defaults -8 / -2. ``outlier_entropy`` is 0 at the uniform
distribution and :math:`\log C` at a one-hot one.
"""

from __future__ import annotations

import math
from typing import ClassVar

import cv2
import numpy as np
import torch
from torch import nn


class OutlierTerm(nn.Module):
    """One outlier-exposure loss; subclasses set ``name``, ``defaults`` and implement ``loss``."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, float]] = {}
    #: Classes the model must have (None: any).
    needs_classes: ClassVar[int | None] = None

    def __init__(self, *, weight: float = 1.0, per_object: bool = False, **params: float) -> None:
        super().__init__()
        self.weight = weight
        self.per_object = per_object
        self.params = {**self.defaults, **params}

    def outlier_mean(self, values: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` ``(N, H, W)`` over the outlier pixels: per pixel, or per object with ``per_object``."""
        if not self.per_object:
            return _masked_mean(values, outlier)
        return (values * object_weights(outlier).to(values.dtype)).sum()

    def loss(self, logits: torch.Tensor, inlier: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
        """Scalar loss of logits ``(N, C, H, W)`` with bool masks ``(N, H, W)``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        params = ", ".join(f"{key}={value}" for key, value in self.params.items())
        per_object = ", per_object=True" if self.per_object else ""
        return f"weight={self.weight}{per_object}" + (f", {params}" if params else "")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; 0 (with a graph) when the mask is empty."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def object_weights(mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights ``(N, H, W)`` that give each 8-connected component of the bool ``mask``
    the same total weight, summing to 1 over the batch (all zeros when the mask is empty)."""
    # torch has no connected-components op: one host copy of the (small, uint8) mask per step,
    # and only for terms with per_object.
    masks = mask.detach().to("cpu", torch.uint8).numpy()
    weights = np.zeros(masks.shape, dtype=np.float32)
    count = 0
    for index, image in enumerate(masks):
        num, labels, stats, _ = cv2.connectedComponentsWithStats(image, connectivity=8)
        if num > 1:
            # Label 0 is the background: weight 0.
            per_pixel = np.concatenate([[0.0], 1.0 / stats[1:, cv2.CC_STAT_AREA]]).astype(np.float32)
            weights[index] = per_pixel[labels]
            count += num - 1
    return torch.from_numpy(weights / max(count, 1)).to(mask.device)


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Free energy :math:`-\\log\\sum_c e^{z_c}` per pixel, ``(N, H, W)``; lower = more in-distribution."""
    return -torch.logsumexp(logits, dim=1)


class EnergyMarginTerm(OutlierTerm):
    """Energy-bounded learning loss of Liu et al. (2020), per pixel (see the module table)."""

    name = "energy_margin"
    defaults = {"margin_in": -8.0, "margin_out": -2.0}

    def loss(self, logits: torch.Tensor, inlier: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
        e = energy(logits.float())
        inside = torch.relu(e - self.params["margin_in"]).pow(2)
        outside = torch.relu(self.params["margin_out"] - e).pow(2)
        return _masked_mean(inside, inlier) + self.outlier_mean(outside, outlier)


class OutlierVoidTerm(OutlierTerm):
    """Cross-entropy towards the void class (index 19 of a 20-class model) on outlier pixels."""

    name = "outlier_void"
    needs_classes = 20

    def loss(self, logits: torch.Tensor, inlier: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
        log_p_void = torch.log_softmax(logits.float(), dim=1)[:, -1]
        return self.outlier_mean(-log_p_void, outlier)


class OutlierEntropyTerm(OutlierTerm):
    """Entropy maximisation on outlier pixels: :math:`\\log C - H(\\mathrm{softmax}(z))`."""

    name = "outlier_entropy"

    def loss(self, logits: torch.Tensor, inlier: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits.float(), dim=1)
        entropy = -(log_p.exp() * log_p).sum(dim=1)
        return self.outlier_mean(math.log(logits.shape[1]) - entropy, outlier)


OUTLIER_TERMS: dict[str, type[OutlierTerm]] = {
    cls.name: cls for cls in (EnergyMarginTerm, OutlierVoidTerm, OutlierEntropyTerm)
}
