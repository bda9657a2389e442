r"""Training losses of seed 000 section 5 behind one composable criterion.

``build_criterion(specs, num_classes=...)`` turns a list of loss specs into a
:class:`Criterion`; its forward takes one network pass (``SegmentationOutput``) and the trainId
targets and returns the scalar

.. math:: L = \sum_t \lambda_t L_t(z, y) + a \sum_{k} \sum_t \lambda_t L_t(z^{aux}_k, y)

where :math:`\lambda_t` is the spec's ``weight`` and :math:`a` the ``aux_weight`` (BiSeNet's
auxiliary heads get the same loss). Each term is a per-pixel loss :math:`\ell_t(i)` reduced as
PyTorch's weighted ``cross_entropy`` reduces (the ERFNet base code's ``NLLLoss2d(weight)``):

.. math:: L_t = \frac{\sum_{i \in V} w_{y_i}\, \omega_i\, \ell_t(i)}{\sum_{i \in V} w_{y_i}}

with :math:`V` the pixels whose label is not ``ignore_index``, :math:`w` the class weights
(1 when none are given or the term has ``class_weighted: false``) and :math:`\omega` the
optional ``pixel_weights`` (seed 003 eq. 8: :math:`\omega = (1 + IU)^2`). Pixel weights scale
the loss and do not enter the normaliser, so ``CE ⊙ (1 + IU)²`` is a true Hadamard product as in
seed 003, not a re-normalised one. A batch without a valid pixel gives 0 (with a graph), not NaN.

Terms (spec ``name`` and its parameters; every spec also takes ``weight`` (default 1) and
``class_weighted`` (default true, false for ``isomax``)):

============  ================================  ==================================================
name          parameters                        per-pixel loss :math:`\ell(i)`, :math:`p = \mathrm{softmax}`
============  ================================  ==================================================
``ce``        —                                 :math:`-\log p(z)_{y}`
``focal``     ``gamma`` (2.0)                   :math:`-(1 - p(z)_y)^\gamma \log p(z)_y` (Lin et al., ICCV 2017);
                                                ``gamma = 0`` is ``ce``
``logitnorm`` ``temperature`` :math:`\tau` (0.04) :math:`-\log p\big(z / (\tau(\lVert z \rVert_2 + 10^{-7}))\big)_y`
                                                (Wei et al., ICML 2022, arXiv:2205.09310; seed 000 eq. 9)
``isomax``    ``entropic_scale`` :math:`E_s` (10) :math:`-\log p(E_s z)_y` on IsoMax+ distance logits
                                                :math:`z = -|d_s| \lVert \hat f - \hat p \rVert` (seed 000 eq. 8)
============  ================================  ==================================================

Outlier-exposure terms (``energy_margin``, ``outlier_void``, ``outlier_entropy``; see
:mod:`anomaly_seg_ros.losses.outlier`) take the same spec form and act on the pixels that the
``outlier_mask`` argument of the forward marks (pasted outliers, labelled ignore so the terms
above skip them), on the main logits only; their weight multiplies their scalar. Instead of
``class_weighted`` they take ``per_object`` (default false): a mean per pasted object, not per pixel.

Seed 000 Table 4 as specs (ERFNet; the IsoMax rows need ``build_model(..., head="isomax")``)::

    Logit            [{"name": "logitnorm"}]
    Logit + cross    [{"name": "logitnorm"}, {"name": "ce"}]
    Logit + focal    [{"name": "logitnorm"}, {"name": "focal", "gamma": 2.0}]
    IsoMax           [{"name": "isomax"}]
    IsoMax + cross   [{"name": "isomax"}, {"name": "ce"}]
    IsoMax + focal   [{"name": "isomax"}, {"name": "focal", "gamma": 2.0}]

What "+ cross" / "+ focal" means. Seed 000 says the losses are "assessed alone or in
conjunction with the focal loss or cross-entropy loss" and does not write the combination out.
We read it as the unweighted sum of the two losses computed on the *same* logits, which is what
the seed authors' training script does (it back-propagates the cross-entropy/focal loss and then
the custom loss of one forward pass, so the gradients add up). For IsoMax+ that makes
"IsoMax + cross" the sum of the IsoMax+ loss (the distance logits scaled by :math:`E_s`) and the
plain cross-entropy of the unscaled distance logits :math:`z`, i.e. IsoMax+ with :math:`E_s = 1`,
class-weighted like the base code's cross-entropy. Change the relative weight with ``weight``.

Deviation from the letter of seed 000 eq. 9: it writes ``f / ||f|| · T``; the LogitNorm paper
and its code divide by :math:`\tau` (``temperature``, 0.04 in the paper's CIFAR setting), which is
the same with :math:`T = 1/\tau`. We follow the paper. (The seed authors' script also applied a
softmax before ``cross_entropy``, i.e. a double softmax, with :math:`\tau = 1`; not reproduced.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.losses.outlier import OUTLIER_TERMS, OutlierTerm
from anomaly_seg_ros.models.outputs import SegmentationOutput

#: Added to the logit norm in LogitNorm, as in the paper's code, so zero logits do not divide by 0.
LOGITNORM_EPS = 1e-7


class LossTerm(nn.Module):
    """One per-pixel loss. Subclasses set ``name``, ``defaults`` and implement ``pixel_loss``."""

    name: ClassVar[str]
    #: Parameters of the term and their defaults; ``weight`` and ``class_weighted`` are common to all
    #: (outlier terms take ``per_object`` instead of ``class_weighted``).
    defaults: ClassVar[dict[str, float]] = {}
    class_weighted_default: ClassVar[bool] = True

    def __init__(self, *, weight: float = 1.0, class_weighted: bool | None = None, **params: float) -> None:
        super().__init__()
        self.weight = weight
        self.class_weighted = self.class_weighted_default if class_weighted is None else class_weighted
        self.params = {**self.defaults, **params}

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss ``(N, H, W)`` of logits ``(N, C, H, W)`` for targets ``(N, H, W)`` in ``[0, C)``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        params = ", ".join(f"{key}={value}" for key, value in self.params.items())
        return f"weight={self.weight}, class_weighted={self.class_weighted}" + (f", {params}" if params else "")


def _nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-log softmax(logits)_target`` per pixel."""
    return F.cross_entropy(logits, target, reduction="none")


