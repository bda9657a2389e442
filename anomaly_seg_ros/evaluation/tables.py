"""Tables of the evaluation grid (``anomaly-seg evaluate``): the seed paper's layout in Markdown and CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly_seg_ros.metrics.ood import anomaly_ratio


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


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
