"""Speed measurements of the pipeline: the logic behind ``anomaly-seg benchmark`` and ``benchmarks/``."""