class CrossEntropyTerm(LossTerm):
    r""":math:`\ell = -\log \mathrm{softmax}(z)_y`."""

    name = "ce"

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _nll(logits, target)


class FocalTerm(LossTerm):
    r"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    .. math:: \ell = -(1 - p_y)^\gamma \log p_y, \quad p = \mathrm{softmax}(z)

    The class weights, when used, play the role of the paper's :math:`\alpha_y`.
    """

    name = "focal"
    defaults = {"gamma": 2.0}

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nll = _nll(logits, target)
        gamma = self.params["gamma"]
        if gamma == 0.0:
            return nll
        # p_y = exp(-nll) from the same log-softmax: no second softmax and no log(0).
        return (-torch.expm1(-nll)).pow(gamma) * nll


class LogitNormTerm(LossTerm):
    r"""LogitNorm (Wei et al., "Mitigating Neural Network Overconfidence with Logit Normalization", ICML 2022).

    .. math:: \ell = -\log \mathrm{softmax}\Big(\frac{z}{\tau(\lVert z \rVert_2 + \epsilon)}\Big)_y

    with the norm over the class axis of each pixel, :math:`\epsilon = 10^{-7}`.
    """

    name = "logitnorm"
    defaults = {"temperature": 0.04}

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(logits, ord=2, dim=1, keepdim=True) + LOGITNORM_EPS
        return _nll(logits / (norms * self.params["temperature"]), target)


class IsoMaxPlusTerm(LossTerm):
    r"""IsoMax+ loss (seed 000 eq. 8; Macêdo & Ludermir, arXiv:2105.14399) on IsoMax+ head logits.

    .. math:: \ell = -\log \frac{e^{-E_s |d_s| \lVert \hat f - \hat p_y \rVert}}
                            {\sum_j e^{-E_s |d_s| \lVert \hat f - \hat p_j \rVert}}
                   = -\log \mathrm{softmax}(E_s z)_y

    where ``z`` are the logits of ``models.heads.IsoMaxPlusHead``. The paper's loss has no class
    weights, so ``class_weighted`` defaults to false here.
    """

    name = "isomax"
    defaults = {"entropic_scale": 10.0}
    class_weighted_default = False

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _nll(self.params["entropic_scale"] * logits, target)


LOSS_TERMS: dict[str, type[LossTerm]] = {
    cls.name: cls for cls in (CrossEntropyTerm, FocalTerm, LogitNormTerm, IsoMaxPlusTerm)
}

# (predicate, expectation) of each numeric parameter.
_PARAM_RULES: dict[str, tuple[Any, str]] = {
    "weight": (lambda v: v >= 0.0, "a finite number >= 0"),
    "gamma": (lambda v: v >= 0.0, "a finite number >= 0"),
    "temperature": (lambda v: v > 0.0, "a finite number > 0"),
    "entropic_scale": (lambda v: v > 0.0, "a finite number > 0"),
    "margin_in": (lambda v: True, "a finite number"),
    "margin_out": (lambda v: True, "a finite number"),
}
_ALL_TERMS: dict[str, type[LossTerm] | type[OutlierTerm]] = {**LOSS_TERMS, **OUTLIER_TERMS}


def _term_from_spec(spec: Mapping[str, Any], index: int) -> LossTerm | OutlierTerm:
    where = f"loss spec [{index}]"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a mapping with a 'name' key, got {type(spec).__name__}")
    name = spec.get("name")
    if name not in _ALL_TERMS:
        raise ConfigError(f"{where}: unknown loss name {name!r}; allowed: {', '.join(_ALL_TERMS)}")
    cls = _ALL_TERMS[name]
    flag = "class_weighted" if name in LOSS_TERMS else "per_object"
    common = ("name", "weight", flag)
    allowed = (*common, *cls.defaults)
    unknown = sorted(str(key) for key in spec if key not in allowed)
    if unknown:
        raise ConfigError(f"{where} ({name}): unknown key(s) {unknown}; allowed keys: {', '.join(allowed)}")
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "name":
            continue
        if key == flag:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} ({name}): {flag!r} must be true or false, got {value!r}")
            kwargs[key] = value
            continue
        check, expected = _PARAM_RULES[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} ({name}): {key!r} must be {expected}, got {value!r}")
        if not check(float(value)):
            raise ConfigError(f"{where} ({name}): {key!r} must be {expected}, got {value!r}")
        kwargs[key] = float(value)
    term = cls(**kwargs)
    if isinstance(term, OutlierTerm) and "margin_in" in term.params:
        if not term.params["margin_in"] < term.params["margin_out"]:
            raise ConfigError(
                f"{where} ({name}): margin_in must be below margin_out (in-distribution energy is lower), "
                f"got {term.params['margin_in']} and {term.params['margin_out']}"
            )
    return term


class Criterion(nn.Module):
    """Weighted sum of loss terms over the main and auxiliary logits (see the module docstring)."""

    class_weights: torch.Tensor | None

    def __init__(
        self,
        terms: Sequence[LossTerm | OutlierTerm],
        *,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = 255,
        aux_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.terms = nn.ModuleList(term for term in terms if isinstance(term, LossTerm))
        self.outlier_terms = nn.ModuleList(term for term in terms if isinstance(term, OutlierTerm))
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.register_buffer("class_weights", class_weights)

    @property
    def names(self) -> list[str]:
        return [term.name for term in (*self.terms, *self.outlier_terms)]

    @property
    def uses_outliers(self) -> bool:
        return len(self.outlier_terms) > 0

    def check_model(self, model: nn.Module) -> None:
        """Raise ConfigError when a term does not fit ``model`` (IsoMax+ loss needs an IsoMax+ head)."""
        from anomaly_seg_ros.models.heads import head_kind

        if "isomax" in self.names and head_kind(model) != "isomax":
            raise ConfigError(
                "loss 'isomax' needs a model with an IsoMax+ head (build_model(..., head='isomax')); "
                f"this model's head is {head_kind(model)!r}"
            )
        classes = getattr(model, "num_classes", self.num_classes)
        if classes != self.num_classes:
            raise ConfigError(f"criterion built for {self.num_classes} classes, model has {classes}")
        for term in self.outlier_terms:
            if term.needs_classes is not None and term.needs_classes != self.num_classes:
                raise ConfigError(
                    f"loss {term.name!r} needs a {term.needs_classes}-class model (num_classes: "
                    f"{term.needs_classes}, void = class {term.needs_classes - 1}); this one has {self.num_classes}"
                )

    def forward(
        self,
        output: SegmentationOutput | torch.Tensor,
        target: torch.Tensor,
        *,
        pixel_weights: torch.Tensor | None = None,
        outlier_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss of one forward pass; ``target`` ``(N, H, W)`` trainIds, ``pixel_weights`` ``(N, H, W)``,
        ``outlier_mask`` ``(N, H, W)`` bool: the pasted outliers' pixels (None: none)."""
        if not isinstance(output, SegmentationOutput):
            output = SegmentationOutput(logits=output)
        target = self._check_target(output.logits, target)
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        if pixel_weights is not None and pixel_weights.shape != target.shape:
            raise ValueError(
                f"pixel_weights must have the target's shape {tuple(target.shape)}, got {tuple(pixel_weights.shape)}"
            )
        total = self._loss(output.logits, safe_target, valid, pixel_weights)
        for aux in output.aux_logits:
            total = total + self.aux_weight * self._loss(aux, safe_target, valid, pixel_weights)
        if self.outlier_terms:
            if outlier_mask is None:
                outlier_mask = torch.zeros_like(valid)
            elif outlier_mask.shape != target.shape:
                raise ValueError(
                    f"outlier_mask must have the target's shape {tuple(target.shape)}, got {tuple(outlier_mask.shape)}"
                )
            outlier_mask = outlier_mask.bool()
            inlier = valid & ~outlier_mask
            for term in self.outlier_terms:
                total = total + term.weight * term.loss(output.logits, inlier, outlier_mask)
        return total

    def _loss(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, pixel_weights: torch.Tensor | None
    ) -> torch.Tensor:
        if logits.ndim != 4 or logits.shape[:2] != (target.shape[0], self.num_classes):
            raise ValueError(
                f"auxiliary logits must be (N, {self.num_classes}, h, w) with N = {target.shape[0]}, "
                f"got {tuple(logits.shape)}"
            )
        if logits.shape[-2:] != target.shape[-2:]:
            # Auxiliary heads may predict at a lower resolution; compare at the labels' resolution.
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        mask = valid.to(logits.dtype)
        if self.class_weights is not None:
            # .to() is a no-op once the criterion sits on the logits' device; it spares a forgotten .to(device).
            weighted_mask = self.class_weights.to(device=logits.device, dtype=logits.dtype)[target] * mask
        else:
            weighted_mask = mask
        tiny = torch.finfo(logits.dtype).tiny
        total = logits.sum() * 0.0  # keeps the graph (and device, dtype) when every pixel is ignored
        for term in self.terms:
            weights = weighted_mask if term.class_weighted else mask
            per_pixel = term.pixel_loss(logits, target) * weights
            if pixel_weights is not None:
                per_pixel = per_pixel * pixel_weights.to(logits.dtype)
            total = total + term.weight * per_pixel.sum() / weights.sum().clamp_min(tiny)
        return total

    def _check_target(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"criterion built for {self.num_classes} classes expects logits (N, {self.num_classes}, H, W), "
                f"got {tuple(logits.shape)}"
            )
        if target.ndim == 4 and target.shape[1] == 1:
            target = target[:, 0]  # the ERFNet base code's (N, 1, H, W) label batches
        if target.ndim != 3 or target.shape[0] != logits.shape[0] or target.shape[-2:] != logits.shape[-2:]:
            raise ValueError(
                f"target must be (N, H, W) = {(logits.shape[0], *logits.shape[-2:])} trainIds, "
                f"got {tuple(target.shape)}"
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"target must be an integer label tensor, got {target.dtype}")
        target = target.long()
        bad = (target != self.ignore_index) & ((target < 0) | (target >= self.num_classes))
        if bool(bad.any()):
            values = sorted(set(target[bad].unique().tolist()))[:10]
            raise DatasetError(
                f"labels {values} are outside 0..{self.num_classes - 1} and not the ignore index {self.ignore_index}"
            )
        return target


