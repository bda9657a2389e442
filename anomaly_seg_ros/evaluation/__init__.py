"""Offline evaluation: the checkpoints x scorers x datasets grid, its tables and its plots."""

from anomaly_seg_ros.evaluation.grid import GridOptions, evaluate_scorers, evaluate_segmentation, run_grid

__all__ = ["GridOptions", "evaluate_scorers", "evaluate_segmentation", "run_grid"]
