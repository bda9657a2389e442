"""``anomaly-seg synth OUT``: write synthetic training, validation and anomaly datasets.

OUT gets ``cityscapes/`` (Cityscapes layout, train and val splits) and ``anomaly/``
(Fishyscapes / Road Anomaly layout), readable with
:class:`anomaly_seg_ros.data.datasets.CityscapesDataset` and
:class:`~anomaly_seg_ros.data.datasets.AnomalyDataset`. With ``--bag-frames N`` it also
records a driving sequence as rosbag2 (``OUT/bags/drive_mcap`` and/or ``drive_sqlite3``):
camera image, CameraInfo and the anomaly ground truth, anomalies approaching from afar.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomaly_seg_ros.data.layout import generate_datasets
from anomaly_seg_ros.replay.synthetic_bag import write_sequence_bag


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _size(text: str) -> int:
    value = int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be >= 16 pixels, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic road-scene datasets (Cityscapes and anomaly layouts)",
        description="Render synthetic road scenes and write a Cityscapes-layout train/val set "
        "and a Fishyscapes-layout anomaly set under OUT.",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--train", type=_count, default=500, help="training scenes (default: %(default)s)")
    parser.add_argument("--val", type=_count, default=100, help="validation scenes (default: %(default)s)")
    parser.add_argument("--anomaly", type=_count, default=100, help="anomaly scenes (default: %(default)s)")
    parser.add_argument("--height", type=_size, default=512, help="image height (default: %(default)s)")
    parser.add_argument("--width", type=_size, default=1024, help="image width (default: %(default)s)")
    parser.add_argument("--seed", type=_count, default=0, help="dataset seed (default: %(default)s)")
    bag = parser.add_argument_group("driving sequence as rosbag2")
    bag.add_argument(
        "--bag-frames", type=_count, default=0, help="frames of a driving bag, 0 = none (default: %(default)s)"
    )
    bag.add_argument(
        "--bag-storage",
        choices=("mcap", "sqlite3", "both"),
        default="mcap",
        help="bag storage: OUT/bags/drive_mcap, OUT/bags/drive_sqlite3 or both (default: %(default)s)",
    )
    bag.add_argument("--bag-fps", type=float, default=10.0, help="frame rate of the sequence (default: %(default)s)")
    bag.add_argument("--bag-anomalies", type=_count, default=2, help="anomalies along the road (default: %(default)s)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    written = generate_datasets(
        args.out,
        num_train=args.train,
        num_val=args.val,
        num_anomaly=args.anomaly,
        height=args.height,
        width=args.width,
        seed=args.seed,
    )
    print(f"cityscapes layout: {written['cityscapes_root']} (train {written['train']}, val {written['val']})")
    print(f"anomaly layout:    {written['anomaly_root']} ({written['anomaly']} scenes)")
    if args.bag_frames:
        storages = ("mcap", "sqlite3") if args.bag_storage == "both" else (args.bag_storage,)
        for storage in storages:
            path = write_sequence_bag(
                args.out / "bags" / f"drive_{storage}",
                seed=args.seed,
                num_frames=args.bag_frames,
                height=args.height,
                width=args.width,
                num_anomalies=args.bag_anomalies,
                fps=args.bag_fps,
                storage=storage,
            )
            print(f"driving bag:       {path} ({args.bag_frames} frames at {args.bag_fps:g} Hz, {storage})")
    return 0
