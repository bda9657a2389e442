"""ENet and BiSeNet V1 (ResNet-18) beside ERFNet: architecture, output contract, aux heads, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.models import (
    ResNet18,
    build_model,
    load_imagenet_weights,
    load_model,
    load_weights,
    model_defaults,
    read_metadata,
    save_checkpoint,
)
from anomaly_seg_ros.models.outputs import SegmentationOutput

H, W = 64, 96  # divisible by 32 (BiSeNet) and 8 (ENet), small enough for CPU tests
NEW_MODELS = ("enet", "bisenet")
AUX_HEADS = ("conv_out16", "conv_out32")
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------- helpers


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomised(name: str, num_classes: int = 20, seed: int = 0) -> nn.Module:
    """An eval-mode model with non-trivial BatchNorm statistics and PReLU slopes, so loads are visible."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(3)
        elif isinstance(module, nn.PReLU):
            module.weight.data.uniform_(0.1, 0.4)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: randomised(name, seed=i) for i, name in enumerate(NEW_MODELS)}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(7)
    return torch.rand(2, 3, H, W)


def conv(cin: int, cout: int, kh: int, kw: int, bias: bool = False) -> int:
    return cin * cout * kh * kw + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # affine weight + bias


# ---------------------------------------------------------------- parameter counts


def enet_param_count(num_classes: int) -> int:
    """ENet (davidtvs/PyTorch-ENet) from the architecture: bias-free convs, one PReLU slope per
    encoder activation module, ReLU (no parameters) in the decoder. No auxiliary heads exist."""

    def down(cin: int, cout: int) -> int:  # 2x2/s2 project, 3x3, 1x1 expand, each BN+PReLU, out PReLU
        i = cin // 4
        return conv(cin, i, 2, 2) + bn(i) + 1 + conv(i, i, 3, 3) + bn(i) + 1 + conv(i, cout, 1, 1) + bn(cout) + 1 + 1

    def regular(c: int, prelu: int, asymmetric: bool = False) -> int:
        i = c // 4
        middle = 2 * (conv(i, i, 5, 1) + bn(i) + prelu) if asymmetric else conv(i, i, 3, 3) + bn(i) + prelu
        return conv(c, i, 1, 1) + bn(i) + prelu + middle + conv(i, c, 1, 1) + bn(c) + prelu + prelu

    def up(cin: int, cout: int) -> int:  # main 1x1+BN; ext 1x1+BN, 2x2 tconv+BN, 1x1+BN
        i = cin // 4
        return (
            conv(cin, cout, 1, 1)
            + bn(cout)
            + conv(cin, i, 1, 1)
            + bn(i)
            + conv(i, i, 2, 2)
            + bn(i)
            + conv(i, cout, 1, 1)
            + bn(cout)
        )

    stage23 = 6 * regular(128, 1) + 2 * regular(128, 1, asymmetric=True)  # 6 * 17_796 + 2 * 18_885
    return (
        conv(3, 13, 3, 3)
        + bn(16)
        + 1  # initial block: 351 + 32 + 1 = 384
        + down(16, 64)  # 804
        + 4 * regular(64, 1)  # 4 * 4_548
        + down(64, 128)  # 8_772
        + 2 * stage23  # 2 * 144_546
        + up(128, 64)  # 18_816
        + 2 * regular(64, 0)  # 2 * 4_544
        + up(64, 16)  # 3_456
        + regular(16, 0)  # 320
        + conv(16, num_classes, 3, 3)  # transposed_conv, no bias: 144 * C
    )  # = 348_924 + 144 * C


def resnet18_trunk_count() -> int:
    """torchvision resnet18 without its classifier: 11_689_512 - fc (512 * 1000 + 1000) = 11_176_512."""

    def block(cin: int, cout: int, stride: int) -> int:
        shortcut = conv(cin, cout, 1, 1) + bn(cout) if stride != 1 or cin != cout else 0
        return conv(cin, cout, 3, 3) + bn(cout) + conv(cout, cout, 3, 3) + bn(cout) + shortcut

    stages = sum(
        block(cin, cout, s) + block(cout, cout, 1)
        for cin, cout, s in ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2))
    )
    return conv(3, 64, 7, 7) + bn(64) + stages


