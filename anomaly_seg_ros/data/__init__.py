"""Datasets: synthetic road scenes, writers of the real datasets' layouts, and readers."""

from anomaly_seg_ros.data.datasets import AnomalyDataset, CityscapesDataset
from anomaly_seg_ros.data.layout import generate_datasets, write_anomaly_set, write_cityscapes_split
from anomaly_seg_ros.data.synthetic import (
    ANOMALY_HUE_BANDS_DEG,
    CameraIntrinsics,
    Scene,
    SequenceFrame,
    anomaly_palette_mask,
    camera_intrinsics,
    render_scene,
    render_sequence,
)

__all__ = [
    "ANOMALY_HUE_BANDS_DEG",
    "AnomalyDataset",
    "CameraIntrinsics",
    "CityscapesDataset",
    "Scene",
    "SequenceFrame",
    "anomaly_palette_mask",
    "camera_intrinsics",
    "generate_datasets",
    "render_scene",
    "render_sequence",
    "write_anomaly_set",
    "write_cityscapes_split",
]
