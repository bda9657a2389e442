"""The far field (core/far_field.py) on synthetic drives other than the demo's: does it pay, and what does it cost?

For each drive seed it renders a 120-frame synthetic drive at 1024x512 (the demo's is seed 7;
others are validation drives, never used to choose a setting), runs the perception pipeline
of ``config/demo.yaml`` with ``far_field.zoom`` set to each value (1 = off), centred on that
drive camera's principal point, and reviews it with the demo's rule
(replay/drive_review.py): per obstacle, the frame where its mask first covers 100 px and the
delay of its first matched alert; the false alert tracks; and the pixel AuPRC / FPR95 over
the drive (the replay's, over every pixel, as in `make demo`'s report). It then times
``Perception.process`` with and without the far field, alternating
call by call so that both see the same machine load, and reports the ratio of medians.

    python benchmarks/far_field_drives.py --seeds 7 8 11 13 --zooms 1 2 3 4 --out runs/far_field

Prints Markdown (docs/outlier_exposure.md quotes it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.data.synthetic import camera_intrinsics
from anomaly_seg_ros.replay.bagio import iter_messages
from anomaly_seg_ros.replay.drive_review import DriveRecorder, read_ground_truth, review_drive
from anomaly_seg_ros.replay.runner import replay_bag
from anomaly_seg_ros.replay.synthetic_bag import SequenceTopics, write_sequence_bag
from anomaly_seg_ros.ros.conversions import message_to_rgb

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 512, 1024


def drive(folder: Path, seed: int, frames: int) -> Path:
    """The seed's drive bag (rendered once into ``folder``)."""
    bag = folder / f"drive_{seed}"
    if not bag.exists():
        write_sequence_bag(bag, seed=seed, num_frames=frames, height=HEIGHT, width=WIDTH)
    return bag


def _delay(frames: int | None) -> str:
    return "missed" if frames is None else f"{frames:+d}"


def review(perception: Perception, bag: Path, truth: list[np.ndarray]) -> str:
    """One Markdown row's cells: obstacles (100 px frame, delay), false tracks, AuPRC, FPR95.

    The replay of ``anomaly-seg bag`` / ``make demo`` (its pixel metrics over every pixel) with
    the demo's per-obstacle review as its ``on_frame`` hook."""
    perception.reset()
    recorder = DriveRecorder()
    with tempfile.TemporaryDirectory() as scratch:
        report = replay_bag(bag, Path(scratch) / "replayed", perception, on_frame=recorder)
    outcome = review_drive(recorder, truth)
    obstacles = ", ".join(
        f"{row['first_100px_frame']} → {_delay(row['delay_frames'])}" + ("" if row["in_time"] else " (late)")
        for row in outcome["obstacles"]
        if row["first_100px_frame"] is not None
    )
    pixels = report.pixel_metrics
    return (
        f"{obstacles} | {len(outcome['false_alert_tracks'])} | "
        f"{100 * pixels['ap']:.1f} | {100 * pixels['fpr_at_tpr']:.2f}"
    )


def cost(config_path: str, weights: str, zoom: float, images: list[np.ndarray], calls: int) -> str:
    """Median process() time without and with the far field, alternating call by call."""
    plain = Perception.from_config(load_config(config_path, [f"model.weights={weights}", "far_field.zoom=1"]))
    zoomed = Perception.from_config(load_config(config_path, [f"model.weights={weights}", f"far_field.zoom={zoom}"]))
    times: dict[str, list[float]] = {"off": [], "on": []}
    for index in range(calls + 2):
        for name, perception in (("off", plain), ("on", zoomed)):
            start = time.perf_counter()
            perception.process(images[index % len(images)], render_color=False, render_overlay=False)
            if index >= 2:  # two warm-up calls each
                times[name].append((time.perf_counter() - start) * 1000.0)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return (
        f"process() p50 over {calls} alternating calls, backend {plain.backend_name}: off {off:.0f} ms, "
        f"far field zoom {zoom:g} {on:.0f} ms: **{on / off:.2f}x**"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 11, 13])
    parser.add_argument("--zooms", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--config", default=str(REPO / "config" / "demo.yaml"))
    parser.add_argument("--weights", default=str(REPO / "checkpoints" / "erfnet_synthetic_oe.safetensors"))
    parser.add_argument("--out", type=Path, default=Path("far_field_drives"), help="folder of the rendered drives")
    parser.add_argument("--timing-calls", type=int, default=20, help="alternating calls for the cost (0 = skip)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    print(
        "| drive seed | zoom | obstacles: 100 px frame → alert delay (frames) | false tracks | AuPRC (%) | FPR95 (%) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        bag = drive(args.out, seed, args.frames)
        truth = read_ground_truth(bag, SequenceTopics().ground_truth)
        camera = camera_intrinsics(seed, height=HEIGHT, width=WIDTH)
        center = f"far_field.center=[{camera.cx / WIDTH:.4f}, {camera.cy / HEIGHT:.4f}]"
        for zoom in args.zooms:
            config = load_config(args.config, [f"model.weights={args.weights}", f"far_field.zoom={zoom}", center])
            row = review(Perception.from_config(config), bag, truth)
            print(f"| {seed} | {'off' if zoom == 1 else f'{zoom:g}'} | {row} |", flush=True)
    if args.timing_calls > 0:
        images = [message_to_rgb(message.msg) for message in iter_messages(bag, [SequenceTopics().image])]
        print()
        print(cost(args.config, args.weights, 2.0 if 2.0 in args.zooms else max(args.zooms), images, args.timing_calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
