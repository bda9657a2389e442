"""Public alias kept for users' imports: the module is anomaly_seg_ros.core.config."""

from anomaly_seg_ros.core.config import (  # noqa: F401
    AlertConfig,
    ModelConfig,
    PerceptionConfig,
    RenderConfig,
    ScorerConfig,
    load_config,
    parse_override,
    read_yaml_mapping,
    replace_config,
)
