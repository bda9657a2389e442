"""Evaluation report of one or several bag replays: statistics, aggregation and the report folder.

A validation engineer replays recordings to answer: how fast is the pipeline frame by frame
(latency distribution per stage and end to end, throughput), what did it refuse and why,
how often does it alert, and, where the bag carries ground truth, how well does it segment
and how late does it see each obstacle. This module turns :class:`~anomaly_seg_ros.replay.runner.ReplayReport`
objects into that report:

* per bag and for all bags together (latency percentiles over all frames, summed counts,
  pixel metrics pooled over all pixels, not averaged over bags),
* as ``report.md``, ``report.json`` (everything, per-frame rows included), ``metrics.json``
  (the compact summary the earlier tool wrote), ``frames.csv`` (one row per camera frame),
  ``tracks.csv`` (alert tracks), ``obstacles.csv`` (ground-truth obstacles),
  ``latency_histogram.png`` and, with ground truth, ``pr_curve.png``.

The statistics are small pure functions so that tests can check each against numpy or a
hand-worked case.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_seg_ros.common.fileio import json_default
from anomaly_seg_ros.evaluation.plots import plot_pr_curve
from anomaly_seg_ros.metrics.ood import anomaly_ratio
from anomaly_seg_ros.replay.records import ReplayReport, component_summary, pixel_summary
from anomaly_seg_ros.replay.stats import (
    DECODE,
    END_TO_END,
    PERCENTILES,
    PUBLISH,
    delay_stats,
    latency_stats,
    per_minute,
)

if TYPE_CHECKING:
    from anomaly_seg_ros.metrics import StreamingOODMetrics


# -- aggregation -----------------------------------------------------------------------------


def _stage_names(reports: Sequence[ReplayReport]) -> list[str]:
    """Timing columns in pipeline order: decode, the perception stages, publish, end to end."""
    names: dict[str, None] = {DECODE: None}
    for report in reports:
        for record in report.frame_records:
            names.update(dict.fromkeys(record.timings_ms))
    for late in ("total", PUBLISH, END_TO_END):  # after the perception stages
        if late in names:
            names[late] = names.pop(late)
    return list(names)


def latency_by_stage(reports: Sequence[ReplayReport]) -> dict[str, dict[str, float]]:
    """Percentiles of every timing column over the frames of all ``reports`` (rejected frames only in decode
    and end to end, the time they took until the rejection)."""
    stages = _stage_names(reports)
    values: dict[str, list[float]] = {stage: [] for stage in stages}
    for report in reports:
        for record in report.frame_records:
            for stage, value in record.timings_ms.items():
                values[stage].append(value)
    return {stage: latency_stats(series) for stage, series in values.items() if series}


def aggregate(
    reports: Sequence[ReplayReport],
    *,
    pixel_metrics: StreamingOODMetrics | None = None,
    component_metrics: Any = None,
) -> dict[str, Any]:
    """Totals over several bags: counts summed, latency percentiles over all frames, pixel metrics pooled.

    ``pixel_metrics`` is an accumulator that saw every ground-truth frame of every bag (so
    AP/FPR95/AUROC are those of all pixels pooled, as the benchmarks compute them, not a
    mean of per-bag values); ``component_metrics`` likewise.
    """

    summaries = [report.summary() for report in reports]
    rejected: Counter = Counter()
    rejected_frames: Counter = Counter()
    for summary in summaries:
        rejected.update(summary["rejected"])
        rejected_frames.update(summary["rejected_frames_by_reason"])
    durations = [s["bag_duration_s"] for s in summaries if s["bag_duration_s"] is not None]
    duration = float(sum(durations)) if durations else None
    wall = float(sum(s["wall_s"] for s in summaries))
    processed = sum(s["processed"] for s in summaries)
    all_tracks = sum(s["alert_tracks"] for s in summaries)
    obstacles = [item | {"bag": s["name"]} for s in summaries for item in s["obstacles"]]
    by_stage = latency_by_stage(reports)
    total = {
        "bags": len(reports),
        "frames": sum(s["frames"] for s in summaries),
        "processed": processed,
        "rejected": dict(rejected),
        "rejected_frames_by_reason": dict(rejected_frames),
        "bag_duration_s": duration,
        "wall_s": wall,
        "throughput_fps": processed / wall if wall > 0 else None,
        "realtime_factor": duration / wall if duration and wall > 0 else None,
        "latency_ms": by_stage.get("total", {}),
        "latency_by_stage_ms": by_stage,
        "realtime_drops": sum(s["realtime_drops"] for s in summaries),
        "missing_frames": sum(s["missing_frames"] for s in summaries),
        "alerts": sum(s["alerts"] for s in summaries),
        "frames_with_alerts": sum(s["frames_with_alerts"] for s in summaries),
        "alert_tracks": all_tracks,
        "alerts_per_minute": per_minute(all_tracks, duration),
        "gt_frames": sum(s["gt_frames"] for s in summaries),
        "pixel_metrics": pixel_summary(pixel_metrics),
        "component_metrics": component_summary(component_metrics),
        "match_rule": next((s["match_rule"] for s in summaries if s.get("match_rule")), None),
        "false_alerts": sum(s.get("false_alerts", 0) for s in summaries),
        "false_alert_tracks": sum(s.get("false_alert_tracks", 0) for s in summaries),
        "min_area_px": next((s["min_area_px"] for s in summaries if s.get("min_area_px") is not None), None),
        "range_at_min_area_m": next(
            (s["range_at_min_area_m"] for s in summaries if s.get("range_at_min_area_m")), None
        ),
        **delay_stats(obstacles),
    }
    return total


def build_document(
    reports: Sequence[ReplayReport],
    *,
    pixel_metrics: StreamingOODMetrics | None = None,
    component_metrics: Any = None,
    failures: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """The whole report: ``{"bags": [per-bag summary with its frames], "total": aggregate(...)}``.

    With one bag and no pooled accumulators given, the bag's own accumulators are the pooled ones.
    ``failures`` (``{"bag", "output", "error"}`` of bags whose replay failed in a parallel run)
    are listed as ``"failed_bags"`` and counted in the totals.
    """
    if not reports:
        raise ValueError("no replay reports: expected at least one replayed bag")
    if len(reports) == 1 and pixel_metrics is None and component_metrics is None:
        pixel_metrics, component_metrics = reports[0].pixel_accumulator, reports[0].component_accumulator
    bags = []
    for report in reports:
        summary = report.summary()
        summary["frame_rows"] = [record.row() for record in report.frame_records]
        bags.append(summary)
    total = aggregate(reports, pixel_metrics=pixel_metrics, component_metrics=component_metrics)
    if failures:
        total["failed_bags"] = len(failures)
        return {"bags": bags, "total": total, "failed_bags": [dict(failure) for failure in failures]}
    return {"bags": bags, "total": total}


# -- report folder ---------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return _fmt(None if value is None else 100 * value)


def _latency_cell(stats: dict[str, float], key: str) -> str:
    return _fmt(stats.get(key), 1)


def markdown_report(document: dict[str, Any], *, plots: bool = True) -> str:
    """A human-readable page of :func:`build_document`'s result."""
    bags, total = document["bags"], document["total"]
    lines = ["# Bag replay report", ""]
    if document.get("partial"):
        stop = document["partial"]
        lines += [
            f"**Partial report**: the replay of {stop['bag']} stopped at camera frame {stop['stopped_at_frame']} "
            f"({stop['reason']}); the figures cover the frames before it.",
            "",
        ]
    lines += [
        f"- bags: {total['bags']}; frames {total['frames']}, processed {total['processed']}, rejected "
        + (", ".join(f"{reason} {n}" for reason, n in total["rejected_frames_by_reason"].items()) or "0"),
        f"- recording time {_fmt(total['bag_duration_s'], 1)} s, replay wall time {_fmt(total['wall_s'], 1)} s: "
        f"{_fmt(total['throughput_fps'], 1)} frames/s ({_fmt(total['realtime_factor'])} x real time)",
        f"- frames a live node would skip at these latencies (queue of one, recorded frame rate): "
        f"{total['realtime_drops']}; frames missing from the recordings (stamp gaps): {total['missing_frames']}",
        f"- alerts: {total['alert_tracks']} alert tracks ({_fmt(total['alerts_per_minute'])} per minute of "
        f"recording), {total['alerts']} alert instances in {total['frames_with_alerts']} frames",
    ]
    other = {reason: n for reason, n in total["rejected"].items()}
    for reason, n in total["rejected_frames_by_reason"].items():
        other[reason] -= n
    other = {reason: n for reason, n in other.items() if n}
    if other:
        lines.append(
            "- other messages rejected (ground truth, camera info): " + ", ".join(f"{k} {v}" for k, v in other.items())
        )
    for bag in bags:
        if bag.get("last_rejection"):
            lines.append(f"- last rejection in {bag['name']}: {bag['last_rejection']}")
    for failure in document.get("failed_bags", ()):
        lines.append(f"- FAILED bag {failure['bag']} (not in the totals): {failure['error']}")

    if len(bags) > 1:
        lines += [
            "",
            "## Bags",
            "",
            "| bag | frames | processed | rejected | time (s) | frames/s | end-to-end p50 / p95 / p99 / max (ms) "
            "| alert tracks | alerts/min | AuPRC (%) | FPR95 (%) | obstacles detected / missed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in [*bags, total | {"name": "**total**"}]:
            lines.append(_bag_row(row))

    lines += [
        "",
        "## Latency per frame (ms, all frames)",
        "",
        "| stage | p50 | p95 | p99 | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for stage, stats in total["latency_by_stage_ms"].items():
        cells = " | ".join(_latency_cell(stats, key) for key in ("p50", "p95", "p99", "max"))
        lines.append(f"| {stage} | {cells} |")
    if plots:
        lines += ["", "![latency histogram](latency_histogram.png)"]

    tracks = [track | {"bag": bag["name"]} for bag in bags for track in bag["alert_track_list"]]
    if tracks:
        lines += [
            "",
            "## Alert tracks",
            "",
            "| bag | track | first (s) | last (s) | duration (s) | frames | max area (px) | max score | distance (m) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for track in tracks:
            lines.append(
                f"| {track['bag']} | {track['track_id']} | {_fmt(track['first_s'])} | {_fmt(track['last_s'])} "
                f"| {_fmt(track['duration_s'])} | {track['frames']} | {track['max_area_px']} "
                f"| {_fmt(track['max_score'], 3)} | {_fmt(track['first_distance_m'], 1)} |"
            )

    metrics = total["pixel_metrics"]
    if metrics:
        pooled = "all pixels of all bags pooled" if len(bags) > 1 else "all pixels pooled"
        lines += [
            "",
            f"## Pixel metrics ({total['gt_frames']} frames with ground truth, {pooled})",
            "",
            "| AuPRC (%) | FPR95 (%) | AUROC (%) | anomaly pixel ratio (%) | exact |",
            "| --- | --- | --- | --- | --- |",
            f"| {_fmt(100 * metrics['ap'])} | {_fmt(100 * metrics['fpr_at_tpr'])} | {_fmt(100 * metrics['auroc'])} "
            f"| {_fmt(100 * anomaly_ratio(metrics), 3)} | {'yes' if metrics['exact'] else 'histogram'} |",
        ]
    components = total["component_metrics"]
    if components:
        lines += [
            "",
            f"## Component metrics (SMIYC, {components['num_frames']} frames; predicted = score > "
            f"{components['threshold']:.3f}, the alert threshold)",
            "",
            "| sIoU gt (%) | PPV (%) | mean F1 (%) | F1 at 0.5 (%) | GT components | predicted components "
            "| size filters gt / pred (px) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {_pct(components['siou_gt'])} | {_pct(components['ppv'])} | {_pct(components['f1_mean'])} "
            f"| {_pct(components['f1'].get('0.50'))} | {components['num_gt_components']} "
            f"| {components['num_pred_components']} | {components['min_gt_size']} / {components['min_pred_size']} |",
        ]

    obstacles = [item | {"bag": bag["name"]} for bag in bags for item in bag["obstacles"]]
    lines += detection_section(obstacles, total, with_bag=True)
    return "\n".join(lines) + "\n"


def detection_section(obstacles: Sequence[dict[str, Any]], total: dict[str, Any], *, with_bag: bool) -> list[str]:
    """Markdown lines on the ground-truth obstacles: the matching rule, detections, first alert
    distances, false alerts, and the detection range the minimum alert area allows."""
    if not obstacles:
        return []
    lines = [
        "",
        f"## Ground-truth obstacles: {total['obstacles_detected']} detected, {total['obstacles_missed']} missed",
        "",
        f"Matching rule: {total.get('match_rule') or 'not recorded'}. False alerts: {total.get('false_alerts', 0)} "
        f"(in {total.get('false_alert_tracks', 0)} alert tracks that never matched an obstacle).",
        "",
    ]
    delays = total["detection_delay_s"]
    if delays:
        lines += [
            f"Detection delay (first appearance to first matched alert): mean {delays['mean']:.2f} s, "
            f"median {delays['median']:.2f} s, max {delays['max']:.2f} s.",
            "",
        ]
    min_area = total.get("min_area_px")
    frames = sum(item.get("frames", 0) for item in obstacles)
    below = sum(item.get("frames_below_min_area", 0) for item in obstacles)
    if min_area is not None and frames:
        reach = [item["farthest_alertable_distance_m"] for item in obstacles]
        reach = [value for value in reach if value is not None]
        farthest = f"; the farthest an obstacle here was at least that large: {max(reach):.1f} m" if reach else ""
        ranges = total.get("range_at_min_area_m") or {}
        implied = "; ".join(
            f"an obstacle of {area} m² frontal area reaches it up to {value:.0f} m" for area, value in ranges.items()
        )
        lines += [
            f"Detection range: an alert needs a component of at least min_area_px = {min_area} frame pixels; "
            f"{below} of {frames} obstacle-frames were smaller and could not alert whatever their scores{farthest}."
            + (f" At this camera (flat ground, pinhole), {implied}." if implied else ""),
            "",
        ]
    bag_head, bag_rule = ("| bag ", "| --- ") if with_bag else ("", "")
    lines += [
        f"{bag_head}| obstacle | first seen (frame) | distance then (m) | detected | delay (s) | delay (frames) "
        "| first alert distance (m) | best alert IoU | frames below min area | farthest alertable (m) |",
        f"{bag_rule}| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for item in obstacles:
        bag = f"| {item['bag']} " if with_bag else ""
        lines.append(
            f"{bag}| {item['track_id']} | {item['first_seen_frame']} | {_fmt(item['first_distance_m'], 1)} "
            f"| {'yes' if item['detected'] else 'MISSED'} | {_fmt(item['delay_s'])} "
            f"| {item['delay_frames'] if item['detected'] else '–'} | {_fmt(item['distance_at_alert_m'], 1)} "
            f"| {_fmt(item.get('best_alert_iou'))} | {item.get('frames_below_min_area', 0)} / {item.get('frames', 0)} "
            f"| {_fmt(item.get('farthest_alertable_distance_m'), 1)} |"
        )
    return lines


def _bag_row(row: dict[str, Any]) -> str:
    latency = row["latency_by_stage_ms"].get(END_TO_END, {})
    e2e = " / ".join(_latency_cell(latency, key) for key in ("p50", "p95", "p99", "max"))
    metrics = row["pixel_metrics"] or {}
    rejected = sum(row["rejected_frames_by_reason"].values())
    return (
        f"| {row['name']} | {row['frames']} | {row['processed']} | {rejected} | {_fmt(row['bag_duration_s'], 1)} "
        f"| {_fmt(row['throughput_fps'], 1)} | {e2e} | {row['alert_tracks']} | {_fmt(row['alerts_per_minute'])} "
        f"| {_fmt(100 * metrics['ap'] if metrics else None)} "
        f"| {_fmt(100 * metrics['fpr_at_tpr'] if metrics else None)} "
        f"| {row['obstacles_detected']} / {row['obstacles_missed']} |"
    )


def write_frames_csv(path: Path, reports: Sequence[ReplayReport]) -> None:
    """One row per camera frame of every bag: stamps, status (``ok`` or the rejection reason), alerts, timings."""
    stages = _stage_names(reports)
    columns = ["bag", "frame", "log_ns", "stamp_ns", "status", "alerts"] + [f"{stage}_ms" for stage in stages]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for report in reports:
            for record in report.frame_records:
                timings = [record.timings_ms.get(stage) for stage in stages]
                writer.writerow(
                    [report.name, record.index, record.log_ns, record.stamp_ns, record.status, record.alerts]
                    + ["" if value is None else f"{value:.4f}" for value in timings]
                )


def _write_dicts(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})


TRACK_COLUMNS = (
    "bag", "track_id", "first_stamp_ns", "last_stamp_ns", "first_s", "last_s", "duration_s",
    "first_frame", "last_frame", "frames", "max_area_px", "max_score", "first_distance_m", "min_distance_m",
)  # fmt: skip
OBSTACLE_COLUMNS = (
    "bag", "track_id", "first_seen_s", "first_seen_frame", "first_area_px", "first_distance_m", "detected",
    "delay_s", "delay_frames", "area_at_alert_px", "distance_at_alert_m", "best_alert_iou", "frames",
    "frames_below_min_area", "farthest_alertable_distance_m",
)  # fmt: skip


def plot_latency_histogram(path: Path, reports: Sequence[ReplayReport]) -> None:
    """Histogram of per-frame perception and end-to-end latency over all frames, percentiles marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        name: np.array([r.timings_ms[key] for report in reports for r in report.frame_records if r.status == "ok"])
        for name, key in (("perception (total)", "total"), ("end to end", END_TO_END))
    }
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    values = np.concatenate(list(series.values()))
    if values.size:
        bins = np.linspace(0.0, float(values.max()) * 1.02 + 1e-9, 50)
        for (label, data), color in zip(series.items(), ("tab:blue", "tab:orange"), strict=True):
            axes.hist(data, bins=bins, alpha=0.6, label=label, color=color)
        for q, style in zip(PERCENTILES, (":", "--", "-."), strict=True):
            axes.axvline(
                np.percentile(series["end to end"], q), color="black", linestyle=style, label=f"end to end p{q}"
            )
    axes.set_xlabel("latency per frame (ms)")
    axes.set_ylabel("frames")
    axes.set_title(f"Latency over {values.size // 2} frames")
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_bag_report(
    folder: str | Path,
    reports: Sequence[ReplayReport],
    *,
    pixel_metrics: StreamingOODMetrics | None = None,
    component_metrics: Any = None,
    plots: bool = True,
    failures: Sequence[dict[str, str]] = (),
    partial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the report folder of one or several replays; returns the JSON document.

    ``partial`` (bag, stopped_at_frame, reason) marks the report of a replay that stopped
    early: ``report.json`` gets it under ``"partial"`` and ``report.md`` says so first.

    Files: ``report.md``, ``report.json``, ``metrics.json`` (the per-bag summary of a single
    bag, else the totals), ``frames.csv``, ``tracks.csv``, ``obstacles.csv`` and, with
    ``plots``, ``latency_histogram.png`` and (with ground truth) ``pr_curve.png``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = build_document(
        reports, pixel_metrics=pixel_metrics, component_metrics=component_metrics, failures=failures
    )
    if partial is not None:
        document["partial"] = partial
    (folder / "report.json").write_text(json.dumps(document, indent=1, default=json_default) + "\n")
    compact = (
        {k: v for k, v in document["bags"][0].items() if k != "frame_rows"} if len(reports) == 1 else document["total"]
    )
    (folder / "metrics.json").write_text(json.dumps(compact, indent=2, default=json_default) + "\n")
    (folder / "report.md").write_text(markdown_report(document, plots=plots))
    write_frames_csv(folder / "frames.csv", reports)
    tracks = [track | {"bag": bag["name"]} for bag in document["bags"] for track in bag["alert_track_list"]]
    _write_dicts(folder / "tracks.csv", tracks, TRACK_COLUMNS)
    obstacles = [item | {"bag": bag["name"]} for bag in document["bags"] for item in bag["obstacles"]]
    _write_dicts(folder / "obstacles.csv", obstacles, OBSTACLE_COLUMNS)
    if not plots:
        return document
    plot_latency_histogram(folder / "latency_histogram.png", reports)
    pooled = (
        pixel_metrics if pixel_metrics is not None else (reports[0].pixel_accumulator if len(reports) == 1 else None)
    )
    if pooled is not None and document["total"]["pixel_metrics"]:
        curve = pooled.pr_curve()
        plot_pr_curve(
            folder / "pr_curve.png", {"all bags pooled": curve}, anomaly_ratio(document["total"]["pixel_metrics"])
        )
    return document
