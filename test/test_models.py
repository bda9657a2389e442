"""ERFNet architecture, model registry and checkpoint I/O."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.common.labels import TRAIN_ID_NAMES
from anomaly_seg_ros.models import (
    available_models,
    build_model,
    load_model,
    load_weights,
    model_defaults,
    read_metadata,
    save_checkpoint,
)

H, W = 64, 128


# ---------------------------------------------------------------- helpers


def erfnet_param_count(num_classes: int) -> int:
    """Parameters of ERFNet from the architecture, layer by layer (BN: weight + bias)."""

    def conv(cin: int, cout: int, kh: int, kw: int) -> int:
        return cin * cout * kh * kw + cout  # weight + bias

    def bn(c: int) -> int:
        return 2 * c

    def down(cin: int, cout: int) -> int:  # 3x3 conv to cout-cin channels, concat max-pool
        return conv(cin, cout - cin, 3, 3) + bn(cout)

    def up(cin: int, cout: int) -> int:  # 3x3 transposed conv
        return conv(cin, cout, 3, 3) + bn(cout)

    def non_bt_1d(c: int) -> int:  # two (3x1, 1x3) pairs, each pair followed by a BN
        return 2 * (conv(c, c, 3, 1) + conv(c, c, 1, 3) + bn(c))

    encoder = (
        down(3, 16)  # 13*3*9 + 13 + 32 = 396
        + down(16, 64)  # 48*16*9 + 48 + 128 = 7_088
        + 5 * non_bt_1d(64)  # 5 * (12*64^2 + 8*64) = 5 * 49_664
        + down(64, 128)  # 64*64*9 + 64 + 256 = 37_184
        + 8 * non_bt_1d(128)  # 8 * (12*128^2 + 8*128) = 8 * 197_632
        + conv(128, num_classes, 1, 1)  # encoder.output_conv: 129 * C
    )
    decoder = (
        up(128, 64)  # 73_728 + 64 + 128 = 73_920
        + 2 * non_bt_1d(64)
        + up(64, 16)  # 9_216 + 16 + 32 = 9_264
        + 2 * non_bt_1d(16)  # 2 * 3_200
        + conv(16, num_classes, 2, 2)  # decoder.output_conv: 65 * C
    )
    return encoder + decoder  # = 2_062_956 + 194 * C


def official_erfnet_keys() -> list[str]:
    """State_dict keys of the authors' ERFNet (train/erfnet.py), written out independently."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    wb = ["weight", "bias"]

    def block(prefix: str, kind: str) -> list[str]:
        if kind == "down" or kind == "up":
            return [f"{prefix}.conv.{p}" for p in wb] + [f"{prefix}.bn.{p}" for p in bn]
        convs = ("conv3x1_1", "conv1x3_1", "bn1", "conv3x1_2", "conv1x3_2", "bn2")
        return [f"{prefix}.{m}.{p}" for m in convs for p in (bn if m.startswith("bn") else wb)]

    enc_kinds = ["down"] + ["nb"] * 5 + ["down"] + ["nb"] * 8
    dec_kinds = ["up", "nb", "nb", "up", "nb", "nb"]
    keys = block("encoder.initial_block", "down")
    keys += [k for i, kind in enumerate(enc_kinds) for k in block(f"encoder.layers.{i}", kind)]
    keys += [f"encoder.output_conv.{p}" for p in wb]
    keys += [k for i, kind in enumerate(dec_kinds) for k in block(f"decoder.layers.{i}", kind)]
    keys += [f"decoder.output_conv.{p}" for p in wb]
    return keys


