"""Plots of the evaluation grid (matplotlib, Agg backend: no display needed).

Per dataset: precision-recall and ROC curves with one line per method, and score histograms
of in-distribution and anomaly pixels, one panel per method. Per (checkpoint, dataset): a
grid of example frames (image, ground truth, heatmap, overlay) of the cell's first scorer.

Everything is drawn from the saved streaming states, never from per-pixel score lists: the
histograms are the pixel counts between consecutive thresholds of the accumulator's curve
(``dTP``, ``dFP`` at each distinct score or bin), so plotting costs as little memory as the
evaluation did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from anomaly_seg_ros.common.labels import ANOMALY, IN_DISTRIBUTION  # noqa: E402
from anomaly_seg_ros.core.visualization import heatmap, overlay  # noqa: E402
from anomaly_seg_ros.evaluation.state import load_examples, load_streaming_metrics  # noqa: E402
from anomaly_seg_ros.metrics import StreamingOODMetrics  # noqa: E402

#: Most points drawn per curve; a 4 M-pixel exact curve is thinned to this many.
MAX_CURVE_POINTS = 4000
HISTOGRAM_BINS = 60


def _thin(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Evenly spaced points of long curves (end points kept), so plots stay light."""
    size = arrays[0].size
    if size <= MAX_CURVE_POINTS:
        return arrays
    index = np.unique(np.linspace(0, size - 1, MAX_CURVE_POINTS).round().astype(np.int64))
    return tuple(array[index] for array in arrays)


