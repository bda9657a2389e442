"""``anomaly-seg evaluate``: the grid's artefacts, its numbers against scikit-learn, resumability
and the shared forward pass. A random-weight ERFNet at 64x128 on 4 synthetic anomaly scenes."""

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.data.datasets import AnomalyDataset, CityscapesDataset
from anomaly_seg_ros.data.layout import generate_datasets
from anomaly_seg_ros.evaluation.grid import (
    best_f1_threshold,
    load_streaming_metrics,
    parse_dataset_spec,
    parse_scorer_spec,
    save_streaming_metrics,
)
from anomaly_seg_ros.evaluation.plots import score_counts
from anomaly_seg_ros.metrics import StreamingOODMetrics
from anomaly_seg_ros.models import build_model, save_checkpoint
from anomaly_seg_ros.models.erfnet import Encoder
from anomaly_seg_ros.scoring import registry as scoring_registry
from anomaly_seg_ros.scoring.softmax import MaxSoftmax
from anomaly_seg_ros.tools import evaluate as evaluate_tool

SIZE = (64, 128)
FITTED_T = 1.7


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = generate_datasets(
        root / "synth", num_train=0, num_val=2, num_anomaly=4, height=SIZE[0], width=SIZE[1], seed=5
    )
    torch.manual_seed(0)
    model = build_model("erfnet", num_classes=19)
    checkpoint = save_checkpoint(
        model, root / "tiny.safetensors", metadata={"input_size": list(SIZE), "temperature": FITTED_T}
    )
    return {"root": root, "synth": root / "synth", "cityscapes": data["cityscapes_root"], "checkpoint": checkpoint}


@pytest.fixture
def forwards(monkeypatch):
    """Counts network forward passes (every ERFNet pass, with or without features, runs the encoder)."""
    calls = {"n": 0}
    original = Encoder.forward

    def counting(self, x, *args, **kwargs):
        calls["n"] += x.shape[0]
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(Encoder, "forward", counting)
    return calls


def main(argv: list[str]) -> int:
    """``anomaly-seg evaluate`` without importing the other subcommands (tested in test_cli.py)."""
    parser = argparse.ArgumentParser(prog="anomaly-seg")
    evaluate_tool.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def _evaluate(assets, out: Path, scorers, *extra: str) -> int:
    args = ["evaluate", "--checkpoint", str(assets["checkpoint"]), "--out", str(out), "--no-progress"]
    for scorer in scorers:
        args += ["--scorer", scorer]
    return main([*args, "--dataset", f"synthetic:{assets['synth']}", *extra])


def _logits(assets, image: np.ndarray) -> torch.Tensor:
    """The network's logits for ``image`` from the deployment pipeline (its backend's numerics:
    a channels-last pass differs from a plain one in the last bits, which can swap ranks)."""
    perception = Perception.from_config(
        load_config(None, [f"model.weights={assets['checkpoint']}", "alerts.threshold=0"])
    )
    return perception.infer(image)[0].logits


