"""Bare PyTorch state_dicts (the authors' ``.pth`` releases) through the one loader, ``load_model``.

The network and its class count are inferred from the keys and shapes; the returned
metadata holds the registry's defaults; every command that loads a checkpoint accepts them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import CheckpointError
from anomaly_seg_ros.models import build_model, load_model, model_defaults, save_checkpoint
from anomaly_seg_ros.models.checkpoint import infer_architecture
from anomaly_seg_ros.replay.bagio import list_topics
from anomaly_seg_ros.replay.synthetic_bag import write_sequence_bag
from anomaly_seg_ros.tools.cli import main


def _official(model_name: str, num_classes: int, path, *, legacy: bool = False):
    """A checkpoint as the authors publish it: DataParallel's ``module.`` prefix; ``legacy``: no
    BatchNorm counters, old serialisation (the ERFNet release predates PyTorch 0.4.1)."""
    torch.manual_seed(num_classes)
    source = build_model(model_name, num_classes=num_classes).eval()
    state = {
        "module." + key: value
        for key, value in source.state_dict().items()
        if not (legacy and key.endswith("num_batches_tracked"))
    }
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return source


@pytest.mark.parametrize(
    ("model_name", "num_classes", "legacy"),
    [("erfnet", 20, True), ("erfnet", 19, False), ("enet", 20, False), ("enet", 7, False), ("bisenet", 19, False)],
)
def test_model_and_class_count_are_inferred_and_the_weights_load_exactly(tmp_path, model_name, num_classes, legacy):
    path = tmp_path / "official.pth"
    source = _official(model_name, num_classes, path, legacy=legacy)
    model, meta = load_model(path)
    assert (model.model_name, model.num_classes, model.training) == (model_name, num_classes, False)
    defaults = model_defaults(model_name)
    assert meta["recorded"] is False and meta["temperature"] == 1.0 and "calibration" not in meta
    assert (meta["mean"], meta["std"]) == (list(defaults["mean"]), list(defaults["std"]))
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        expected, actual = source(x), model(x)
    expected, actual = getattr(expected, "logits", expected), getattr(actual, "logits", actual)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_a_named_model_or_class_count_must_fit_the_file(tmp_path):
    path = tmp_path / "official.pth"
    _official("enet", 20, path)
    assert load_model(path, model_name="enet", num_classes=20)[0].num_classes == 20
    with pytest.raises(CheckpointError, match="not a state_dict of model 'erfnet'.*missing keys"):
        load_model(path, model_name="erfnet")
    with pytest.raises(CheckpointError, match="holds a 20-class 'enet', not the requested 19 classes"):
        load_model(path, num_classes=19)
    ours = save_checkpoint(build_model("enet", num_classes=20), tmp_path / "ours.safetensors", metadata={})
    with pytest.raises(CheckpointError, match="holds num_classes 20, not the requested 19"):
        load_model(ours, num_classes=19)


def test_inference_needs_every_key(tmp_path):
    state = build_model("erfnet", num_classes=20).state_dict()
    del state["decoder.output_conv.bias"]
    with pytest.raises(CheckpointError, match=r"closest is 'erfnet'.*missing keys \(1\): decoder\.output_conv\.bias"):
        infer_architecture(state, "x.pth")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    _official("erfnet", 20, root / "erfnet_pretrained.pth", legacy=True)
    bag = write_sequence_bag(root / "drive", seed=1, num_frames=2, height=64, width=128)
    return root / "erfnet_pretrained.pth", bag


def test_every_command_runs_on_the_authors_pth(official, tmp_path, caplog):
    """bag, evaluate, export, benchmark and fit-scorer load it (they used to refuse it:
    "not a readable safetensors file: header too large")."""
    pth, bag = official
    size = ["--set", "model.input_size=[64, 128]"]
    with caplog.at_level("WARNING"):
        out = tmp_path / "out"
        assert main(["bag", str(bag), "--out", str(out), "--weights", str(pth), "--no-progress", "--no-plots",
                     *size, "--set", "alerts.threshold=0.5"]) == 0  # fmt: skip
        assert list_topics(out)["/anomaly_seg_node/obstacle_alerts"][1] == 2
        assert main(["export", "--checkpoint", str(pth), "--backend", "eager", "--device", "cpu",
                     "--input-size", "64", "128", "--out", str(tmp_path / "engines")]) == 0  # fmt: skip
        report = tmp_path / "bench.json"
        assert main(["benchmark", "--checkpoint", str(pth), "--input-size", "64", "128", "--iterations", "2",
                     "--warmup", "1", "--json", str(report)]) == 0  # fmt: skip
        assert json.loads(report.read_text())
    notices = [r.getMessage() for r in caplog.records if "bare state_dict" in r.getMessage()]
    assert notices and all("erfnet with 20 classes" in n and "--set alerts.threshold=X" in n for n in notices)


def test_fit_scorer_and_evaluate_run_on_the_authors_pth(official, tmp_path):
    from anomaly_seg_ros.data.layout import generate_datasets

    pth, _ = official
    data = generate_datasets(tmp_path / "synth", num_train=0, num_val=2, num_anomaly=2, height=64, width=128, seed=3)
    copy = tmp_path / "ckpt" / pth.name  # the fit is written next to the checkpoint
    copy.parent.mkdir()
    copy.write_bytes(pth.read_bytes())
    assert main(["fit-scorer", "sml", "--checkpoint", str(copy), "--data", str(data["cityscapes_root"]),
                 "--split", "val", "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "grid"
    # the README's syntax: several values after one --scorer / --checkpoint
    assert main(["evaluate", "--checkpoint", str(copy), str(copy.with_name("again.pth")), "--scorer", "msp",
                 "maxlogit", "sml", "--dataset", f"synthetic:{tmp_path / 'synth'}", "--out", str(out),
                 "--set", "model.input_size=[64, 128]", "--no-plots", "--no-progress"]) == 2  # fmt: skip
    copy.with_name("again.pth").write_bytes(pth.read_bytes())
    assert main(["evaluate", "--checkpoint", str(copy), str(copy.with_name("again.pth")), "--scorer", "msp",
                 "maxlogit", "sml", "--dataset", f"synthetic:{tmp_path / 'synth'}", "--out", str(out),
                 "--set", "model.input_size=[64, 128]", "--no-plots", "--no-progress"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert [row["scorer"] for row in results["rows"]] == ["msp", "maxlogit", "sml"] * 2
    assert len(results["checkpoints"]) == 2
    sml = [row for row in results["rows"] if row["name"] == "sml"]
    assert "summary" in next(iter(sml[0]["datasets"].values()))  # the fit was found and used
    assert np.isfinite(next(iter(results["rows"][0]["datasets"].values()))["summary"]["ap"])
