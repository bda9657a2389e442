"""The scorer registry: every scorer module registers its class here by ``name``."""

from __future__ import annotations

from typing import Any

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.scoring.base import Scorer
from anomaly_seg_ros.scoring.instance import InstanceAggregated

_REGISTRY: dict[str, type[Scorer]] = {}


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator that makes a scorer available by its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"scorer {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_scorers() -> list[str]:
    return sorted(_REGISTRY)


def get_scorer(name: str, **params: Any) -> Scorer:
    """Build the scorer registered as ``name`` with its keyword parameters."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown scorer {name!r}; available: {', '.join(available_scorers())}") from None
    # ``instance: true`` works with every scorer (seed 003 eq. 7), so it is handled here.
    instance = params.pop("instance", False)
    try:
        scorer = cls(**params)
    except TypeError as error:
        raise ConfigError(f"scorer {name!r}: bad parameters {params}: {error}") from None
    if instance is False:
        return scorer
    return InstanceAggregated(scorer, instance)


def logit_scorers() -> list[str]:
    """Registered scorers computed from the logits alone: no features, no fit, no network."""
    return [
        name
        for name, cls in sorted(_REGISTRY.items())
        if not (
            cls.requires_features or cls.requires_fit or cls.requires_model or cls.offline_only or cls.requires_head
        )
    ]