def build_criterion(
    specs: Sequence[Mapping[str, Any]],
    *,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
    aux_weight: float = 1.0,
) -> Criterion:
    """Criterion of the weighted loss terms in ``specs`` (see the module docstring for names and keys)."""
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Sequence) or len(specs) == 0:
        raise ConfigError(
            f"loss specs must be a non-empty list of mappings like {{'name': 'ce', 'weight': 1.0}}; got {specs!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or not aux_weight >= 0.0:
        raise ConfigError(f"aux_weight must be a number >= 0, got {aux_weight!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ConfigError(f"ignore_index must be an integer, got {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise ConfigError(f"ignore_index {ignore_index} is a class index (0..{num_classes - 1}); expected e.g. 255")
    if class_weights is not None:
        if not isinstance(class_weights, torch.Tensor) or class_weights.shape != (num_classes,):
            shape = tuple(class_weights.shape) if isinstance(class_weights, torch.Tensor) else type(class_weights)
            raise ConfigError(f"class_weights must be a tensor of shape ({num_classes},), got {shape}")
        class_weights = class_weights.detach().to(torch.float32).clone()
        if not bool(torch.isfinite(class_weights).all()) or bool((class_weights < 0).any()):
            raise ConfigError(f"class_weights must be finite and >= 0, got {class_weights.tolist()}")
    terms = [_term_from_spec(spec, index) for index, spec in enumerate(specs)]
    return Criterion(
        terms,
        num_classes=num_classes,
        class_weights=class_weights,
        ignore_index=ignore_index,
        aux_weight=float(aux_weight),
    )
