"""``anomaly-seg calibrate``: fit a checkpoint's softmax temperature on labelled data (seed 000 eq. 5)."""

from __future__ import annotations

import argparse

from anomaly_seg_ros.training.temperature import calibrate_checkpoint


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit the softmax temperature of a checkpoint on a Cityscapes-layout split",
        description="Temperature scaling: minimise the NLL of softmax(logits / T) over a random sample of "
        "labelled pixels, store T in the checkpoint metadata (everything else kept; alert thresholds "
        "re-measured at the new T) and print the expected calibration error before and after.",
    )
    parser.add_argument("--checkpoint", required=True, help="our .safetensors checkpoint")
    parser.add_argument("--data", required=True, help="dataset root in the Cityscapes layout")
    parser.add_argument("--split", default="val", help="split to fit on (default: val)")
    parser.add_argument("--output", help="where to write the calibrated checkpoint (default: in place)")
    parser.add_argument(
        "--max-pixels", type=int, default=1_000_000, dest="max_pixels", help="pixel sample size (default 1e6)"
    )
    parser.add_argument("--batch-size", type=int, default=4, dest="batch_size")
    parser.add_argument("--bins", type=int, default=15, help="confidence bins of the ECE (default 15)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--config",
        help="the deployment's perception config (e.g. config/demo.yaml): alert thresholds are re-measured inside "
        "its alert region of interest (default: the region the checkpoint's thresholds were set for)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    figures = calibrate_checkpoint(
        args.checkpoint,
        args.data,
        split=args.split,
        output=args.output,
        max_pixels=args.max_pixels,
        batch_size=args.batch_size,
        n_bins=args.bins,
        device=args.device,
        alerts_config=args.config,
    )
    print(
        f"temperature {figures['previous_temperature']:.4f} -> {figures['temperature']:.4f} "
        f"on {figures['pixels']} pixels of split {figures['split']!r}\n"
        f"ECE {figures['ece_before']:.4f} -> {figures['ece_after']:.4f}, "
        f"NLL {figures['nll_before']:.4f} -> {figures['nll_after']:.4f}\n"
        f"written to {args.output or args.checkpoint}"
    )
    return 0