def score_counts(metrics: StreamingOODMetrics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(score, anomaly pixels, in-distribution pixels)`` at each threshold of the curve.

    With ``(fpr, tpr)`` the ROC points at decreasing thresholds, the pixels AT threshold k are
    ``P (tpr_k - tpr_{k-1})`` anomalies and ``N (fpr_k - fpr_{k-1})`` in-distribution pixels: exact
    counts per distinct score while buffering, per histogram bin (at its lower edge) after.
    """
    fpr, tpr, thresholds = metrics.roc_curve()
    summary = metrics.summary()
    positive = np.rint(np.diff(tpr) * summary["num_anomaly"])
    negative = np.rint(np.diff(fpr) * summary["num_in_distribution"])
    values = thresholds[1:].astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():  # the bottom bin of a histogram also holds values below its range
        values[~finite] = values[finite].min() if finite.any() else 0.0
    return values, positive, negative


def score_histograms(
    metrics: StreamingOODMetrics, bins: int = HISTOGRAM_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges, anomaly density, in-distribution density)`` over ``bins`` equal bins of the score range."""
    values, positive, negative = score_counts(metrics)
    low, high = float(values.min()), float(values.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    anomaly, _ = np.histogram(values, bins=edges, weights=positive, density=True)
    normal, _ = np.histogram(values, bins=edges, weights=negative, density=True)
    return edges, anomaly, normal


def _example_range(examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Colour scale of the example heatmaps: 1st-99th percentile of their scored pixels."""
    scored = np.concatenate([s[(t == ANOMALY) | (t == IN_DISTRIBUTION)] for _, t, s in examples])
    if scored.size == 0:
        scored = np.concatenate([s.ravel() for *_, s in examples])
    low, high = np.percentile(scored, [1.0, 99.0])
    return (float(low), float(high)) if high > low else (float(low), float(low) + 1.0)


def _truth_view(truth: np.ndarray) -> np.ndarray:
    view = np.zeros((*truth.shape, 3), dtype=np.uint8)
    view[truth == IN_DISTRIBUTION] = (90, 90, 90)
    view[truth == ANOMALY] = (255, 140, 0)
    return view  # ignore stays black


def plot_examples(path: Path, examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], title: str) -> None:
    """Rows of (image, ground truth, heatmap, overlay); ground truth grey = in-distribution,
    orange = anomaly, black = ignore."""
    value_range = _example_range(examples)
    figure, axes = plt.subplots(len(examples), 4, figsize=(12, 2.0 * len(examples) + 0.6), dpi=100, squeeze=False)
    for row, (image, truth, scores) in enumerate(examples):
        views = (image, _truth_view(truth), heatmap(scores, value_range), overlay(image, scores, value_range))
        for column, (view, name) in enumerate(zip(views, ("image", "ground truth", "heatmap", "overlay"), strict=True)):
            axes[row, column].imshow(view)
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(name)
    figure.suptitle(f"{title}; colour scale {value_range[0]:.3g} .. {value_range[1]:.3g}")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _line_label(row: dict[str, Any], several_checkpoints: bool) -> str:
    return f"{Path(row['checkpoint_path']).stem}: {row['method']}" if several_checkpoints else row["method"]


def write_grid_plots(out: Path, results: dict[str, Any], folders: dict[tuple[str, str], Path]) -> dict[str, list[str]]:
    """Write ``OUT/plots/{pr,roc,hist}_<dataset>.png`` and ``examples_<checkpoint>_<dataset>.png``.

    ``folders`` maps ``(checkpoint key, dataset key)`` to the cell folder holding the streaming
    states. Returns the written paths (relative to ``out``) by kind.
    """
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {"pr": [], "roc": [], "histogram": [], "examples": []}
    several = len(results["checkpoints"]) > 1
    for dataset_key, dataset in results["datasets"].items():
        rows = [row for row in results["rows"] if row["datasets"].get(dataset_key, {}).get("summary")]
        if not rows:
            continue
        pr_figure, pr_axes = plt.subplots(figsize=(6, 4.5), dpi=110)
        roc_figure, roc_axes = plt.subplots(figsize=(6, 4.5), dpi=110)
        columns = min(3, len(rows))
        hist_figure, hist_axes = plt.subplots(
            -(-len(rows) // columns),
            columns,
            figsize=(4.2 * columns, 3.0 * -(-len(rows) // columns)),
            dpi=100,
            squeeze=False,
        )
        top = 0.0
        for index, row in enumerate(rows):
            cell = json.loads((folders[(row["checkpoint"], dataset_key)] / "cell.json").read_text())
            state = cell["scorers"][row["scorer"]]["state"]
            metrics = load_streaming_metrics(folders[(row["checkpoint"], dataset_key)] / state)
            summary = row["datasets"][dataset_key]["summary"]
            label = _line_label(row, several)
            precision, recall, _ = metrics.pr_curve()
            # the first few pixels have precision ~0 or 1 by chance; scale the axis to the rest
            top = max(top, float(precision[recall >= 0.005].max(initial=0.0)))
            pr_axes.plot(*_thin(recall, precision), label=f"{label} (AuPRC {100 * summary['ap']:.2f} %)")
            fpr, tpr, _ = metrics.roc_curve()
            roc_axes.plot(
                *_thin(fpr, tpr),
                label=f"{label} (AUROC {100 * summary['auroc']:.1f} %, FPR95 {100 * summary['fpr_at_tpr']:.1f} %)",
            )
            edges, anomaly, normal = score_histograms(metrics)
            axes = hist_axes.flat[index]
            axes.stairs(normal, edges, fill=True, alpha=0.5, label="in-distribution")
            axes.stairs(anomaly, edges, fill=True, alpha=0.5, label="anomaly")
            axes.set_title(label, fontsize=9)
            axes.set_xlabel("anomaly score")
            axes.set_ylabel("density (log)")
            axes.set_yscale("log")  # MSP piles up near -1; a linear axis hides the tails that matter
            axes.legend(fontsize=7)
            del metrics
        for axes in list(hist_axes.flat)[len(rows) :]:
            axes.set_axis_off()
        chance = rows[0]["datasets"][dataset_key]["summary"]
        ratio = chance["num_anomaly"] / (chance["num_anomaly"] + chance["num_in_distribution"])
        pr_axes.axhline(ratio, color="grey", linestyle="--", label=f"chance ({100 * ratio:.2f} %)")
        pr_axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, min(1.02, 1.15 * max(top, 2 * ratio))))
        pr_axes.set_title(f"{dataset['title']}: precision-recall (pooled pixels)")
        roc_axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance")
        roc_axes.axhline(results.get("tpr", 0.95), color="lightgrey", linewidth=0.8)
        roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
        roc_axes.set_title(f"{dataset['title']}: ROC (pooled pixels)")
        hist_figure.suptitle(f"{dataset['title']}: anomaly scores of in-distribution and anomaly pixels")
        stem = f"{dataset_key}"
        for figure, axes, kind in (
            (pr_figure, pr_axes, "pr"),
            (roc_figure, roc_axes, "roc"),
            (hist_figure, None, "hist"),
        ):
            if axes is not None:
                axes.legend(fontsize=7, loc="best")
            figure.tight_layout()
            path = plot_dir / f"{kind}_{stem}.png"
            figure.savefig(path)
            plt.close(figure)
            written["histogram" if kind == "hist" else kind].append(str(path.relative_to(out)))
    for (checkpoint_key, dataset_key), folder in folders.items():
        cell = json.loads((folder / "cell.json").read_text())
        examples = load_examples(folder / "examples.npz")
        if not examples or cell.get("examples_of") is None:
            continue
        entry = cell["scorers"][cell["examples_of"]]
        checkpoint = Path(results["checkpoints"][checkpoint_key]["path"]).stem
        title = f"{checkpoint} on {results['datasets'][dataset_key]['title']}: {entry['title']}"
        path = plot_dir / f"examples_{checkpoint_key}_{dataset_key}.png"
        plot_examples(path, examples, title)
        written["examples"].append(str(path.relative_to(out)))
    return written


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