def bisenet_param_count(num_classes: int, with_aux: bool = True) -> int:
    """BiSeNet V1 R18 (CoinCheung/BiSeNet) from the architecture, auxiliary heads optional."""

    def cbr(cin: int, cout: int, k: int) -> int:  # ConvBNReLU, conv without bias
        return conv(cin, cout, k, k) + bn(cout)

    def arm(cin: int, cout: int) -> int:
        return cbr(cin, cout, 3) + conv(cout, cout, 1, 1) + bn(cout)

    def head(cin: int, mid: int) -> int:  # BiSeNetOutput: 3x3 cbr, 1x1 conv with bias
        return cbr(cin, mid, 3) + conv(mid, num_classes, 1, 1, bias=True)

    context = resnet18_trunk_count() + arm(256, 128) + arm(512, 128) + 2 * cbr(128, 128, 3) + cbr(512, 128, 1)
    spatial = cbr(3, 64, 7) + 2 * cbr(64, 64, 3) + cbr(64, 128, 1)  # 91_968
    fusion = cbr(256, 256, 1) + conv(256, 256, 1, 1) + bn(256)  # 132_096
    aux = 2 * head(128, 64) if with_aux else 0  # 2 * (73_856 + 65 * C)
    return context + spatial + fusion + head(256, 256) + aux  # with aux: 13_418_368 + 387 * C


def test_resnet18_trunk_count() -> None:
    assert resnet18_trunk_count() == 11_689_512 - (512 * 1000 + 1000) == 11_176_512
    assert n_params(ResNet18()) == 11_176_512


@pytest.mark.parametrize("num_classes", [20, 19])
def test_enet_parameter_count(num_classes: int) -> None:
    count = n_params(build_model("enet", num_classes=num_classes))
    assert count == enet_param_count(num_classes) == {20: 351_804, 19: 351_660}[num_classes]
    # The paper (Table 3 of arXiv:1606.02147) reports 0.37 M; this port (single-slope PReLU,
    # bias-free convolutions) has 0.35 M, within 5 % of it.
    assert round(count / 1e6, 2) == 0.35 and abs(count - 0.37e6) / 0.37e6 < 0.05


@pytest.mark.parametrize("num_classes", [20, 19])
def test_bisenet_parameter_count(num_classes: int) -> None:
    model = build_model("bisenet", num_classes=num_classes)
    count = n_params(model)
    aux = sum(p.numel() for name, p in model.named_parameters() if name.startswith(AUX_HEADS))
    assert count == bisenet_param_count(num_classes) == {20: 13_426_108, 19: 13_425_721}[num_classes]
    assert (
        count - aux == bisenet_param_count(num_classes, with_aux=False) == {20: 13_275_796, 19: 13_275_539}[num_classes]
    )
    assert round(count / 1e6, 1) == 13.4  # with the training-only auxiliary heads
    assert round((count - aux) / 1e6, 1) == 13.3  # the inference network


def test_published_sizes_of_the_three_networks() -> None:
    sizes = {name: n_params(build_model(name)) / 1e6 for name in ("erfnet", "enet", "bisenet")}
    assert round(sizes["erfnet"], 2) == 2.07
    assert round(sizes["enet"], 2) == 0.35
    assert round(sizes["bisenet"]) == 13


# ---------------------------------------------------------------- official key names


