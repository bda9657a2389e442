"""``anomaly-seg benchmark``: argument parsing for :mod:`anomaly_seg_ros.benchmarking.speed`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anomaly_seg_ros.benchmarking.speed import benchmark, markdown
from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.evaluation.grid import parse_scorer_spec
from anomaly_seg_ros.inference.backends import BACKENDS, PRECISIONS
from anomaly_seg_ros.scoring import available_scorers


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="time the model and the whole perception call, stage by stage",
        description="Bare forward, full perception call and every stage as p50/p95/p99 over warm iterations, "
        "FPS, peak memory, full/bare and scorer/forward ratios; JSON and Markdown reports.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="checkpoint to time (default: random weights of --model)")
    source.add_argument("--model", default="erfnet", help="registered model with random weights (default erfnet)")
    parser.add_argument("--num-classes", type=int, default=19, help="classes of the random-weight model")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="network input (default: model's)")
    parser.add_argument(
        "--frame-size",
        type=int,
        nargs=2,
        action="append",
        metavar=("H", "W"),
        help="camera frame size; repeat for several (default: the network input size)",
    )
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-fallback", action="store_true", help="fail instead of falling back to another backend")
    parser.add_argument(
        "--scorers",
        default="maxlogit,msp,maxentropy,energy",
        help="comma-separated scorer names; the first that can run live is the full call's",
    )
    parser.add_argument(
        "--scorer",
        action="append",
        default=[],
        metavar="SPEC",
        help="a scorer with parameters, as in `anomaly-seg evaluate` (pgu@p=0.5, "
        "ensemble_entropy@members=[a.safetensors,b.safetensors]); repeatable, timed after --scorers",
    )
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before each measurement")
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (0 = the thread policy's default: every core)"
    )
    parser.add_argument(
        "--contention",
        type=int,
        default=0,
        metavar="N",
        help="also time the forward alternately without and with N busy neighbour processes it starts",
    )
    parser.add_argument(
        "--no-full-call", action="store_true", help="skip the full perception call (forward, scorers, contention only)"
    )
    parser.add_argument("--render", action="store_true", help="include the colour views in the full call")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the results as a Markdown table here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = [name.strip() for name in args.scorers.split(",") if name.strip()]
    unknown = sorted(set(names) - set(available_scorers()))
    if unknown or not (names or args.scorer):
        raise ConfigError(f"--scorers: unknown {unknown or 'empty list'}; available: {', '.join(available_scorers())}")
    scorers = [parse_scorer_spec(text) for text in [*names, *args.scorer]]
    keys = [spec.key for spec in scorers]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--scorers/--scorer: a scorer is listed twice: {keys}")
    if args.iterations < 1 or args.warmup < 0:
        raise ConfigError("--iterations must be >= 1 and --warmup >= 0")
    if args.contention < 0:
        raise ConfigError(f"--contention: expected a number of neighbour processes >= 0, got {args.contention}")
    report = benchmark(
        checkpoint=args.checkpoint,
        model_name=args.model,
        num_classes=args.num_classes,
        input_size=tuple(args.input_size) if args.input_size else None,
        frame_sizes=[tuple(size) for size in args.frame_size] if args.frame_size else None,
        overrides=[
            f"model.backend={args.backend}",
            f"model.precision={args.precision}",
            f"model.device={args.device}",
            f"model.threads={args.threads}",
            f"model.fallback={'false' if args.no_fallback else 'true'}",
            *args.set,
        ],
        scorers=scorers,
        iterations=args.iterations,
        warmup=args.warmup,
        render=args.render,
        contention=args.contention,
        full_call=not args.no_full_call,
    )
    text = markdown(report)
    print(text, end="")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    return 0
