"""The fused score stage: compiled scores + labels equal the eager scorers and arg-max, per layout."""

import math

import numpy as np
import pytest
import torch

from anomaly_seg_ros.core import score_stage
from anomaly_seg_ros.core.score_stage import COMPILE_MIN_ELEMENTS, ScoreStage, fusable
from anomaly_seg_ros.inference.preprocess import labels_from_logits
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import get_scorer

from conftest import scene_perception


def _logits(channels_last: bool, shape=(1, 19, 12, 20)) -> torch.Tensor:
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 4
    logits[0, 3, 0, :4] = logits[0, 7, 0, :4] = 50.0  # exact ties: the first class wins, as in argmax
    return logits.contiguous(memory_format=torch.channels_last) if channels_last else logits


def _direct(name: str, logits: torch.Tensor, temperature: float) -> np.ndarray:
    """Each formula in float64 numpy, vectorised over pixels, independent of the scorers' code."""
    z = logits.double().numpy() / temperature
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    p = shifted / shifted.sum(axis=1, keepdims=True)
    if name == "msp":
        return -p.max(axis=1)
    if name == "maxentropy":
        return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1) / math.log(z.shape[1])
    if name == "energy":
        return -temperature * np.log(np.exp(z).sum(axis=1))
    return -logits.double().numpy().max(axis=1)


@pytest.mark.parametrize(("name", "temperature", "channels_last"), [("maxentropy", 1.0, True), ("energy", 0.7, False)])
def test_compiled_stage_equals_the_formulas_and_the_arg_max(name, temperature, channels_last):
    # Compiling is slow on 2 cores: two cases, one per layout, the rest is covered eagerly below.
    scorer = get_scorer(name, temperature=temperature)
    stage = ScoreStage(scorer, compile_scorer=True)
    logits = _logits(channels_last)
    stage.warm_up(logits)
    assert stage.compiled and "one compiled kernel" in stage.describe(), stage.fallback_reason
    scores, labels = stage(SegmentationOutput(logits=logits))
    assert labels.dtype == torch.uint8 and torch.equal(labels, labels_from_logits(logits))
    assert labels[0, 0, :4].tolist() == [3, 3, 3, 3]
    np.testing.assert_allclose(scores.numpy(), _direct(name, logits, temperature), rtol=0, atol=2e-6)
    torch.testing.assert_close(scores, scorer(logits), rtol=0, atol=1e-6)
    torch.testing.assert_close(stage.scores(SegmentationOutput(logits=logits)), scores, rtol=0, atol=0)
    if hasattr(type(scorer), "fused_score"):  # the compiler's form of the formula, run eagerly
        torch.testing.assert_close(type(scorer).fused_score(logits, temperature), scorer(logits), rtol=0, atol=1e-6)
    # Another shape than the one warmed up runs the eager code (no compile on a frame).
    other = _logits(channels_last, (1, 19, 6, 10))
    scores, labels = stage(SegmentationOutput(logits=other))
    torch.testing.assert_close(scores, scorer(other), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["msp", "maxlogit", "maxentropy", "energy"])
def test_eager_stage_equals_the_formulas(name, monkeypatch):
    stage = ScoreStage(get_scorer(name))
    logits = _logits(True)
    stage.warm_up(logits)  # small CPU logits: not worth a compile
    assert not stage.compiled and stage.describe().endswith("eager")
    scores, labels = stage(SegmentationOutput(logits=logits))
    np.testing.assert_allclose(scores.numpy(), _direct(name, logits, 1.0), rtol=0, atol=2e-6)
    assert torch.equal(labels, logits.argmax(1).to(torch.uint8))
    # scores alone (the far field's crop): the same scores, and no label pass
    calls = []
    monkeypatch.setattr(score_stage, "labels_from_logits", lambda logits: calls.append(1) or labels_from_logits(logits))
    torch.testing.assert_close(stage.scores(SegmentationOutput(logits=logits)), scores, rtol=0, atol=0)
    assert calls == []


def test_which_scorers_are_fused_and_when_the_stage_compiles():
    assert all(fusable(get_scorer(name)) for name in ("msp", "maxlogit", "maxentropy", "energy"))
    assert not fusable(get_scorer("pgu"))  # reads features and the network
    stage = ScoreStage(get_scorer("msp"))
    large = torch.empty(1, 19, 256, 256)
    assert large.numel() == COMPILE_MIN_ELEMENTS
    assert stage._wants_compile(large) and not stage._wants_compile(torch.empty(1, 19, 64, 128))
    assert not ScoreStage(get_scorer("msp"), compile_scorer=False)._wants_compile(large)


def test_failed_compile_is_logged_and_runs_eager(monkeypatch, caplog):
    def broken(*args, **kwargs):
        def fail(*inputs):
            raise RuntimeError("no C++ compiler\nmore detail")

        return fail

    monkeypatch.setattr(score_stage.torch, "compile", broken)
    stage = ScoreStage(get_scorer("msp"), compile_scorer=True)
    logits = _logits(False)
    stage.warm_up(logits)
    assert not stage.compiled and "RuntimeError: no C++ compiler" in stage.fallback_reason
    assert "running eager" in caplog.text
    scores, _ = stage(SegmentationOutput(logits=logits))
    torch.testing.assert_close(scores, get_scorer("msp")(logits))


def test_perception_scores_through_the_stage():
    perception = scene_perception()
    frame = np.zeros((64, 128, 3), dtype=np.uint8)
    result = perception.process(frame, render_color=False, render_overlay=False)
    assert perception.score_stage.scorer is perception.scorer
    # SceneLogits: road maxlogit -10, the flat anomaly square 0 (see conftest).
    assert result.anomaly.max() == pytest.approx(0.0) and result.anomaly.min() == pytest.approx(-10.0)


def test_runtime_update_keeps_the_stage_unless_the_scorer_changes():
    perception = scene_perception()
    stage = perception.score_stage
    perception.update({"alerts": {"threshold": -4.0}})
    assert perception.score_stage is stage  # same formula: a compiled kernel would be kept, not rebuilt
    perception.update({"scorer": {"name": "energy"}, "alerts": {"threshold": -4.0}})
    assert perception.score_stage is not stage and perception.score_stage.scorer.name == "energy"
    frame = np.zeros((64, 128, 3), dtype=np.uint8)
    result = perception.process(frame, render_color=False, render_overlay=False)
    assert result.scorer == "energy" and result.anomaly.min() == pytest.approx(-10.0, abs=1e-3)
