r"""Scorers that only make sense with a particular classifier head: the void class and IsoMax+.

Both read nothing but the logits of a model trained for them; ``bind(model)`` refuses a model
without that head, so a configuration error shows at start-up rather than as meaningless maps.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.labels import VOID_INDEX
from anomaly_seg_ros.models.heads import head_kind
from anomaly_seg_ros.scoring.base import Scorer
from anomaly_seg_ros.scoring.registry import register_scorer

#: Classes of a void-classifier model: the 19 Cityscapes trainIds and void.
VOID_NUM_CLASSES = VOID_INDEX + 1


def _model_classes(model: nn.Module) -> Any:
    return getattr(getattr(model, "_orig_mod", model), "num_classes", None)


@register_scorer
class VoidProbability(Scorer):
    r"""Softmax probability of the void class (seed 000 section 4).

    .. math:: s(x) = \operatorname{softmax}(f(x))_{19}

    The network is trained with the Cityscapes background as class 19
    (``losses.void_targets``); anomalies are expected to look like background. Scores lie in
    ``[0, 1]``; needs a 20-class model.
    """

    name = "void"
    display_range = (0.0, 1.0)
    requires_head = True
    #: Logits must have exactly this many classes (the 19 trainIds and void).
    required_classes: ClassVar[int] = VOID_NUM_CLASSES

    @staticmethod
    def score(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != VOID_NUM_CLASSES:
            raise ConfigError(
                f"scorer 'void' needs logits of a {VOID_NUM_CLASSES}-class model (void = class {VOID_INDEX}), "
                f"got {logits.shape[1]} classes"
            )
        # softmax_19 = exp(z_19 - logsumexp(z)): one reduction, no full softmax.
        return torch.exp(logits[:, VOID_INDEX] - torch.logsumexp(logits, dim=1))

    def bind(self, model: nn.Module) -> None:
        classes = _model_classes(model)
        if classes != VOID_NUM_CLASSES:
            raise ConfigError(
                f"scorer 'void' needs a model trained with a void class ({VOID_NUM_CLASSES} classes, "
                f"void = {VOID_INDEX}); this model has num_classes={classes!r}"
            )


@register_scorer
class IsoMaxEntropic(Scorer):
    r"""IsoMax+ scores (Macêdo & Ludermir, arXiv:2105.14399) of an IsoMax+ head's distance logits.

    With :math:`z_j = -|d_s| \lVert \hat f - \hat p_j \rVert` (``models.heads.IsoMaxPlusHead``) and
    :math:`p = \operatorname{softmax}(z)`, *without* the entropic scale, which the paper uses only
    in training:

    - ``kind="entropic"`` (default): the entropic score of the paper is the negative entropy
      :math:`\sum_j p_j \log p_j` (higher = in-distribution); its negation, the entropy, is the
      anomaly score, divided by :math:`\log C` as ``maxentropy`` is so that it lies in ``[0, 1]``
      (a constant factor: rankings and metrics are unchanged)

      .. math:: s(x) = -\frac{1}{\log C} \sum_j p_j \log p_j

    - ``kind="mds"``: the minimum distance score, :math:`s(x) = |d_s| \min_j \lVert \hat f -
      \hat p_j \rVert = -\max_j z_j`.
    """

    name = "isomax"
    display_range = (0.0, 1.0)
    requires_head = True
    KINDS: ClassVar[tuple[str, ...]] = ("entropic", "mds")

    def __init__(self, kind: str = "entropic") -> None:
        if kind not in self.KINDS:
            raise ConfigError(f"scorer 'isomax': kind must be one of {', '.join(self.KINDS)}, got {kind!r}")
        self.kind = kind

    @property
    def params(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @staticmethod
    def score(logits: torch.Tensor, kind: str = "entropic") -> torch.Tensor:
        if kind == "mds":
            return -logits.amax(dim=1)
        log_probs = torch.log_softmax(logits, dim=1)
        return -(log_probs.exp() * log_probs).sum(dim=1) / math.log(logits.shape[1])

    def bind(self, model: nn.Module) -> None:
        if head_kind(model) != "isomax":
            raise ConfigError(
                "scorer 'isomax' needs a model with an IsoMax+ head (build_model(..., head='isomax'), "
                f"checkpoint metadata head='isomax'); this model's head is {head_kind(model)!r}"
            )
