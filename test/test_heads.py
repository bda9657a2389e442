"""IsoMax+ head, head-aware model building and checkpoints, and the head scorers (void, isomax)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.losses import build_criterion
from anomaly_seg_ros.models import build_model, load_model, load_weights, read_metadata, save_checkpoint
from anomaly_seg_ros.models.heads import IsoMaxPlusHead, IsoMaxPlusNet, attach_head, head_kind
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import get_scorer, logit_scorers

H, W = 16, 32  # ERFNet needs multiples of 8; small keeps the CPU tests fast


def numpy_isomax_logits(features: np.ndarray, prototypes: np.ndarray, scale: float) -> np.ndarray:
    """-|d_s| * ||f/|f| - p/|p||| with explicit loops over pixels and classes."""
    n, f, h, w = features.shape
    c = prototypes.shape[0]
    out = np.zeros((n, c, h, w))
    for b in range(n):
        for y in range(h):
            for x in range(w):
                vec = features[b, :, y, x]
                vec = vec / np.linalg.norm(vec)
                for j in range(c):
                    proto = prototypes[j] / np.linalg.norm(prototypes[j])
                    out[b, j, y, x] = -abs(scale) * math.sqrt(sum((vec[k] - proto[k]) ** 2 for k in range(f)))
    return out


# ---------------------------------------------------------------- IsoMax+ head


def test_isomax_head_matches_explicit_distances():
    torch.manual_seed(0)
    head = IsoMaxPlusHead(num_features=5, num_classes=4)
    with torch.no_grad():
        head.distance_scale.fill_(-2.5)  # |d_s| is used, so a negative scale must act as 2.5
    features = torch.randn(2, 5, 3, 4)
    expected = numpy_isomax_logits(features.numpy(), head.prototypes.detach().numpy(), 2.5)
    np.testing.assert_allclose(head(features).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_isomax_head_is_scale_invariant_in_features_and_prototypes():
    """Only directions matter: scaling features or prototypes leaves the logits unchanged."""
    torch.manual_seed(1)
    head = IsoMaxPlusHead(3, 2)
    features = torch.randn(1, 3, 2, 2)
    before = head(features)
    with torch.no_grad():
        head.prototypes.mul_(7.0)
    np.testing.assert_allclose(head(features * 0.01).detach().numpy(), before.detach().numpy(), atol=1e-5)


def test_isomax_head_distance_of_a_prototype_direction_is_zero():
    head = IsoMaxPlusHead(3, 2)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    features = torch.tensor([4.0, 0.0, 0.0]).view(1, 3, 1, 1)
    # unit vectors (1,0,0) and (0,1,0) are sqrt(2) apart
    np.testing.assert_allclose(head(features).detach().view(-1).numpy(), [0.0, -math.sqrt(2.0)], atol=1e-5)


def test_isomax_head_gradients_reach_prototypes_and_distance_scale():
    torch.manual_seed(2)
    head = IsoMaxPlusHead(4, 3).double()
    features = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    head(features).sum().backward()
    assert head.prototypes.grad is not None and head.prototypes.grad.abs().sum() > 0
    assert head.distance_scale.grad is not None
    # d(sum z)/d(d_s) = -sign(d_s) * sum of distances, exactly
    np.testing.assert_allclose(head.distance_scale.grad.item(), -head.distances(features).sum().item(), rtol=1e-10)

    protos = head.prototypes.detach().clone().requires_grad_(True)
    scale = torch.tensor([1.3], dtype=torch.float64, requires_grad=True)

    def pure(feat, p, s):
        f_hat = feat / feat.norm(dim=1, keepdim=True)
        p_hat = p / p.norm(dim=1, keepdim=True)
        diff = f_hat.unsqueeze(1) - p_hat.view(1, p.shape[0], p.shape[1], 1, 1)
        return -s.abs() * diff.pow(2).sum(dim=2).sqrt()

    # The head's formula (norm identity, one einsum) equals the direct difference formula; the
    # direct formula's gradients pass gradcheck (finite differences), and the head's equal them.
    head.prototypes.data.copy_(protos.detach())
    head.distance_scale.data.copy_(scale.detach())
    torch.testing.assert_close(head(features), pure(features, protos, scale))
    assert torch.autograd.gradcheck(pure, (features, protos, scale))
    head.zero_grad()
    grads_head = torch.autograd.grad(head(features).pow(2).sum(), [head.prototypes, head.distance_scale])
    grads_pure = torch.autograd.grad(pure(features, protos, scale).pow(2).sum(), [protos, scale])
    for got, want in zip(grads_head, grads_pure, strict=True):
        torch.testing.assert_close(got, want)


def test_isomax_head_rejects_bad_shapes_and_sizes():
    with pytest.raises(ConfigError, match="num_features"):
        IsoMaxPlusHead(0, 3)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        IsoMaxPlusHead(4, 3)(torch.zeros(1, 5, 2, 2))


# ---------------------------------------------------------------- attach_head / build_model


def test_build_model_isomax_keeps_the_network_contract():
    torch.manual_seed(3)
    model = build_model("erfnet", num_classes=20, head="isomax").eval()
    assert isinstance(model, IsoMaxPlusNet) and head_kind(model) == "isomax"
    assert model.model_name == "erfnet" and model.num_classes == 20 and model.head_kind == "isomax"
    assert isinstance(model.last_layer, IsoMaxPlusHead)
    x = torch.rand(2, 3, H, W)
    with torch.no_grad():
        out = model.forward_with_features(x)
        logits = model(x)
        embedding = model.backbone(x)
    assert isinstance(out, SegmentationOutput)
    assert out.logits.shape == (2, 20, H, W) and out.features.shape == (2, 20, H, W)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.features, embedding)  # features = the embedding (network output)
    torch.testing.assert_close(out.head_logits, model.last_layer(out.features))
    assert bool((logits <= 0).all())  # distance logits


def test_build_model_linear_is_the_plain_network_and_unknown_head_fails():
    model = build_model("erfnet", num_classes=19)
    assert type(model).__name__ == "ERFNet" and head_kind(model) == "linear" and model.head_kind == "linear"
    with pytest.raises(ConfigError, match="unknown head 'cosine'.*linear, isomax"):
        build_model("erfnet", num_classes=19, head="cosine")
    with pytest.raises(ConfigError, match="unknown head"):
        attach_head(model, "cosine")
    assert attach_head(model, "linear") is model
    with pytest.raises(ConfigError, match="already has an IsoMax"):
        attach_head(attach_head(model, "isomax"), "isomax")


def test_isomax_model_trains_prototypes_and_backbone_together():
    torch.manual_seed(4)
    model = build_model("erfnet", num_classes=19, head="isomax")
    criterion = build_criterion([{"name": "isomax"}, {"name": "ce"}], num_classes=19)
    criterion.check_model(model)
    out = model.forward_with_features(torch.rand(1, 3, H, W))
    criterion(out, torch.zeros(1, H, W, dtype=torch.long)).backward()
    assert model.head.prototypes.grad.abs().sum() > 0
    assert model.head.distance_scale.grad.abs().sum() > 0
    assert model.backbone.decoder.output_conv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- checkpoints


def test_isomax_checkpoint_round_trip(tmp_path):
    torch.manual_seed(5)
    model = build_model("erfnet", num_classes=20, head="isomax").eval()
    path = save_checkpoint(model, tmp_path / "iso.safetensors", metadata={"input_size": [H, W]})
    assert read_metadata(path)["head"] == "isomax"
    loaded, meta = load_model(path)
    assert isinstance(loaded, IsoMaxPlusNet) and meta["head"] == "isomax"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    assert "head.prototypes" in loaded.state_dict() and "head.distance_scale" in loaded.state_dict()
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_linear_checkpoint_records_its_head_and_refuses_the_other_head(tmp_path):
    linear = build_model("erfnet", num_classes=20)
    path = save_checkpoint(linear, tmp_path / "lin.safetensors", metadata={})
    assert read_metadata(path)["head"] == "linear"
    loaded, _ = load_model(path)
    assert head_kind(loaded) == "linear"
    with pytest.raises(CheckpointError, match="'linear' head, not 'isomax'"):
        load_weights(build_model("erfnet", num_classes=20, head="isomax"), path)
    with pytest.raises(ConfigError, match=r"metadata\['head'\]"):
        save_checkpoint(linear, tmp_path / "bad.safetensors", metadata={"head": "isomax"})


def test_plain_backbone_weights_load_into_an_isomax_model(tmp_path):
    """The seed fine-tunes a pretrained ERFNet: its weights go into ``model.backbone``, strictly."""
    torch.manual_seed(6)
    linear = build_model("erfnet", num_classes=20)
    path = save_checkpoint(linear, tmp_path / "pretrained.safetensors", metadata={})
    iso = build_model("erfnet", num_classes=20, head="isomax")
    load_weights(iso.backbone, path)
    for key, value in linear.state_dict().items():
        torch.testing.assert_close(iso.backbone.state_dict()[key], value, rtol=0, atol=0)


# ---------------------------------------------------------------- scorers


def test_void_scorer_hand_case():
    logits = torch.zeros(1, 20, 1, 2)
    logits[0, 19, 0, 0] = math.log(19.0)  # void: 19/(19+19) = 0.5
    logits[0, 3, 0, 1] = 5.0  # void: 1/(e^5 + 19)
    scores = get_scorer("void")(logits)
    np.testing.assert_allclose(scores.view(-1).numpy(), [0.5, 1.0 / (math.exp(5.0) + 19.0)], rtol=1e-6)


def test_void_scorer_binds_only_20_class_models():
    scorer = get_scorer("void")
    scorer.bind(build_model("erfnet", num_classes=20))
    with pytest.raises(ConfigError, match="20 classes.*num_classes=19"):
        scorer.bind(build_model("erfnet", num_classes=19))
    with pytest.raises(ConfigError, match="got 19 classes"):
        scorer(torch.zeros(1, 19, 2, 2))


def test_isomax_entropic_and_mds_scores_match_explicit_computation():
    torch.manual_seed(7)
    head = IsoMaxPlusHead(6, 4)
    features = torch.randn(2, 6, 3, 3)
    logits = head(features).detach()
    z = numpy_isomax_logits(features.numpy(), head.prototypes.detach().numpy(), 1.0)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # no entropic scale at inference
    entropy = -(probs * np.log(probs)).sum(axis=1) / math.log(4)
    np.testing.assert_allclose(get_scorer("isomax")(logits).numpy(), entropy, rtol=1e-5, atol=1e-6)
    min_distance = -z.max(axis=1)  # |d_s| = 1
    np.testing.assert_allclose(get_scorer("isomax", kind="mds")(logits).numpy(), min_distance, rtol=1e-5, atol=1e-6)


def test_isomax_scorer_ranks_a_pixel_between_prototypes_above_one_on_a_prototype():
    head = IsoMaxPlusHead(2, 2)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.distance_scale.fill_(5.0)
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)  # on prototype 0 | halfway
    scores = get_scorer("isomax")(head(features).detach()).view(-1)
    assert scores[1].item() == pytest.approx(1.0, abs=1e-6)  # equidistant: uniform softmax, max entropy
    assert scores[0] < scores[1]


def test_isomax_scorer_binds_only_isomax_models_and_checks_kind():
    scorer = get_scorer("isomax")
    scorer.bind(build_model("erfnet", num_classes=19, head="isomax"))
    with pytest.raises(ConfigError, match="IsoMax\\+ head.*'linear'"):
        scorer.bind(build_model("erfnet", num_classes=19))
    with pytest.raises(ConfigError, match="kind must be one of entropic, mds"):
        get_scorer("isomax", kind="maxlogit")
    # neither is offered as a generic logit scorer (demo, evaluation over any model)
    assert "isomax" not in logit_scorers() and "void" not in logit_scorers() and "msp" in logit_scorers()