def randomised_erfnet(num_classes: int = 20, seed: int = 0) -> nn.Module:
    """An eval-mode ERFNet with non-trivial BatchNorm statistics, so that loads are visible."""
    torch.manual_seed(seed)
    model = build_model("erfnet", num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def source() -> nn.Module:
    return randomised_erfnet(seed=0)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.rand(1, 3, H, W)


@pytest.fixture(scope="module")
def reference_logits(source: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return source(image)


def fresh_outputs(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(image)


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize("num_classes", [20, 19])
def test_parameter_count_matches_architecture_arithmetic(num_classes: int) -> None:
    model = build_model("erfnet", num_classes=num_classes)
    count = sum(p.numel() for p in model.parameters())
    assert count == erfnet_param_count(num_classes)
    assert count == {20: 2_066_836, 19: 2_066_642}[num_classes]
    assert round(count / 1e6, 2) == 2.07  # the published 2.07 M


def test_state_dict_keys_are_the_official_ones() -> None:
    assert list(build_model("erfnet").state_dict()) == official_erfnet_keys()


def test_published_hyperparameters() -> None:
    model = build_model("erfnet")
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    encoder_drop = [m.dropout.p for m in model.encoder.layers if hasattr(m, "dropout")]
    assert encoder_drop == [0.03] * 5 + [0.3] * 8
    dilations = [m.conv3x1_2.dilation[0] for m in model.encoder.layers if hasattr(m, "conv3x1_2")]
    assert dilations == [1] * 5 + [2, 4, 8, 16] * 2
    out = model.decoder.output_conv
    assert isinstance(out, nn.ConvTranspose2d)
    assert (out.in_channels, out.out_channels, out.kernel_size, out.stride) == (16, 20, (2, 2), (2, 2))


def test_forward_shape(source: nn.Module, reference_logits: torch.Tensor) -> None:
    assert reference_logits.shape == (1, 20, H, W)
    with torch.no_grad():
        assert build_model("erfnet", 19).eval()(torch.zeros(2, 3, 32, 48)).shape == (2, 19, 32, 48)


def test_forward_rejects_size_not_divisible_by_8(source: nn.Module) -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        source(torch.zeros(1, 3, 60, 128))


def test_forward_with_features(source: nn.Module, image: torch.Tensor, reference_logits: torch.Tensor) -> None:
    with torch.no_grad():
        output = source.forward_with_features(image)
        logits, features = output.logits, output.features
        # Independent path: encoder, then decoder layers by hand, then the last layer.
        manual = source.encoder(image)
        for layer in source.decoder.layers:
            manual = layer(manual)
        assert torch.equal(logits, reference_logits)
        assert features.shape == (1, 16, H // 2, W // 2)
        assert torch.equal(features, manual)
        assert torch.equal(source.last_layer(features), logits)
        assert output.head_logits is output.logits and output.aux_logits == ()


# ---------------------------------------------------------------- registry


def test_registry_build_forms_and_defaults() -> None:
    assert "erfnet" in available_models()
    assert build_model("erfnet", 20).model_name == "erfnet"
    assert build_model("erfnet", num_classes=19).decoder.output_conv.out_channels == 19
    assert model_defaults("erfnet") == {
        "num_classes": 20,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "input_size": (512, 1024),
    }


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*erfnet"):
        build_model("nope")
    with pytest.raises(ConfigError, match="erfnet"):
        model_defaults("nope")


def test_bad_builder_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="width"):
        build_model("erfnet", width=2)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("erfnet", num_classes=0)


# ---------------------------------------------------------------- our checkpoints


def test_save_load_round_trip(tmp_path, source, image, reference_logits) -> None:
    extra = {"epoch": 12, "metrics": {"miou": 0.71}, "temperature": 1.5}
    path = save_checkpoint(source, tmp_path / "ckpt" / "erfnet.safetensors", metadata=extra)
    assert sorted(p.name for p in path.parent.iterdir()) == ["erfnet.safetensors"]  # no temp left

    meta = read_metadata(path)
    assert meta == {
        "model": "erfnet",
        "num_classes": 20,
        "class_names": list(TRAIN_ID_NAMES) + ["void"],
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "input_size": [512, 1024],
        "temperature": 1.5,
        "head": "linear",
        "epoch": 12,
        "metrics": {"miou": 0.71},
    }
    model, loaded_meta = load_model(path)
    assert loaded_meta == meta and not model.training and model.model_name == "erfnet"
    assert torch.equal(fresh_outputs(model, image), reference_logits)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    target = build_model("erfnet")
    assert load_weights(target, path) == meta
    assert torch.equal(fresh_outputs(target, image), reference_logits)


def test_save_rejects_contradictory_metadata(tmp_path, source) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        save_checkpoint(source, tmp_path / "x.safetensors", metadata={"num_classes": 19})
    with pytest.raises(ConfigError, match="JSON"):
        save_checkpoint(source, tmp_path / "x.safetensors", metadata={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_foreign_safetensors(tmp_path, source, image, reference_logits) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = build_model("erfnet")
    assert load_weights(target, path) == {}
    assert torch.equal(fresh_outputs(target, image), reference_logits)
    with pytest.raises(CheckpointError, match="foreign.safetensors.*not an anomaly_seg_ros checkpoint"):
        read_metadata(path)


# ---------------------------------------------------------------- official-format checkpoints


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("nest", [None, "state_dict", "model_state_dict"])
def test_official_checkpoint_loads(tmp_path, source, image, reference_logits, prefix, nest) -> None:
    state = {prefix + key: value for key, value in source.state_dict().items()}
    assert [key.removeprefix(prefix) for key in state] == official_erfnet_keys()
    path = tmp_path / "erfnet_pretrained.pth"
    torch.save(state if nest is None else {nest: state, "epoch": 150}, path)
    target = build_model("erfnet")
    assert load_weights(target, path) == {}
    assert torch.equal(fresh_outputs(target, image), reference_logits)


def test_legacy_checkpoint_without_num_batches_tracked(tmp_path, source, image, reference_logits) -> None:
    """The authors' release predates PyTorch 0.4.1: old serialisation, no BN counters."""
    state = {"module." + k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "erfnet_pretrained.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    target = build_model("erfnet")
    load_weights(target, path)
    assert torch.equal(fresh_outputs(target, image), reference_logits)


# ---------------------------------------------------------------- strict errors


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"partial load changed {key}"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("missing", r"missing keys \(1\): decoder\.output_conv\.bias"),
        ("unexpected", r"unexpected keys \(1\): decoder\.extra\.weight"),
        ("shape", r"decoder\.output_conv\.weight: checkpoint \(16, 19, 2, 2\) vs model \(16, 20, 2, 2\)"),
    ],
)
def test_strict_errors_name_the_keys(tmp_path, source, edit, expected) -> None:
    state = dict(source.state_dict())
    if edit == "missing":
        del state["decoder.output_conv.bias"]
    elif edit == "unexpected":
        state["decoder.extra.weight"] = torch.zeros(3)
    else:
        state["decoder.output_conv.weight"] = torch.zeros(16, 19, 2, 2)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    target = build_model("erfnet")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=expected) as info:
        load_weights(target, path)
    assert str(path) in str(info.value)
    _assert_untouched(target, before)


def test_wrong_num_classes_safetensors_is_refused(tmp_path, source) -> None:
    path = save_checkpoint(source, tmp_path / "c20.safetensors", metadata={})
    expected = r"shape mismatches \(4\).*encoder\.output_conv\.bias: checkpoint \(20,\) vs model \(19,\)"
    with pytest.raises(CheckpointError, match=expected):
        load_weights(build_model("erfnet", num_classes=19), path)


# ---------------------------------------------------------------- unreadable files

_EXECUTED: list[str] = []


def _mark_executed() -> str:
    _EXECUTED.append("ran")
    return "ran"


class _Payload:
    """Unpickling this would call ``_mark_executed``: weights_only must refuse it."""

    def __reduce__(self):
        return (_mark_executed, ())


def test_pickle_with_python_object_is_refused(tmp_path, source) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": dict(source.state_dict()), "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only=True.*Unsupported global"):
        load_weights(build_model("erfnet"), path)
    assert _EXECUTED == []


def test_missing_file_names_path(tmp_path) -> None:
    path = tmp_path / "nowhere" / "model.pth"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_weights(build_model("erfnet"), path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere.safetensors")


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.safetensors"])
def test_garbage_file_is_refused(tmp_path, name) -> None:
    path = tmp_path / name
    path.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage"):
        load_weights(build_model("erfnet"), path)


def test_non_state_dict_pickle_and_bad_suffix(tmp_path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=r"list\.pt.*expected a PyTorch state_dict"):
        load_weights(build_model("erfnet"), path)
    other = tmp_path / "weights.bin"
    other.write_bytes(pickle.dumps({}))
    with pytest.raises(CheckpointError, match=r"weights\.bin.*unsupported"):
        load_weights(build_model("erfnet"), other)


def test_metadata_is_plain_json_in_header(tmp_path, source) -> None:
    """Other tools can read the metadata from the safetensors header alone."""
    path = save_checkpoint(source, tmp_path / "m.safetensors", metadata={})
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header["__metadata__"]["anomaly_seg_ros"])["model"] == "erfnet"


def test_saved_checkpoint_has_the_usual_file_mode(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = save_checkpoint(build_model("erfnet", num_classes=19), tmp_path / "m.safetensors", metadata={})
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
