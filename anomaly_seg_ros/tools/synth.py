"""``anomaly-seg synth OUT``: write synthetic training, validation and anomaly datasets.

OUT gets ``cityscapes/`` (Cityscapes layout, train and val splits) and ``anomaly/``
(Fishyscapes / Road Anomaly layout), readable with
:class:`anomaly_seg_ros.data.datasets.CityscapesDataset` and
:class:`~anomaly_seg_ros.data.datasets.AnomalyDataset`. Each output is one step of
:func:`run`; further outputs (such as a rosbag of a driving sequence) add their options
in :func:`add_parser` and a step of their own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomaly_seg_ros.data.layout import generate_datasets


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
    return 0
