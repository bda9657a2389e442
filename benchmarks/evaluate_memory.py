"""Memory and scorer cost of the evaluation loop (``anomaly-seg evaluate``'s inner loop).

Runs :func:`anomaly_seg_ros.evaluation.grid.evaluate_cell` over N synthetic 1024x512 anomaly frames
generated on the fly (no PNGs written), twice: with 6 scorers and with 1. Reports the process's
resident memory after 100 / 250 / 500 frames (it must not grow with the frames: the streaming
metrics switch to fixed-size histograms once their 4 M-pixel buffer is full, and no per-image
score map is kept) and the wall-time ratio of the two runs (the forward pass is shared, so
extra scorers cost only their reductions, the resize to the frame and the histogram update).

Rendering a 1024x512 scene costs about a second on one core, more than the evaluation of a
frame, so ``--scenes`` distinct scenes are rendered once and cycled; every frame still adds
its 524 288 pixels to every scorer's accumulator. Rendering is excluded from the timings.

    OMP_NUM_THREADS=2 nice python benchmarks/evaluate_memory.py --frames 500 --input-size 256 512
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.data.synthetic import render_scene
from anomaly_seg_ros.evaluation.grid import evaluate_cell
from anomaly_seg_ros.scoring import get_scorer

REPO = Path(__file__).resolve().parents[1]
SIX = {
    "msp": ("msp", {}),
    "msp@T=0.5": ("msp", {"temperature": 0.5}),
    "msp@T=1.1": ("msp", {"temperature": 1.1}),
    "maxlogit": ("maxlogit", {}),
    "maxentropy": ("maxentropy", {}),
    "energy": ("energy", {}),
}
MARKS = (100, 250, 500)


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, amount, _ = line.split()
            values[key] = int(amount) / 1024.0
    return values["VmRSS:"], values["VmHWM:"]


class CycledScenes:
    """``frames`` items cycling over a few pre-rendered scenes; records RSS after each mark."""

    def __init__(self, scenes: list[tuple[np.ndarray, np.ndarray]], frames: int, marks: dict[int, tuple]) -> None:
        self.scenes, self.frames, self.marks = scenes, frames, marks

    def __len__(self) -> int:
        return self.frames

    def __iter__(self):
        for index in range(self.frames):
            if index in MARKS:
                self.marks[index] = rss_mib()
                print(
                    f"\nafter {index} frames: RSS {self.marks[index][0]:.0f} MiB, peak {self.marks[index][1]:.0f} MiB",
                    flush=True,
                )
            yield self.scenes[index % len(self.scenes)]
        self.marks[self.frames] = rss_mib()


def run(perception: Perception, scenes, frames: int, names: dict[str, tuple[str, dict]]) -> dict:
    scorers = {key: get_scorer(name, **params) for key, (name, params) in names.items()}
    for scorer in scorers.values():
        scorer.bind(perception.model)
    marks: dict[int, tuple] = {}
    start = time.perf_counter()
    result = evaluate_cell(perception, CycledScenes(scenes, frames, marks), scorers, examples=4, progress=True)
    seconds = time.perf_counter() - start
    summaries = {key: metrics.summary() for key, metrics in result.metrics.items()}
    return {
        "scorers": list(names),
        "frames": result.num_images,
        "seconds": seconds,
        "ms_per_frame": 1000.0 * seconds / frames,
        "rss_mib_after_frames": {str(k): {"current": v[0], "peak": v[1]} for k, v in sorted(marks.items())},
        "ap": {key: s["ap"] for key, s in summaries.items()},
        "exact": {key: s["exact"] for key, s in summaries.items()},
        "error_bounds": {key: s["error_bounds"] for key, s in summaries.items()},
    }


def time_ratio(perception: Perception, scenes, frames: int, block: int = 20) -> dict:
    """Cost of 6 scorers over 1 in ALTERNATING blocks of ``block`` frames (fresh accumulators each),
    so that load from other processes on a shared machine hits both alike; wall and CPU time."""
    totals = {"six": [0.0, 0.0], "one": [0.0, 0.0]}
    configs = {"six": SIX, "one": {"msp": SIX["msp"]}}
    for start in range(0, frames, block):
        for name in ("one", "six") if (start // block) % 2 else ("six", "one"):
            scorers = {key: get_scorer(n, **params) for key, (n, params) in configs[name].items()}
            data = [scenes[(start + i) % len(scenes)] for i in range(min(block, frames - start))]
            wall, cpu = time.perf_counter(), time.process_time()
            evaluate_cell(perception, data, scorers, examples=0)
            totals[name][0] += time.perf_counter() - wall
            totals[name][1] += time.process_time() - cpu
    return {
        "frames_each": frames,
        "ms_per_frame_wall": {k: 1000 * v[0] / frames for k, v in totals.items()},
        "ms_per_frame_cpu": {k: 1000 * v[1] / frames for k, v in totals.items()},
        "ratio_wall": totals["six"][0] / totals["one"][0],
        "ratio_cpu": totals["six"][1] / totals["one"][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--scenes", type=int, default=12, help="distinct scenes rendered and cycled")
    parser.add_argument("--input-size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    parser.add_argument("--weights", default=str(REPO / "checkpoints" / "erfnet_synthetic.safetensors"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--ratio-only", type=int, metavar="N", help="only the 6:1 time ratio, N frames each in alternating blocks"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = args.input_size
    config = load_config(
        None, [f"model.weights={args.weights}", f"model.input_size=[{height}, {width}]", "alerts.threshold=0"]
    )
    perception = Perception.from_config(config)
    started = time.perf_counter()
    scenes = []
    for index in range(args.scenes):
        scene = render_scene(1000 + index, height=512, width=1024, num_anomalies=2)
        scenes.append((scene.image, scene.anomaly))
    print(f"rendered {args.scenes} scenes in {time.perf_counter() - started:.0f} s; RSS {rss_mib()[0]:.0f} MiB")
    figures = {
        "frame_size": [512, 1024],
        "network_input": [height, width],
        "threads": args.threads,
        "rss_mib_before": rss_mib()[0],
    }
    if args.ratio_only:
        figures["time_ratio"] = time_ratio(perception, scenes, args.ratio_only)
    else:
        figures["six_scorers"] = run(perception, scenes, args.frames, SIX)
        figures["one_scorer"] = run(perception, scenes, args.frames, {"msp": SIX["msp"]})
        # sequential runs: only meaningful on an otherwise idle machine (see --ratio-only)
        figures["time_ratio_6_to_1"] = figures["six_scorers"]["seconds"] / figures["one_scorer"]["seconds"]
        figures["time_ratio"] = time_ratio(perception, scenes, min(args.frames, 100))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
