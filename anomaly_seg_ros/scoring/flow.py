"""FlowEneDet (Gudovskiy, Okuno, Nakata, UAI 2023, arXiv:2305.09610; seed 002).

A small normalising flow over *energy-based* per-pixel inputs of the frozen segmentation
network, trained post hoc on in-distribution data, that models two classes of pixels: the
network's prediction is correct (``m = 0``) or an in-distribution misclassification (IDM,
``m = 1``). Following the authors' code (github.com/gudovskiy/flowenedet,
``flow_decode_head.py``), per pixel:

1. the logits are standardised per class with SML statistics (fitted here on the same data),
   :math:`\\tilde l_c = (l_c - \\mu_c)/\\sigma_c`, and their free energy
   :math:`E = -\\log\\sum_c e^{\\tilde l_c}` is taken;
2. the flow input is the 2-vector :math:`x = (\\log P(\\mathrm{in}|x), \\log P(\\mathrm{out}|x))
   = (\\log\\sigma(-E), \\log\\sigma(E))`;
3. a RealNVP flow :math:`z = f(x)` (ActNorm + affine coupling blocks with alternating masks,
   the authors' ``sigmoid(s + 2) + 1e-3`` scale) maps it to a latent space with one Gaussian
   per class :math:`m`, so by the change of variables
   :math:`\\log p(x|m) = \\log\\mathcal N(f(x); \\mu_m, \\operatorname{diag}\\sigma_m^2) + \\log|\\det J_f(x)|`;
4. the score is the IDM posterior :math:`p(m{=}1|x) \\propto \\pi_1 p(x|m{=}1)` (the authors
   use it for both IDM and OOD detection), or with ``output: nll`` the negative marginal
   log-likelihood :math:`-\\log\\sum_m \\pi_m p(x|m)`; then a 7x7 Gaussian (sigma 1)
   smoothing, as in the authors' code.

Training labels are ``m = [label != argmax]`` on labelled pixels. The default objective is
the joint maximum likelihood :math:`-\\log \\pi_m p(x|m)`; ``loss: ce`` trains the
class-conditional log-likelihoods with cross-entropy, as the authors' code does.

Deviations, for a CPU-sized post-hoc model: unconditional flow only (the paper's FED-U; the
feature-conditioned FED-C is not implemented); diagonal latent Gaussians instead of the
authors' full-covariance mixture; :math:`\\log\\sigma(E)` computed exactly instead of
:math:`\\log(10^{-6} + 1 - \\sigma(-E))`; the fit trains on a random subsample of pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.labels import IGNORE_INDEX
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring.fitting import Batch, FittedScorer, model_outputs
from anomaly_seg_ros.scoring.registry import register_scorer
from anomaly_seg_ros.scoring.sml import MaxLogitStatistics, gaussian_kernel

_LOG_2PI = math.log(2 * math.pi)


def energy_inputs(logits: torch.Tensor, class_mean: torch.Tensor, class_std: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits -> (N, 2, H, W): :math:`(\\log\\sigma(-E), \\log\\sigma(E))` of standardised logits."""
    standardized = (logits - class_mean.to(logits).view(1, -1, 1, 1)) / class_std.to(logits).view(1, -1, 1, 1)
    free_energy = -torch.logsumexp(standardized, dim=1, keepdim=True)
    return torch.cat([F.logsigmoid(-free_energy), F.logsigmoid(free_energy)], dim=1)


