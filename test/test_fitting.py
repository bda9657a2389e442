"""The fitting API: fit files next to the checkpoint, stale/missing fits, the CLI, run-time scorer switching."""

import argparse

import cv2
import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.models import build_model, load_model, save_checkpoint
from anomaly_seg_ros.scoring import get_scorer, load_fit, prepare_scorer, save_fit, score_all
from anomaly_seg_ros.scoring.fitting import fit_path, read_fit_metadata
from anomaly_seg_ros.scoring.flow import FitQuality
from anomaly_seg_ros.tools import fit_scorer


def _inputs(seed: int, count: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 16, 32, generator=g) for _ in range(count)]


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("erfnet", num_classes=19)
    return save_checkpoint(model, tmp_path / "erfnet.safetensors", metadata={"input_size": [16, 32]})


def test_save_load_round_trip_keeps_statistics_and_scores(checkpoint):
    model, _ = load_model(checkpoint)
    scorer = get_scorer("sml")
    scorer.fit(model, _inputs(0))
    path = save_fit(scorer, checkpoint, info={"images": 2})
    assert path == checkpoint.with_name("erfnet.sml.safetensors")
    meta = read_fit_metadata(path)
    assert meta["scorer"] == "sml" and meta["images"] == 2 and len(meta["checkpoint_sha256"]) == 64
    loaded = get_scorer("sml")
    load_fit(loaded, checkpoint)
    torch.testing.assert_close(loaded.class_mean, scorer.class_mean)
    torch.testing.assert_close(loaded.class_std, scorer.class_std)
    with torch.no_grad():
        output = model.forward_with_features(_inputs(5, 1)[0])
    torch.testing.assert_close(loaded(output), scorer(output))


def test_missing_fit_names_the_exact_command(checkpoint):
    with pytest.raises(ConfigError) as error:
        load_fit(get_scorer("sml"), checkpoint)
    assert f"anomaly-seg fit-scorer sml --checkpoint {checkpoint} --data" in str(error.value)
    model, _ = load_model(checkpoint)
    with pytest.raises(ConfigError, match="no checkpoint path is known"):
        prepare_scorer(get_scorer("sml"), model)


def test_stale_fit_is_detected_when_the_checkpoint_changes(checkpoint):
    model, _ = load_model(checkpoint)
    scorer = get_scorer("sml")
    scorer.fit(model, _inputs(0))
    save_fit(scorer, checkpoint)
    with torch.no_grad():
        model.decoder.output_conv.bias.add_(1.0)  # retrained: same file name, new weights
    save_checkpoint(model, checkpoint, metadata={"input_size": [16, 32]})
    with pytest.raises(ConfigError, match="stale.*re-run: anomaly-seg fit-scorer sml"):
        load_fit(get_scorer("sml"), checkpoint)


def test_fit_of_another_scorer_file_is_refused(checkpoint):
    model, _ = load_model(checkpoint)
    scorer = get_scorer("sml")
    scorer.fit(model, _inputs(0))
    save_fit(scorer, checkpoint)
    fit_path(checkpoint, "sml").rename(fit_path(checkpoint, "flowenedet"))
    with pytest.raises(ConfigError, match="holds a fit of scorer 'sml'"):
        load_fit(get_scorer("flowenedet"), checkpoint)


def test_score_all_is_each_scorer_on_one_output():
    logits = torch.randn(1, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    scorers = [get_scorer("msp"), get_scorer("maxlogit"), get_scorer("energy", temperature=2.0)]
    scores = score_all(logits, scorers)
    assert list(scores) == ["msp", "maxlogit", "energy"]
    for scorer in scorers:
        torch.testing.assert_close(scores[scorer.name], scorer(logits))
    with pytest.raises(ValueError, match="given twice"):
        score_all(logits, [get_scorer("msp"), get_scorer("msp", temperature=2.0)])
    named = score_all(logits, {"msp_t2": get_scorer("msp", temperature=2.0)})
    torch.testing.assert_close(named["msp_t2"], get_scorer("msp", temperature=2.0)(logits))


def _write_cityscapes(root, count: int = 2) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        image_dir = root / "leftImg8bit" / "train" / "town"
        label_dir = root / "gtFine" / "train" / "town"
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_dir / f"town_{index:06d}_leftImg8bit.png"), rng.integers(0, 255, (32, 64, 3), np.uint8))
        labels = rng.integers(0, 19, (32, 64)).astype(np.uint8)
        cv2.imwrite(str(label_dir / f"town_{index:06d}_gtFine_labelTrainIds.png"), labels)