def enet_official_keys() -> list[str]:
    """State_dict keys of davidtvs/PyTorch-ENet's ENet (encoder PReLU, decoder ReLU), written out."""
    wb = ["weight"]
    norm = [f"{p}" for p in BN_KEYS]

    def seq(prefix: str, convs: int, prelu: bool) -> list[str]:  # (conv, BN, act) * convs
        keys = []
        for j in range(convs):
            keys += [f"{prefix}.{3 * j}.weight"] + [f"{prefix}.{3 * j + 1}.{p}" for p in norm]
            keys += [f"{prefix}.{3 * j + 2}.weight"] if prelu else []
        return keys

    def regular(name: str, prelu: bool, asymmetric: bool = False) -> list[str]:
        keys = seq(f"{name}.ext_conv1", 1, prelu) + seq(f"{name}.ext_conv2", 2 if asymmetric else 1, prelu)
        return keys + seq(f"{name}.ext_conv3", 1, prelu) + ([f"{name}.out_activation.weight"] if prelu else [])

    def down(name: str) -> list[str]:
        return sum((seq(f"{name}.ext_conv{j}", 1, True) for j in (1, 2, 3)), []) + [f"{name}.out_activation.weight"]

    def up(name: str) -> list[str]:
        keys = [f"{name}.main_conv1.0.weight"] + [f"{name}.main_conv1.1.{p}" for p in norm]
        keys += [f"{name}.ext_conv1.0.weight"] + [f"{name}.ext_conv1.1.{p}" for p in norm]
        keys += [f"{name}.ext_tconv1.weight"] + [f"{name}.ext_tconv1_bnorm.{p}" for p in norm]
        return keys + [f"{name}.ext_conv2.0.weight"] + [f"{name}.ext_conv2.1.{p}" for p in norm]

    keys = ["initial_block.main_branch.weight"] + [f"initial_block.batch_norm.{p}" for p in norm]
    keys += ["initial_block.out_activation.weight"] + down("downsample1_0")
    keys += sum((regular(f"regular1_{i}", True) for i in range(1, 5)), []) + down("downsample2_0")
    pattern = ["regular", "dilated", "asymmetric", "dilated", "regular", "dilated", "asymmetric", "dilated"]
    for stage, first in ((2, 1), (3, 0)):
        for i, kind in enumerate(pattern):
            keys += regular(f"{kind}{stage}_{first + i}", True, asymmetric=kind == "asymmetric")
    keys += up("upsample4_0") + regular("regular4_1", False) + regular("regular4_2", False)
    keys += up("upsample5_0") + regular("regular5_1", False)
    return keys + [f"transposed_conv.{p}" for p in wb]


def torchvision_resnet18_keys() -> list[str]:
    """torchvision resnet18 state_dict keys without ``fc.*``."""
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in BN_KEYS]
    for layer in range(1, 5):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            for j in (1, 2):
                keys += [f"{prefix}.conv{j}.weight"] + [f"{prefix}.bn{j}.{p}" for p in BN_KEYS]
            if layer > 1 and block == 0:
                keys += [f"{prefix}.downsample.0.weight"] + [f"{prefix}.downsample.1.{p}" for p in BN_KEYS]
    return keys


def bisenet_official_keys() -> list[str]:
    """State_dict keys of CoinCheung/BiSeNet's BiSeNetV1 trained with aux_mode='train', written out."""

    def cbr(prefix: str) -> list[str]:
        return [f"{prefix}.conv.weight"] + [f"{prefix}.bn.{p}" for p in BN_KEYS]

    def arm(prefix: str) -> list[str]:
        return cbr(f"{prefix}.conv") + [f"{prefix}.conv_atten.weight"] + [f"{prefix}.bn_atten.{p}" for p in BN_KEYS]

    def head(prefix: str) -> list[str]:
        return cbr(f"{prefix}.conv") + [f"{prefix}.conv_out.weight", f"{prefix}.conv_out.bias"]

    keys = [f"cp.resnet.{k}" for k in torchvision_resnet18_keys()]
    keys += arm("cp.arm16") + arm("cp.arm32") + cbr("cp.conv_head32") + cbr("cp.conv_head16") + cbr("cp.conv_avg")
    keys += cbr("sp.conv1") + cbr("sp.conv2") + cbr("sp.conv3") + cbr("sp.conv_out")
    keys += cbr("ffm.convblk") + ["ffm.conv.weight"] + [f"ffm.bn.{p}" for p in BN_KEYS]
    return keys + head("conv_out") + head("conv_out16") + head("conv_out32")


