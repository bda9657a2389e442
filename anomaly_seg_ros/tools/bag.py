"""``anomaly-seg bag``: replay a rosbag2 through the perception pipeline into an output bag."""

from __future__ import annotations

import argparse
from pathlib import Path

from anomaly_seg_ros.config import load_config
from anomaly_seg_ros.perception import Perception
from anomaly_seg_ros.replay import ReplayOptions, replay_bag
from anomaly_seg_ros.report import markdown_summary, write_report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bag",
        help="replay a rosbag2 (mcap or sqlite3) through the pipeline into an output bag",
        description="Run every frame of the camera topic through the perception core and write an "
        "output bag with the input topics plus masks, heatmaps, overlays and obstacle alerts.",
    )
    parser.add_argument("bag", help="input rosbag2 folder")
    parser.add_argument("--out", required=True, help="output bag folder (must not exist)")
    parser.add_argument("--weights", help="checkpoint (sets model.weights)")
    parser.add_argument("--config", help="perception YAML (see config/perception.yaml)")
    parser.add_argument("--topic", help="camera topic (found by itself when the bag has one image topic)")
    parser.add_argument("--gt-topic", help="ground-truth mask topic (default: a topic named */anomaly_gt)")
    parser.add_argument(
        "--camera-height", type=float, default=0.0, help="camera height above the road (m): alert distances"
    )
    parser.add_argument("--camera-pitch", type=float, default=0.0, help="camera pitch down (rad), with --camera-height")
    parser.add_argument("--camera-info-topic", help="CameraInfo topic (default: the bag's only one)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="output bag storage")
    parser.add_argument("--report", help="report folder (default: OUT_report)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. alerts.threshold=0.5"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set) + ([f"model.weights={args.weights}"] if args.weights else [])
    config = load_config(args.config, overrides)
    perception = Perception.from_config(config)
    options = ReplayOptions(
        topic=args.topic,
        gt_topic=args.gt_topic,
        storage=args.storage,
        camera_info_topic=args.camera_info_topic,
        camera_height_m=args.camera_height,
        camera_pitch_rad=args.camera_pitch,
    )
    report = replay_bag(args.bag, args.out, perception, options, progress=not args.no_progress)
    folder = Path(args.report or f"{args.out.rstrip('/')}_report")
    summary = report.summary()
    write_report(folder, summary)
    print(markdown_summary(summary), end="")
    print(f"report written to {folder}")
    return 0