def _cli(argv):
    parser = argparse.ArgumentParser()
    fit_scorer.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.run(args)


def test_fit_scorer_command_writes_a_fit_the_perception_core_loads(tmp_path, checkpoint, capsys):
    _write_cityscapes(tmp_path / "city")
    argv = ["fit-scorer", "flowenedet", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "city")]
    argv += ["--max-images", "2", "--no-progress", "--set", "max_steps=10", "--set", "max_pixels=300"]
    assert _cli([*argv, "--allow-worse"]) == 0  # random labels: the flow may rank worse than its input
    printed = capsys.readouterr().out
    assert "erfnet.flowenedet.safetensors" in printed and "fit quality of 'flowenedet': prior p(miss)" in printed
    meta = read_fit_metadata(fit_path(checkpoint, "flowenedet"))
    assert meta["params"]["max_steps"] == 10 and meta["images"] == 2 and meta["split"] == "train"
    quality = meta["quality"]
    # max_pixels=300 of the 2 x 16 x 32 pixels, 20 % of them held out; random labels of 19 classes
    assert quality["train_pixels"] == 240 and quality["heldout_pixels"] == 60
    assert quality["observed_rate"] == pytest.approx(18 / 19, abs=0.05)
    assert quality["worse_than_input"] == (quality["auroc_flow"] < quality["auroc_input"])
    with pytest.raises(ConfigError, match="needs no fit"):
        _cli(["fit-scorer", "maxlogit", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "city")])
    with pytest.raises(ConfigError, match="PARAM=VALUE"):
        _cli(["fit-scorer", "sml", "--checkpoint", str(checkpoint), "--data", "x", "--set", "steps"])


def test_a_flow_fit_worse_than_its_input_is_refused_with_the_figures():
    worse = FitQuality(0.07, 0.075, -3.2, 0.55, 0.695, 400, 400, False, 8000, 2000)
    with pytest.raises(ConfigError, match=r"not saving it: .* AUROC 55.00 % for the flow's posterior < 69.50 %"):
        fit_scorer.check_fit_quality("flowenedet", worse)
    fit_scorer.check_fit_quality("flowenedet", worse, allow_worse=True)  # kept on request, with a warning
    better = FitQuality(0.075, 0.075, -3.2, 0.72, 0.695, 4000, 3500, True, 8000, 2000)
    fit_scorer.check_fit_quality("flowenedet", better)


def test_runtime_switching_keeps_the_model_and_loads_fits(tmp_path, checkpoint):
    model, meta = load_model(checkpoint)
    config = load_config(None, [f"model.weights={checkpoint}", "alerts.threshold=0.5"])
    perception = Perception(model, config, metadata=meta)
    frame = np.random.default_rng(1).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    network = perception.model
    assert perception.process(frame).scorer == "energy"  # the default

    perception.update({"scorer": {"name": "pgu", "params": {"p": 1.0}}})
    result = perception.process(frame)
    assert result.scorer == "pgu" and result.anomaly.shape == (32, 64) and np.isfinite(result.anomaly).all()

    with pytest.raises(ConfigError, match="anomaly-seg fit-scorer sml"):
        perception.update({"scorer": {"name": "sml", "params": {}}})
    assert perception.scorer.name == "pgu"  # a rejected update changes nothing

    sml = get_scorer("sml")
    sml.fit(model, _inputs(0))
    save_fit(sml, checkpoint)
    perception.update({"scorer": {"name": "sml", "params": {}}})
    result = perception.process(frame)
    assert result.scorer == "sml" and np.isfinite(result.anomaly).all()
    assert perception.scorer.fitted

    with pytest.raises(ConfigError, match="offline only"):
        perception.update({"scorer": {"name": "odin", "params": {}}})
    assert perception.model is network and perception.scorer.name == "sml"
