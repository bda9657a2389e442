"""Instance-wise aggregation of any anomaly map over the predicted segmentation (seed 003 eq. 7).

Seed 003 (instance-wise uncertainty) averages a pixel-wise uncertainty over each *instance*,
an 8-connected component of pixels of one class, and gives every pixel its instance's mean:

.. math:: IU(p) = \\sum_{I \\in R} \\mathbf{1}_I(p) \\frac{1}{|I|} \\sum_{k \\in I} PU(k)

The paper builds the instances from the ground truth during training; at inference the
only segmentation there is the network's prediction, so here the instances are the
8-connected components of the arg-max label map. Any scorer gets this with the parameter
``instance: true`` (``get_scorer("maxentropy", instance=True)``).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring.base import Scorer


def instance_components(labels: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """``connectivity``-connected (8 or 4) components of each class of an ``(H, W)`` label map.

    Returns an int32 map of instance ids ``0..K-1`` (every pixel belongs to exactly one
    instance) and ``K``.
    """
    ids = np.zeros(labels.shape, dtype=np.int32)
    count = 0
    for value in np.unique(labels):
        mask = (labels == value).astype(np.uint8)
        found, components = cv2.connectedComponents(mask, connectivity=connectivity)
        # component 0 is the background of this class mask; shift the others into the global id range
        inside = components > 0
        ids[inside] = components[inside] - 1 + count
        count += found - 1
    return ids, count


def instance_mean(scores: torch.Tensor, labels: torch.Tensor, *, connectivity: int = 8) -> torch.Tensor:
    """Seed 003 eq. 7: each pixel gets the mean score of its 8-connected same-label instance.

    The one implementation of the instance mean: the scorers' ``instance: true`` and the
    training loss's instance uncertainty (``losses.instance_uncertainty``) both use it.

    ``scores`` ``(N, H, W)`` float, ``labels`` ``(N, H, W)`` integer, same shape. The
    components are found on the CPU (OpenCV); the means are taken on the scores' device.
    """
    if scores.shape != labels.shape or scores.ndim != 3:
        raise ValueError(
            f"scores and labels must both be (N, H, W) of one shape, got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
    out = torch.empty_like(scores)
    for index, label_map in enumerate(labels.cpu().numpy()):
        ids_np, count = instance_components(label_map, connectivity)
        ids = torch.from_numpy(ids_np).to(scores.device).view(-1).long()
        flat = scores[index].reshape(-1)
        sums = torch.zeros(count, dtype=scores.dtype, device=scores.device).index_add_(0, ids, flat)
        sizes = torch.bincount(ids, minlength=count).to(scores.dtype)
        out[index] = (sums / sizes)[ids].view_as(scores[index])
    return out


class InstanceAggregated(Scorer):
    """Wraps a scorer: its map, averaged over predicted-class instances (seed 003 eq. 7).

    Not registered by name: ``get_scorer(name, instance=True)`` builds it around any scorer,
    which keeps its name, requirements, fit and parameters.
    """

    def __init__(self, inner: Scorer, instance: Any = True) -> None:
        if instance is not True:
            raise ConfigError(f"scorer {inner.name!r}: instance must be true or false, got {instance!r}")
        self.inner = inner
        self.name = inner.name
        self.display_range = inner.display_range
        self.requires_features = inner.requires_features
        self.requires_fit = inner.requires_fit
        self.requires_model = inner.requires_model
        self.offline_only = inner.offline_only
        self.requires_head = inner.requires_head

    @property
    def params(self) -> dict[str, Any]:
        return {**self.inner.params, "instance": True}

    def bind(self, model: nn.Module) -> None:
        self.inner.bind(model)

    def compute(self, output: SegmentationOutput) -> torch.Tensor:
        return instance_mean(self.inner.compute(output), output.logits.argmax(dim=1))

    def __getattr__(self, name: str) -> Any:
        # fit / state_dict / load_state_dict / fitted / fit_params of a fitted inner scorer
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
