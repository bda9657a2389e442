"""The ``anomaly-seg`` command: one subcommand per module under ``anomaly_seg_ros.tools``.

Each subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors of this package (bad config, missing files, bad checkpoints) end the command with
exit status 2 and one line that names what to fix, not a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from anomaly_seg_ros.common.errors import AnomalySegError
from anomaly_seg_ros.inference.threads import apply_wait_policy

SUBCOMMANDS: tuple[str, ...] = (
    "synth",
    "train",
    "bag",
    "demo",
    "evaluate",
    "fit_scorer",
    "calibrate",
    "iu_masks",
    "export",
    "benchmark",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-seg",
        description="Road-scene anomaly segmentation: synthetic data, training, bag replay and the demo.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"anomaly_seg_ros.tools.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before any subcommand imports torch: OpenMP reads its wait policy once, when it loads.
    apply_wait_policy()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand's usage, not the top level's (argparse's default)
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except AnomalySegError as error:
        print(f"anomaly-seg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a replay loop (which keeps its partial results itself)
        print(f"anomaly-seg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
