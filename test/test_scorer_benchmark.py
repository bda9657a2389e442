"""``anomaly-seg benchmark`` scorer cost: features-path scorers, fitted scorers (fit file or in-process
fit), targets, and ratios consistent with the forward in the same JSON. Random ERFNet at 64x128."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_seg_ros.benchmarking.speed import (
    SCORER_TARGETS,
    prepare_benchmark_scorer,
    synthetic_fit_batches,
)
from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.evaluation.grid import parse_scorer_spec
from anomaly_seg_ros.models import build_model, save_checkpoint
from anomaly_seg_ros.scoring import get_scorer, save_fit
from anomaly_seg_ros.scoring.fitting import fit_path
from anomaly_seg_ros.tools.cli import main

SIZE = (64, 128)


def test_benchmark_times_pgu_on_the_features_path_and_sml_with_an_in_process_fit(tmp_path):
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    argv = ["benchmark", "--input-size", *map(str, SIZE), "--iterations", "3", "--warmup", "1"]
    assert main([*argv, "--scorers", "pgu,sml", "--json", str(out_json), "--markdown", str(out_md)]) == 0
    report = json.loads(out_json.read_text())
    forward = report["bare_forward_ms"]["p50"]
    # the full call runs PGU (the first scorer that can run live), through the features path
    assert report["pipeline_scorer"] == "pgu"
    assert report["features_over_bare"] == pytest.approx(report["features_forward_ms"]["p50"] / forward)
    for name, reads in (("pgu", "features path"), ("sml", "plain forward")):
        entry = report["scorers"][name]
        assert entry["input"] == reads
        assert entry["ratio_to_forward"] == pytest.approx(entry["p50"] / forward)
        assert entry["target"] == SCORER_TARGETS[name]
        assert entry["meets_target"] == (entry["p50"] / forward <= SCORER_TARGETS[name])
        assert entry["p50"] > 0 and entry["p95"] >= entry["p50"]
    assert SCORER_TARGETS["pgu"] == 0.10 and SCORER_TARGETS["sml"] == 0.05
    pgu = report["scorers"]["pgu"]
    extra = (pgu["p50"] + report["features_forward_ms"]["p50"] - forward) / forward
    assert pgu["extra_with_features_path"] == pytest.approx(extra)
    # no checkpoint, so no fit file: SML was fitted here, and the report says it is for timing only
    assert report["scorers"]["sml"]["fit"].startswith("fitted in-process on 4 synthetic frames")
    assert "timing only" in report["scorers"]["sml"]["fit"] and report["scorers"]["pgu"]["fit"] is None
    text = out_md.read_text()
    sml = report["scorers"]["sml"]
    row = f"| sml | plain forward | {sml['p50']:.1f} | {sml['p95']:.1f} | {100 * sml['ratio_to_forward']:.1f} % |"
    assert row in text
    assert "≤ 10 %" in text and "features path (forward_with_features)" in text


def test_in_process_fit_uses_the_synthetic_batches_and_a_fit_file_wins_when_present(tmp_path):
    torch.manual_seed(0)
    model = build_model("erfnet", num_classes=19).eval()
    batches = synthetic_fit_batches(SIZE, (0.0,) * 3, (1.0,) * 3, torch.device("cpu"), count=2)
    assert [tuple(x.shape) for x, _ in batches] == [(1, 3, *SIZE)] * 2
    assert all(labels.shape == (1, *SIZE) and int(labels.max()) <= 255 for _, labels in batches)

    scorer, fit = prepare_benchmark_scorer(
        parse_scorer_spec("sml"), model, checkpoint=None, metadata={}, fit_batches=lambda: batches
    )
    assert fit == "fitted in-process on 2 synthetic frames (no checkpoint): timing only"
    # independent: per predicted class, mean and population std of the max logit (numpy, float64)
    with torch.inference_mode():
        logits = torch.cat([model(x) for x, _ in batches]).numpy().astype(np.float64)
    max_logit, predicted = logits.max(axis=1).ravel(), logits.argmax(axis=1).ravel()
    for cls in np.unique(predicted):
        values = max_logit[predicted == cls]
        assert float(scorer.class_mean[cls]) == pytest.approx(values.mean(), rel=1e-5, abs=1e-5)
        assert float(scorer.class_std[cls]) == pytest.approx(max(values.std(), 1e-6), rel=1e-4, abs=1e-5)

    # with a fit file next to the checkpoint, that file is loaded and fit_batches is never called
    checkpoint = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"input_size": list(SIZE)})
    shifted = get_scorer("sml")
    shifted.load_state_dict({"class_mean": scorer.class_mean + 1.0, "class_std": scorer.class_std * 2.0})
    written = save_fit(shifted, checkpoint)
    umask = os.umask(0)
    os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600: others may read the fit

    def no_fit() -> list:
        raise AssertionError("a fit file exists; nothing may be fitted in-process")

    loaded, fit = prepare_benchmark_scorer(
        parse_scorer_spec("sml"), model, checkpoint=str(checkpoint), metadata={}, fit_batches=no_fit
    )
    assert fit == f"fit file {fit_path(checkpoint, 'sml').name}"
    torch.testing.assert_close(loaded.class_mean, scorer.class_mean.double() + 1.0)
    torch.testing.assert_close(loaded.class_std, scorer.class_std.double() * 2.0)


def test_scorer_specs_with_parameters_and_bad_lists_on_the_benchmark_command_line(tmp_path):
    out_json = tmp_path / "b.json"
    argv = ["benchmark", "--input-size", *map(str, SIZE), "--iterations", "1", "--warmup", "0"]
    assert main([*argv, "--scorers", "maxlogit", "--scorer", "pgu@p=0.5,bias=false", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert list(report["scorers"]) == ["maxlogit", "pgu@p=0.5,bias=False"]
    assert report["pipeline_scorer"] == "maxlogit" and report["scorers"]["maxlogit"]["input"] == "plain forward"
    assert report["scorers"]["pgu@p=0.5,bias=False"]["target"] == SCORER_TARGETS["pgu"]
    assert main([*argv, "--scorers", "maxlogit", "--scorer", "maxlogit"]) == 2  # listed twice: a clear error
    with pytest.raises(ConfigError, match="unclosed bracket"):
        parse_scorer_spec("ensemble_entropy@members=[a.safetensors")


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0, 2.0, 3.0])
def test_pgu_delta_norm_is_exact_for_ties_and_keeps_precision_on_confident_pixels(p):
    from anomaly_seg_ros.scoring.pgu import delta_power_sum

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g) * 4
    logits[0, :, 0, 0] = 0.0  # a 5-way tie: arg-max takes the first, the other four keep 1/5 each
    logits[0, 1:3, 0, 1] = 2.0  # a 2-way tie
    logits[1, 0, 2, 3] = 20.0  # confident: 1 - p_max ~ 1e-9 rounds to 0 in float32 (eps 6e-8)
    # reference: the definition, softmax minus the one-hot of torch's arg-max, in float64
    z = logits.double()
    delta = torch.softmax(z, dim=1) - F.one_hot(z.argmax(dim=1), 5).movedim(-1, 1).double()
    expected = delta.abs().pow(p).sum(dim=1)
    torch.testing.assert_close(delta_power_sum(logits, p).double(), expected, rtol=2e-5, atol=0.0)
    assert float(expected[0, 0, 0]) == pytest.approx(4 * 0.2**p + 0.8**p)


def _suppression_by_loops(scores: np.ndarray, labels: np.ndarray, width: int, iterations: int) -> np.ndarray:
    """SML boundary suppression (Jung et al. 2021) pixel by pixel, edges clamped (replicate padding)."""
    h, w = labels.shape

    def at(y: int, x: int) -> tuple[int, int]:
        return min(max(y, 0), h - 1), min(max(x, 0), w - 1)

    boundary = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            cross = max(labels[at(y + dy, x + dx)] for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)))
            box = min(labels[at(y + dy, x + dx)] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            boundary[y, x] = cross != box
    out = scores.copy()
    step = width // iterations
    for i in range(iterations):
        radius = 0 if i == iterations - 1 else width - step * i - 1
        near = np.zeros((h, w), bool)
        for y, x in zip(*np.nonzero(boundary), strict=True):
            for yy in range(h):
                for xx in range(w):
                    near[yy, xx] |= abs(yy - y) + abs(xx - x) <= radius
        new = out.copy()
        for y, x in zip(*np.nonzero(near), strict=True):
            cells = [at(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            kept = [out[c] for c in cells if not near[c]]
            if kept:
                new[y, x] = sum(kept) / len(kept)
        out = new
    return out


def test_sml_boundary_suppression_matches_the_pixel_loop_definition():
    from anomaly_seg_ros.scoring.sml import boundary_suppression

    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 3, (4, 5)), 4, axis=0), 4, axis=1)[:14, :18]
    scores = rng.normal(size=labels.shape)
    out = boundary_suppression(
        torch.from_numpy(scores)[None, None], torch.from_numpy(labels)[None, None], width=4, iterations=4
    )
    np.testing.assert_allclose(out[0, 0].numpy(), _suppression_by_loops(scores, labels, 4, 4), rtol=1e-12)
