"""Losses (CE, focal, LogitNorm, IsoMax+), their composition, class weights, void targets and
instance-wise uncertainty weighting, each against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.losses import (
    build_criterion,
    class_histogram,
    enet_class_weights,
    ensemble_entropy,
    instance_uncertainty,
    inverse_frequency_weights,
    iu_pixel_weights,
    void_classifier_weights,
    void_targets,
)
from anomaly_seg_ros.models import build_model
from anomaly_seg_ros.models.heads import IsoMaxPlusHead
from anomaly_seg_ros.models.outputs import SegmentationOutput

C = 4


def batch(seed: int = 0, n: int = 2, h: int = 3, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and targets with a few ignore (255) pixels."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, h, w, generator=gen) * 2.0
    target = torch.randint(0, C, (n, h, w), generator=gen)
    target[0, 0, :2] = 255
    target[-1, -1, -1] = 255
    return logits, target


def loop_loss(logits, target, pixel_fn, class_weights=None, pixel_weights=None):
    """sum_i w_{y_i} omega_i l(i) / sum_i w_{y_i} over non-ignored pixels, by explicit loops."""
    num, den = 0.0, 0.0
    n, c, h, w = logits.shape
    for b in range(n):
        for y in range(h):
            for x in range(w):
                label = int(target[b, y, x])
                if label == 255:
                    continue
                weight = 1.0 if class_weights is None else float(class_weights[label])
                omega = 1.0 if pixel_weights is None else float(pixel_weights[b, y, x])
                z = [float(v) for v in logits[b, :, y, x]]
                num += weight * omega * pixel_fn(z, label)
                den += weight
    return num / den


def nll(z, label):
    m = max(z)
    return -(z[label] - m - math.log(sum(math.exp(v - m) for v in z)))


# ---------------------------------------------------------------- individual terms


def test_cross_entropy_with_class_weights_and_ignore_matches_loops_and_torch():
    logits, target = batch()
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    loss = build_criterion([{"name": "ce"}], num_classes=C, class_weights=weights)(logits, target)
    assert loss.item() == pytest.approx(loop_loss(logits, target, nll, weights), rel=1e-6)
    reference = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_focal_gamma_zero_equals_cross_entropy():
    logits, target = batch(1)
    weights = torch.tensor([1.0, 0.3, 2.0, 1.5])
    ce = build_criterion([{"name": "ce"}], num_classes=C, class_weights=weights)(logits, target)
    focal = build_criterion([{"name": "focal", "gamma": 0}], num_classes=C, class_weights=weights)(logits, target)
    torch.testing.assert_close(focal, ce)


def test_focal_hand_value_at_gamma_two():
    # p = softmax([0, ln 3]) = [1/4, 3/4]; target 1: (1 - 3/4)^2 * -ln(3/4)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    loss = build_criterion([{"name": "focal", "gamma": 2.0}], num_classes=2)(logits, torch.ones(1, 1, 1).long())
    assert loss.item() == pytest.approx(0.0625 * -math.log(0.75), rel=1e-6)
    logits_b, target_b = batch(2)

    def focal(z, label):
        p = math.exp(-nll(z, label))
        return (1 - p) ** 2 * nll(z, label)

    loss_b = build_criterion([{"name": "focal"}], num_classes=C)(logits_b, target_b)
    assert loss_b.item() == pytest.approx(loop_loss(logits_b, target_b, focal), rel=1e-5)


def test_logitnorm_normalises_the_logit_vector_per_pixel():
    # z = (3, 4), ||z|| = 5, tau = 0.5: z / (tau ||z||) = (1.2, 1.6); target 0: ln(1 + e^0.4)
    logits = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    spec = [{"name": "logitnorm", "temperature": 0.5}]
    loss = build_criterion(spec, num_classes=2)(logits, torch.zeros(1, 1, 1).long())
    assert loss.item() == pytest.approx(math.log(1.0 + math.exp(0.4)), rel=1e-6)
    # invariant to the logit magnitude (the point of LogitNorm), unlike CE
    loss_scaled = build_criterion(spec, num_classes=2)(logits * 100.0, torch.zeros(1, 1, 1).long())
    assert loss_scaled.item() == pytest.approx(loss.item(), rel=1e-5)
    logits_b, target_b = batch(3)

    def logitnorm(z, label):
        norm = math.sqrt(sum(v * v for v in z)) + 1e-7
        return nll([v / (0.04 * norm) for v in z], label)

    loss_b = build_criterion([{"name": "logitnorm"}], num_classes=C)(logits_b, target_b)
    assert loss_b.item() == pytest.approx(loop_loss(logits_b, target_b, logitnorm), rel=1e-5)


def test_isomax_loss_is_eq8_on_head_distances():
    torch.manual_seed(4)
    head = IsoMaxPlusHead(num_features=3, num_classes=C)
    with torch.no_grad():
        head.distance_scale.fill_(1.7)
    features = torch.randn(2, 3, 3, 5)
    _, target = batch(4)
    loss = build_criterion([{"name": "isomax", "entropic_scale": 10.0}], num_classes=C)(head(features), target)

    protos = head.prototypes.detach().numpy()
    protos = protos / np.linalg.norm(protos, axis=1, keepdims=True)

    def eq8(b, y, x, label):
        f = features[b, :, y, x].numpy()
        f = f / np.linalg.norm(f)
        d = [1.7 * float(np.linalg.norm(f - p)) for p in protos]
        return nll([-10.0 * v for v in d], label)

    pixels = [(b, y, x) for b in range(2) for y in range(3) for x in range(5) if target[b, y, x] != 255]
    expected = np.mean([eq8(b, y, x, int(target[b, y, x])) for b, y, x in pixels])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert head.prototypes.grad.abs().sum() > 0 and head.distance_scale.grad.abs() > 0


# ---------------------------------------------------------------- composition


def test_criterion_is_the_weighted_sum_of_its_terms():
    logits, target = batch(5)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0])
    parts = [
        {"name": "logitnorm", "weight": 0.7, "temperature": 0.1},
        {"name": "focal", "weight": 1.3, "gamma": 2.0},
        {"name": "ce", "weight": 0.2, "class_weighted": False},
    ]
    total = build_criterion(parts, num_classes=C, class_weights=weights)(logits, target)
    alone = [
        build_criterion([{**p, "weight": 1.0}], num_classes=C, class_weights=weights)(logits, target) for p in parts
    ]
    expected = sum(p["weight"] * a for p, a in zip(parts, alone, strict=True))
    torch.testing.assert_close(total, expected)
    # class_weighted: false really drops the class weights
    torch.testing.assert_close(alone[2], F.cross_entropy(logits, target, ignore_index=255))


def test_seed_table4_combinations_are_expressible():
    model = build_model("erfnet", num_classes=20, head="isomax")
    for specs in (
        [{"name": "logitnorm"}],
        [{"name": "logitnorm"}, {"name": "ce"}],
        [{"name": "logitnorm"}, {"name": "focal", "gamma": 2.0}],
        [{"name": "isomax"}],
        [{"name": "isomax"}, {"name": "ce"}],
        [{"name": "isomax"}, {"name": "focal", "gamma": 2.0}],
    ):
        criterion = build_criterion(specs, num_classes=20)
        assert criterion.names == [s["name"] for s in specs]
        if specs[0]["name"] == "isomax":
            criterion.check_model(model)
            with pytest.raises(ConfigError, match="IsoMax\\+ head"):
                criterion.check_model(build_model("erfnet", num_classes=20))


def test_isomax_plus_cross_is_isomax_at_scale_es_plus_at_scale_one():
    logits = -torch.rand(1, C, 2, 3) * 2.0  # distance logits are <= 0
    target = torch.randint(0, C, (1, 2, 3), generator=torch.Generator().manual_seed(6))
    combined = build_criterion([{"name": "isomax"}, {"name": "ce"}], num_classes=C)(logits, target)
    expected = F.cross_entropy(10.0 * logits, target) + F.cross_entropy(logits, target)
    torch.testing.assert_close(combined, expected)


def test_aux_logits_get_the_same_loss_times_aux_weight():
    logits, target = batch(7)
    aux_full = torch.randn_like(logits)
    aux_low = torch.randn(2, C, 2, 3)  # a lower-resolution auxiliary head is upsampled to the labels
    criterion = build_criterion([{"name": "ce"}, {"name": "focal"}], num_classes=C, aux_weight=0.4)
    total = criterion(SegmentationOutput(logits=logits, aux_logits=(aux_full, aux_low)), target)
    up = F.interpolate(aux_low, size=target.shape[-2:], mode="bilinear", align_corners=False)
    expected = criterion(logits, target) + 0.4 * (criterion(aux_full, target) + criterion(up, target))
    torch.testing.assert_close(total, expected)


def test_pixel_weights_multiply_the_per_pixel_loss_without_renormalising():
    logits, target = batch(8)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    omega = torch.rand(target.shape, generator=torch.Generator().manual_seed(8)) * 3.0
    loss = build_criterion([{"name": "ce"}], num_classes=C, class_weights=weights)(logits, target, pixel_weights=omega)
    assert loss.item() == pytest.approx(loop_loss(logits, target, nll, weights, omega), rel=1e-6)
    # constant weights k scale the loss by k (a Hadamard product, not a weighted mean)
    plain = build_criterion([{"name": "ce"}], num_classes=C)(logits, target)
    scaled = build_criterion([{"name": "ce"}], num_classes=C)(logits, target, pixel_weights=torch.full_like(omega, 4.0))
    torch.testing.assert_close(scaled, 4.0 * plain)


def test_all_ignored_batch_gives_zero_with_a_graph():
    logits = torch.randn(1, C, 2, 2, requires_grad=True)
    loss = build_criterion([{"name": "ce"}, {"name": "logitnorm"}], num_classes=C)(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_criterion_accepts_base_code_label_batches_and_moves_with_to():
    logits, target = batch(9)
    criterion = build_criterion([{"name": "ce"}], num_classes=C, class_weights=torch.ones(C))
    torch.testing.assert_close(criterion(logits, target.unsqueeze(1)), criterion(logits, target))
    assert "class_weights" in dict(criterion.named_buffers())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ([], "non-empty list"),
        ({"name": "ce"}, "non-empty list"),
        ([{"name": "dice"}], "unknown loss name 'dice'; allowed: ce, focal, logitnorm, isomax"),
        ([{"weight": 1.0}], "unknown loss name None"),
        ([{"name": "focal", "gamma": 2, "alpha": 0.25}], r"unknown key\(s\) \['alpha'\]; allowed keys: .*gamma"),
        ([{"name": "ce", "temperature": 0.04}], r"unknown key\(s\) \['temperature'\]"),
        ([{"name": "focal", "gamma": -1}], "'gamma' must be a finite number >= 0"),
        ([{"name": "logitnorm", "temperature": 0}], "'temperature' must be a finite number > 0"),
        ([{"name": "isomax", "entropic_scale": float("nan")}], "'entropic_scale' must be"),
        ([{"name": "ce", "weight": -0.5}], "'weight' must be a finite number >= 0"),
        ([{"name": "ce", "weight": "1"}], "'weight' must be"),
        ([{"name": "ce", "class_weighted": 1}], "'class_weighted' must be true or false"),
        (["ce"], r"loss spec \[0\] must be a mapping"),
    ],
)
def test_bad_specs_raise_config_error_naming_the_key(specs, match):
    with pytest.raises(ConfigError, match=match):
        build_criterion(specs, num_classes=C)


def test_bad_criterion_arguments_and_inputs():
    with pytest.raises(ConfigError, match=r"class_weights must be a tensor of shape \(4,\)"):
        build_criterion([{"name": "ce"}], num_classes=C, class_weights=torch.ones(3))
    with pytest.raises(ConfigError, match="finite and >= 0"):
        build_criterion([{"name": "ce"}], num_classes=C, class_weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="ignore_index 3 is a class index"):
        build_criterion([{"name": "ce"}], num_classes=C, ignore_index=3)
    with pytest.raises(ConfigError, match="aux_weight"):
        build_criterion([{"name": "ce"}], num_classes=C, aux_weight=-1)
    criterion = build_criterion([{"name": "ce"}], num_classes=C)
    logits, target = batch(10)
    bad = target.clone()
    bad[0, 1, 1] = 19
    with pytest.raises(DatasetError, match=r"labels \[19\] are outside 0..3"):
        criterion(logits, bad)
    with pytest.raises(ValueError, match=r"expects logits \(N, 4, H, W\)"):
        criterion(logits[:, :3], target)
    with pytest.raises(ValueError, match="target must be"):
        criterion(logits, target[:, :2])
    with pytest.raises(ValueError, match="pixel_weights must have the target's shape"):
        criterion(logits, target, pixel_weights=torch.ones(2, 3))


# ---------------------------------------------------------------- class weights and void targets

# Two label maps: counts 0: 3, 1: 3, 2: 2, 3: 0 (255 not counted), 8 pixels in all.
MAPS = [np.array([[0, 0, 1], [255, 2, 2]], dtype=np.uint8), torch.tensor([0, 1, 1])]


def test_class_histogram_counts_a_known_label_set():
    assert class_histogram(MAPS, num_classes=4).tolist() == [3, 3, 2, 0]
    with pytest.raises(DatasetError, match=r"label map 0 has values \[2\] outside 0..1"):
        class_histogram(MAPS, num_classes=2)
    with pytest.raises(DatasetError, match="integer trainIds"):
        class_histogram([np.zeros((2, 2), dtype=np.float32)], num_classes=2)


def test_enet_and_inverse_frequency_weights_on_a_known_histogram():
    hist = class_histogram(MAPS, num_classes=4)
    p = [3 / 8, 3 / 8, 2 / 8, 0.0]
    np.testing.assert_allclose(enet_class_weights(hist).numpy(), [1 / math.log(1.02 + q) for q in p], rtol=1e-6)
    np.testing.assert_allclose(enet_class_weights(hist, c=1.5).numpy(), [1 / math.log(1.5 + q) for q in p], rtol=1e-6)
    np.testing.assert_allclose(inverse_frequency_weights(hist).numpy(), [8 / 3, 8 / 3, 4.0, 0.0], rtol=1e-6)
    with pytest.raises(ConfigError, match="c must be a finite number > 1"):
        enet_class_weights(hist, c=1.0)
    with pytest.raises(DatasetError, match="empty"):
        enet_class_weights(torch.zeros(4))


def test_void_targets_map_ignore_to_class_19():
    labels = np.array([[0, 255, 18], [19, 255, 5]], dtype=np.uint8)
    mapped = void_targets(labels)
    assert isinstance(mapped, np.ndarray) and mapped.tolist() == [[0, 19, 18], [19, 19, 5]]
    assert labels[0, 1] == 255  # a copy, the input is untouched
    mapped_t = void_targets(torch.from_numpy(labels).long())
    assert isinstance(mapped_t, torch.Tensor) and mapped_t.tolist() == [[0, 19, 18], [19, 19, 5]]
    with pytest.raises(DatasetError, match=r"values \[33\].*labelId"):
        void_targets(np.array([0, 33]))


def test_void_classifier_weights_follow_the_seed():
    hist = torch.arange(1, 21, dtype=torch.int64)  # class k has k+1 pixels; void (19) has 20
    weights = void_classifier_weights(hist)
    labelled = hist[:19].double() / hist[:19].sum()
    np.testing.assert_allclose(weights[:19].numpy(), (1 / torch.log(1.02 + labelled)).numpy(), rtol=1e-6)
    assert weights[19].item() == 1.0  # the seed: void weight 1 instead of 0
    all20 = hist.double() / hist.sum()
    np.testing.assert_allclose(
        void_classifier_weights(hist, void_weight=None).numpy(), (1 / torch.log(1.02 + all20)).numpy(), rtol=1e-6
    )
    with pytest.raises(ConfigError, match="histogram of 20 classes"):
        void_classifier_weights(hist[:19])
    # the whole void recipe: void targets, histogram, weights, a 20-class criterion that trains void
    labels = torch.tensor([[[0, 255], [1, 255]]])
    targets = void_targets(labels)
    w = void_classifier_weights(class_histogram([targets], num_classes=20))
    logits = torch.randn(1, 20, 2, 2)
    loss = build_criterion([{"name": "ce"}], num_classes=20, class_weights=w)(logits, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets, weight=w))


# ---------------------------------------------------------------- instance-wise uncertainty


def test_ensemble_entropy_is_the_entropy_of_the_mean_softmax():
    gen = torch.Generator().manual_seed(11)
    members = [torch.randn(2, 3, 2, 2, generator=gen) for _ in range(3)]
    probs = [torch.softmax(m, dim=1).numpy() for m in members]
    mean = np.mean(probs, axis=0)
    expected = -(mean * np.log(mean)).sum(axis=1)
    np.testing.assert_allclose(ensemble_entropy(members).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(
        ensemble_entropy([torch.from_numpy(p) for p in probs], probabilities=True).numpy(), expected, rtol=1e-5
    )
    np.testing.assert_allclose(ensemble_entropy(members, normalize=True).numpy(), expected / math.log(3), rtol=1e-5)
    # a confident one-hot member and a uniform one: entropy of (1/2 + 1/6, 1/6, 1/6)
    one_hot = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    uniform = torch.full((1, 3, 1, 1), 1 / 3)
    q = [2 / 3, 1 / 6, 1 / 6]
    value = ensemble_entropy([one_hot, uniform], probabilities=True).item()
    assert value == pytest.approx(-sum(v * math.log(v) for v in q), rel=1e-6)
    with pytest.raises(ValueError, match="member 1"):
        ensemble_entropy([members[0], members[1][:, :2]])


# Class 1 has a 2x2 block A, a pixel B touching A only diagonally, and a separate vertical pair C.
IU_LABELS = np.array(
    [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 1],
        [0, 0, 0, 0, 0, 1],
        [255, 0, 0, 0, 0, 0],
    ]
)
A = [(0, 0), (0, 1), (1, 0), (1, 1)]
B = [(2, 2)]
CC = [(2, 5), (3, 5)]


def test_instance_uncertainty_on_a_hand_made_mask():
    pu = np.arange(30, dtype=np.float64).reshape(5, 6) / 10.0
    labels = torch.from_numpy(np.stack([IU_LABELS, np.full((5, 6), 2)]))
    entropy = torch.from_numpy(np.stack([pu, pu[::-1].copy()])).float()

    def mean(pixels, img=pu):
        return float(np.mean([img[p] for p in pixels]))

    zeros = [(y, x) for y in range(5) for x in range(6) if IU_LABELS[y, x] == 0]
    expected8 = np.zeros((5, 6))
    for pixels in (A + B, CC, zeros):  # 8-connected: B joins A across the diagonal
        for p in pixels:
            expected8[p] = mean(pixels)
    iu = instance_uncertainty(entropy, labels)
    np.testing.assert_allclose(iu[0].numpy(), expected8, rtol=1e-6)
    assert iu[0, 4, 0].item() == 0.0  # ignore pixel: no instance
    np.testing.assert_allclose(iu[1].numpy(), np.full((5, 6), pu.mean()), rtol=1e-6)  # one instance

    expected4 = expected8.copy()
    for pixels in (A, B):  # 4-connected: A and B are separate instances
        for p in pixels:
            expected4[p] = mean(pixels)
    np.testing.assert_allclose(instance_uncertainty(entropy, labels, connectivity=4)[0].numpy(), expected4, rtol=1e-6)


def test_iu_weighted_cross_entropy_is_seed003_eq8():
    gen = torch.Generator().manual_seed(12)
    labels = torch.from_numpy(IU_LABELS).unsqueeze(0)
    members = [torch.randn(1, 3, 5, 6, generator=gen) for _ in range(3)]
    iu = instance_uncertainty(ensemble_entropy(members), labels)
    weights = iu_pixel_weights(iu)
    torch.testing.assert_close(weights, (1 + iu) * (1 + iu))
    logits = torch.randn(1, 3, 5, 6, generator=gen)
    loss = build_criterion([{"name": "ce"}], num_classes=3)(logits, labels, pixel_weights=weights)
    # eq. 8: mean over labelled pixels of CE ⊙ (1 + IU)^2
    ce = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    valid = labels != 255
    assert loss.item() == pytest.approx((ce * weights)[valid].mean().item(), rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_criterion_and_isomax_head_on_cuda_match_cpu():
    torch.manual_seed(13)
    head = IsoMaxPlusHead(3, C)
    features = torch.randn(2, 3, 3, 5)
    _, target = batch(13)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    criterion = build_criterion([{"name": "isomax"}, {"name": "focal"}], num_classes=C, class_weights=weights)
    cpu = criterion(head(features), target)
    # the criterion is left on the CPU on purpose: its class weights follow the logits' device
    gpu = criterion(head.cuda()(features.cuda()), target.cuda())
    assert gpu.device.type == "cuda"
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-5)