def test_state_dict_keys_are_the_reference_ones() -> None:
    assert list(ResNet18().state_dict()) == torchvision_resnet18_keys()
    assert list(build_model("enet").state_dict()) == enet_official_keys()
    assert list(build_model("bisenet").state_dict()) == bisenet_official_keys()


def test_enet_structure_follows_the_paper() -> None:
    """Table 1 of the ENet paper: dilations 2/4/8/16, 5x5 asymmetric, dropout 0.01 then 0.1."""
    model = build_model("enet")
    blocks = dict(model.named_children())
    stage2 = [n for n in blocks if n.endswith(tuple(f"2_{i}" for i in range(1, 9)))]
    dilations = [blocks[n].ext_conv2[0].dilation[0] for n in stage2]
    assert dilations == [1, 2, 1, 4, 1, 8, 1, 16]
    assert blocks["asymmetric3_2"].ext_conv2[0].kernel_size == (5, 1)
    assert blocks["asymmetric3_2"].ext_conv2[3].kernel_size == (1, 5)
    assert blocks["regular1_3"].ext_regul.p == 0.01 and blocks["dilated3_7"].ext_regul.p == 0.1
    assert isinstance(blocks["regular3_4"].out_activation, nn.PReLU)
    assert isinstance(blocks["regular4_1"].out_activation, nn.ReLU)
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize(
    ("name", "size"), [("enet", (40, 56)), ("enet", (8, 24)), ("bisenet", (96, 160)), ("bisenet", (32, 32))]
)
def test_output_shape_for_valid_sizes(name: str, size: tuple[int, int]) -> None:
    """Sizes that are multiples of the stride but not powers of two (5x7 at 1/8, 3x5 at 1/32), and the smallest."""
    model = build_model(name, num_classes=19).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, *size)).shape == (2, 19, *size)


@pytest.mark.parametrize(("name", "size", "divisor"), [("enet", (60, 128), 8), ("bisenet", (64, 80), 32)])
def test_invalid_size_names_the_divisibility(name: str, size: tuple[int, int], divisor: int) -> None:
    model = build_model(name).eval()
    message = f"input height and width must be divisible by {divisor}, got {size[0]}x{size[1]}"
    for call in (model, model.forward_with_features):
        with pytest.raises(ValueError, match=message):
            call(torch.zeros(1, 3, *size))


# ---------------------------------------------------------------- the output contract


