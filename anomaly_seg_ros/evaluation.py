"""Evaluation through the perception core: segmentation mIoU and scorer metrics.

Images go through ``Perception.infer``, the exact preprocessing of deployment; outputs are
compared with the ground truth at the ground truth's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from anomaly_seg_ros.data.datasets import AnomalyDataset, CityscapesDataset
from anomaly_seg_ros.inference.preprocess import resize_labels, resize_scores
from anomaly_seg_ros.labels import IGNORE_INDEX
from anomaly_seg_ros.metrics import ConfusionMatrix, StreamingOODMetrics
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
    for scorer in built.values():
        scorer.bind(perception.model)
    features = any(scorer.requires_features for scorer in built.values())
    results = {name: StreamingOODMetrics() for name in scorers}
    for index in tqdm(range(len(dataset)), desc="evaluate", unit="image", disable=not progress):
        image, truth = dataset[index]
        output, _ = perception.infer(image, features=features)
        with torch.inference_mode():
            for name, scorer in built.items():
                scores = resize_scores(scorer(output).float(), image.shape[:2])[0].cpu().numpy()
                results[name].update(scores, truth)
    return results


def evaluate_segmentation(
    perception: Perception, dataset: CityscapesDataset, *, progress: bool = False
) -> ConfusionMatrix:
    """Confusion matrix (ignore 255) of the model's arg-max labels over ``dataset``."""
    confusion: ConfusionMatrix | None = None
    for index in tqdm(range(len(dataset)), desc="segmentation", unit="image", disable=not progress):
        image, truth = dataset[index]
        logits = perception.infer(image)[0].logits
        if confusion is None:
            confusion = ConfusionMatrix(logits.shape[1], ignore_index=IGNORE_INDEX)
        with torch.inference_mode():
            labels = resize_labels(logits.argmax(dim=1), image.shape[:2])[0].cpu().numpy()
        confusion.update(labels, truth)
    if confusion is None:
        raise ValueError("evaluate_segmentation needs a non-empty dataset")
    return confusion
