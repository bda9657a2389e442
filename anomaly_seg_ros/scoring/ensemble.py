"""Deep-ensemble scorers (Lakshminarayanan et al., NeurIPS 2017; seed 003 eq. 2-3).

The ensemble is the main model plus the member checkpoints given as ``members``; each
member runs on the main model's normalised input (``SegmentationOutput.inputs``), so every
member must expect the same normalisation (mean, std) and class count as the main model,
otherwise ``bind`` raises ConfigError. Members are fully convolutional, so their recorded
training input size need not match.

With :math:`\\bar p = \\frac1M \\sum_m \\operatorname{softmax}(f_m(x))`:

- ``ensemble_entropy``: predictive entropy :math:`H[\\bar p]` (seed 003 eq. 2),
- ``ensemble_mi``: mutual information :math:`H[\\bar p] - \\frac1M \\sum_m H[p_m]`
  (epistemic part, seed 003 eq. 3),

both divided by :math:`\\log C` like ``maxentropy`` (a constant factor: rankings unchanged,
thresholds comparable between class counts). Cost: one extra forward pass per member.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models.checkpoint import load_model
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.models.registry import model_defaults
from anomaly_seg_ros.scoring.base import Scorer
from anomaly_seg_ros.scoring.registry import register_scorer


def entropy(log_probs: torch.Tensor, dim: int) -> torch.Tensor:
    """Shannon entropy (nats) of distributions given as log-probabilities along ``dim``."""
    return -(log_probs.exp() * log_probs).sum(dim=dim)


def ensemble_log_probs(member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """(M, N, C, H, W) log-softmax of each member's logits."""
    return torch.stack([torch.log_softmax(logits, dim=1) for logits in member_logits])


def ensemble_entropy(
    members: Sequence[torch.Tensor], *, probabilities: bool = False, normalize: bool = False
) -> torch.Tensor:
    r"""Predictive entropy ``(N, H, W)`` of the mean softmax of ``M`` ensemble members.

    ``members``: ``M`` tensors ``(N, C, H, W)``, logits by default, or class probabilities with
    ``probabilities=True``. :math:`0 \ln 0` is taken as 0.
    """
    if isinstance(members, torch.Tensor) or len(members) == 0:
        raise ConfigError("ensemble_entropy expects a non-empty list of (N, C, H, W) tensors, one per member")
    shape = members[0].shape
    for index, member in enumerate(members):
        if member.ndim != 4 or member.shape != shape or member.shape[1] < 2:
            raise ValueError(
                f"ensemble member {index} has shape {tuple(member.shape)}; every member must be (N, C, H, W) "
                f"with C >= 2 and the shape of member 0 {tuple(shape)}"
            )
    # float32/float64 stay as they are; half precision is widened for the log.
    wide = [m if m.dtype in (torch.float32, torch.float64) else m.float() for m in members]
    probs = wide if probabilities else [torch.softmax(m, dim=1) for m in wide]
    mean = torch.stack(probs).mean(dim=0)
    entropy = -torch.special.xlogy(mean, mean).sum(dim=1)
    return entropy / math.log(shape[1]) if normalize else entropy


def predictive_entropy(member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """:math:`H[\\frac1M\\sum_m p_m] / \\log C`, (N, H, W): the entropy the training
    loss's instance uncertainty uses (seed 003 eq. 2), normalised."""
    return ensemble_entropy(member_logits, normalize=True)


def mutual_information(member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """:math:`(H[\\bar p] - \\frac1M \\sum_m H[p_m]) / \\log C`, (N, H, W); >= 0 up to rounding."""
    log_probs = ensemble_log_probs(member_logits)
    mean_log = torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
    expected = entropy(log_probs, dim=2).mean(dim=0)
    return ((entropy(mean_log, dim=1) - expected) / math.log(log_probs.shape[2])).clamp_min(0.0)


class _EnsembleScorer(Scorer):
    requires_model: ClassVar[bool] = True
    display_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def __init__(self, members: Sequence[str] = ()) -> None:
        if isinstance(members, str) or not isinstance(members, Sequence) or not members:
            raise ConfigError(
                f"scorer {self.name!r}: params.members must be a non-empty list of checkpoint paths, got {members!r}"
            )
        if not all(isinstance(path, str) and path for path in members):
            raise ConfigError(f"scorer {self.name!r}: params.members must be checkpoint path strings, got {members!r}")
        self.members = tuple(members)
        self.models: list[nn.Module] = []
        #: Main checkpoint's metadata (set by ``prepare_scorer``); else the main model's registry defaults.
        self.reference_metadata: dict[str, Any] | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"members": list(self.members)}

    def bind(self, model: nn.Module) -> None:
        """Load every member onto the main model's device; refuse members that see other inputs."""
        device = next(model.parameters()).device
        reference = self._reference(model)
        loaded = []
        for path in self.members:
            member, meta = load_model(path, device=device)
            for key in ("mean", "std"):
                if reference.get(key) is not None and [float(v) for v in meta[key]] != reference[key]:
                    raise ConfigError(
                        f"scorer {self.name!r}: member {path} expects input {key} {meta[key]}, the main model "
                        f"{reference[key]}; members run on the main model's normalised input, so they must match"
                    )
            classes = getattr(model, "num_classes", None)
            if classes is not None and meta["num_classes"] != classes:
                raise ConfigError(
                    f"scorer {self.name!r}: member {path} has {meta['num_classes']} classes, the main model {classes}"
                )
            loaded.append(member)
        self.models = loaded

    def _reference(self, model: nn.Module) -> dict[str, Any]:
        source: Mapping[str, Any] = self.reference_metadata or {}
        name = getattr(model, "model_name", None)
        defaults = model_defaults(name) if name is not None else {}
        return {
            key: [float(v) for v in value] if (value := source.get(key, defaults.get(key))) is not None else None
            for key in ("mean", "std")
        }

    def member_logits(self, output: SegmentationOutput) -> list[torch.Tensor]:
        if not self.models:
            raise ConfigError(f"scorer {self.name!r} is not bound: call bind(model) to load its members")
        if output.inputs is None:
            raise ValueError(f"scorer {self.name!r} needs SegmentationOutput.inputs (the normalised network input)")
        logits = [output.logits]
        for member in self.models:
            member_out = member(output.inputs.to(output.logits.dtype))
            if member_out.shape != output.logits.shape:
                raise ValueError(
                    f"scorer {self.name!r}: a member returned {tuple(member_out.shape)}, "
                    f"the main model {tuple(output.logits.shape)}"
                )
            logits.append(member_out)
        return logits


@register_scorer
class EnsembleEntropy(_EnsembleScorer):
    """Predictive entropy of the ensemble mean (seed 003 eq. 2), normalised by log C."""

    name = "ensemble_entropy"

    @staticmethod
    def score(logits: torch.Tensor, members: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return predictive_entropy([logits, *members])

    def compute(self, output: SegmentationOutput) -> torch.Tensor:
        return predictive_entropy(self.member_logits(output))


@register_scorer
class EnsembleMutualInformation(_EnsembleScorer):
    """Mutual information between prediction and ensemble member (seed 003 eq. 3), normalised by log C."""

    name = "ensemble_mi"

    @staticmethod
    def score(logits: torch.Tensor, members: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return mutual_information([logits, *members])

    def compute(self, output: SegmentationOutput) -> torch.Tensor:
        return mutual_information(self.member_logits(output))