def _reference_scores(assets) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores by the seed's formulas on the network's logits, pooled over the valid pixels."""
    scores: dict[str, list[np.ndarray]] = {"msp": [], "msp@temperature=0.5": [], "maxlogit": [], "msp@T=fitted": []}
    labels = []
    for image, truth in AnomalyDataset(assets["synth"] / "anomaly"):
        logits = _logits(assets, image)
        # Seed 000 eq. 2/3/5. The registered MSP reduces the same formula through logsumexp, whose
        # rounding differs in the last bits; saturated pixels (MSP ~ 1) then tie differently, which
        # moves FPR95 by a pixel. So the formula is checked against it, and its values are used.
        msp = MaxSoftmax.score
        maps = {"msp": msp(logits), "msp@temperature=0.5": msp(logits, 0.5), "msp@T=fitted": msp(logits, FITTED_T)}
        for key, temperature in (("msp", 1.0), ("msp@temperature=0.5", 0.5), ("msp@T=fitted", FITTED_T)):
            torch.testing.assert_close(maps[key], -torch.softmax(logits / temperature, 1).amax(1), atol=1e-6, rtol=0)
        maps["maxlogit"] = -logits.amax(1)
        keep = truth != 255
        for key, value in maps.items():
            value = F.interpolate(value[:, None], size=truth.shape, mode="bilinear", align_corners=False)[0, 0]
            scores[key].append(value.numpy()[keep])
        labels.append(truth[keep])
    return {key: np.concatenate(value) for key, value in scores.items()}, np.concatenate(labels)


def test_grid_writes_every_artefact_and_its_numbers_match_sklearn(assets, tmp_path):
    out = tmp_path / "grid"
    scorers = ["msp", "msp@T=0.5", "maxlogit", "msp@T=fitted"]
    assert _evaluate(assets, out, scorers, "--segmentation", str(assets["cityscapes"])) == 0

    results = json.loads((out / "results.json").read_text())
    (dataset_key,) = results["datasets"]
    for kind in ("pr", "roc", "hist"):
        assert (out / "plots" / f"{kind}_{dataset_key}.png").stat().st_size > 1000
    assert len(list((out / "plots").glob("examples_*.png"))) == 1
    assert sorted(results["plots"]) == ["examples", "histogram", "pr", "roc"]
    markdown = (out / "table.md").read_text()
    assert "| Method | mIoU | Synthetic AuPRC | Synthetic FPR95 |" in markdown
    assert f"MSP (fitted T={FITTED_T:g})" in markdown

    with (out / "table.csv").open() as handle:
        table = {row["scorer"]: row for row in csv.DictReader(handle)}
    assert list(table) == ["msp", "msp@temperature=0.5", "maxlogit", "msp@temperature=fitted"]
    reference, labels = _reference_scores(assets)
    rows = {row["scorer"]: row for row in results["rows"]}
    for key, expected in reference.items():
        key = "msp@temperature=fitted" if key == "msp@T=fitted" else key
        summary = rows[key]["datasets"][dataset_key]["summary"]
        ap = average_precision_score(labels, expected)
        fpr, tpr, _ = roc_curve(labels, expected, drop_intermediate=False)
        fpr95 = fpr[np.argmax(tpr >= 0.95)]
        assert float(table[key]["Synthetic AuPRC"]) == pytest.approx(100 * ap, abs=1e-9)
        assert float(table[key]["Synthetic FPR95"]) == pytest.approx(100 * fpr95, abs=1e-9)
        assert summary["auroc"] == pytest.approx(roc_auc_score(labels, expected), abs=1e-12)
        assert summary["num_anomaly"] == int(labels.sum()) and summary["exact"] is True
        assert summary["error_bounds"] == {"ap": 0.0, "auroc": 0.0, "fpr": 0.0}
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {rows[key]['method']} |"))
        assert line.split(" | ")[2] == f"{100 * ap:.2f}"

    # mIoU: arg-max labels at the image size (nearest) against sklearn's confusion matrix
    predictions, truths = [], []
    for image, truth in CityscapesDataset(assets["cityscapes"], "val"):
        logits = _logits(assets, image)  # network input = image size here, so no resize
        predictions.append(logits.argmax(1)[0].numpy()[truth != 255])
        truths.append(truth[truth != 255])
    matrix = confusion_matrix(np.concatenate(truths), np.concatenate(predictions), labels=range(19))
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    miou = np.mean(np.diag(matrix)[union > 0] / union[union > 0])
    assert float(table["msp"]["mIoU"]) == pytest.approx(100 * miou, abs=1e-9)


def test_a_second_run_reuses_finished_cells_and_computes_only_missing_scorers(assets, tmp_path, forwards):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(assets["checkpoint"].read_bytes())
    assets = dict(assets, checkpoint=checkpoint)
    out = tmp_path / "grid"
    seg = ("--segmentation", str(assets["cityscapes"]), "--no-plots")
    assert _evaluate(assets, out, ["msp", "maxlogit"], *seg) == 0
    assert forwards["n"] == 4 + 2  # 4 anomaly scenes, 2 segmentation scenes
    first = (out / "table.csv").read_text().splitlines()

    forwards["n"] = 0
    assert _evaluate(assets, out, ["msp", "maxlogit"], *seg) == 0
    assert forwards["n"] == 0
    assert (out / "table.csv").read_text().splitlines() == first

    assert _evaluate(assets, out, ["msp", "maxlogit", "energy"], *seg) == 0
    assert forwards["n"] == 4  # one pass over the anomaly set for the new scorer; segmentation reused
    extended = (out / "table.csv").read_text().splitlines()
    assert extended[:3] == first and extended[3].startswith("energy,Energy,")

    # another TPR for the FPR column is recomputed from the saved streaming states, without the network
    assert _evaluate(assets, out, ["msp"], *seg, "--tpr", "0.9") == 0
    assert forwards["n"] == 4
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert next(iter(row["datasets"].values()))["summary"]["tpr"] == 0.9

    # new weights in the same file invalidate its cells
    forwards["n"] = 0
    torch.manual_seed(1)
    save_checkpoint(build_model("erfnet", num_classes=19), checkpoint, metadata={"input_size": list(SIZE)})
    assert _evaluate(assets, out, ["msp"], *seg) == 0
    assert forwards["n"] == 4 + 2
    assert (out / "table.csv").read_text().splitlines()[1] != first[1]


def test_the_forward_pass_is_shared_by_all_scorers(assets, tmp_path, forwards):
    assert _evaluate(assets, tmp_path / "one", ["msp"], "--no-plots") == 0
    assert forwards["n"] == 4
    forwards["n"] = 0
    six = ["msp", "msp@T=0.5", "msp@T=0.75", "maxlogit", "maxentropy", "energy"]
    assert _evaluate(assets, tmp_path / "six", six, "--no-plots") == 0
    assert forwards["n"] == 4
    one = json.loads((tmp_path / "one" / "results.json").read_text())["rows"][0]["datasets"]
    same = json.loads((tmp_path / "six" / "results.json").read_text())["rows"][0]["datasets"]
    assert one == same


def test_an_unfitted_scorer_is_reported_with_the_fit_command_and_the_others_go_on(assets, tmp_path, monkeypatch):
    fitting = pytest.importorskip("anomaly_seg_ros.scoring.fitting")

    class NeedsFit(fitting.FittedScorer):
        name = "needs_fit_test"

        @property
        def fitted(self) -> bool:
            return False

    monkeypatch.setitem(scoring_registry._REGISTRY, NeedsFit.name, NeedsFit)
    assert _evaluate(assets, tmp_path / "grid", ["needs_fit_test", "msp"], "--no-plots") == 0
    rows = {row["scorer"]: row for row in json.loads((tmp_path / "grid" / "results.json").read_text())["rows"]}
    (cell,) = rows["needs_fit_test"]["datasets"].values()
    assert "fit-scorer needs_fit_test" in cell["error"] and "summary" not in cell
    (cell,) = rows["msp"]["datasets"].values()
    assert 0.0 < cell["summary"]["ap"] <= 1.0
    assert (
        "- error: needs_fit_test on Synthetic: scorer 'needs_fit_test' needs a fit"
        in (tmp_path / "grid" / "table.md").read_text()
    )


@pytest.mark.parametrize("buffer_size", [10_000, 50])
def test_streaming_state_round_trip_keeps_every_metric(tmp_path, buffer_size):
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.1).astype(np.uint8)
    scores = rng.normal(size=2000).astype(np.float32) + 1.5 * labels
    metrics = StreamingOODMetrics(num_bins=512, buffer_size=buffer_size)
    for chunk in range(4):
        metrics.update(scores[chunk * 500 : (chunk + 1) * 500], labels[chunk * 500 : (chunk + 1) * 500])
    save_streaming_metrics(tmp_path / "state.npz", metrics)
    loaded = load_streaming_metrics(tmp_path / "state.npz")
    assert loaded.exact == (buffer_size == 10_000)
    assert loaded.summary() == metrics.summary()
    if loaded.exact:
        assert loaded.average_precision() == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    # more pixels after reloading land in the same state as without the round trip
    loaded.update(scores[:100], labels[:100])
    metrics.update(scores[:100], labels[:100])
    assert loaded.summary() == metrics.summary()


def test_histogram_counts_of_the_plots_are_the_pixel_counts():
    scores = np.array([0.1, 0.1, 0.5, 0.9, 0.9, 0.9], dtype=np.float32)
    labels = np.array([0, 1, 0, 1, 1, 0], dtype=np.uint8)
    metrics = StreamingOODMetrics()
    metrics.update(scores, labels)
    values, positive, negative = score_counts(metrics)
    assert values.tolist() == pytest.approx([0.9, 0.5, 0.1])
    assert positive.tolist() == [2, 0, 1] and negative.tolist() == [1, 1, 1]


def test_bad_specs_are_config_errors_that_name_the_problem(tmp_path):
    spec = parse_scorer_spec("msp@T=0.5")
    assert spec.key == "msp@temperature=0.5"
    assert spec.resolve({})[1] == "MSP (T=0.5)"
    assert parse_scorer_spec("msp@T=fitted").resolve({"temperature": 2.13}) == (
        {"temperature": 2.13},
        "MSP (fitted T=2.13)",
    )
    for text, words in (
        ("msp@T=-1", "temperature must be a number > 0"),
        ("msp@T", "is not KEY=VALUE"),
        ("nosuch", "unknown scorer 'nosuch'"),
        ("maxlogit@T=2", "'maxlogit' takes no parameters"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_scorer_spec(text)
    with pytest.raises(ConfigError, match="expected KIND:ROOT"):
        parse_dataset_spec("synthetic")
    with pytest.raises(ConfigError, match="is not a folder"):
        parse_dataset_spec(f"synthetic:{tmp_path / 'missing'}")
    missing = ["--checkpoint", str(tmp_path / "none.safetensors"), "--dataset", f"synthetic:{tmp_path}"]
    with pytest.raises(ConfigError, match="none.safetensors does not exist"):
        main(["evaluate", *missing, "--out", str(tmp_path / "o"), "--no-progress"])


def test_best_f1_threshold_is_sklearns_and_component_metrics_use_it(assets, tmp_path):
    rng = np.random.default_rng(1)
    labels = (rng.random(3000) < 0.2).astype(np.uint8)
    scores = np.round(rng.normal(size=3000) + labels, 2).astype(np.float32)  # ties on purpose
    metrics = StreamingOODMetrics()
    metrics.update(scores, labels)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    expected = thresholds[np.argmax(f1[:-1])]
    threshold = best_f1_threshold(metrics)
    # flags exactly the pixels sklearn's threshold flags (>=), through ComponentMetrics' strict >
    assert np.array_equal(scores > threshold, scores >= expected)

    out = tmp_path / "grid"
    assert _evaluate(assets, out, ["maxlogit"], "--components", "obstacle", "--no-plots") == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    (cell,) = row["datasets"].values()
    assert cell["components"]["track"] == "obstacle" and cell["components"]["num_frames"] == 4
    assert cell["components"]["min_gt_size"] == 10
    assert "## Component metrics" in (out / "table.md").read_text()


def test_scorer_specs_take_list_values_split_on_top_level_commas_only():
    from anomaly_seg_ros.evaluation.grid import split_top_level

    # the comma inside [...] belongs to the value; the quoted one inside a list item too
    parts = split_top_level('m=[a,b],T=2,n={k: [1, 2]},q=["x,y", z]')
    assert parts == ["m=[a,b]", "T=2", "n={k: [1, 2]}", 'q=["x,y", z]']
    assert split_top_level("path=/data/O'Brien/a.safetensors,T=2") == ["path=/data/O'Brien/a.safetensors", "T=2"]
    spec = parse_scorer_spec("ensemble_entropy@members=[a.safetensors,b.safetensors]")
    assert spec.name == "ensemble_entropy" and spec.params == (("members", ("a.safetensors", "b.safetensors")),)
    # the YAML flow form is the same spec (same key, so the same cell files)
    flow = parse_scorer_spec("ensemble_entropy@{members: [a.safetensors, b.safetensors]}")
    assert flow == spec and hash(flow) == hash(spec)
    assert spec.key == "ensemble_entropy@members=[a.safetensors,b.safetensors]"
    params, title = spec.resolve({})
    assert params == {"members": ("a.safetensors", "b.safetensors")}
    assert title == "ensemble_entropy (members=[a.safetensors,b.safetensors])"
    # the scorer built from the resolved parameters has the members, in order
    assert scoring_registry.get_scorer("ensemble_entropy", **params).members == ("a.safetensors", "b.safetensors")
    # booleans and numbers next to a list; T still means temperature in both forms
    pgu = parse_scorer_spec("pgu@p=0.5,bias=false")
    assert pgu.params == (("p", 0.5), ("bias", False))
    assert scoring_registry.get_scorer("pgu", **dict(pgu.params)).params == {"p": 0.5, "bias": False}
    assert parse_scorer_spec("msp@{T: 0.5}") == parse_scorer_spec("msp@T=0.5")
    for text, words in (
        ("ensemble_entropy@members=[a.safetensors,b.safetensors", "unclosed bracket"),
        ("ensemble_entropy@members=a]", "unbalanced"),
        ("ensemble_entropy@members=[[a]", "unclosed bracket"),
        ("msp@{T: 0.5", "not a YAML flow mapping"),
        ("msp@{0.5}", r"expected NAME@\{key: value"),
        ("msp@T=0.5,T=2", "'temperature' is given twice"),
        ("msp@T=true", "temperature must be a number > 0"),
        ("pgu@p={a: 1}", "values are numbers, true/false, strings or lists"),
        ("ensemble_entropy@members=[]", "non-empty list of checkpoint paths"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_scorer_spec(text)


def test_miou_of_a_void_class_model_averages_the_19_classes_only(assets, tmp_path):
    """A 20-class model's void predictions are misses of the true class; void itself is no class
    (the ground truth has none), as in the Cityscapes benchmark and the seed's iouEval."""
    torch.manual_seed(1)
    model = build_model("erfnet", num_classes=20)
    image, _ = CityscapesDataset(assets["cityscapes"], "val")[0]
    with torch.no_grad():  # void wins on about half the pixels, as with a trained void class
        logits = model.eval()(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
        margin = logits[:, :19].amax(1) - logits[:, 19]
        model.decoder.output_conv.bias[19] += margin.median()
    checkpoint = save_checkpoint(model, tmp_path / "void.safetensors", metadata={"input_size": list(SIZE)})
    out = tmp_path / "grid"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--scorer", "msp", "--out", str(out), "--no-progress"]
    assert main([*args, "--segmentation", str(assets["cityscapes"]), "--no-plots"]) == 0
    segmentation = next(iter(json.loads((out / "results.json").read_text())["checkpoints"].values()))["segmentation"]

    perception = Perception.from_config(load_config(None, [f"model.weights={checkpoint}", "alerts.threshold=0"]))
    predictions, truths = [], []
    for image, truth in CityscapesDataset(assets["cityscapes"], "val"):
        predictions.append(perception.infer(image)[0].logits.argmax(1)[0].numpy()[truth != 255])
        truths.append(truth[truth != 255])
    matrix = confusion_matrix(np.concatenate(truths), np.concatenate(predictions), labels=range(20))
    assert matrix[:19, 19].sum() > 0  # the case at issue: void is predicted
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    scored = union[:19] > 0
    miou = np.mean(np.diag(matrix)[:19][scored] / union[:19][scored])
    assert segmentation["miou"] == pytest.approx(miou, abs=1e-12)
    assert len(segmentation["iou"]) == 19 and segmentation["void_predicted"] == int(matrix[:19, 19].sum())


def test_auto_datasets_are_named_by_the_kind_found(assets, tmp_path):
    root = tmp_path / "fs_static_val"  # the Fishyscapes layout and folder name
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    spec = parse_dataset_spec(f"auto:{root}")
    assert (spec.kind, spec.title) == ("fs_static", "FS Static")
    synthetic = parse_dataset_spec(f"auto:{assets['synth'] / 'anomaly'}")
    assert (synthetic.kind, synthetic.title) == ("synthetic", "Synthetic")
