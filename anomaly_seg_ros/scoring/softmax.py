"""Scorers computed from the logits alone (seed 000 section 3.1, eq. 2-5) and the energy score.

All four are post hoc: they need no retraining and cost one reduction over the class axis.
"""

from __future__ import annotations

import math

import torch

from anomaly_seg_ros.scoring.base import Scorer, TemperatureScorer
from anomaly_seg_ros.scoring.registry import register_scorer


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / T``, without a pass over the logits when ``T = 1``."""
    return logits if temperature == 1.0 else logits / temperature


def _shifted_exp(
    scaled: torch.Tensor, *, keep: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
    """Max over classes ``m``, and ``S = sum_k exp(z_k - m)`` (>= 1, never overflows).

    These scorers cost a few passes over a (C, H, W) tensor per frame, which on a CPU is a
    measurable share of the forward (benchmarks/README.md); fusing max, exp and sum this way
    saves the second max and the log/exp round trip of ``torch.logsumexp``. With ``keep`` the
    shifted logits ``d = z - m`` and ``exp(d)`` are returned too.
    """
    peak = scaled.amax(dim=1, keepdim=True)
    shifted = scaled - peak
    exps = shifted.exp() if keep else shifted.exp_()
    return peak.squeeze(1), ((shifted, exps) if keep else None), exps.sum(dim=1)


@register_scorer
class MaxSoftmax(TemperatureScorer):
    r"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017, arXiv:1610.02136).

    .. math:: s(x) = -\max_k \operatorname{softmax}(f(x)/T)_k

    With ``T = 1`` this is seed 000 eq. 2; other temperatures give eq. 5.
    Scores lie in ``[-1, -1/C]``.
    """

    name = "msp"
    display_range = (-1.0, -0.3)

    @staticmethod
    def score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        # max softmax = 1 / sum_k exp(z_k - max z): one max, one exp pass and one sum, no softmax tensor.
        _, _, total = _shifted_exp(_scaled(logits, temperature))
        return -total.reciprocal()


@register_scorer
class MaxLogit(Scorer):
    r"""Maximum logit (Hendrycks et al., ICML 2022, arXiv:1911.11132).

    .. math:: s(x) = -\max_k f(x)_k

    Seed 000 eq. 3: unnormalised, so not diluted by the number of classes.
    """

    name = "maxlogit"

    @staticmethod
    def score(logits: torch.Tensor) -> torch.Tensor:
        return -logits.amax(dim=1)


@register_scorer
class MaxEntropy(TemperatureScorer):
    r"""Normalised predictive entropy of the softmax (seed 000 eq. 4).

    .. math:: s(x) = -\frac{1}{\log C} \sum_k p_k \log p_k, \quad p = \operatorname{softmax}(f(x)/T)

    The paper's eq. 4 writes the normaliser as the number of classes; the seed's base code
    divides by ``log C`` so that the score lies in ``[0, 1]``. A constant factor leaves every
    ranking metric unchanged; ``log C`` makes thresholds comparable between 19- and
    20-class models. Computed from one log-softmax pass.
    """

    name = "maxentropy"
    display_range = (0.0, 1.0)

    @staticmethod
    def score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        # H = log S - sum_k e_k d_k / S with d = z - max z, e = exp(d), S = sum e: one exp pass.
        _, (shifted, exps), total = _shifted_exp(_scaled(logits, temperature), keep=True)
        weighted = (exps * shifted).sum(dim=1)
        return (total.log() - weighted / total) / math.log(logits.shape[1])

    @staticmethod
    def fused_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The same formula written for ``torch.compile`` (the pipeline's fused score stage).

        ``exp(z - max)`` is written once per sum: shared by both sums, Inductor stores it as a
        full-size tensor (40 MB at 19x512x1024) between two loops; written twice, it computes it
        inline in one loop with both sums (one exp per value after common-subexpression
        elimination). In eager PyTorch that would cost a second exp pass, hence :meth:`score`.
        """
        scaled = _scaled(logits, temperature)
        shifted = scaled - scaled.amax(dim=1, keepdim=True)
        total = shifted.exp().sum(dim=1)
        weighted = (shifted.exp() * shifted).sum(dim=1)
        return (total.log() - weighted / total) / math.log(logits.shape[1])


@register_scorer
class Energy(TemperatureScorer):
    r"""Free energy (Liu et al., NeurIPS 2020, arXiv:2010.03759).

    .. math:: s(x) = E(x) = -T \log \sum_k e^{f(x)_k / T}

    The paper's in-distribution score is the negative energy ``T·logsumexp(f/T)``; its
    negation, the energy itself, is the anomaly score (higher = more anomalous).
    """

    name = "energy"

    @staticmethod
    def score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        peak, _, total = _shifted_exp(_scaled(logits, temperature))
        return -temperature * (total.log() + peak)
