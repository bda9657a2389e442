"""Public alias kept for users' imports: the module is anomaly_seg_ros.core.perception."""

from anomaly_seg_ros.core.perception import (  # noqa: F401
    RUNTIME_SECTIONS,
    Perception,
    PerceptionResult,
)
