"""Benchmark readers on miniatures of the published layouts (same names, same label values)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_seg_ros.common.errors import DatasetError
from anomaly_seg_ros.data import AnomalyDataset, render_scene, write_anomaly_set
from anomaly_seg_ros.data.benchmarks import BENCHMARK_KINDS, detect_kind, open_anomaly_dataset

H, W = 24, 32


def _image(seed: int) -> np.ndarray:
    """Smooth RGB ramps (JPEG keeps them close), different per seed; the channels differ by 25 levels each,
    so an RGB / BGR mix-up is far outside the JPEG tolerance."""
    rows, cols = np.mgrid[0:H, 0:W]
    channels = [20 + 10 * (seed % 5) + 25 * c + 3 * rows + 2 * cols for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def _raw_labels(values: list[int], seed: int) -> np.ndarray:
    """Stripes of the given raw label values, shifted by seed so frames differ."""
    rows = (np.arange(H)[:, None] + seed + np.zeros((1, W), dtype=int)) % len(values)
    return np.asarray(values, dtype=np.uint8)[rows]


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if path.suffix == ".webp" else []  # 101 = lossless webp
    assert cv2.imwrite(str(path), data, params)


def _check_items(dataset, images, expected_labels, names, *, lossy: bool = False) -> None:
    assert len(dataset) == len(images)
    assert dataset.names == names
    for (image, labels, name), want_image, want_labels, want_name in zip(
        dataset.items(), images, expected_labels, names, strict=True
    ):
        assert name == want_name
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        assert labels.dtype == np.uint8 and labels.shape == (H, W)
        if lossy:  # JPEG: close, and still RGB (a BGR mix-up would be off by far more)
            assert np.abs(image.astype(int) - want_image).mean() < 6
        else:
            assert np.array_equal(image, want_image)
        assert np.array_equal(labels, want_labels)


def test_smiyc_anomaly_track_layout(tmp_path):
    # SMIYC download: images/<fid>.jpg, labels_masks/<fid>_labels_semantic.png (0/1/255) next to a colour
    # preview, and test frames without labels.
    root = tmp_path / "dataset_AnomalyTrack"
    images, labels = [_image(0), _image(1)], [_raw_labels([0, 1, 255], 0), _raw_labels([0, 1, 255], 1)]
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        _write(root / "images" / f"validation{index:04d}.jpg", image)
        _write(root / "labels_masks" / f"validation{index:04d}_labels_semantic.png", label)
        _write(root / "labels_masks" / f"validation{index:04d}_labels_semantic_color.png", image)
    _write(root / "images" / "airplane0000.jpg", _image(2))
    dataset = open_anomaly_dataset("smiyc_anomaly", root)
    _check_items(dataset, images, labels, ["validation0000", "validation0001"], lossy=True)
    assert [p.name for p in dataset.unlabelled] == ["airplane0000.jpg"]
    assert detect_kind(root) == "smiyc_anomaly"


def test_smiyc_obstacle_track_webp_and_course_code_mask_names(tmp_path):
    # RoadObstacle21 as distributed with the ERFNet course code: images/<fid>.webp, labels_masks/<fid>.png.
    root = tmp_path / "RoadObsticle21"
    images = [_image(3), _image(4)]
    labels = [_raw_labels([255, 0, 0, 1], 0), _raw_labels([255, 0, 1], 2)]  # off-road already void
    for name, image, label in zip(("curvy-street_00", "gravel_01"), images, labels, strict=True):
        _write(root / "images" / f"{name}.webp", image)
        _write(root / "labels_masks" / f"{name}.png", label)
    dataset = open_anomaly_dataset("auto", root)
    assert dataset.kind == "smiyc_obstacle"
    _check_items(dataset, images, labels, ["curvy-street_00", "gravel_01"])


@pytest.mark.parametrize("published", [True, False])
def test_road_anomaly_maps_two_to_anomaly(tmp_path, published):
    root = tmp_path / "RoadAnomaly"
    images = [_image(5), _image(6)]
    raw = [_raw_labels([0, 2, 0], 0), _raw_labels([0, 0, 2], 1)]
    expected = [np.where(r == 2, 1, 0).astype(np.uint8) for r in raw]
    names = ["animals01_Guiguinto_railway_station_Calves", "cones01_Beeston_MMB_A6_Middle_Street"]
    for name, image, label in zip(names, images, raw, strict=True):
        if published:  # RoadAnomaly_jpg: frames/<name>.jpg + frames/<name>.labels/labels_semantic.png
            _write(root / "frames" / f"{name}.jpg", image)
            _write(root / "frames" / f"{name}.labels" / "labels_semantic.png", label)
        else:  # common evaluation code: images/<name>.jpg + labels_masks/<name>.png
            _write(root / "images" / f"{name}.jpg", image)
            _write(root / "labels_masks" / f"{name}.png", label)
    _check_items(open_anomaly_dataset("road_anomaly", root), images, expected, names, lossy=True)
    assert detect_kind(root) == "road_anomaly"


@pytest.mark.parametrize(
    ("kind", "folder", "suffix"),
    [("fs_lost_and_found", "FS_LostFound_full", ".png"), ("fs_static", "fs_static", ".jpg")],
)
def test_fishyscapes_layouts(tmp_path, kind, folder, suffix):
    root = tmp_path / folder
    images = [_image(7), _image(8)]
    labels = [_raw_labels([0, 255, 1], 0), _raw_labels([0, 0, 255], 0)]
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        _write(root / "images" / f"{index}{suffix}", image)
        _write(root / "labels_masks" / f"{index}.png", label)
    _check_items(open_anomaly_dataset(kind, root), images, labels, ["0", "1"], lossy=suffix == ".jpg")
    assert detect_kind(root) == kind


def test_lost_and_found_cityscapes_layout_and_label_ids(tmp_path):
    root = tmp_path / "dataset_LostAndFound"
    raw = _raw_labels([0, 1, 2, 5, 200, 201, 250], 0)
    # labelIds: 0 ignore, 1 free space -> 0, 2..200 obstacles -> 1, anything else ignore.
    lookup = {0: 255, 1: 0, 2: 1, 5: 1, 200: 1, 201: 255, 250: 255}
    expected = np.vectorize(lookup.get)(raw).astype(np.uint8)
    names = ["01_Hanns_Klemm_Str_45_000000_000080", "04_Maurener_Weg_8_000001_000030"]
    images = [_image(9), _image(10)]
    for name, image in zip(names, images, strict=True):
        scene = name[: name.index("_0000")]
        _write(root / "leftImg8bit" / "test" / scene / f"{name}_leftImg8bit.png", image)
        _write(root / "gtCoarse" / "test" / scene / f"{name}_gtCoarse_labelIds.png", raw)
        _write(root / "gtCoarse" / "test" / scene / f"{name}_gtCoarse_instanceIds.png", raw)  # not read
    _check_items(open_anomaly_dataset("lost_and_found", root, split="test"), images, [expected] * 2, names)
    assert detect_kind(root) == "lost_and_found"
    with pytest.raises(DatasetError, match="leftImg8bit/train"):
        open_anomaly_dataset("lost_and_found", root, split="train")


def test_synthetic_set_reads_like_anomaly_dataset(tmp_path):
    scenes = [render_scene(seed, height=H, width=W, num_anomalies=1) for seed in range(2)]
    write_anomaly_set(tmp_path / "anomaly", scenes, name_prefix="synth")
    dataset = open_anomaly_dataset("synthetic", tmp_path / "anomaly")
    reference = AnomalyDataset(tmp_path / "anomaly")
    _check_items(dataset, [s.image for s in scenes], [s.anomaly for s in scenes], ["synth_000000", "synth_000001"])
    for (image, labels), (want_image, want_labels) in zip(dataset, reference, strict=True):
        assert np.array_equal(image, want_image) and np.array_equal(labels, want_labels)
    assert detect_kind(tmp_path / "anomaly") == "synthetic"


def test_errors_name_the_file_or_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_anomaly_dataset("fs_static", tmp_path / "missing")
    with pytest.raises(DatasetError, match=r"images/<stem>"):
        open_anomaly_dataset("fs_static", tmp_path)
    with pytest.raises(DatasetError, match="unknown anomaly dataset kind 'cityscapes'"):
        open_anomaly_dataset("cityscapes", tmp_path)
    with pytest.raises(DatasetError, match="cannot detect"):
        open_anomaly_dataset("auto", tmp_path)

    root = tmp_path / "fs"
    _write(root / "images" / "a.png", _image(0))
    _write(root / "images" / "b.png", _image(1))
    _write(root / "labels_masks" / "a.png", _raw_labels([0, 3], 0))  # 3 is not a Fishyscapes value
    with pytest.raises(DatasetError, match=r"b\.png has no mask .*labels_masks/b\.png"):
        open_anomaly_dataset("fs_lost_and_found", root)
    (root / "images" / "b.png").unlink()
    dataset = open_anomaly_dataset("fs_lost_and_found", root)
    with pytest.raises(DatasetError, match=r"a\.png: values \[3\] are not fs_lost_and_found label values"):
        dataset[0]
    _write(root / "labels_masks" / "a.png", _image(0))  # a colour image where a mask belongs
    with pytest.raises(DatasetError, match="single-channel"):
        dataset[0]
    _write(root / "labels_masks" / "a.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match="does not match its image size"):
        dataset[0]

    smiyc = tmp_path / "smiyc"
    _write(smiyc / "images" / "test0000.jpg", _image(0))
    (smiyc / "labels_masks").mkdir()
    with pytest.raises(DatasetError, match="none of the 1 images"):
        open_anomaly_dataset("smiyc_anomaly", smiyc)
    assert set(BENCHMARK_KINDS) >= {"road_anomaly", "fs_static", "smiyc_obstacle", "lost_and_found", "synthetic"}
