"""Public alias kept for users' imports: the module is anomaly_seg_ros.common.errors."""

from anomaly_seg_ros.common.errors import (  # noqa: F401
    AnomalySegError,
    BagError,
    CheckpointError,
    ConfigError,
    DatasetError,
    MessageConversionError,
)
