"""Anomaly scorers behind one interface: ``get_scorer(name, **params)(logits) -> scores``."""

from anomaly_seg_ros.scoring import softmax as _softmax  # noqa: F401  (registers the scorers)
from anomaly_seg_ros.scoring.base import Scorer, available_scorers, get_scorer, register_scorer

__all__ = ["Scorer", "available_scorers", "get_scorer", "register_scorer"]
