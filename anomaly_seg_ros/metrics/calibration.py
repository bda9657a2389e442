"""Confidence calibration: expected calibration error and temperature scaling.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
arXiv:1706.04599; seed 000 section 3.2, eq. 5) divides the logits by one scalar ``T`` fitted
on held-out data by minimising the negative log-likelihood; it leaves the arg-max, and so
the segmentation, unchanged. Segmentation validation sets hold 10^9 pixels, so the fit runs
on a uniform random subsample of labelled pixels collected with bounded memory
(:class:`PixelReservoir`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_seg_ros.common.labels import IGNORE_INDEX


def _flatten(values: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W)/(N, H, W) or (M, C)/(M,) -> (K, C), (K,) of the pixels whose label is not ignored."""
    values, labels = torch.as_tensor(values), torch.as_tensor(labels)
    if values.ndim == 4:
        if labels.shape != (values.shape[0], *values.shape[2:]):
            raise ValueError(f"labels {tuple(labels.shape)} do not match scores {tuple(values.shape)} (N, C, H, W)")
        values = values.permute(0, 2, 3, 1).reshape(-1, values.shape[1])
        labels = labels.reshape(-1)
    elif values.ndim == 2:
        if labels.shape != values.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match scores {tuple(values.shape)} (M, C)")
    else:
        raise ValueError(f"expected scores of shape (N, C, H, W) or (M, C), got {tuple(values.shape)}")
    if not values.is_floating_point():
        raise ValueError(f"scores must be floating point, got {values.dtype}")
    keep = labels != ignore_index
    values, labels = values[keep], labels[keep].long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= values.shape[1]):
        raise ValueError(f"labels must lie in 0..{values.shape[1] - 1} or be {ignore_index}")
    return values, labels


def _looks_like_probabilities(values: torch.Tensor) -> bool:
    if values.numel() == 0:
        return True
    sums = values.double().sum(dim=1)
    return bool(values.min() >= 0 and values.max() <= 1 and torch.allclose(sums, torch.ones_like(sums), atol=1e-3))


class CalibrationHistogram:
    """Streaming ECE: per confidence bin, the pixel count, summed confidence and correct count.

    Memory is three arrays of ``n_bins``, whatever the number of pixels added.
    """

    def __init__(self, n_bins: int = 15) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = int(n_bins)
        self.count = np.zeros(self.n_bins, dtype=np.int64)
        self.confidence = np.zeros(self.n_bins, dtype=np.float64)
        self.correct = np.zeros(self.n_bins, dtype=np.int64)

    def update(
        self,
        probs_or_logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        ignore_index: int = IGNORE_INDEX,
        inputs: Literal["auto", "probs", "logits"] = "auto",
    ) -> None:
        """Add a batch; ``inputs="auto"`` takes values in [0, 1] that sum to 1 over C as probabilities."""
        values, labels = _flatten(probs_or_logits, labels, ignore_index)
        if inputs == "logits" or (inputs == "auto" and not _looks_like_probabilities(values)):
            values = torch.softmax(values.double(), dim=1)
        confidence, prediction = values.double().max(dim=1)
        # Bin m holds confidences in ((m-1)/M, m/M] (Guo et al. eq. 3); a confidence is never 0.
        bins = (torch.ceil(confidence * self.n_bins).long() - 1).clamp_(0, self.n_bins - 1)
        self.count += torch.bincount(bins, minlength=self.n_bins).cpu().numpy()
        self.confidence += torch.bincount(bins, weights=confidence, minlength=self.n_bins).cpu().numpy()
        hits = (prediction == labels).double()
        self.correct += torch.bincount(bins, weights=hits, minlength=self.n_bins).cpu().numpy().round().astype(np.int64)

    def value(self) -> float:
        r"""ECE :math:`= \sum_m \frac{|B_m|}{n} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|`; NaN when empty."""
        total = self.count.sum()
        if total == 0:
            return float("nan")
        return float(np.abs(self.correct - self.confidence).sum() / total)


