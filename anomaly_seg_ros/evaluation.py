"""Scorer evaluation on an anomaly dataset: one forward pass per image, shared by all scorers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from anomaly_seg_ros.data.datasets import AnomalyDataset
from anomaly_seg_ros.inference.preprocess import resize_scores
from anomaly_seg_ros.metrics import StreamingOODMetrics
from anomaly_seg_ros.perception import Perception
from anomaly_seg_ros.scoring import get_scorer


def evaluate_scorers(
    perception: Perception,
    dataset: AnomalyDataset,
    scorers: Sequence[str],
    *,
    progress: bool = False,
) -> dict[str, StreamingOODMetrics]:
    """Pooled pixel metrics of each scorer over ``dataset``, scores taken at the image's size.

    The model runs once per image; every scorer reads the same logits, so adding scorers
    costs only their reductions.
    """
    built = {name: get_scorer(name) for name in scorers}
    results = {name: StreamingOODMetrics() for name in scorers}
    for index in tqdm(range(len(dataset)), desc="evaluate", unit="image", disable=not progress):
        image, truth = dataset[index]
        logits, _ = perception.infer(image)
        with torch.inference_mode():
            for name, scorer in built.items():
                scores = resize_scores(scorer(logits).float(), image.shape[:2])[0].cpu().numpy()
                results[name].update(scores, truth)
    return results
