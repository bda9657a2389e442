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

Training labels are ``m = [label != argmax]``; pixels labelled ignore (255) count as
misclassified (``m = 1``), as in the authors' code, unless ``ignore_as_miss: false``. The
default objective is the joint maximum likelihood :math:`-\\log \\pi_m p(x|m)`; ``loss: ce``
trains the class-conditional log-likelihoods with cross-entropy, as the authors' code does.

The fit runs to convergence rather than for a fixed small number of steps: a share
``holdout`` of the fitting pixels is held out, the objective on them is measured every
``eval_every`` Adam steps, and training stops once it has not improved for ``patience``
measurements (or after ``max_steps``); the best held-out state is kept. The fit reports its
quality (:class:`FitQuality`: learnt prior against the observed misclassification rate,
held-out objective, and the AUROC of misclassification of the flow's posterior against that
of its own input, the energy, on the held-out pixels); ``anomaly-seg fit-scorer`` refuses
to save a fit whose posterior detects misclassification worse than its input does.

Deviations, for a CPU-sized post-hoc model: unconditional flow only (the paper's FED-U; the
feature-conditioned FED-C is not implemented, see docs/baseline_synthetic.md for why);
diagonal latent Gaussians instead of the authors' full-covariance mixture;
:math:`\\log\\sigma(E)` computed exactly instead of :math:`\\log(10^{-6} + 1 - \\sigma(-E))`;
the fit trains on a random subsample of pixels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.labels import IGNORE_INDEX
from anomaly_seg_ros.metrics.ood import auroc
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


@dataclass(frozen=True)
class FitQuality:
    """How well a flow fit describes its data; measured on the held-out fitting pixels.

    ``prior`` is the learnt :math:`\\pi_1`, ``observed_rate`` the share of misclassified
    pixels among the training pixels (the maximum-likelihood :math:`\\pi_1`). ``auroc_flow``
    and ``auroc_input`` rank misclassification by the flow's posterior and by its own input,
    the energy :math:`E` (higher = more likely misclassified); a flow is only worth its cost
    when the first is not lower than the second.
    """

    prior: float
    observed_rate: float
    heldout_loss: float
    auroc_flow: float
    auroc_input: float
    steps: int
    best_step: int
    converged: bool
    train_pixels: int
    heldout_pixels: int

    @property
    def worse_than_input(self) -> bool:
        return self.auroc_flow < self.auroc_input

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "worse_than_input": self.worse_than_input}

    def describe(self) -> str:
        state = "converged" if self.converged else "stopped at max_steps without converging"
        return (
            f"prior p(miss) {self.prior:.4f} vs observed rate {self.observed_rate:.4f}; held-out loss "
            f"{self.heldout_loss:.4f} ({state}, best at step {self.best_step} of {self.steps}); AUROC of "
            f"misclassification on {self.heldout_pixels} held-out pixels: flow {100 * self.auroc_flow:.2f} %, "
            f"its input (energy) {100 * self.auroc_input:.2f} %"
        )


def posterior_miss(flow: EnergyFlow, x: torch.Tensor) -> torch.Tensor:
    """:math:`p(m{=}1|x)` per row of ``x`` (P, 2), no smoothing."""
    with torch.no_grad():
        return torch.softmax(flow.log_prob(x) + flow.log_prior(), dim=1)[:, 1]