def expected_calibration_error(
    probs_or_logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    ignore_index: int = IGNORE_INDEX,
    *,
    inputs: Literal["auto", "probs", "logits"] = "auto",
) -> float:
    r"""Expected calibration error with equal-width confidence bins (Guo et al. 2017, eq. 3).

    .. math:: \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{n}\,\bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|

    where :math:`B_m` holds the pixels whose confidence :math:`\max_k p_k` lies in
    :math:`((m-1)/M, m/M]`, :math:`\mathrm{acc}` is the fraction of them whose arg-max equals the
    label and :math:`\mathrm{conf}` their mean confidence. Inputs are ``(N, C, H, W)`` with labels
    ``(N, H, W)``, or ``(M, C)`` with ``(M,)``; pixels labelled ``ignore_index`` are left out.
    Softmax is applied unless the values already are probabilities (``inputs``).
    """
    histogram = CalibrationHistogram(n_bins)
    histogram.update(probs_or_logits, labels, ignore_index=ignore_index, inputs=inputs)
    return histogram.value()


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    r"""Mean negative log-likelihood :math:`-\frac1n\sum_i \log \operatorname{softmax}(z_i/T)_{y_i}` of flat logits."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    max_iter: int = 100,
) -> float:
    r"""The temperature minimising the NLL of ``softmax(logits / T)`` (seed 000 eq. 5).

    .. math:: T^* = \arg\min_{T > 0} -\frac{1}{n} \sum_i \log \frac{e^{z_{i,y_i}/T}}{\sum_k e^{z_{i,k}/T}}

    Optimised over :math:`\log T` (so ``T`` stays positive without constraints) with
    ``torch.optim.LBFGS`` and a strong-Wolfe line search, in float64, as in Pleiss'
    reference implementation cited by the seed. The NLL is smooth and, in :math:`1/T`, convex,
    so the minimum found is the global one. Inputs as in :func:`expected_calibration_error`.
    """
    values, targets = _flatten(logits, labels, ignore_index)
    if targets.numel() == 0:
        raise ValueError("fit_temperature needs at least one labelled pixel")
    values = values.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(values / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature fit diverged (T = {temperature}); are the logits all equal?")
    return temperature


class PixelReservoir:
    """A uniform random sample without replacement of at most ``capacity`` labelled pixels.

    Bottom-k sampling: every pixel gets an independent uniform key and the ``capacity``
    smallest keys seen so far are kept, which is a uniform sample of everything added, in
    O(capacity x C) memory however many batches stream past.
    """

    def __init__(self, capacity: int, *, ignore_index: int = IGNORE_INDEX, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.ignore_index = ignore_index
        self.generator = torch.Generator().manual_seed(seed)
        self.keys = torch.empty(0, dtype=torch.float64)
        self.logits: torch.Tensor | None = None
        self.labels = torch.empty(0, dtype=torch.long)
        self.seen = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer a batch of (N, C, H, W) logits and (N, H, W) labels; kept pixels are copied to the CPU.

        Keys are drawn first and only pixels that can enter the sample are gathered, so a
        full-resolution batch is never copied as a whole.
        """
        if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"expected logits (N, C, H, W) and labels (N, H, W), got {tuple(logits.shape)}, {tuple(labels.shape)}"
            )
        num, classes = logits.shape[:2]
        flat_labels = labels.reshape(num, -1).cpu()
        where = (flat_labels != self.ignore_index).nonzero()
        self.seen += where.shape[0]
        keys = torch.rand(where.shape[0], generator=self.generator, dtype=torch.float64)
        if self.keys.numel() >= self.capacity:
            candidates = keys < self.keys.max()
            where, keys = where[candidates], keys[candidates]
        if keys.numel() > self.capacity:
            keep = torch.topk(keys, self.capacity, largest=False).indices
            where, keys = where[keep], keys[keep]
        targets = flat_labels[where[:, 0], where[:, 1]].long()
        if targets.numel() and (targets.min() < 0 or targets.max() >= classes):
            raise ValueError(f"labels must lie in 0..{classes - 1} or be {self.ignore_index}")
        index = where.to(logits.device)
        values = logits.detach().reshape(num, classes, -1)[index[:, 0], :, index[:, 1]].float().cpu()
        if self.logits is None:
            self.logits = values[:0]
        keys = torch.cat([self.keys, keys])
        values = torch.cat([self.logits, values])
        targets = torch.cat([self.labels, targets])
        if keys.numel() > self.capacity:
            keep = torch.topk(keys, self.capacity, largest=False).indices
            keys, values, targets = keys[keep], values[keep], targets[keep]
        self.keys, self.logits, self.labels = keys, values, targets
