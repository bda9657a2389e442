"""``anomaly-seg bag``: replay rosbag2 recordings through the perception pipeline into output bags and one
evaluation report (latency, throughput, rejections, alerts and, with ground truth, pixel, component and
detection-delay metrics; see :mod:`anomaly_seg_ros.replay.report`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.replay.parallel import make_jobs, replay_parallel
from anomaly_seg_ros.replay.report import markdown_report, write_bag_report
from anomaly_seg_ros.replay.runner import ReplayOptions, ReplayStopped, plan_outputs, replay_bags

#: Exit status of a run stopped by Ctrl-C (128 + SIGINT, the shell's convention).
EXIT_INTERRUPTED = 130


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bag",
        help="replay rosbag2 recordings (mcap or sqlite3) through the pipeline: output bags and a report",
        description="Run every frame of the camera topic through the perception core and write an "
        "output bag with the input topics plus masks, heatmaps, overlays and obstacle alerts, and one "
        "evaluation report (report.md, report.json, frames.csv, tracks.csv, obstacles.csv, plots) over all bags.",
    )
    parser.add_argument(
        "bag", nargs="+", help="input rosbag2 folder(s) or .mcap/.db3 file(s), or a folder that contains bags"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output bag (one input bag) or folder of output bags OUT/<bag name> (several); bags must not exist",
    )
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
        "--component-track",
        choices=("obstacle", "anomaly"),
        default="obstacle",
        help="SMIYC size filters of the component metrics (obstacle: 10/50 px, anomaly: 100/500 px)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. alerts.threshold=0.5"
    )
    parser.add_argument(
        "--score-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="histogram range of the pixel metrics (per bag and pooled) once they outgrow the exact buffer "
        "(default: the heatmap range widened by its span on each side)",
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--workers", type=int, help="replay the bags in N parallel processes (one bag per task)")
    scale.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="replay one Ray task per bag on the cluster at ADDRESS (e.g. 10.0.0.1:6379 or auto); "
        "needs the ray extra, paths visible to every node",
    )
    parser.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs Ray reserves for each bag task")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="no PNG plots in the report (faster)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set) + ([f"model.weights={args.weights}"] if args.weights else [])
    config = load_config(args.config, overrides)
    _check_scale(args)
    parallel = args.workers is not None or args.ray is not None
    # A serial run loads the model before any work, so a bad checkpoint stops it with the file named;
    # a parallel run's workers each load their own (a failing worker fails its bag, see replay.parallel).
    perception = None if parallel else Perception.from_config(config)
    options = ReplayOptions(
        topic=args.topic,
        gt_topic=args.gt_topic,
        storage=args.storage,
        camera_info_topic=args.camera_info_topic,
        camera_height_m=args.camera_height,
        camera_pitch_rad=args.camera_pitch,
        component_track=args.component_track,
        pooled_score_range=tuple(args.score_range) if args.score_range else None,
    )
    pairs = plan_outputs(args.bag, args.out)
    folder = Path(args.report or f"{args.out.rstrip('/')}_report")
    failures: list[dict[str, str]] = []
    try:
        if parallel:
            jobs = make_jobs(pairs, args.config, overrides, options)
            replayed = replay_parallel(
                jobs,
                workers=args.workers,
                ray_address=args.ray,
                cpus_per_task=args.cpus_per_task,
                progress=not args.no_progress,
            )
            failures = replayed.failures
            if not replayed.reports:
                for failure in failures:
                    print(f"FAILED {failure['bag']}: {failure['error']}")
                print("no bag was replayed; no report written")
                return 1
        else:
            replayed = replay_bags(pairs, perception, options, progress=not args.no_progress)
    except ReplayStopped as stopped:
        # Ctrl-C or an unexpected error: the output bags are closed; report what was replayed, say where it stopped
        pooled = stopped.pooled if len(pairs) > 1 else None
        write_bag_report(
            folder,
            stopped.reports,
            pixel_metrics=pooled.pixels if pooled else None,
            component_metrics=pooled.components if pooled else None,
            plots=False,
            partial=stopped.summary(),
        )
        print(f"anomaly-seg bag: {stopped}; output bag closed, partial report written to {folder}", file=sys.stderr)
        return EXIT_INTERRUPTED if stopped.interrupted else 1
    pooled = replayed.pooled if len(pairs) > 1 else None  # one bag: its own accumulators are the pooled ones
    document = write_bag_report(
        folder,
        replayed.reports,
        pixel_metrics=pooled.pixels if pooled else None,
        component_metrics=pooled.components if pooled else None,
        plots=not args.no_plots,
        failures=failures,
    )
    print(markdown_report(document, plots=not args.no_plots), end="")
    print(f"report written to {folder}")
    return 1 if failures else 0


def _check_scale(args: argparse.Namespace) -> None:
    """Refuse a pointless scale setting before anything is replayed."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: expected a number of processes >= 1, got {args.workers}")
    if args.cpus_per_task <= 0:
        raise ConfigError(f"--cpus-per-task: expected a number of CPUs > 0, got {args.cpus_per_task}")
    if args.score_range and not args.score_range[0] < args.score_range[1]:
        raise ConfigError(f"--score-range: expected LO < HI, got {args.score_range[0]} {args.score_range[1]}")
