"""The real benchmark data and the authors' ENet checkpoint, where ``../shared/realdata`` exists.

The ``.pth`` (a bare state_dict with ``module.`` prefix) goes through the CLI as a user gives
it; the figures are checked against scikit-learn on scores this test computes itself from the
checkpoint's ``.safetensors`` twin (read with safetensors, not the project's loader), with its
own reading of each layout's images and label files. A few images per set keep it fast; the
full grid is ``make eval-real`` (docs/real_benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score, confusion_matrix, roc_curve

from anomaly_seg_ros.data.benchmarks import open_anomaly_dataset
from anomaly_seg_ros.models import build_model
from anomaly_seg_ros.tools.cli import main

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(
    not (REALDATA / "checkpoints" / "enet_void_yurnero14.pth").is_file(),
    reason=f"real benchmark data not found at {REALDATA} (a clone without ../shared/realdata)",
)
PTH = REALDATA / "checkpoints" / "enet_void_yurnero14.pth"
TWIN = REALDATA / "checkpoints" / "enet_void_yurnero14.safetensors"
NET = (256, 512)  # network input, half the trained size, to stay fast
PER_SET = 1
# folder -> (detected kind, table title, how its anomaly labels map: raw value -> 1 anomaly / 0 / 255 ignore)
SETS = {
    "RoadAnomaly_jpg": ("road_anomaly", "Road Anomaly", {0: 0, 2: 1}),
    "RoadAnomaly21": ("smiyc_anomaly", "SMIYC RA-21", {0: 0, 1: 1, 255: 255}),
    "RoadObsticle21": ("smiyc_obstacle", "SMIYC RO-21", {0: 0, 1: 1, 255: 255}),
    "fs_static": ("fs_static", "FS Static", {0: 0, 1: 1, 255: 255}),
    "FS_LostFound_subset": ("fs_lost_and_found", "FS L&F", {0: 0, 1: 1, 255: 255}),
}


def _pairs(folder: str) -> list[tuple[Path, Path]]:
    """(image, raw label file) of a set, in the published layout, read without the project's readers."""
    root = REALDATA / folder
    if folder == "RoadAnomaly_jpg":
        frames = sorted((root / "frames").glob("*.jpg"))
        return [(image, image.with_suffix(".labels") / "labels_semantic.png") for image in frames]
    images = sorted((root / "images").iterdir(), key=lambda p: int(p.stem))
    return [(image, root / "labels_masks" / f"{image.stem}.png") for image in images]


def _mask(path: Path, mapping: dict[int, int]) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    raw = raw if raw.ndim == 2 else raw[..., 0]
    mask = np.full(raw.shape, 255, np.uint8)
    for value, target in mapping.items():
        mask[raw == value] = target
    return mask


