"""The one scorer interface.

A scorer maps one forward pass of the network (a ``SegmentationOutput``, or bare logits
``(N, C, H, W)``) to per-pixel anomaly scores ``(N, H, W)`` at the logits' resolution and on
their device; higher means more anomalous, for every scorer. Each scorer keeps its formula
as a pure static ``score`` function of the tensors (pytorch-ood style) so that evaluation code
and tests can call it without an instance.

Scorers that read more than the logits say so: ``requires_features`` asks the caller for
``forward_with_features`` (penultimate features, last-layer output), ``bind(model)`` hands
them the network when they need its parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models.outputs import SegmentationOutput


class Scorer:
    """Base class: subclasses define ``name``, ``score`` and their keyword parameters."""

    name: ClassVar[str]
    #: Default heatmap display range (low, high) of the score, used when none is configured.
    display_range: ClassVar[tuple[float, float] | None] = None
    #: True when the scorer reads ``SegmentationOutput.features`` (call ``forward_with_features``).
    requires_features: ClassVar[bool] = False
    #: True when the scorer needs statistics or a small model fitted on in-distribution data.
    requires_fit: ClassVar[bool] = False
    #: True when ``compute`` needs the network handed to ``bind`` (PGU, ensembles, ODIN).
    requires_model: ClassVar[bool] = False
    #: True when the scorer cannot run in the live pipeline (ODIN: a backward pass per frame).
    offline_only: ClassVar[bool] = False
    #: True when the scorer only fits a model trained for it (void class, IsoMax+ head); ``bind`` rejects others.
    requires_head: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        if params:
            raise ConfigError(f"scorer {self.name!r} takes no parameters, got {sorted(params)}")

    @property
    def params(self) -> dict[str, Any]:
        """The scorer's parameters, as given to ``get_scorer``."""
        return {}

    def __call__(self, output: torch.Tensor | SegmentationOutput) -> torch.Tensor:
        if not isinstance(output, SegmentationOutput):
            output = SegmentationOutput(logits=output)
        check_logits(output.logits)
        if self.requires_features and output.features is None:
            raise ValueError(
                f"scorer {self.name!r} needs the network's features: run model.forward_with_features, not forward"
            )
        return self.compute(output)

    def compute(self, output: SegmentationOutput) -> torch.Tensor:
        """Scores of one checked forward pass; logit-only scorers apply their static ``score``."""
        return self.score(output.logits, **self.params)

    def bind(self, model: nn.Module) -> None:
        """Called once with the network the scorer will see outputs of.

        Scorers that need the network's parameters keep it here; scorers that only work
        with some heads (the void class, IsoMax+) raise ``ConfigError`` for other models.
        """

    @staticmethod
    def score(logits: torch.Tensor, **params: Any) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{type(self).__name__}({args})"


class TemperatureScorer(Scorer):
    """A scorer with a softmax temperature ``T > 0`` (seed 000 eq. 5)."""

    def __init__(self, temperature: float = 1.0) -> None:
        temperature = float(temperature)
        if not temperature > 0.0:
            raise ConfigError(f"scorer {self.name!r}: temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @property
    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}


def check_logits(logits: torch.Tensor) -> None:
    """Reject anything that is not a floating (N, C, H, W) tensor with at least two classes."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor of shape (N, C, H, W), got {type(logits).__name__}")
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C, H, W) with C >= 2 classes, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")


ScoreFunction = Callable[[torch.Tensor], torch.Tensor]
