"""``anomaly-seg iu-masks``: instance-uncertainty maps of a split from a trained ensemble (seed 003)."""

from __future__ import annotations

import argparse

from anomaly_seg_ros.training.instance_uncertainty import write_iu_masks


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "iu-masks",
        help="write instance-uncertainty maps of a dataset split from an ensemble of checkpoints",
        description="Runs the member checkpoints over every image of a Cityscapes-layout split and writes, per "
        "image, the mean ensemble entropy of each 8-connected ground-truth instance (float16 .npy at label "
        "resolution). Train with them: `anomaly-seg train --config X --set iu_mode=precomputed --set iu_masks=OUT`.",
    )
    parser.add_argument("--members", nargs="+", required=True, help="member checkpoints (the paper uses three)")
    parser.add_argument("--data", required=True, help="dataset root in the Cityscapes layout")
    parser.add_argument("--split", default="train", help="split to write masks for (default: train)")
    parser.add_argument("--out", required=True, help="mask folder")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    count = write_iu_masks(
        args.members, args.data, args.split, args.out, device=args.device, progress=not args.no_progress
    )
    print(f"wrote {count} instance-uncertainty maps to {args.out}")
    return 0