@register_scorer
class FlowEneDet(FittedScorer):
    """FlowEneDet-U (seed 002): a RealNVP over per-pixel energy inputs; score = p(misclassified | x).

    Needs ``anomaly-seg fit-scorer flowenedet`` (in-distribution images *with* labels).
    """

    name = "flowenedet"
    display_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    fit_param_names: ClassVar[tuple[str, ...]] = (
        "blocks",
        "hidden",
        "loss",
        "max_steps",
        "lr",
        "max_pixels",
        "holdout",
        "eval_every",
        "patience",
        "ignore_as_miss",
        "seed",
    )
    fit_needs_labels: ClassVar[bool] = True

    def __init__(
        self,
        output: str = "misclassification",
        smooth: bool = True,
        blocks: int = 4,
        hidden: int = 32,
        loss: str = "nll",
        max_steps: int = 20_000,
        lr: float = 3e-3,
        batch_pixels: int = 4096,
        max_pixels: int = 200_000,
        holdout: float = 0.2,
        eval_every: int = 100,
        patience: int = 10,
        ignore_as_miss: bool = True,
        seed: int = 0,
    ) -> None:
        if output not in ("misclassification", "nll"):
            raise ConfigError(f"scorer 'flowenedet': output must be 'misclassification' or 'nll', got {output!r}")
        if loss not in ("nll", "ce"):
            raise ConfigError(f"scorer 'flowenedet': loss must be 'nll' or 'ce', got {loss!r}")
        for key, flag in (("smooth", smooth), ("ignore_as_miss", ignore_as_miss)):
            if not isinstance(flag, bool):
                raise ConfigError(f"scorer 'flowenedet': {key} must be true or false, got {flag!r}")
        for key, value in (
            ("blocks", blocks),
            ("hidden", hidden),
            ("max_steps", max_steps),
            ("batch_pixels", batch_pixels),
            ("eval_every", eval_every),
            ("patience", patience),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"scorer 'flowenedet': {key} must be an integer >= 1, got {value!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 10:
            raise ConfigError(f"scorer 'flowenedet': max_pixels must be an integer >= 10, got {max_pixels!r}")
        if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0.0 < holdout < 1.0:
            raise ConfigError(f"scorer 'flowenedet': holdout must be a share in (0, 1), got {holdout!r}")
        if not float(lr) > 0:
            raise ConfigError(f"scorer 'flowenedet': lr must be > 0, got {lr!r}")
        self.output, self.smooth, self.loss = output, smooth, loss
        self.blocks, self.hidden, self.max_steps, self.lr = blocks, hidden, max_steps, float(lr)
        self.batch_pixels, self.max_pixels, self.seed = batch_pixels, max_pixels, int(seed)
        self.holdout, self.eval_every, self.patience = float(holdout), eval_every, patience
        self.ignore_as_miss = ignore_as_miss
        self.flow = EnergyFlow(2, blocks, hidden).eval()
        self.class_mean: torch.Tensor | None = None
        self.class_std: torch.Tensor | None = None
        #: Training loss of every Adam step, and the held-out loss at every measurement.
        self.history: list[float] = []
        self.heldout_history: list[float] = []
        #: Fit quality of the last :meth:`fit` / :meth:`train_flow` and the rows it held out; None before.
        self.quality: FitQuality | None = None
        self.heldout_rows: torch.Tensor | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "smooth": self.smooth,
            "blocks": self.blocks,
            "hidden": self.hidden,
            "loss": self.loss,
            "max_steps": self.max_steps,
            "lr": self.lr,
            "batch_pixels": self.batch_pixels,
            "max_pixels": self.max_pixels,
            "holdout": self.holdout,
            "eval_every": self.eval_every,
            "patience": self.patience,
            "ignore_as_miss": self.ignore_as_miss,
            "seed": self.seed,
        }

    # -- fitting -------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.class_mean is not None

    def fit(self, model: nn.Module, batches: Iterable[Batch]) -> None:
        """SML statistics, then the flow trained to convergence on up to ``max_pixels`` pixels."""
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
            if not self.ignore_as_miss:
                valid = flat_labels != IGNORE_INDEX
                logits, flat_labels = logits[valid], flat_labels[valid]
            # a fixed per-image quota keeps memory bounded without a second pass over the data
            keep = torch.randperm(logits.shape[0], generator=generator)[: self.max_pixels]
            logit_rows.append(logits[keep])
            # an ignore pixel (255) never equals the argmax: it counts as misclassified
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

    def train_flow(self, x: torch.Tensor, classes: torch.Tensor, generator: torch.Generator) -> FitQuality:
        """Adam on mini-batches of (x, class) rows until the held-out loss stops improving.

        A random share ``holdout`` of the rows is held out; every ``eval_every`` steps the
        objective on it is measured, and after ``patience`` measurements without a new best
        (or ``max_steps`` steps) training stops and the best state is restored. Returns (and
        keeps in ``quality``) the fit quality on the held-out rows.
        """
        if x.ndim != 2 or x.shape[1] != 2 or classes.shape != (x.shape[0],):
            raise ValueError(
                f"train_flow needs x (P, 2) and classes (P,), got {tuple(x.shape)} and {tuple(classes.shape)}"
            )
        order = torch.randperm(x.shape[0], generator=generator)
        held = max(1, int(round(self.holdout * x.shape[0])))
        if x.shape[0] - held < 1:
            raise ConfigError(f"scorer 'flowenedet': {x.shape[0]} pixels are too few to hold out {self.holdout:.0%}")
        self.heldout_rows = order[:held]
        x_val, m_val = x[order[:held]], classes[order[:held]]
        if m_val.min() == m_val.max():
            raise ConfigError(
                f"scorer 'flowenedet': all {held} held-out pixels are {'mis' if int(m_val[0]) else 'correctly '}"
                "classified, so the fit's quality cannot be measured; fit on more images"
            )
        x_fit, m_fit = x[order[held:]], classes[order[held:]]
        torch.manual_seed(self.seed)
        flow = EnergyFlow(2, self.blocks, self.hidden)
        flow.train()
        with torch.no_grad():
            flow(x_fit)  # data-dependent ActNorm initialisation on all training rows
        optimizer = torch.optim.Adam(flow.parameters(), lr=self.lr)
        self.history, self.heldout_history = [], []
        best_loss, best_step, best_state, stale = math.inf, 0, copy.deepcopy(flow.state_dict()), 0
        converged = False
        for step in range(1, self.max_steps + 1):
            rows = torch.randint(0, x_fit.shape[0], (min(self.batch_pixels, x_fit.shape[0]),), generator=generator)
            loss = flow_loss(flow, x_fit[rows], m_fit[rows], self.loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.history.append(float(loss.detach()))
            if step % self.eval_every and step != self.max_steps:
                continue
            with torch.no_grad():
                heldout = float(flow_loss(flow, x_val, m_val, self.loss))
            self.heldout_history.append(heldout)
            if heldout < best_loss - 1e-5:
                best_loss, best_step, best_state, stale = heldout, step, copy.deepcopy(flow.state_dict()), 0
            else:
                stale += 1
                if stale >= self.patience:
                    converged = True
                    break
        flow.load_state_dict(best_state)
        self.flow = flow.eval()
        self.quality = FitQuality(
            prior=float(self.flow.log_prior().detach().exp()[1]),
            observed_rate=float(m_fit.float().mean()),
            heldout_loss=best_loss,
            auroc_flow=auroc(posterior_miss(self.flow, x_val), m_val),
            # E = log sigma(E) - log sigma(-E): the input's own ranking of misclassification
            auroc_input=auroc(x_val[:, 1] - x_val[:, 0], m_val),
            steps=len(self.history),
            best_step=best_step,
            converged=converged,
            train_pixels=int(x_fit.shape[0]),
            heldout_pixels=int(x_val.shape[0]),
        )
        return self.quality

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
