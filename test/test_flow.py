"""FlowEneDet: change-of-variables log-likelihood, energy inputs, training, fit save/load."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.distributions import Independent, Normal

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models import build_model, save_checkpoint
from anomaly_seg_ros.scoring import get_scorer, load_fit, save_fit
from anomaly_seg_ros.scoring.flow import EnergyFlow, energy_inputs, flow_loss, posterior_miss


def _affine_flow() -> tuple[EnergyFlow, torch.Tensor, torch.Tensor]:
    """A flow whose every step is a known per-dimension affine map; returns it and (a, b) of z = a x + b."""
    flow = EnergyFlow(dim=2, blocks=2, hidden=8).double()
    a = torch.ones(2, dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    settings = [((0.3, -0.2), (0.5, 1.5), (0.7, -1.1), (0.4, 2.0)), ((-0.5, 0.1), (0.2, 0.8), (-0.3, 1.2), (-1.0, 0.5))]
    with torch.no_grad():
        for norm, coupling, (loc, log_scale, raw, shift) in zip(flow.norms, flow.couplings, settings, strict=True):
            norm.loc.copy_(torch.tensor(loc))
            norm.log_scale.copy_(torch.tensor(log_scale))
            norm.initialized.fill_(True)
            # zero weights: the coupling's scale and shift are constants set by the bias
            coupling.net[-1].weight.zero_()
            coupling.net[-1].bias.copy_(torch.tensor([*raw, *shift]))
            inv = torch.exp(-torch.tensor(log_scale, dtype=torch.float64))
            a, b = a * inv, (b - torch.tensor(loc, dtype=torch.float64)) * inv
            free = 1.0 - coupling.mask.double()
            scale = torch.sigmoid(torch.tensor(raw, dtype=torch.float64) + 2.0) + 1e-3
            a = a * (1 + free * (scale - 1))
            b = b * (1 + free * (scale - 1)) + free * torch.tensor(shift, dtype=torch.float64)
        flow.means.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.3]]))
        flow.log_stds.copy_(torch.tensor([[0.1, -0.4], [0.6, 0.2]]))
    return flow.eval(), a, b


def test_affine_flow_log_likelihood_matches_torch_distributions():
    flow, a, b = _affine_flow()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    with torch.no_grad():
        log_like = flow.log_prob(x)
    for m in range(2):
        # z = a x + b ~ N(mu, sigma^2)  <=>  x ~ N((mu - b) / a, sigma / |a|)
        mu, sigma = flow.means[m].detach(), flow.log_stds[m].detach().exp()
        expected = Independent(Normal((mu - b) / a, sigma / a.abs()), 1).log_prob(x)
        torch.testing.assert_close(log_like[:, m], expected)


def test_log_determinant_matches_autograd_jacobian():
    torch.manual_seed(0)
    flow = EnergyFlow(dim=2, blocks=3, hidden=8).double()
    with torch.no_grad():
        for coupling in flow.couplings:
            coupling.net[-1].weight.normal_(0, 0.5)
            coupling.net[-1].bias.normal_(0, 0.5)
    flow.eval()
    for row in torch.randn(5, 2, dtype=torch.float64):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0][0], row)
        _, log_det = flow(row.unsqueeze(0))
        assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian).logabsdet.item(), rel=1e-9)


def test_energy_inputs_are_log_in_and_out_probabilities():
    logits = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    mean, std = torch.tensor([1.0, 0.0, -0.5]), torch.tensor([2.0, 1.0, 0.5])
    standardized = (np.array([2.0, -1.0, 0.5]) - np.array([1.0, 0.0, -0.5])) / np.array([2.0, 1.0, 0.5])
    energy = -math.log(np.exp(standardized).sum())
    p_in = 1 / (1 + math.exp(energy))
    x = energy_inputs(logits, mean, std)[0, :, 0, 0]
    assert x[0].item() == pytest.approx(math.log(p_in))
    assert x[1].item() == pytest.approx(math.log(1 - p_in))


def test_training_lowers_the_negative_log_likelihood():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(600, 2, generator=g) * 0.3 + 2, torch.randn(200, 2, generator=g) * 0.5 - 1])
    classes = torch.cat([torch.zeros(600, dtype=torch.long), torch.ones(200, dtype=torch.long)])
    scorer = get_scorer("flowenedet", max_steps=100, eval_every=100, batch_pixels=256, blocks=2, hidden=16)
    scorer.train_flow(x, classes, g)
    history = scorer.history
    with torch.no_grad():
        untrained = EnergyFlow(2, 2, 16)
        untrained.train()
        untrained(x)  # same data-dependent initialisation as the trained flow
        before = flow_loss(untrained.eval(), x, classes).item()
        after = flow_loss(scorer.flow, x, classes).item()
    assert after < before - 0.5
    assert np.mean(history[-20:]) < np.mean(history[:20])
    # the two well-separated classes are told apart by the posterior
    with torch.no_grad():
        posterior = torch.softmax(scorer.flow.log_prob(x) + scorer.flow.log_prior(), dim=1)[:, 1]
    assert posterior[600:].mean() > 0.8 and posterior[:600].mean() < 0.2


def test_fit_to_convergence_recovers_a_known_posterior_on_synthetic_energies():
    # Two classes of pixels with energies E | m=0 ~ N(-4, 1), E | m=1 ~ N(-1, 1) and P(m=1) = 0.08:
    # the true posterior p(m=1 | E) = sigmoid(log LR(E) + logit 0.08) is monotone increasing in E.
    g = torch.Generator().manual_seed(0)
    rate = 0.08
    classes = (torch.rand(4000, generator=g) < rate).long()
    energy = torch.where(classes == 1, torch.randn(4000, generator=g) - 1.0, torch.randn(4000, generator=g) - 4.0)
    x = torch.stack([F.logsigmoid(-energy), F.logsigmoid(energy)], dim=1)
    scorer = get_scorer(
        "flowenedet", blocks=2, hidden=16, batch_pixels=512, eval_every=50, patience=4, max_steps=3000, lr=1e-2
    )
    quality = scorer.train_flow(x, classes, torch.Generator().manual_seed(1))
    assert quality.converged and quality.steps < 3000  # stopped by the held-out rule, not the step cap
    observed = float(classes.float().mean())
    assert quality.prior == pytest.approx(observed, rel=0.10)
    training_rows = torch.ones(4000, dtype=torch.bool)
    training_rows[scorer.heldout_rows] = False
    assert quality.observed_rate == pytest.approx(float(classes[training_rows].float().mean()))

    grid = torch.linspace(float(energy.quantile(0.01)), float(energy.quantile(0.99)), 60)
    posterior = posterior_miss(scorer.flow, torch.stack([F.logsigmoid(-grid), F.logsigmoid(grid)], dim=1))
    log_ratio = Normal(-1.0, 1.0).log_prob(grid) - Normal(-4.0, 1.0).log_prob(grid)
    truth = torch.sigmoid(log_ratio + math.log(rate / (1 - rate)))
    assert (posterior.diff() >= -0.01).all(), posterior  # monotone, as the truth is
    assert (posterior[truth < 0.05] < 0.2).all() and (posterior[truth > 0.95] > 0.8).all()
    # the fit reports its ranking and its input's on the held-out rows, as scikit-learn computes them
    held = scorer.heldout_rows
    assert quality.heldout_pixels == held.numel() == 800 and quality.train_pixels == 3200
    assert quality.auroc_flow == pytest.approx(roc_auc_score(classes[held], posterior_miss(scorer.flow, x[held])))
    assert quality.auroc_input == pytest.approx(roc_auc_score(classes[held], energy[held]))
    assert quality.auroc_flow > 0.95 and quality.auroc_flow >= quality.auroc_input - 0.01


def _batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(2):
        images = torch.rand(1, 3, 16, 32, generator=g)
        labels = torch.randint(0, 19, (1, 16, 32), generator=g)
        labels[:, :2] = 255
        yield images, labels


def test_fit_save_and_load_through_the_fitting_api(tmp_path):
    torch.manual_seed(0)
    model = build_model("erfnet", num_classes=19).eval()
    checkpoint = save_checkpoint(model, tmp_path / "net.safetensors", metadata={})
    scorer = get_scorer("flowenedet", max_steps=20, batch_pixels=128, max_pixels=500)
    scorer.fit(model, _batches())
    path = save_fit(scorer, checkpoint)
    assert path.name == "net.flowenedet.safetensors"
    loaded = get_scorer("flowenedet", max_steps=20, batch_pixels=128, max_pixels=500)
    load_fit(loaded, checkpoint)
    with torch.no_grad():
        output = model.forward_with_features(torch.rand(1, 3, 16, 32))
    first, second = scorer(output), loaded(output)
    torch.testing.assert_close(first, second)
    assert first.shape == (1, 16, 32) and ((first >= 0) & (first <= 1)).all()
    nll = get_scorer("flowenedet", output="nll", smooth=False, max_steps=20, batch_pixels=128, max_pixels=500)
    load_fit(nll, checkpoint)  # output/smooth are not fit parameters: the same fit serves both
    assert torch.isfinite(nll(output)).all()
    with pytest.raises(ConfigError, match="re-run: anomaly-seg fit-scorer flowenedet"):
        load_fit(get_scorer("flowenedet", hidden=8, max_steps=20, batch_pixels=128, max_pixels=500), checkpoint)


def test_flow_fit_needs_labels_and_parameters_are_checked():
    model = build_model("erfnet", num_classes=19).eval()
    with pytest.raises(ConfigError, match="needs \\(images, labels\\) batches"):
        get_scorer("flowenedet").fit(model, [torch.rand(1, 3, 16, 16)])
    with pytest.raises(ConfigError, match="output must be"):
        get_scorer("flowenedet", output="ood")
    with pytest.raises(ConfigError, match="max_steps must be an integer"):
        get_scorer("flowenedet", max_steps=0)
    with pytest.raises(ConfigError, match="holdout must be a share"):
        get_scorer("flowenedet", holdout=1.0)
    everything_right = torch.zeros(50, dtype=torch.long)
    with pytest.raises(ConfigError, match="all 10 held-out pixels are correctly classified"):
        get_scorer("flowenedet").train_flow(torch.randn(50, 2), everything_right, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="anomaly-seg fit-scorer flowenedet"):
        get_scorer("flowenedet")(torch.zeros(1, 19, 4, 4))


def test_ignore_pixels_count_as_misclassified_as_in_the_authors_code():
    torch.manual_seed(0)
    model = build_model("erfnet", num_classes=19).eval()
    images = [torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    batches = []
    for image in images:
        with torch.no_grad():
            labels = model(image).argmax(dim=1)  # every labelled pixel correctly classified
        labels[:, :4] = 255  # a quarter of each image unlabelled (the ego hood of the synthetic scenes)
        batches.append((image, labels))
    scorer = get_scorer("flowenedet", max_steps=2, eval_every=1, batch_pixels=64, max_pixels=5000)
    scorer.fit(model, batches)
    training_rows = torch.ones(2 * 16 * 32, dtype=torch.bool)
    training_rows[scorer.heldout_rows] = False
    # the misclassified pixels are exactly the ignore pixels: 1/4 of all, among the training rows too
    assert scorer.quality.observed_rate == pytest.approx(0.25, abs=0.03)
    assert scorer.quality.train_pixels == int(training_rows.sum()) == 819
    with pytest.raises(ConfigError, match="held-out pixels are correctly classified"):
        get_scorer("flowenedet", ignore_as_miss=False, max_steps=2, max_pixels=5000).fit(model, batches)
