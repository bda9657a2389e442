"""``anomaly-seg train``: train a segmentation network with cross-entropy."""

from __future__ import annotations

import argparse

from anomaly_seg_ros.training import BEST_CHECKPOINT, load_train_config, train


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation network (cross-entropy) on a Cityscapes-layout dataset",
        description="Train a segmentation network with cross-entropy; writes best/last checkpoints "
        "(safetensors + metadata), history.json, and calibrates each scorer's alert threshold.",
    )
    parser.add_argument("--config", help="training YAML (see config/train_synthetic.yaml)")
    parser.add_argument("--data", help="dataset root (overrides the config's data)")
    parser.add_argument("--out", required=True, help="output folder for checkpoints and logs")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="batch size (overrides the config)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_train_config(args.config, {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size})
    history = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    best = max(history, key=lambda item: item.val_miou)
    print(f"best validation mIoU {best.val_miou:.4f} at epoch {best.epoch}; checkpoint {args.out}/{BEST_CHECKPOINT}")
    return 0