@pytest.mark.parametrize("name", NEW_MODELS)
def test_forward_with_features_is_consistent(name: str, models, image) -> None:
    model = models[name]
    with torch.no_grad():
        output = model.forward_with_features(image)
        logits = model(image)
    assert isinstance(output, SegmentationOutput) and output.aux_logits == ()
    assert torch.equal(output.logits, logits) and logits.shape == (2, 20, H, W)
    with torch.no_grad():
        assert torch.equal(model.last_layer(output.features), output.head_logits)
    if name == "enet":
        assert isinstance(model.last_layer, nn.ConvTranspose2d)
        assert output.features.shape == (2, 16, H // 2, W // 2)
        assert output.head_logits is output.logits  # the last layer works at input resolution
    else:
        assert isinstance(model.last_layer, nn.Conv2d) and model.last_layer.kernel_size == (1, 1)
        assert output.features.shape == (2, 256, H // 8, W // 8)
        assert output.head_logits.shape == (2, 20, H // 8, W // 8)
        upsampled = F.interpolate(output.head_logits, size=(H, W), mode="bilinear", align_corners=False)
        torch.testing.assert_close(output.logits, upsampled, rtol=0, atol=1e-5)


def test_bisenet_features_by_hand(models, image) -> None:
    """Independent path through the submodules: context path, spatial path, fusion, head conv."""
    model = models["bisenet"]
    with torch.no_grad():
        cp8, _ = model.cp(image)
        manual = model.conv_out.conv(model.ffm(model.sp(image), cp8))
        assert torch.equal(model.forward_with_features(image).features, manual)


def test_enet_matches_reference_size_plumbing(models, image) -> None:
    """The reference calls its final layer with output_size=input size and pads the pooled
    shortcut with torch.zeros; our output_padding=1 and F.pad must give the same tensors."""
    model = models["enet"]
    with torch.no_grad():
        features = model.forward_with_features(image).features
        reference = nn.ConvTranspose2d(16, 20, 3, stride=2, padding=1, bias=False)
        reference.weight.copy_(model.transposed_conv.weight)
        assert torch.equal(model.last_layer(features), reference(features, output_size=[H, W]))

        block, x = model.downsample2_0, torch.rand(2, 64, 16, 24)
        pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        ext = block.ext_conv3(block.ext_conv2(block.ext_conv1(x)))
        padded = torch.cat((pooled, torch.zeros(2, 64, 8, 12)), 1)
        out, out_indices = block(x)
        assert torch.equal(out, block.out_activation(padded + ext)) and torch.equal(out_indices, indices)


# ---------------------------------------------------------------- BiSeNet auxiliary heads


def _count_calls(model: nn.Module) -> dict[str, int]:
    calls = dict.fromkeys(AUX_HEADS, 0)
    for head in AUX_HEADS:
        getattr(model, head).register_forward_hook(lambda *_, head=head: calls.__setitem__(head, calls[head] + 1))
    return calls


def test_bisenet_aux_heads_train_only(image) -> None:
    torch.manual_seed(3)
    model = build_model("bisenet", num_classes=19)
    calls = _count_calls(model)

    model.train()
    output = model.forward_with_features(image)
    assert calls == {"conv_out16": 1, "conv_out32": 1}
    assert [a.shape for a in output.aux_logits] == [(2, 19, H, W)] * 2
    # Independent: each aux head on its context feature, bilinearly upsampled x8 / x16 (align_corners=False).
    with torch.no_grad():
        model.eval()  # same BN statistics path for both sides of the comparison
        cp8, cp16 = model.cp(image)
        head16 = model.conv_out16.conv_out(model.conv_out16.conv(cp8))
        head32 = model.conv_out32.conv_out(model.conv_out32.conv(cp16))
        assert (head16.shape[-2:], head32.shape[-2:]) == ((H // 8, W // 8), (H // 16, W // 16))
        for head, aux in zip((head16, head32), (model.conv_out16(cp8), model.conv_out32(cp16)), strict=True):
            expected = F.interpolate(head, size=(H, W), mode="bilinear", align_corners=False)
            torch.testing.assert_close(aux, expected, rtol=0, atol=1e-5)

    calls.update(dict.fromkeys(AUX_HEADS, 0))
    with torch.no_grad():
        model.eval()
        assert model.forward_with_features(image).aux_logits == ()
        model(image)
        model.train()
        model(image)  # forward() is the inference graph: logits only, even in training mode
    assert calls == {"conv_out16": 0, "conv_out32": 0}


def test_exported_bisenet_graph_has_no_aux_heads() -> None:
    model = build_model("bisenet", num_classes=19).eval()
    exported = torch.export.export(model, (torch.rand(1, 3, 32, 64),))
    to_param = exported.graph_signature.inputs_to_parameters
    used = {to_param[n.name] for n in exported.graph.nodes if n.op == "placeholder" and n.name in to_param and n.users}
    aux_params = {name for name, _ in model.named_parameters() if name.startswith(AUX_HEADS)}
    assert len(aux_params) == 10
    assert used == {name for name, _ in model.named_parameters()} - aux_params
    modules = {path for n in exported.graph.nodes for path, _ in n.meta.get("nn_module_stack", {}).values()}
    assert "conv_out.conv_out" in modules and not any(m.startswith(AUX_HEADS) for m in modules)


def test_exported_enet_matches_eager() -> None:
    """Max-unpooling with stored indices survives torch.export: the exported graph gives the eager logits."""
    model = randomised("enet", num_classes=19)
    x = torch.rand(1, 3, 32, 48)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- training gradients


@pytest.mark.parametrize("name", NEW_MODELS)
def test_every_parameter_gets_a_gradient_in_training(name: str, image) -> None:
    """No unused parameters (DDP without find_unused_parameters): loss on logits plus aux logits."""
    torch.manual_seed(11)
    model = build_model(name, num_classes=19).train()
    target = torch.randint(0, 19, (2, H, W))
    output = model.forward_with_features(image)
    assert len(output.aux_logits) == (2 if name == "bisenet" else 0)
    loss = F.cross_entropy(output.logits, target) + sum(F.cross_entropy(a, target) for a in output.aux_logits)
    loss.backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert without == []


# ---------------------------------------------------------------- registry and checkpoints


def test_registry_defaults() -> None:
    assert model_defaults("enet") == {
        "num_classes": 20,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "input_size": (512, 1024),
    }
    assert model_defaults("bisenet") == {
        "num_classes": 20,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "input_size": (512, 1024),
    }
    assert build_model("enet").num_classes == 20 and build_model("bisenet", 19).conv_out32.conv_out.out_channels == 19
    with pytest.raises(ConfigError, match="width"):
        build_model("enet", width=2)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_checkpoint_round_trip(tmp_path, name: str, models, image) -> None:
    source = models[name]
    with torch.no_grad():
        reference = source(image)
    path = save_checkpoint(source, tmp_path / f"{name}.safetensors", metadata={"epoch": 3})
    meta = read_metadata(path)
    defaults = model_defaults(name)
    assert meta["model"] == name and meta["epoch"] == 3
    assert (meta["mean"], meta["std"], meta["input_size"]) == tuple(
        list(defaults[k]) for k in ("mean", "std", "input_size")
    )
    model, loaded = load_model(path)
    assert loaded == meta and not model.training and type(model) is type(source)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(model(image), reference)

    # The reference code's own files: a raw torch.save state_dict, DataParallel prefix included.
    pth = tmp_path / f"{name}_reference.pth"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, pth)
    target = build_model(name)
    assert load_weights(target, pth) == {}
    with torch.no_grad():
        assert torch.equal(target.eval()(image), reference)


def test_bisenet_checkpoint_without_aux_heads_is_refused(tmp_path, models) -> None:
    """A state_dict from the reference built with aux_mode='eval' lacks the aux heads: strict loading names them."""
    state = {k: v for k, v in models["bisenet"].state_dict().items() if not k.startswith(AUX_HEADS)}
    path = tmp_path / "bisenet_eval_mode.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(14\): conv_out16\.conv\.bn\.bias"):
        load_weights(build_model("bisenet"), path)


def test_imagenet_backbone_weights(tmp_path) -> None:
    torch.manual_seed(5)
    imagenet = ResNet18()
    for module in imagenet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
    state = dict(imagenet.state_dict())
    state |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}  # torchvision's classifier
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)

    model = build_model("bisenet", num_classes=19, backbone_weights=str(path))
    for key, value in imagenet.state_dict().items():
        assert torch.equal(model.cp.resnet.state_dict()[key], value), key

    del state["layer4.1.bn2.running_var"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): layer4\.1\.bn2\.running_var"):
        load_imagenet_weights(ResNet18(), path)
    with pytest.raises(CheckpointError, match="not found"):
        load_imagenet_weights(ResNet18(), tmp_path / "nowhere.pth")


def test_resnet18_feature_maps(image) -> None:
    """Strides 8/16/32 with 128/256/512 channels; one residual block checked against its formula."""
    torch.manual_seed(2)
    backbone = ResNet18().eval()
    with torch.no_grad():
        feats = backbone(image)
        assert [tuple(f.shape) for f in feats] == [(2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]
        block, x = backbone.layer2[0], torch.rand(1, 64, 8, 8)
        residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        shortcut = block.downsample[1](block.downsample[0](x))
        assert torch.equal(block(x), F.relu(residual + shortcut))


# ---------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("name", NEW_MODELS)
def test_cuda_matches_cpu(name: str, models, image) -> None:
    model, tf32 = models[name], torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would differ from the CPU by more than float32 noise
    try:
        with torch.no_grad():
            expected = model(image)
            got = model.to("cuda")(image.to("cuda")).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        model.to("cpu")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
