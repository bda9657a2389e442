"""``anomaly-seg demo``: the whole pipeline on synthetic data, on a CPU, in a few minutes.

1. held-out synthetic scenes: a Cityscapes-layout validation split and an anomaly set,
2. the demo model: ``checkpoints/erfnet_synthetic_oe.safetensors`` (ERFNet trained on the
   synthetic scenes with ``config/train_synthetic.yaml``, then fine-tuned with outlier exposure
   by ``config/train_synthetic_oe.yaml`` at 128x256 and ``config/train_synthetic_oe_256.yaml`` at
   256x512, twice; ``--train`` runs all of it here),
3. a synthetic driving rosbag (mcap) with anomalies that appear far away and grow,
4. that bag replayed through the perception core into an output bag,
5. a report folder: metrics (JSON + Markdown), PR curves, overlay images (colour bar, threshold,
   ground-truth outline) and a per-obstacle review under the replay report's detection rule, with thumbnails
   of the false alerts (:mod:`anomaly_seg_ros.replay.drive_review`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.labels import class_names
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.ground import GroundModel
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.core.visualization import report_overlay
from anomaly_seg_ros.data import camera_intrinsics
from anomaly_seg_ros.data.datasets import AnomalyDataset, CityscapesDataset
from anomaly_seg_ros.data.layout import generate_datasets, road_obstacle_scene, split_seed, write_anomaly_set
from anomaly_seg_ros.data.synthetic import render_scene
from anomaly_seg_ros.evaluation.grid import evaluate_scorers, evaluate_segmentation
from anomaly_seg_ros.evaluation.plots import plot_pr_curve
from anomaly_seg_ros.metrics.ood import anomaly_ratio
from anomaly_seg_ros.replay.drive_review import (
    DetectionRule,
    DriveRecorder,
    read_ground_truth,
    review_drive,
    write_drive_review,
)
from anomaly_seg_ros.replay.runner import ReplayOptions, replay_bag
from anomaly_seg_ros.replay.summary import markdown_summary, save_rgb, write_report
from anomaly_seg_ros.replay.synthetic_bag import SequenceTopics, write_sequence_bag
from anomaly_seg_ros.scoring import logit_scorers
from anomaly_seg_ros.tools.demo_live import markdown, run_live
from anomaly_seg_ros.training import BEST_CHECKPOINT, TrainConfig, load_train_config, train

REPO = Path(__file__).resolve().parents[2]
DEMO_CHECKPOINT = REPO / "checkpoints" / "erfnet_synthetic_oe.safetensors"
TRAIN_CONFIG = REPO / "config" / "train_synthetic.yaml"
#: Outlier-exposure fine-tuning of the model of TRAIN_CONFIG: the demo model.
OE_TRAIN_CONFIG = REPO / "config" / "train_synthetic_oe.yaml"
#: The shipped model's second fine-tuning stage (see the header of OE_TRAIN_CONFIG).
OE_STAGE2_SETS = ("learning_rate=0.0001", "epochs=2")
#: Its third stage, at twice the input resolution on scenes synthesised at that size (see its header).
OE_256_TRAIN_CONFIG = REPO / "config" / "train_synthetic_oe_256.yaml"
#: The stages after it, each fine-tuning the last on the third's data: (output folder, overrides).
#: Fourth: objects pasted at every distance as often; fifth: the same with the outlier margin at 0.
OE_256_FOLLOW_UPS = (
    ("model_oe_far", ("outliers.foot_sampling=rows", "epochs=8", "learning_rate=0.0001")),
    (
        "model_oe_margin",
        (
            "outliers.foot_sampling=rows",
            "epochs=6",
            "learning_rate=0.0001",
            "losses=[{name: ce}, {name: energy_margin, weight: 0.1, margin_in: -8.0, margin_out: 0.0}]",
        ),
    ),
)
DEMO_CONFIG = REPO / "config" / "demo.yaml"
#: Dataset seed of the demo's held-out scenes; the demo model was trained on seed 0.
HELD_OUT_SEED = 1
#: Their size, whatever the model's input: the held-out set of docs/outlier_exposure.md, so that
#: models of different input sizes are compared on the same scenes.
HELD_OUT_SIZE = (256, 512)
OVERLAYS = 6
EVALUATION_SETS = {
    "all_pixels": "all pixels (Road Anomaly / Fishyscapes style)",
    "road_only": "road only, off-road ignored (RoadObstacle21 style)",
}
BAG_SEED = 7


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthetic bag -> ERFNet + scorer -> output bag and report (CPU, minutes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default: %(default)s)")
    parser.add_argument("--weights", help=f"checkpoint (default: {DEMO_CHECKPOINT.relative_to(REPO)})")
    parser.add_argument(
        "--train",
        action="store_true",
        help="retrain the demo model first: config/train_synthetic.yaml from scratch, then the outlier-exposure "
        "fine-tuning of config/train_synthetic_oe.yaml and config/train_synthetic_oe_256.yaml "
        "(about 2.5 h on 2 idle cores)",
    )
    parser.add_argument("--config", help="perception YAML (default: config/demo.yaml)")
    parser.add_argument("--frames", type=int, default=120, help="frames in the synthetic bag (default: %(default)s)")
    parser.add_argument("--eval-images", type=int, default=40, help="held-out images per set (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-live", action="store_true", help="skip the live ROS 2 graph (player -> anomaly_seg_node -> recorder)"
    )
    parser.set_defaults(run=run)


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    return path


def _train_demo_model(out: Path, progress: bool) -> Path:
    """Reproduce the shipped checkpoint: the data and training commands of config/train_synthetic.yaml,
    then the outlier-exposure fine-tuning of config/train_synthetic_oe.yaml on top of it (two stages at
    128x256) and of config/train_synthetic_oe_256.yaml (a third at 256x512, a fourth with far objects, a
    fifth with a higher outlier margin)."""
    config, data = _config_and_data(TRAIN_CONFIG, out / "train_data")
    train(config, out / "model", progress=progress)
    oe_data = {"data": str(data["cityscapes_root"]), "anomaly_val": [str(data["anomaly_root"])]}
    stage1 = load_train_config(OE_TRAIN_CONFIG, {**oe_data, "init_checkpoint": str(out / "model" / BEST_CHECKPOINT)})
    train(stage1, out / "model_oe", progress=progress)
    # Second stage (the header of config/train_synthetic_oe.yaml): the same recipe at a third of the rate.
    stage2 = load_train_config(
        OE_TRAIN_CONFIG, {**oe_data, "init_checkpoint": str(out / "model_oe" / BEST_CHECKPOINT)}, OE_STAGE2_SETS
    )
    train(stage2, out / "model_oe_stage2", progress=progress)
    stage3, data = _config_and_data(
        OE_256_TRAIN_CONFIG, out / "train_data_256", init_checkpoint=str(out / "model_oe_stage2" / BEST_CHECKPOINT)
    )
    stage3.anomaly_val = [str(data["anomaly_root"])]
    train(stage3, out / "model_oe_256", progress=progress)
    inputs, previous = {"data": stage3.data, "anomaly_val": stage3.anomaly_val}, "model_oe_256"
    for folder, sets in OE_256_FOLLOW_UPS:
        stage = load_train_config(
            OE_256_TRAIN_CONFIG, {**inputs, "init_checkpoint": str(out / previous / BEST_CHECKPOINT)}, sets
        )
        train(stage, out / folder, progress=progress)
        previous = folder
    return out / previous / BEST_CHECKPOINT


def _config_and_data(path: Path, folder: Path, **overrides: str) -> tuple[TrainConfig, dict[str, Path]]:
    """The training config of ``path`` and its synthetic scenes (seed 0 at the config's input size) in ``folder``."""
    config = load_train_config(path, {"data": str(folder / "cityscapes"), **overrides})
    height, width = config.input_size
    data = generate_datasets(
        folder, num_train=600, num_val=60, num_anomaly=60, height=height, width=width, seed=config.seed
    )
    config.data = str(data["cityscapes_root"])
    return config, data


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out, progress = Path(args.out), not args.no_progress
    bag_dir, replay_dir, report_dir = out / "bags" / "drive_mcap", out / "bags" / "drive_replayed", out / "report"
    for existing in (bag_dir, replay_dir):
        if existing.exists():
            raise ConfigError(f"{existing} exists; remove {out} or choose another --out")
    timings: dict[str, float] = {}

    step = time.perf_counter()
    if args.train:
        weights = _train_demo_model(out, progress)
        print(f"[train] demo model retrained: {weights}")
    else:
        weights = _existing(Path(args.weights) if args.weights else DEMO_CHECKPOINT, "checkpoint")
    timings["train"] = time.perf_counter() - step
    config = load_config(
        _existing(Path(args.config) if args.config else DEMO_CONFIG, "config file"),
        [f"model.weights={weights}"],
    )
    perception = Perception.from_config(config)
    height, width = HELD_OUT_SIZE

    step = time.perf_counter()
    held_out = generate_datasets(
        out / "data",
        num_train=0,
        num_val=args.eval_images,
        num_anomaly=args.eval_images,
        height=height,
        width=width,
        seed=HELD_OUT_SEED,
    )
    road_root = out / "data" / "anomaly_road"
    write_anomaly_set(
        road_root,
        (
            road_obstacle_scene(
                render_scene(split_seed(HELD_OUT_SEED, "anomaly", index), height=height, width=width, num_anomalies=2)
            )
            for index in range(args.eval_images)
        ),
    )
    timings["synthesise held-out scenes"] = time.perf_counter() - step
    print(f"[1/5] held-out synthetic scenes in {out / 'data'}")

    step = time.perf_counter()
    confusion = evaluate_segmentation(perception, CityscapesDataset(held_out["cityscapes_root"], "val"))
    per_scorer = {
        "all_pixels": evaluate_scorers(perception, AnomalyDataset(held_out["anomaly_root"]), logit_scorers()),
        "road_only": evaluate_scorers(perception, AnomalyDataset(road_root), logit_scorers()),
    }
    timings["evaluate"] = time.perf_counter() - step
    print(f"[2/5] {weights}: held-out mIoU {confusion.miou():.3f}")

    step = time.perf_counter()
    write_sequence_bag(bag_dir, seed=BAG_SEED, num_frames=args.frames, height=512, width=1024, progress=progress)
    timings["record synthetic bag"] = time.perf_counter() - step
    print(f"[3/5] synthetic driving bag: {bag_dir}")

    step = time.perf_counter()
    camera = camera_intrinsics(BAG_SEED, height=512, width=1024)
    live = None if args.no_live else run_live(bag_dir, out, config, camera_height_m=camera.mount_height)
    if live is not None:
        timings["live ROS 2 graph"] = time.perf_counter() - step
        print(f"[live] recorded the node's outputs: {live['recording']}")

    step = time.perf_counter()
    picks = set(np.linspace(0, args.frames - 1, OVERLAYS).round().astype(int).tolist())
    recorder = DriveRecorder(picks)
    options = ReplayOptions(camera_height_m=camera.mount_height)
    report = replay_bag(bag_dir, replay_dir, perception, options, on_frame=recorder, progress=progress)
    timings["replay"] = time.perf_counter() - step
    truth = read_ground_truth(bag_dir, SequenceTopics().ground_truth)
    ground = GroundModel(camera.fx, camera.fy, camera.cx, camera.cy, camera.mount_height)
    rule = DetectionRule(match_iou=options.match_iou, min_area_px=perception.config.alerts.min_area_px)
    review = review_drive(recorder, truth, rule=rule, ground=ground)
    _save_overlays(report_dir / "overlays", recorder, truth, perception)
    print(f"[4/5] replayed into {replay_dir}")
    timings["total"] = time.perf_counter() - started

    summary = report.summary()
    extra = {
        "checkpoint": str(weights),
        "held-out segmentation mIoU": f"{confusion.miou():.3f} ({args.eval_images} scenes)",
        "scorer / threshold": f"{perception.scorer.name} / {perception.threshold:.3f}",
        "far field": _describe_far_field(perception),
        "timings (s)": ", ".join(f"{key} {value:.0f}" for key, value in timings.items()),
    }
    bag_curve = {f"{perception.scorer.name} (bag replay)": report.pr_curve} if report.pr_curve else None
    write_report(report_dir, summary, pr_curves=bag_curve, extra=extra)
    review_md = write_drive_review(report_dir, review, recorder)
    with (report_dir / "report.md").open("a", encoding="utf-8") as page:
        page.write("\n" + review_md)
    (report_dir / "drive_review.json").write_text(json.dumps(review, indent=2) + "\n")
    _write_evaluation(report_dir, confusion, per_scorer)
    print(markdown_summary(summary, extra))
    print(review_md, end="")
    print((report_dir / "evaluation.md").read_text(), end="")
    if live is not None:
        (report_dir / "live.md").write_text(markdown(live))
        (report_dir / "live.json").write_text(json.dumps(live, indent=2, default=str) + "\n")
        print(markdown(live), end="")
    print(f"[5/5] report in {report_dir}")
    return 0


def _describe_far_field(perception: Perception) -> str:
    far = perception.config.far_field
    if far.zoom <= 1.0:
        return "off"
    return f"zoom {far.zoom:g} centred at ({far.center[0]:g}, {far.center[1]:g}) of the frame (core/far_field.py)"


def _save_overlays(folder: Path, recorder: DriveRecorder, truth: list[np.ndarray], perception: Perception) -> None:
    """The picked frames: heatmap with alert boxes, ground-truth outline and colour bar, over the segmentation."""
    folder.mkdir(parents=True, exist_ok=True)
    value_range = perception.heatmap_range
    for index, (frame, result) in sorted(recorder.picked.items()):
        view = report_overlay(
            frame,
            result.anomaly,
            value_range,
            threshold=result.threshold,
            alerts=result.alerts,
            ground_truth=truth[index] if index < len(truth) else None,
        )
        if result.color is not None:
            view = np.concatenate([view, result.color], axis=0)
        save_rgb(folder / f"frame_{index:04d}.png", view)


def _write_evaluation(folder: Path, confusion, per_set: dict[str, dict]) -> None:
    """Held-out segmentation and scorer tables (Markdown + JSON) and PR curves per scorer."""
    iou = confusion.iou()
    names = class_names(len(iou))
    lines = [
        f"## Held-out synthetic scenes: segmentation mIoU {100 * confusion.miou():.1f} %",
        "",
        "| class | IoU (%) |",
        "| --- | --- |",
        *(f"| {name} | {100 * value:.1f} |" for name, value in zip(names, iou, strict=True) if not np.isnan(value)),
    ]
    document: dict = {
        "miou": confusion.miou(),
        "iou": {name: None if np.isnan(value) else float(value) for name, value in zip(names, iou, strict=True)},
        "scorers": {},
    }
    for key, per_scorer in per_set.items():
        title = EVALUATION_SETS[key]
        table = {name: metrics.summary() for name, metrics in per_scorer.items()}
        ratio = anomaly_ratio(next(iter(table.values())))
        lines += [
            "",
            f"## Scorers on held-out anomaly scenes, {title}: {100 * ratio:.2f} % anomaly pixels = AuPRC of chance",
            "",
            "| scorer | AuPRC (%) | FPR95 (%) | AUROC (%) |",
            "| --- | --- | --- | --- |",
            *(
                f"| {name} | {100 * m['ap']:.2f} | {100 * m['fpr_at_tpr']:.2f} | {100 * m['auroc']:.2f} |"
                for name, m in table.items()
            ),
        ]
        document["scorers"][key] = table
        curves = {f"{name} (AuPRC {100 * table[name]['ap']:.1f} %)": m.pr_curve() for name, m in per_scorer.items()}
        plot_pr_curve(folder / f"pr_curve_{key}.png", curves, ratio)
    (folder / "evaluation.md").write_text("\n".join(lines) + "\n")
    (folder / "evaluation.json").write_text(json.dumps(document, indent=2) + "\n")
