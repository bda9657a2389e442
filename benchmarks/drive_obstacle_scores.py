"""Why an obstacle of a synthetic drive is alerted late: its scores frame by frame.

For every ground-truth obstacle (8-connected component of the bag's anomaly mask) in each
frame: its size, the highest anomaly score inside it, the fraction of its pixels above the
threshold, and the largest above-threshold component touching it with that component's box
IoU against the obstacle's box (the replay report's match needs IoU >= 0.5 and at least
``alerts.min_area_px`` pixels). Run it on the bag of ``anomaly-seg demo``:

    python benchmarks/drive_obstacle_scores.py demo_output/bags/drive_mcap --frames 60 110
    python benchmarks/drive_obstacle_scores.py demo_output/bags/drive_mcap --set "model.input_size=[512, 1024]"

Prints one Markdown row per frame and obstacle (docs/outlier_exposure.md quotes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from anomaly_seg_ros.core.alerts import bbox_iou
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.replay.bagio import iter_messages
from anomaly_seg_ros.replay.synthetic_bag import SequenceTopics
from anomaly_seg_ros.ros.conversions import image_to_array, message_to_rgb

REPO = Path(__file__).resolve().parents[1]


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", type=Path, help="a synthetic drive with ground truth (anomaly-seg demo's drive_mcap)")
    parser.add_argument("--config", default=str(REPO / "config" / "demo.yaml"))
    parser.add_argument("--weights", default=str(REPO / "checkpoints" / "erfnet_synthetic_oe.safetensors"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="perception config override")
    parser.add_argument("--frames", type=int, nargs=2, default=(0, 10**9), metavar=("FIRST", "LAST"))
    args = parser.parse_args()

    perception = Perception.from_config(load_config(args.config, [f"model.weights={args.weights}", *args.set]))
    topics = SequenceTopics()
    images = (message_to_rgb(m.msg) for m in iter_messages(args.bag, [topics.image]))
    truths = (image_to_array(m.msg) for m in iter_messages(args.bag, [topics.ground_truth]))
    threshold = perception.threshold
    print(f"scorer {perception.scorer.name}, threshold {threshold:.3f}, input {perception.input_size}\n")
    print("| frame | alerts | obstacle px | max score | above threshold | component px | component IoU |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for index, (image, truth) in enumerate(zip(images, truths, strict=True)):
        if not args.frames[0] <= index <= args.frames[1]:
            continue
        result = perception.process(image)
        above = result.anomaly > threshold
        above_labels, above_stats = _components(above)
        truth_labels, truth_stats = _components(truth == 1)
        for k in range(1, len(truth_stats)):
            inside = truth_labels == k
            touching = np.unique(above_labels[inside & above])
            best = max(touching, key=lambda j: above_stats[j, 4], default=None)
            size, iou = "–", "–"
            if best is not None:
                size = str(above_stats[best, 4])
                iou = f"{bbox_iou(tuple(truth_stats[k, :4]), tuple(above_stats[best, :4])):.2f}"
            print(
                f"| {index} | {len(result.alerts)} | {truth_stats[k, 4]} | {result.anomaly[inside].max():.2f} "
                f"| {above[inside].mean():.2f} | {size} | {iou} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
