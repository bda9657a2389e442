"""Ensemble entropy / mutual information against direct computation; instance-wise aggregation (seed 003 eq. 7)."""

import math

import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.models import build_model, save_checkpoint
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import get_scorer, instance_mean
from anomaly_seg_ros.scoring.ensemble import mutual_information, predictive_entropy


def _direct(member_logits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel with numpy: H[mean p] / log C and (H[mean p] - mean H[p_m]) / log C."""
    m = len(member_logits)
    n, c, h, w = member_logits[0].shape
    entropy, mi = np.empty((n, h, w)), np.empty((n, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                probs = []
                for logits in member_logits:
                    z = logits[i, :, y, x]
                    e = np.exp(z - z.max())
                    probs.append(e / e.sum())
                mean = sum(probs) / m
                h_mean = -(mean * np.log(mean)).sum()
                h_members = np.mean([-(p * np.log(p)).sum() for p in probs])
                entropy[i, y, x] = h_mean / math.log(c)
                mi[i, y, x] = (h_mean - h_members) / math.log(c)
    return entropy, mi


def test_entropy_and_mutual_information_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    members = [torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64) * 2 for _ in range(3)]
    entropy, mi = _direct([t.numpy() for t in members])
    np.testing.assert_allclose(predictive_entropy(members).numpy(), entropy, rtol=1e-10)
    np.testing.assert_allclose(mutual_information(members).numpy(), mi, rtol=1e-9, atol=1e-12)
    # identical members: no disagreement, so MI = 0 and entropy = the single model's entropy
    same = [members[0]] * 3
    np.testing.assert_allclose(mutual_information(same).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(predictive_entropy(same).numpy(), _direct([members[0].numpy()])[0], rtol=1e-10)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    paths, models = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = build_model("erfnet", num_classes=19).eval()
        paths.append(str(save_checkpoint(model, root / f"member{seed}.safetensors", metadata={})))
        models.append(model)
    odd = build_model("erfnet", num_classes=19)
    odd_path = str(save_checkpoint(odd, root / "odd.safetensors", metadata={"mean": [0.5, 0.5, 0.5]}))
    return paths, models, odd_path


@pytest.mark.parametrize("name", ["ensemble_entropy", "ensemble_mi"])
def test_scorer_runs_members_on_the_main_input(members, name):
    paths, member_models, _ = members
    torch.manual_seed(0)
    main = build_model("erfnet", num_classes=19).eval()
    inputs = torch.rand(1, 3, 16, 32)
    with torch.inference_mode():
        logits = main(inputs)
        scorer = get_scorer(name, members=paths)
        scorer.bind(main)
        scores = scorer(SegmentationOutput(logits=logits, inputs=inputs))
        member_logits = [logits] + [model(inputs) for model in member_models]
    entropy, mi = _direct([t.double().numpy() for t in member_logits])
    np.testing.assert_allclose(
        scores.double().numpy(), entropy if name == "ensemble_entropy" else mi, rtol=1e-4, atol=1e-6
    )


def test_members_with_other_normalisation_or_missing_are_refused(members):
    paths, _, odd_path = members
    main = build_model("erfnet", num_classes=19)
    with pytest.raises(ConfigError, match="expects input mean"):
        get_scorer("ensemble_entropy", members=[paths[0], odd_path]).bind(main)
    with pytest.raises(ConfigError, match="non-empty list of checkpoint paths"):
        get_scorer("ensemble_mi")
    with pytest.raises(ConfigError, match="non-empty list"):
        get_scorer("ensemble_mi", members="a.safetensors")
    other = build_model("erfnet", num_classes=20)
    with pytest.raises(ConfigError, match="19 classes, the main model 20"):
        get_scorer("ensemble_mi", members=paths[:1]).bind(other)


def test_instance_mean_on_a_hand_made_map():
    labels = torch.tensor(
        [
            [0, 0, 1, 1],
            [0, 1, 0, 1],
            [2, 2, 0, 1],
        ]
    ).unsqueeze(0)
    scores = torch.tensor(
        [
            [1.0, 2.0, 10.0, 20.0],
            [3.0, 30.0, 6.0, 40.0],
            [7.0, 9.0, 12.0, 50.0],
        ],
        dtype=torch.float64,
    ).unsqueeze(0)
    # 8-connected instances: class 0 {(0,0),(0,1),(1,0)} and {(1,2),(2,2)} touch diagonally only at (0,1)-(1,2):
    # that is 8-adjacent, so they are one instance of mean (1+2+3+6+12)/5 = 4.8.
    # class 1: (0,2),(0,3),(1,1),(1,3),(2,3): (1,1) is diagonal to (0,2) -> one instance, mean 30.
    # class 2: (2,0),(2,1) -> mean 8.
    expected = torch.tensor(
        [
            [4.8, 4.8, 30.0, 30.0],
            [4.8, 30.0, 4.8, 30.0],
            [8.0, 8.0, 4.8, 30.0],
        ],
        dtype=torch.float64,
    ).unsqueeze(0)
    torch.testing.assert_close(instance_mean(scores, labels), expected)


def test_separate_components_of_one_class_keep_separate_means():
    labels = torch.tensor([[0, 1, 0], [0, 1, 0]]).unsqueeze(0)
    scores = torch.tensor([[1.0, 5.0, 3.0], [2.0, 5.0, 7.0]]).unsqueeze(0)
    expected = torch.tensor([[1.5, 5.0, 5.0], [1.5, 5.0, 5.0]]).unsqueeze(0)
    torch.testing.assert_close(instance_mean(scores, labels), expected)


def test_instance_option_wraps_any_scorer():
    logits = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(3))
    scorer = get_scorer("maxentropy", instance=True)
    assert scorer.name == "maxentropy" and scorer.params == {"temperature": 1.0, "instance": True}
    expected = instance_mean(get_scorer("maxentropy")(logits), logits.argmax(dim=1))
    torch.testing.assert_close(scorer(logits), expected)
    with pytest.raises(ConfigError, match="instance must be true or false"):
        get_scorer("msp", instance="yes")
