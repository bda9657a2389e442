"""Scorers against direct computations (seed 000 eq. 2-5, energy), shapes and registry errors."""

import math

import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.scoring import available_scorers, get_scorer, logit_scorers


def _logits(seed: int = 0, shape=(2, 19, 5, 7)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def _direct(name: str, logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """Per pixel, from the formulas with plain numpy loops over the class vector."""
    array = logits.numpy()
    n, c, h, w = array.shape
    out = np.empty((n, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                f = array[i, :, y, x]
                z = f / temperature
                p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                if name == "msp":
                    out[i, y, x] = -p.max()
                elif name == "maxlogit":
                    out[i, y, x] = -f.max()
                elif name == "maxentropy":
                    out[i, y, x] = -(p * np.log(p)).sum() / math.log(c)
                elif name == "energy":
                    out[i, y, x] = -temperature * math.log(np.exp(z).sum())
    return out


@pytest.mark.parametrize("name", ["msp", "maxlogit", "maxentropy", "energy"])
def test_scorer_matches_direct_formula(name):
    logits = _logits()
    scores = get_scorer(name)(logits)
    assert scores.shape == (2, 5, 7)
    np.testing.assert_allclose(scores.numpy(), _direct(name, logits), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["msp", "maxentropy", "energy"])
def test_temperature_matches_direct_formula(name):
    logits = _logits(1)
    scores = get_scorer(name, temperature=2.13)(logits)
    np.testing.assert_allclose(scores.numpy(), _direct(name, logits, 2.13), rtol=1e-10, atol=1e-12)


def test_hand_worked_two_class_pixel():
    # logits (0, ln 3): softmax = (1/4, 3/4)
    logits = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64).view(1, 2, 1, 1)
    assert get_scorer("msp")(logits).item() == pytest.approx(-0.75)
    assert get_scorer("maxlogit")(logits).item() == pytest.approx(-math.log(3.0))
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2.0)
    assert get_scorer("maxentropy")(logits).item() == pytest.approx(entropy)
    assert get_scorer("energy")(logits).item() == pytest.approx(-math.log(4.0))


def test_higher_means_more_anomalous_for_every_scorer():
    confident = torch.zeros(1, 19, 1, 1)
    confident[0, 3] = 12.0
    uncertain = torch.zeros(1, 19, 1, 1)  # flat logits: nothing known
    for name in logit_scorers():
        scorer = get_scorer(name)
        assert scorer(uncertain).item() > scorer(confident).item(), name


def test_scores_stay_on_the_logits_device_and_dtype():
    logits = torch.randn(1, 20, 8, 8, dtype=torch.float32)
    for name in logit_scorers():
        scores = get_scorer(name)(logits)
        assert scores.dtype == torch.float32 and scores.device == logits.device
        assert torch.isfinite(scores).all()


def test_extreme_logits_stay_finite():
    logits = torch.tensor([1e4, -1e4, 0.0]).view(1, 3, 1, 1)
    for name in logit_scorers():
        assert torch.isfinite(get_scorer(name)(logits)).all(), name


def test_registry_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown scorer 'nope'.*maxlogit"):
        get_scorer("nope")
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        get_scorer("msp", temperature=0)
    with pytest.raises(ConfigError, match="takes no parameters"):
        get_scorer("maxlogit", temperature=2.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        get_scorer("msp")(torch.zeros(3, 4, 5))


# -- every scorer, with what it needs: features, a bound network, fits, ensemble members ------------------------


def _smoke_scorers() -> list[str]:
    from anomaly_seg_ros.scoring.registry import _REGISTRY

    # head-specific scorers (void class, IsoMax+) need models trained for them and are tested with those
    return [name for name in available_scorers() if not _REGISTRY[name].requires_head]


@pytest.fixture(scope="module")
def smoke_setup(tmp_path_factory):
    """A small ERFNet, one forward pass with features and inputs, fit batches and a saved ensemble member."""
    from anomaly_seg_ros.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("erfnet", num_classes=19).eval()
    member = save_checkpoint(
        build_model("erfnet", num_classes=19), tmp_path_factory.mktemp("smoke") / "member.safetensors", metadata={}
    )
    g = torch.Generator().manual_seed(0)
    fit_batches = [(torch.rand(1, 3, 16, 32, generator=g), torch.randint(0, 19, (1, 16, 32), generator=g))]
    inputs = torch.rand(2, 3, 16, 32, generator=g)
    with torch.inference_mode():
        output = model.forward_with_features(inputs)
    output.inputs = inputs
    return model, output, fit_batches, str(member)


@pytest.mark.parametrize("name", _smoke_scorers())
def test_every_scorer_smoke_shape_finite_device(smoke_setup, name):
    model, output, fit_batches, member = smoke_setup
    params = {"members": [member]} if name.startswith("ensemble") else {}
    if name == "flowenedet":
        params = {"max_steps": 5, "batch_pixels": 64, "max_pixels": 200}
    scorer = get_scorer(name, **params)
    scorer.bind(model)
    if scorer.requires_fit:
        scorer.fit(model, fit_batches)
    with torch.inference_mode():
        scores = scorer(output)
    assert scores.shape == (2, 16, 32), name
    assert scores.dtype == output.logits.dtype and scores.device == output.logits.device, name
    assert torch.isfinite(scores).all(), name
