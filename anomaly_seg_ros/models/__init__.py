"""Segmentation networks, their registry and checkpoint I/O.

Importing this package registers the built-in networks (ERFNet).
"""

from anomaly_seg_ros.models.checkpoint import (
    load_model,
    load_weights,
    read_metadata,
    save_checkpoint,
)
from anomaly_seg_ros.models.erfnet import ERFNet
from anomaly_seg_ros.models.registry import (
    available_models,
    build_model,
    model_defaults,
    register_model,
)

__all__ = [
    "ERFNet",
    "available_models",
    "build_model",
    "load_model",
    "load_weights",
    "model_defaults",
    "read_metadata",
    "register_model",
    "save_checkpoint",
]
