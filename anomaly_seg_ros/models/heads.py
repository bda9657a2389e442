r"""Classifier heads that replace a network's class logits: the IsoMax+ head.

IsoMax+ (Macêdo & Ludermir, "Enhanced Isotropy Maximization Loss: Seamless and High-Performance
Out-of-Distribution Detection Simply Replacing the SoftMax Loss", arXiv:2105.14399; seed 000
section 5.1, eq. 8) replaces the last linear layer by learnable class prototypes
:math:`p_j \in \mathbb{R}^F` and a learnable distance scale :math:`d_s`:

.. math:: z_j(x) = -|d_s| \, \lVert \hat f(x) - \hat p_j \rVert_2, \qquad
          \hat f = f / \lVert f \rVert_2, \quad \hat p_j = p_j / \lVert p_j \rVert_2

The head returns these "distance logits" ``z``. The entropic scale :math:`E_s` (10 in the paper)
multiplies them only inside the training loss (``losses``, name ``"isomax"``); at inference the
paper drops it, and the entropic score is the entropy of ``softmax(z)`` (``scoring.heads``).

How the head meets a segmentation network: the course project's base code that seed 000 builds on
applies IsoMax+ to the *output* of ERFNet, i.e. the network's C output channels are the embedding
``f`` and the prototypes live in that C-dimensional space. :func:`attach_head` does exactly that
and keeps the registry's contract: ``forward -> logits``, ``forward_with_features ->
SegmentationOutput`` with ``features`` = the embedding, and ``last_layer`` = the IsoMax+ head.
The head works per pixel, so the logits keep the embedding's resolution (the network's input
resolution for ERFNet) and ``head_logits`` equals ``logits``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models.outputs import SegmentationOutput

#: Head kinds ``build_model(..., head=...)`` and checkpoint metadata ``"head"`` accept.
HEAD_KINDS = ("linear", "isomax")

# F.normalize's default: a zero feature vector stays zero instead of becoming NaN.
_NORM_EPS = 1e-12


class IsoMaxPlusHead(nn.Module):
    r"""Per-pixel IsoMax+ classifier: ``(N, F, H, W)`` features -> ``(N, C, H, W)`` distance logits.

    .. math:: z_{j}(x)_{hw} = -|d_s| \, \lVert \hat f(x)_{hw} - \hat p_j \rVert_2

    Prototypes are initialised ``N(0, 1)`` and ``d_s = 1``, as in the authors' code
    (github.com/dlmacedo/entropic-out-of-distribution-detection, ``losses/isomaxplus.py``).
    The Euclidean distance is computed as ``sqrt(|f̂|² + |p̂|² - 2 f̂·p̂)``, one einsum over the
    feature axis, so memory stays ``O(N·C·H·W)`` instead of materialising every difference
    vector (``O(N·C·F·H·W)``); the squared distance is clamped at a tiny positive value so
    the square root has a finite gradient when a feature coincides with a prototype.
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        for key, value in (("num_features", num_features), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"IsoMaxPlusHead: {key} must be a positive integer, got {value!r}")
        self.num_features = num_features
        self.num_classes = num_classes
        self.prototypes = nn.Parameter(torch.empty(num_classes, num_features))
        self.distance_scale = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.prototypes, mean=0.0, std=1.0)
        nn.init.constant_(self.distance_scale, 1.0)

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        r"""Unscaled distances :math:`\lVert \hat f - \hat p_j \rVert_2`, shape ``(N, C, H, W)``."""
        if features.ndim != 4 or features.shape[1] != self.num_features:
            raise ValueError(
                f"IsoMaxPlusHead expects features (N, {self.num_features}, H, W), got {tuple(features.shape)}"
            )
        f_hat = F.normalize(features, dim=1, eps=_NORM_EPS)
        p_hat = F.normalize(self.prototypes, dim=1, eps=_NORM_EPS).to(f_hat.dtype)
        dot = torch.einsum("nfhw,cf->nchw", f_hat, p_hat)
        squared = f_hat.pow(2).sum(dim=1, keepdim=True) + p_hat.pow(2).sum(dim=1).view(1, -1, 1, 1) - 2.0 * dot
        return squared.clamp_min(1e-12).sqrt()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return -self.distance_scale.abs() * self.distances(features)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, num_classes={self.num_classes}"


class IsoMaxPlusNet(nn.Module):
    """A registered network whose output channels are the embedding of an IsoMax+ head.

    State-dict keys are the network's under ``backbone.`` plus ``head.prototypes`` and
    ``head.distance_scale``. To start from a plain checkpoint of the same network (the seed
    fine-tunes a Cityscapes-pretrained ERFNet), load it into ``model.backbone``.
    """

    head_kind = "isomax"

    def __init__(self, backbone: nn.Module, head: IsoMaxPlusHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = head.num_classes
        name = getattr(backbone, "model_name", None)
        if name is not None:
            self.model_name = name

    @property
    def last_layer(self) -> IsoMaxPlusHead:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward_with_features(self, x: torch.Tensor) -> SegmentationOutput:
        inner = self.backbone.forward_with_features(x)
        embedding = inner.logits
        logits = self.head(embedding)
        # Auxiliary outputs (BiSeNet) live in the same embedding space, so they get the same head
        # and the auxiliary loss compares class logits with labels, as for the main output.
        aux = tuple(self.head(a) for a in inner.aux_logits)
        return SegmentationOutput(
            logits=logits, features=embedding, head_logits=logits, aux_logits=aux, inputs=inner.inputs
        )


def attach_head(model: nn.Module, kind: str, *, num_classes: int | None = None) -> nn.Module:
    """Put a ``kind`` classifier head on ``model``'s output.

    ``"linear"`` returns ``model`` unchanged (its own last layer is the linear classifier).
    ``"isomax"`` returns an :class:`IsoMaxPlusNet` whose embedding is ``model``'s
    ``model.num_classes`` output channels and whose head has ``num_classes`` prototypes
    (default: as many as embedding channels, as in the seed's base code).
    """
    if kind not in HEAD_KINDS:
        raise ConfigError(f"unknown head {kind!r}; expected one of {', '.join(HEAD_KINDS)}")
    if kind == "linear":
        return model
    if isinstance(model, IsoMaxPlusNet):
        raise ConfigError("model already has an IsoMax+ head; attach_head expects a plain registered network")
    embedding = getattr(model, "num_classes", None)
    if not isinstance(embedding, int) or not hasattr(model, "forward_with_features"):
        raise ConfigError(
            "attach_head needs a registered network with an integer 'num_classes' (its output channels) "
            f"and forward_with_features; got {type(model).__name__}"
        )
    return IsoMaxPlusNet(model, IsoMaxPlusHead(embedding, embedding if num_classes is None else num_classes))


def head_kind(model: nn.Module) -> str:
    """``"isomax"`` for a model with an IsoMax+ last layer, ``"linear"`` otherwise."""
    unwrapped = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    return "isomax" if isinstance(getattr(unwrapped, "last_layer", None), IsoMaxPlusHead) else "linear"