def _image(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def reference_model():
    """ENet with the twin's weights, loaded with safetensors and load_state_dict (no project loader)."""
    model = build_model("enet", num_classes=20)
    model.load_state_dict(load_file(str(TWIN)), strict=True)
    return model.eval()


def _logits(model, image: np.ndarray) -> torch.Tensor:
    """RGB 0..1, resized to the network input (bilinear, antialiased when shrinking, as the
    checkpoint's pipeline does), no normalisation: the checkpoint's training convention."""
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    small = F.interpolate(tensor, size=NET, mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        return model(small.float() / 255.0)


@pytest.fixture(scope="module")
def subsets(tmp_path_factory):
    """The first PER_SET images of each set, linked in their own layout under the set's folder name."""
    root = tmp_path_factory.mktemp("realdata")
    for folder in SETS:
        for image, label in _pairs(folder)[:PER_SET]:
            if folder == "RoadAnomaly_jpg":
                (root / folder / "frames").mkdir(parents=True, exist_ok=True)
                (root / folder / "frames" / image.name).symlink_to(image)
                (root / folder / "frames" / label.parent.name).symlink_to(label.parent)
            else:
                for sub, path in (("images", image), ("labels_masks", label)):
                    (root / folder / sub).mkdir(parents=True, exist_ok=True)
                    (root / folder / sub / path.name).symlink_to(path)
    return root


def test_layouts_are_detected_and_their_labels_mapped(subsets):
    for folder, (kind, _, mapping) in SETS.items():
        dataset = open_anomaly_dataset("auto", REALDATA / folder)
        assert dataset.kind == kind
        assert len(dataset) == len(_pairs(folder))
        labels = {image.stem: label for image, label in _pairs(folder)}
        for index in (0, len(dataset) - 1):
            image, truth = dataset[index]
            expected = _mask(labels[dataset.names[index]], mapping)
            assert image.shape[:2] == truth.shape == expected.shape
            np.testing.assert_array_equal(truth, expected)


def test_the_pth_loads_through_the_cli_and_its_figures_match_sklearn(subsets, reference_model, tmp_path, caplog):
    out = tmp_path / "grid"
    argv = ["evaluate", "--checkpoint", str(PTH), "--scorer", "msp", "maxlogit", "void"]
    argv += ["--dataset", *(f"auto:{subsets / folder}" for folder in SETS)]
    argv += [
        "--segmentation",
        str(REALDATA / "cityscapes_mmseg_sample"),
        "--set",
        f"model.input_size=[{NET[0]}, {NET[1]}]",
    ]
    argv += ["--out", str(out), "--no-plots", "--no-progress", "--exact-pixels", "20000000"]
    with caplog.at_level("WARNING", logger="anomaly_seg_ros.models.checkpoint"):
        assert main(argv) == 0
    # the loader says once what it inferred and which flags set what the file does not record
    notice = [record.getMessage() for record in caplog.records if "bare state_dict" in record.getMessage()]
    assert len(notice) == 1 and "enet with 20 classes" in notice[0] and "--set model.mean" in notice[0]

    results = json.loads((out / "results.json").read_text())
    titles = {item["title"]: key for key, item in results["datasets"].items()}
    assert sorted(titles) == sorted(title for _, title, _ in SETS.values())  # kinds named, not "auto"
    rows = {row["scorer"]: row for row in results["rows"]}
    for folder, (_, title, mapping) in SETS.items():
        scores: dict[str, list[np.ndarray]] = {"msp": [], "maxlogit": [], "void": []}
        labels = []
        for image_path, label_path in _pairs(folder)[:PER_SET]:
            image, truth = _image(image_path), _mask(label_path, mapping)
            logits = _logits(reference_model, image)
            probabilities = torch.softmax(logits, 1)
            maps = {"msp": -probabilities.amax(1), "maxlogit": -logits.amax(1), "void": probabilities[:, 19]}
            keep = truth != 255
            for key, value in maps.items():
                full = F.interpolate(value[:, None], size=truth.shape, mode="bilinear", align_corners=False)
                scores[key].append(full[0, 0].numpy()[keep])
            labels.append(truth[keep])
        truth_pixels = np.concatenate(labels)
        for key, values in scores.items():
            summary = rows[key]["datasets"][titles[title]]["summary"]
            expected = np.concatenate(values)
            fpr, tpr, _ = roc_curve(truth_pixels, expected, drop_intermediate=False)
            assert summary["num_anomaly"] == int(truth_pixels.sum()), (title, key)
            assert summary["ap"] == pytest.approx(average_precision_score(truth_pixels, expected), abs=2e-3), (
                title,
                key,
            )
            assert summary["fpr_at_tpr"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=5e-3), (title, key)

    # mIoU over the 19 Cityscapes classes: a pixel predicted void is a miss of its class, void is no class
    image_path = next((REALDATA / "cityscapes_mmseg_sample" / "leftImg8bit").rglob("*.png"))
    truth_path = next((REALDATA / "cityscapes_mmseg_sample" / "gtFine").rglob("*_labelTrainIds.png"))
    image, truth = _image(image_path), cv2.imread(str(truth_path), cv2.IMREAD_UNCHANGED)
    labels = _logits(reference_model, image).argmax(1, keepdim=True).float()
    predicted = F.interpolate(labels, size=truth.shape, mode="nearest")[0, 0].numpy().astype(np.int64)
    keep = truth != 255
    matrix = confusion_matrix(truth[keep], predicted[keep], labels=range(20))
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    iou = np.diag(matrix)[:19] / np.maximum(union[:19], 1)
    miou = iou[union[:19] > 0].mean()
    segmentation = results["checkpoints"][next(iter(results["checkpoints"]))]["segmentation"]
    assert len(segmentation["iou"]) == 19 and "void" not in segmentation["iou"]
    assert segmentation["miou"] == pytest.approx(miou, abs=2e-3)
    assert segmentation["void_predicted"] == int(matrix[:19, 19].sum())
