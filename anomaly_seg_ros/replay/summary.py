"""Report folder of a single replay as the demo writes it: metrics JSON, Markdown page, PR curve, overlays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomaly_seg_ros.evaluation.plots import plot_pr_curve
from anomaly_seg_ros.metrics.ood import anomaly_ratio
from anomaly_seg_ros.replay.report import detection_section


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_summary(summary: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """A human-readable page of a replay summary (and optional training facts)."""
    lines = ["# Bag replay report", ""]
    lines += [
        f"- input: `{summary['input']}` (camera topic `{summary['camera_topic']}`, "
        f"ground truth `{summary['gt_topic'] or 'none'}`)",
        f"- output bag: `{summary['output']}`",
        f"- frames: {summary['frames']}, processed: {summary['processed']}, rejected: "
        + (", ".join(f"{k} {v}" for k, v in summary["rejected"].items()) or "0"),
    ]
    if summary.get("last_rejection"):
        lines.append(f"- last rejection: {summary['last_rejection']}")
    latency = summary["latency_ms"]
    if latency:
        lines.append("- latency per frame (ms): " + ", ".join(f"{key} {value:.1f}" for key, value in latency.items()))
        lines.append(
            "- median per stage (ms): "
            + ", ".join(f"{key} {value:.1f}" for key, value in summary["stage_ms_p50"].items())
        )
    lines.append(f"- alerts: {summary['alerts']} in {summary['frames_with_alerts']} frames")
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    metrics = summary.get("pixel_metrics")
    if metrics:
        lines += [
            "",
            f"## Pixel metrics ({summary['gt_frames']} frames with ground truth, all pixels pooled)",
            "",
            "| AuPRC (%) | FPR95 (%) | AUROC (%) | anomaly pixel ratio (%) |",
            "| --- | --- | --- | --- |",
            f"| {_fmt(100 * metrics['ap'])} | {_fmt(100 * metrics['fpr_at_tpr'])} "
            f"| {_fmt(100 * metrics['auroc'])} | {_fmt(100 * anomaly_ratio(metrics), 3)} |",
        ]
    lines += detection_section(summary.get("obstacles") or [], summary, with_bag=False)
    return "\n".join(lines) + "\n"


def save_rgb(path: Path, image: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_report(
    folder: str | Path,
    summary: dict[str, Any],
    *,
    pr_curves: dict[str, tuple[np.ndarray, ...]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``metrics.json``, ``report.md`` and (with ground truth) ``pr_curve.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = dict(summary) | ({"extra": extra} if extra else {})
    (folder / "metrics.json").write_text(json.dumps(document, indent=2, default=float) + "\n")
    (folder / "report.md").write_text(markdown_summary(summary, extra))
    if pr_curves and summary.get("pixel_metrics"):
        plot_pr_curve(folder / "pr_curve.png", pr_curves, anomaly_ratio(summary["pixel_metrics"]))
    return folder
