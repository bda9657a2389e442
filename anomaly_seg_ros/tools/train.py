"""``anomaly-seg train``: train a segmentation network (one process, or every process under torchrun)."""

from __future__ import annotations

import argparse
import os

from anomaly_seg_ros.training import BEST_CHECKPOINT, load_train_config, train


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation network on a Cityscapes-layout dataset",
        description="Train a segmentation network with the losses of its config; writes best/last checkpoints "
        "(safetensors + metadata), trainer_state.pt (for --resume), history.json, log.csv and TensorBoard "
        "events, and calibrates each scorer's alert threshold. Multi-GPU / multi-node: start it with "
        "torchrun --nproc_per_node G -m anomaly_seg_ros.tools.cli train ... (batch_size is the global batch).",
    )
    parser.add_argument("--config", help="training YAML (see config/train_*.yaml)")
    parser.add_argument("--data", help="dataset root (overrides the config's data)")
    parser.add_argument("--out", required=True, help="output folder for checkpoints and logs")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="global batch size (overrides the config)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="sets",
        help="override a config key, value in YAML (e.g. --set input_size=[512,1024] --set amp=false); repeatable",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors + trainer_state.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_train_config(
        args.config, {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size}, args.sets
    )
    history = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    # Under torchrun every rank gets here with the same history; one line is enough.
    if history and os.environ.get("RANK", "0") == "0":
        best = max(history, key=lambda item: item.val_miou)
        print(f"best validation mIoU {best.val_miou:.4f} at epoch {best.epoch}; {args.out}/{BEST_CHECKPOINT}")
    return 0
