"""Segmentation networks, their registry and checkpoint I/O.

Importing this package registers the built-in networks (ERFNet, ENet, BiSeNet V1).
"""

from anomaly_seg_ros.models.bisenet import BiSeNetV1
from anomaly_seg_ros.models.checkpoint import (
    load_model,
    load_weights,
    read_metadata,
    save_checkpoint,
)
from anomaly_seg_ros.models.enet import ENet
from anomaly_seg_ros.models.erfnet import ERFNet
from anomaly_seg_ros.models.registry import (
    available_models,
    build_model,
    model_defaults,
    register_model,
)
from anomaly_seg_ros.models.resnet import ResNet18, load_imagenet_weights

__all__ = [
    "BiSeNetV1",
    "ENet",
    "ERFNet",
    "ResNet18",
    "available_models",
    "build_model",
    "load_imagenet_weights",
    "load_model",
    "load_weights",
    "model_defaults",
    "read_metadata",
    "register_model",
    "save_checkpoint",
]