class ActNorm(nn.Module):
    """Per-dimension affine ``z = (x - loc) * exp(-log_scale)``, initialised from the first batch (Glow)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.initialized) and self.training:
            with torch.no_grad():
                self.loc.copy_(x.mean(dim=0))
                self.log_scale.copy_(x.std(dim=0).clamp_min(1e-6).log())
                self.initialized.fill_(True)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale).sum().expand(x.shape[0])


class AffineCoupling(nn.Module):
    """RealNVP coupling: the dims with ``mask = 1`` pass; the others become ``x * scale + shift``.

    ``scale = sigmoid(h + 2) + 1e-3`` (the FlowEneDet authors' bounded scale) keeps every
    step invertible and well conditioned.
    """

    def __init__(self, dim: int, hidden: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * dim)
        )
        # start near the identity-like map the scale function allows
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = x * self.mask
        raw_scale, shift = self.net(kept).chunk(2, dim=1)
        scale = torch.sigmoid(raw_scale + 2.0) + 1e-3
        free = 1.0 - self.mask
        z = kept + free * (x * scale + shift)
        return z, (free * scale.log()).sum(dim=1)


class EnergyFlow(nn.Module):
    """RealNVP over ``dim``-vectors with one diagonal Gaussian per class in latent space.

    ``log_prob(x)`` returns :math:`\\log p(x|m)` for every class ``m``, ``(P, M)``;
    ``log_prior()`` returns :math:`\\log \\pi_m`.
    """

    def __init__(self, dim: int = 2, blocks: int = 4, hidden: int = 32, classes: int = 2) -> None:
        super().__init__()
        masks = [(torch.arange(dim) + i) % 2 for i in range(blocks)]
        self.norms = nn.ModuleList(ActNorm(dim) for _ in range(blocks))
        self.couplings = nn.ModuleList(AffineCoupling(dim, hidden, mask) for mask in masks)
        self.means = nn.Parameter(torch.zeros(classes, dim))
        self.log_stds = nn.Parameter(torch.zeros(classes, dim))
        self.prior_logits = nn.Parameter(torch.zeros(classes))
        with torch.no_grad():
            # separate the class means so the two components do not start identical
            self.means[:, 0] = torch.linspace(-1.0, 1.0, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = f(x)`` and :math:`\\log|\\det J_f(x)|`, both per row of ``x`` (P, dim)."""
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for norm, coupling in zip(self.norms, self.couplings, strict=True):
            x, step = norm(x)
            log_det = log_det + step
            x, step = coupling(x)
            log_det = log_det + step
        return x, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, log_det = self(x)
        diff = (z.unsqueeze(1) - self.means) * torch.exp(-self.log_stds)
        log_normal = -0.5 * (diff**2).sum(dim=2) - self.log_stds.sum(dim=1) - 0.5 * z.shape[1] * _LOG_2PI
        return log_normal + log_det.unsqueeze(1)

    def log_prior(self) -> torch.Tensor:
        return torch.log_softmax(self.prior_logits, dim=0)


def flow_loss(flow: EnergyFlow, x: torch.Tensor, classes: torch.Tensor, kind: str = "nll") -> torch.Tensor:
    """Mean joint NLL :math:`-\\log \\pi_m p(x|m)` (``nll``) or cross-entropy of the class log-likelihoods (``ce``)."""
    log_like = flow.log_prob(x)
    if kind == "ce":
        return F.cross_entropy(log_like, classes)
    joint = log_like + flow.log_prior()
    return -joint.gather(1, classes.unsqueeze(1)).mean()


@register_scorer
class FlowEneDet(FittedScorer):
    """FlowEneDet-U (seed 002): a RealNVP over per-pixel energy inputs; score = p(misclassified | x).

    Needs ``anomaly-seg fit-scorer flowenedet`` (in-distribution images *with* labels).
    """

    name = "flowenedet"
    display_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    fit_param_names: ClassVar[tuple[str, ...]] = ("blocks", "hidden", "loss", "steps", "lr", "max_pixels", "seed")
    fit_needs_labels: ClassVar[bool] = True

    def __init__(
        self,
        output: str = "misclassification",
        smooth: bool = True,
        blocks: int = 4,
        hidden: int = 32,
        loss: str = "nll",
        steps: int = 400,
        lr: float = 3e-3,
        batch_pixels: int = 4096,
        max_pixels: int = 200_000,
        seed: int = 0,
    ) -> None:
        if output not in ("misclassification", "nll"):
            raise ConfigError(f"scorer 'flowenedet': output must be 'misclassification' or 'nll', got {output!r}")
        if loss not in ("nll", "ce"):
            raise ConfigError(f"scorer 'flowenedet': loss must be 'nll' or 'ce', got {loss!r}")
        if not isinstance(smooth, bool):
            raise ConfigError(f"scorer 'flowenedet': smooth must be true or false, got {smooth!r}")
        for key, value in (("blocks", blocks), ("hidden", hidden), ("steps", steps), ("batch_pixels", batch_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"scorer 'flowenedet': {key} must be an integer >= 1, got {value!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 2:
            raise ConfigError(f"scorer 'flowenedet': max_pixels must be an integer >= 2, got {max_pixels!r}")
        if not float(lr) > 0:
            raise ConfigError(f"scorer 'flowenedet': lr must be > 0, got {lr!r}")
        self.output, self.smooth, self.loss = output, smooth, loss
        self.blocks, self.hidden, self.steps, self.lr = blocks, hidden, steps, float(lr)
        self.batch_pixels, self.max_pixels, self.seed = batch_pixels, max_pixels, int(seed)
        self.flow = EnergyFlow(2, blocks, hidden).eval()
        self.class_mean: torch.Tensor | None = None
        self.class_std: torch.Tensor | None = None
        self.history: list[float] = []

    @property
    def params(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "smooth": self.smooth,
            "blocks": self.blocks,
            "hidden": self.hidden,
            "loss": self.loss,
            "steps": self.steps,
            "lr": self.lr,
            "batch_pixels": self.batch_pixels,
            "max_pixels": self.max_pixels,
            "seed": self.seed,
        }

    # -- fitting -------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.class_mean is not None

    def fit(self, model: nn.Module, batches: Iterable[Batch]) -> None:
        """SML statistics, then ``steps`` Adam steps of the flow on up to ``max_pixels`` labelled pixels."""
        generator = torch.Generator().manual_seed(self.seed)
        stats: MaxLogitStatistics | None = None
        logit_rows: list[torch.Tensor] = []
        miss_rows: list[torch.Tensor] = []
        for output, labels in model_outputs(model, batches):
            if labels is None:
                raise ConfigError(
                    "scorer 'flowenedet': fit needs (images, labels) batches: it learns misclassifications"
                )
            if stats is None:
                stats = MaxLogitStatistics(output.logits.shape[1])
            stats.update(output.logits)
            logits = output.logits.detach().movedim(1, -1).reshape(-1, output.logits.shape[1]).float().cpu()
            flat_labels = labels.reshape(-1).cpu()
            valid = flat_labels != IGNORE_INDEX
            logits, flat_labels = logits[valid], flat_labels[valid]
            # a fixed per-image quota keeps memory bounded without a second pass over the data
            keep = torch.randperm(logits.shape[0], generator=generator)[: self.max_pixels]
            logit_rows.append(logits[keep])
            miss_rows.append((flat_labels[keep] != logits[keep].argmax(dim=1)).long())
        if stats is None or not logit_rows:
            raise ConfigError("scorer 'flowenedet': fit needs at least one labelled batch of in-distribution images")
        class_mean, class_std = stats.result()
        logits = torch.cat(logit_rows)
        misses = torch.cat(miss_rows)
        if logits.shape[0] > self.max_pixels:
            keep = torch.randperm(logits.shape[0], generator=generator)[: self.max_pixels]
            logits, misses = logits[keep], misses[keep]
        inputs = energy_inputs(logits.T.reshape(1, -1, logits.shape[0], 1), class_mean, class_std)
        self.train_flow(inputs.reshape(2, -1).T, misses, generator)
        self.class_mean, self.class_std = class_mean, class_std

    def train_flow(self, x: torch.Tensor, classes: torch.Tensor, generator: torch.Generator) -> list[float]:
        """Adam on mini-batches of (x, class) rows; returns (and keeps) the loss of every step."""
        torch.manual_seed(self.seed)
        flow = EnergyFlow(2, self.blocks, self.hidden)
        flow.train()
        with torch.no_grad():
            flow(x)  # data-dependent ActNorm initialisation on all rows
        optimizer = torch.optim.Adam(flow.parameters(), lr=self.lr)
        self.history = []
        for _ in range(self.steps):
            rows = torch.randint(0, x.shape[0], (min(self.batch_pixels, x.shape[0]),), generator=generator)
            loss = flow_loss(flow, x[rows], classes[rows], self.loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.history.append(float(loss.detach()))
        self.flow = flow.eval()
        return self.history

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.fitted:
            raise ConfigError("scorer 'flowenedet' is not fitted")
        state = {f"flow.{key}": value for key, value in self.flow.state_dict().items()}
        return {**state, "class_mean": self.class_mean, "class_std": self.class_std}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        flow_state = {key[len("flow.") :]: value for key, value in state.items() if key.startswith("flow.")}
        if "class_mean" not in state or "class_std" not in state:
            raise ConfigError("scorer 'flowenedet': a fit holds class_mean, class_std and flow.* tensors")
        flow = EnergyFlow(2, self.blocks, self.hidden)
        try:
            flow.load_state_dict(flow_state, strict=True)
        except RuntimeError as error:
            raise ConfigError(
                f"scorer 'flowenedet': the fit does not match blocks/hidden {self.params}: {error}"
            ) from None
        self.flow = flow.eval()
        self.class_mean = state["class_mean"].double()
        self.class_std = state["class_std"].double()

    # -- scoring -------------------------------------------------------------------------

    @staticmethod
    def score(
        logits: torch.Tensor,
        flow: EnergyFlow | None = None,
        class_mean: torch.Tensor | None = None,
        class_std: torch.Tensor | None = None,
        output: str = "misclassification",
        smooth: bool = True,
    ) -> torch.Tensor:
        if flow is None or class_mean is None or class_std is None:
            raise ConfigError("scorer 'flowenedet' needs its fitted flow and class statistics")
        if class_mean.numel() != logits.shape[1]:
            raise ConfigError(
                f"scorer 'flowenedet': fitted for {class_mean.numel()} classes, the model has {logits.shape[1]}"
            )
        n, _, h, w = logits.shape
        x = energy_inputs(logits, class_mean, class_std).movedim(1, -1).reshape(-1, 2)
        flow = flow.to(device=logits.device, dtype=logits.dtype)
        joint = flow.log_prob(x) + flow.log_prior()
        if output == "nll":
            scores = -torch.logsumexp(joint, dim=1)
        else:
            scores = torch.softmax(joint, dim=1)[:, 1]
        scores = scores.view(n, 1, h, w)
        if smooth:
            scores = F.conv2d(
                F.pad(scores, (3, 3, 3, 3), mode="reflect" if min(h, w) > 3 else "replicate"),
                gaussian_kernel(7, 1.0, scores.dtype, scores.device),
            )
        return scores.squeeze(1)

    def compute(self, output: SegmentationOutput) -> torch.Tensor:
        self.require_fitted()
        return self.score(output.logits, self.flow, self.class_mean, self.class_std, self.output, self.smooth)
