"""``anomaly-seg demo``: the whole pipeline on synthetic data, end to end, on a CPU.

1. synthetic road scenes in the Cityscapes and Fishyscapes layouts,
2. ERFNet trained on them with ``config/train_synthetic.yaml``,
3. a synthetic driving rosbag (mcap) with anomalies on the road,
4. that bag replayed through the perception core into an output bag,
5. a report folder: metrics (JSON + Markdown), PR curves and overlay images.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from anomaly_seg_ros.config import load_config
from anomaly_seg_ros.data.datasets import AnomalyDataset
from anomaly_seg_ros.data.layout import generate_datasets
from anomaly_seg_ros.data.synthetic_bag import write_sequence_bag
from anomaly_seg_ros.errors import ConfigError
from anomaly_seg_ros.evaluation import evaluate_scorers
from anomaly_seg_ros.perception import Perception, PerceptionResult
from anomaly_seg_ros.replay import ReplayOptions, replay_bag
from anomaly_seg_ros.report import anomaly_ratio, markdown_summary, plot_pr_curve, save_rgb, write_report
from anomaly_seg_ros.scoring import available_scorers
from anomaly_seg_ros.training import BEST_CHECKPOINT, load_train_config, train

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
OVERLAYS = 6


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthesise data, train ERFNet, replay a synthetic bag and write a report (CPU, < 10 min)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--train-config", help="training YAML (default: config/train_synthetic.yaml)")
    parser.add_argument("--config", help="perception YAML (default: config/perception.yaml)")
    parser.add_argument("--weights", help="skip training and use this checkpoint")
    parser.add_argument("--frames", type=int, default=120, help="frames in the synthetic bag")
    parser.add_argument("--epochs", type=int, help="override the training epochs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def _config_file(given: str | None, name: str) -> Path:
    path = Path(given) if given else CONFIG_DIR / name
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return path


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    progress = not args.no_progress
    train_config = load_train_config(_config_file(args.train_config, "train_synthetic.yaml"), {"epochs": args.epochs})
    data_dir = out / "data"
    bag_dir, replay_dir, report_dir = out / "bags" / "drive_mcap", out / "bags" / "drive_replayed", out / "report"
    for existing in (bag_dir, replay_dir):
        if existing.exists():
            raise ConfigError(f"{existing} exists; remove {out} or choose another --out")
    timings: dict[str, float] = {}

    step = time.perf_counter()
    height, width = train_config.input_size
    counts = generate_datasets(
        data_dir, num_train=200, num_val=40, num_anomaly=40, height=height, width=width, seed=train_config.seed
    )
    timings["synthesise datasets"] = time.perf_counter() - step
    print(f"[1/5] synthetic datasets in {data_dir}: {counts}")

    step = time.perf_counter()
    if args.weights:
        weights = Path(args.weights)
    else:
        train_config.data = str(data_dir / "cityscapes")
        history = train(train_config, out / "model", progress=progress)
        weights = out / "model" / BEST_CHECKPOINT
        best = max(history, key=lambda item: item.val_miou)
        print(f"[2/5] ERFNet trained: best validation mIoU {best.val_miou:.3f} (epoch {best.epoch}) -> {weights}")
    timings["train"] = time.perf_counter() - step

    step = time.perf_counter()
    write_sequence_bag(
        bag_dir, seed=7, num_frames=args.frames, height=512, width=1024, storage="mcap", progress=progress
    )
    timings["record synthetic bag"] = time.perf_counter() - step
    print(f"[3/5] synthetic driving bag: {bag_dir}")

    step = time.perf_counter()
    config = load_config(_config_file(args.config, "perception.yaml"), [f"model.weights={weights}"])
    perception = Perception.from_config(config)
    overlay_dir = report_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    picks = set(np.linspace(0, args.frames - 1, OVERLAYS).round().astype(int).tolist())

    def save_overlay(index: int, frame: np.ndarray, result: PerceptionResult) -> None:
        if index in picks and result.overlay is not None:
            save_rgb(overlay_dir / f"frame_{index:04d}.png", np.concatenate([result.overlay, result.color], axis=0))

    report = replay_bag(bag_dir, replay_dir, perception, ReplayOptions(), on_frame=save_overlay, progress=progress)
    timings["replay"] = time.perf_counter() - step
    print(f"[4/5] replayed into {replay_dir}")

    step = time.perf_counter()
    scorers = available_scorers()
    per_scorer = evaluate_scorers(perception, AnomalyDataset(data_dir / "anomaly"), scorers, progress=progress)
    table = {name: metrics.summary() for name, metrics in per_scorer.items()}
    curves = {name: metrics.pr_curve() for name, metrics in per_scorer.items()}
    timings["evaluate scorers"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started

    summary = report.summary()
    extra = {
        "checkpoint": str(weights),
        "validation mIoU": f"{perception.metadata.get('metrics', {}).get('val_miou', float('nan')):.3f}",
        "scorer / threshold": f"{perception.scorer.name} / {perception.threshold:.3f}",
        "timings (s)": ", ".join(f"{key} {value:.0f}" for key, value in timings.items()),
    }
    bag_curve = {f"{perception.scorer.name} (bag replay)": report.pr_curve} if report.pr_curve else None
    write_report(report_dir, summary, pr_curves=bag_curve, extra=extra)
    _write_scorer_table(report_dir, table, curves)
    print(markdown_summary(summary, extra), end="")
    print((report_dir / "scorers.md").read_text(), end="")
    print(f"[5/5] report in {report_dir}")
    return 0


def _write_scorer_table(folder: Path, table: dict[str, dict], curves: dict) -> None:
    ratio = anomaly_ratio(next(iter(table.values())))
    lines = [
        f"## Scorers on the synthetic anomaly set ({ratio * 100:.2f} % anomaly pixels)",
        "",
        "| scorer | AuPRC (%) | FPR95 (%) | AUROC (%) |",
        "| --- | --- | --- | --- |",
    ]
    for name, metrics in table.items():
        lines.append(
            f"| {name} | {100 * metrics['ap']:.2f} | {100 * metrics['fpr_at_tpr']:.2f} | {100 * metrics['auroc']:.2f} |"
        )
    (folder / "scorers.md").write_text("\n".join(lines) + "\n")
    (folder / "scorers.json").write_text(json.dumps(table, indent=2, default=_json_default) + "\n")
    plot_pr_curve(folder / "pr_curve_scorers.png", curves, ratio)


def _json_default(value):
    return list(value) if isinstance(value, tuple) else float(value)
