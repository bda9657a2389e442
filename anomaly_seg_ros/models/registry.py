"""Model registry: one name -> builder and the defaults that go with that network.

Training, evaluation, checkpoints and the node look a network up by the name stored in
configs and checkpoint metadata, and read its input conventions (normalisation, input
size, class count) from here, so they are defined in exactly one place.

A builder takes keyword-only arguments, at least ``num_classes``, and returns an
``nn.Module`` that has a ``num_classes`` attribute.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from anomaly_seg_ros.common.errors import ConfigError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str,
    *,
    input_size: tuple[int, int],
    num_classes: int = 20,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name`` with its defaults.

    ``mean``/``std`` apply to RGB already scaled to 0..1; ``input_size`` is the (H, W)
    the network was trained at.
    """

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} is already registered")
        defaults = {
            "num_classes": int(num_classes),
            "mean": tuple(float(v) for v in mean),
            "std": tuple(float(v) for v in std),
            "input_size": (int(input_size[0]), int(input_size[1])),
        }
        _REGISTRY[name] = _Entry(builder, defaults)
        return builder

    return decorate


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(available_models())}") from None


def model_defaults(name: str) -> dict[str, Any]:
    """Defaults of model ``name``: num_classes, mean, std (on 0..1 RGB), input_size (H, W)."""
    return dict(_entry(name).defaults)


def build_model(name: str, num_classes: int = 20, *, head: str = "linear", **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model ``name``; the result carries ``model_name`` and ``head_kind``.

    ``head="linear"`` is the network as published; ``head="isomax"`` makes its ``num_classes``
    output channels the embedding of an IsoMax+ head with ``num_classes`` prototypes
    (``models.heads.attach_head``).
    """
    from anomaly_seg_ros.models.heads import HEAD_KINDS, attach_head  # heads imports outputs only; no cycle

    entry = _entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if head not in HEAD_KINDS:
        raise ConfigError(f"model {name!r}: unknown head {head!r}; expected one of {', '.join(HEAD_KINDS)}")
    try:
        inspect.signature(entry.builder).bind(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad arguments {sorted(kwargs)}: {exc}") from None
    model = entry.builder(num_classes=num_classes, **kwargs)
    model.model_name = name
    model = attach_head(model, head)
    model.model_name = name
    model.head_kind = head
    return model
