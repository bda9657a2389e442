"""Report folder of a bag replay: metrics as JSON and Markdown, a PR curve, overlay images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def anomaly_ratio(metrics: dict[str, Any]) -> float:
    """Fraction of anomaly pixels: the AuPRC of a scorer that knows nothing."""
    return metrics["num_anomaly"] / (metrics["num_anomaly"] + metrics["num_in_distribution"])


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
    if summary.get("obstacles"):
        lines += [
            "",
            "## Ground-truth obstacles",
            "",
            "| obstacle | first seen (frame) | distance then (m) | detected | delay (s) | delay (frames) "
            "| distance at alert (m) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for item in summary["obstacles"]:
            lines.append(
                f"| {item['track_id']} | {item['first_seen_frame']} | {_fmt(item['first_distance_m'], 1)} "
                f"| {'yes' if item['detected'] else 'MISSED'} | {_fmt(item['delay_s'])} "
                f"| {item['delay_frames'] if item['detected'] else '–'} | {_fmt(item['distance_at_alert_m'], 1)} |"
            )
    return "\n".join(lines) + "\n"


def plot_pr_curve(path: Path, curves: dict[str, tuple[np.ndarray, ...]], positive_ratio: float) -> None:
    """Precision-recall curves ``(precision, recall, ...)``, one line per method, chance level drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4), dpi=120)
    for label, (precision, recall, *_) in curves.items():
        axes.plot(recall, precision, label=label)
    axes.axhline(positive_ratio, color="grey", linestyle="--", label=f"chance ({positive_ratio:.3f})")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_title("Anomaly pixels: precision-recall")
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


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


# -- the evaluation grid (``anomaly-seg evaluate``) --------------------------------------------


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def dataset_titles(results: dict[str, Any]) -> dict[str, str]:
    """Column title of each dataset key; datasets of the same kind get their folder name added."""
    datasets = results["datasets"]
    counts: dict[str, int] = {}
    for item in datasets.values():
        counts[item["title"]] = counts.get(item["title"], 0) + 1
    return {
        key: item["title"] if counts[item["title"]] == 1 else f"{item['title']} ({Path(item['root']).name})"
        for key, item in datasets.items()
    }


def grid_table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the seed 000 table layout (Tables 1-4): method, mIoU, then AuPRC and
    FPR95 per dataset, in percent; ``None`` where a value does not exist (no segmentation set,
    a scorer that failed). A ``Checkpoint`` column comes first when the grid has several."""
    titles = dataset_titles(results)
    several = len(results["checkpoints"]) > 1
    header = (["Checkpoint"] if several else []) + ["Method", "mIoU"]
    for title in titles.values():
        header += [f"{title} AuPRC", f"{title} FPR95"]
    rows = []
    for row in results["rows"]:
        values: list[Any] = [Path(row["checkpoint_path"]).stem] if several else []
        values += [row["method"], None if row["miou"] is None else 100.0 * row["miou"]]
        for key in titles:
            summary = row["datasets"].get(key, {}).get("summary")
            values += [None, None] if summary is None else [100.0 * summary["ap"], 100.0 * summary["fpr_at_tpr"]]
        rows.append(values)
    return header, rows


def grid_markdown(results: dict[str, Any]) -> str:
    """The grid as a Markdown page: the seed-style table, chance levels, errors."""
    header, rows = grid_table(results)
    tpr = results.get("tpr", 0.95)
    lines = [
        "# Anomaly segmentation evaluation",
        "",
        f"AuPRC and FPR{round(100 * tpr)} (%) of pooled pixels per dataset (anomaly = positive, ignore pixels "
        "dropped); mIoU (%) on the segmentation set. Layout of seed 000 Tables 1-4.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for values in rows:
        cells = [v if isinstance(v, str) else _fmt(v) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    titles = dataset_titles(results)
    for key, title in titles.items():
        for row in results["rows"]:
            summary = row["datasets"].get(key, {}).get("summary")
            if summary is not None:
                lines.append(
                    f"- {title}: {row['datasets'][key]['num_images']} images, "
                    f"{summary['num_anomaly']} anomaly / {summary['num_in_distribution']} in-distribution pixels; "
                    f"AuPRC of chance {100 * anomaly_ratio(summary):.3f} %"
                )
                break
    for row in results["rows"]:
        for key, item in row["datasets"].items():
            bounds = (item.get("summary") or {}).get("error_bounds") or {}
            if max(bounds.values(), default=0.0) > 1e-3:  # more than 0.1 percentage points
                lines.append(
                    f"- {row['method']} on {titles[key]}: histogram metrics (more pixels than --exact-pixels); "
                    f"worst-case error AuPRC {100 * bounds['ap']:.2f}, FPR {100 * bounds['fpr']:.2f}, "
                    f"AUROC {100 * bounds['auroc']:.2f} percentage points"
                )
            if item.get("error"):
                lines.append(f"- error: {row['method']} on {titles[key]}: {item['error']}")
    components = [
        (row, key, item["components"])
        for row in results["rows"]
        for key, item in row["datasets"].items()
        if item.get("components")
    ]
    if components:
        lines += [
            "",
            "## Component metrics (SMIYC: threshold of best pixel F1, 8-connected components)",
            "",
            "| Method | dataset | track | sIoU gt (%) | PPV (%) | mean F1 (%) | components gt / predicted |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row, key, item in components:
            lines.append(
                f"| {row['method']} | {titles[key]} | {item['track']} | {_fmt(_percent(item['siou_gt']))} "
                f"| {_fmt(_percent(item['ppv']))} | {_fmt(_percent(item['f1_mean']))} "
                f"| {item['num_gt_components']} / {item['num_pred_components']} |"
            )
    for checkpoint in results["checkpoints"].values():
        segmentation = checkpoint.get("segmentation")
        if segmentation:
            ece = ", ".join(f"T={t}: {_fmt(_percent(v))} %" for t, v in segmentation.get("ece", {}).items())
            lines += [
                "",
                f"## Segmentation of `{checkpoint['path']}`: mIoU {_fmt(100 * segmentation['miou'])} % "
                f"({segmentation['num_images']} images)" + (f"; ECE {ece}" if ece else ""),
                "",
                "| class | IoU (%) |",
                "| --- | --- |",
                *(f"| {name} | {_fmt(100 * v)} |" for name, v in segmentation["iou"].items() if v is not None),
            ]
    return "\n".join(lines) + "\n"


def write_grid_tables(folder: str | Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``table.md`` (2 decimals, as in the paper) and ``table.csv`` (full precision)."""
    import csv

    folder = Path(folder)
    header, rows = grid_table(results)
    markdown = folder / "table.md"
    markdown.write_text(grid_markdown(results))
    table = folder / "table.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scorer", *header])
        for row, values in zip(results["rows"], rows, strict=True):
            writer.writerow([row["scorer"], *("" if v is None else v for v in values)])
    return markdown, table
