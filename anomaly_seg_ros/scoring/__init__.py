"""Anomaly scorers behind one interface: ``get_scorer(name, **params)(logits) -> scores``."""

from anomaly_seg_ros.scoring import ensemble as _ensemble  # noqa: F401  (registers ensemble_entropy, ensemble_mi)
from anomaly_seg_ros.scoring import flow as _flow  # noqa: F401  (registers flowenedet)
from anomaly_seg_ros.scoring import heads as _heads  # noqa: F401  (registers void, isomax)
from anomaly_seg_ros.scoring import odin as _odin  # noqa: F401  (registers odin)
from anomaly_seg_ros.scoring import pgu as _pgu  # noqa: F401  (registers pgu)
from anomaly_seg_ros.scoring import sml as _sml  # noqa: F401  (registers sml)
from anomaly_seg_ros.scoring import softmax as _softmax  # noqa: F401  (registers the scorers)
from anomaly_seg_ros.scoring.base import Scorer
from anomaly_seg_ros.scoring.fitting import FittedScorer, load_fit, prepare_scorer, save_fit, score_all
from anomaly_seg_ros.scoring.instance import instance_mean
from anomaly_seg_ros.scoring.registry import available_scorers, get_scorer, logit_scorers, register_scorer

__all__ = [
    "FittedScorer",
    "Scorer",
    "available_scorers",
    "get_scorer",
    "instance_mean",
    "load_fit",
    "logit_scorers",
    "prepare_scorer",
    "register_scorer",
    "save_fit",
    "score_all",
]
