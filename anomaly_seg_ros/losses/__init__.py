"""Training losses (seed 000 section 5), class weights (section 4) and instance-uncertainty weighting (seed 003).

``build_criterion(specs, num_classes=...)`` composes cross-entropy, focal, LogitNorm and IsoMax+
losses, and the outlier-exposure terms of ``losses.outlier`` (energy margin, void target, entropy
on outliers); see ``losses.criterion`` for the spec format and seed 000 Table 4 written as specs.
"""

from anomaly_seg_ros.losses.class_weights import (
    ENET_C,
    class_histogram,
    enet_class_weights,
    inverse_frequency_weights,
    void_classifier_weights,
    void_targets,
)
from anomaly_seg_ros.losses.criterion import LOSS_TERMS, Criterion, LossTerm, build_criterion
from anomaly_seg_ros.losses.instance_uncertainty import ensemble_entropy, instance_uncertainty, iu_pixel_weights
from anomaly_seg_ros.losses.outlier import OUTLIER_TERMS, OutlierTerm, energy

__all__ = [
    "ENET_C",
    "LOSS_TERMS",
    "Criterion",
    "LossTerm",
    "OUTLIER_TERMS",
    "OutlierTerm",
    "energy",
    "build_criterion",
    "class_histogram",
    "enet_class_weights",
    "ensemble_entropy",
    "instance_uncertainty",
    "inverse_frequency_weights",
    "iu_pixel_weights",
    "void_classifier_weights",
    "void_targets",
]
