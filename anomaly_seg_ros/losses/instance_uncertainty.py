r"""Instance-wise uncertainty weighting (seed 003: Almeida, Dutra, Renna, "Instance-wise Uncertainty
for Class Imbalance in Semantic Segmentation", sections 3-4).

1. Pixel uncertainty: the predictive entropy of an ensemble of :math:`M` models (seed 003 eq. 2),

   .. math:: \mathrm{PU}(p) = H\Big[\frac{1}{M} \sum_{m=1}^{M} \mathrm{softmax}(z_m(p))\Big]
             = -\sum_c \bar P_c(p) \ln \bar P_c(p)

   in nats and *not* normalised: the paper uses the plain entropy and motivates the ``1 +`` of
   step 3 by uncertainties "smaller than 1", a scale a ``log C`` normalisation would change
   (``normalize=True`` divides by :math:`\ln C` for other uses).
2. Instance uncertainty (eq. 7): an instance is a connected set of ground-truth pixels of one
   class (8-connectivity, ``cv2.connectedComponents``); every pixel of an instance gets the mean
   PU of the instance. Ignored pixels belong to no instance and get 0.
3. The loss (eq. 8): :math:`\mathcal{L} = CE(\hat y, y) \odot (1 + IU)^2`, i.e.
   ``criterion(output, target, pixel_weights=iu_pixel_weights(iu))``.

Seed 003 trains the ensemble members either beforehand (masks computed once per training
sample) or in parallel (masks computed on the fly); both call these functions the same way. The
masks are constants of the loss: they are computed without gradient.
"""

from __future__ import annotations

import torch

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.labels import IGNORE_INDEX
from anomaly_seg_ros.scoring.ensemble import ensemble_entropy  # noqa: F401  (re-exported: the loss's PU)
from anomaly_seg_ros.scoring.instance import instance_mean


@torch.no_grad()
@torch.no_grad()
def instance_uncertainty(
    entropy: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, *, connectivity: int = 8
) -> torch.Tensor:
    r"""Instance uncertainty map ``(N, H, W)`` (seed 003 eq. 7) on the entropy's device and dtype.

    .. math:: IU(p) = \sum_{I \in R} \mathbf{1}_I(p) \frac{1}{|I|} \sum_{k \in I} PU(k)

    ``R`` are the ``connectivity``-connected components (8 by default, 4 possible) of each class
    mask of ``labels`` ``(N, H, W)``; pixels labelled ``ignore_index`` get 0.
    """
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if entropy.ndim != 3 or labels.shape != entropy.shape:
        raise ValueError(
            f"entropy and labels must both be (N, H, W) with the same shape, got {tuple(entropy.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        raise ValueError(f"labels must be integer trainIds, got {labels.dtype}")
    means = instance_mean(entropy.detach(), labels, connectivity=connectivity)
    return means.masked_fill(labels == ignore_index, 0.0)


def iu_pixel_weights(iu: torch.Tensor) -> torch.Tensor:
    r"""Loss weights :math:`(1 + IU)^2` of seed 003 eq. 8, for ``Criterion(..., pixel_weights=...)``."""
    return (1.0 + iu) ** 2
