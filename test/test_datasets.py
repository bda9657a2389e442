"""Dataset writers and readers: exact PNG round trips, file layouts, errors that name the file."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_seg_ros.data import (
    AnomalyDataset,
    CityscapesDataset,
    generate_datasets,
    render_scene,
    write_anomaly_set,
    write_cityscapes_split,
)
from anomaly_seg_ros.errors import DatasetError
from anomaly_seg_ros.tools import synth

H, W = 64, 128


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(seed, height=H, width=W, num_anomalies=1 + seed % 2) for seed in range(3)]


def test_cityscapes_round_trip_is_exact_with_cityscapes_names(tmp_path, scenes):
    assert write_cityscapes_split(tmp_path, "train", scenes, city="synth") == 3
    dataset = CityscapesDataset(tmp_path, "train")
    assert len(dataset) == 3
    for index, path in enumerate(dataset.image_paths):
        assert path == tmp_path / "leftImg8bit" / "train" / "synth" / f"synth_000000_{index:06d}_leftImg8bit.png"
        assert re.fullmatch(r"synth_000000_\d{6}_gtFine_labelTrainIds\.png", dataset.label_paths[index].name)
        assert dataset.label_paths[index].parent == tmp_path / "gtFine" / "train" / "synth"
    for (image, labels), scene in zip(dataset, scenes, strict=True):
        assert image.dtype == np.uint8 and labels.dtype == np.uint8
        assert np.array_equal(image, scene.image)  # RGB in, RGB out (BGR only on disk)
        assert np.array_equal(labels, scene.labels)


def test_anomaly_round_trip_is_exact_with_fishyscapes_layout(tmp_path, scenes):
    assert write_anomaly_set(tmp_path, scenes, name_prefix="synth") == 3
    dataset = AnomalyDataset(tmp_path)
    assert [path.name for path in dataset.image_paths] == [f"synth_{i:06d}.png" for i in range(3)]
    assert [path.parent.name for path in dataset.label_paths] == ["labels_masks"] * 3
    for (image, mask), scene in zip(dataset, scenes, strict=True):
        assert np.array_equal(image, scene.image)
        assert np.array_equal(mask, scene.anomaly)
        assert set(np.unique(mask).tolist()) == {0, 1, 255}


def test_anomaly_images_may_be_jpg_or_webp(tmp_path, scenes):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels_masks").mkdir()
    for name, scene in zip(("a.jpg", "b.webp"), scenes[:2], strict=True):
        cv2.imwrite(str(tmp_path / "images" / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "labels_masks" / f"{Path(name).stem}.png"), scene.anomaly)
    dataset = AnomalyDataset(tmp_path)
    assert [path.name for path in dataset.image_paths] == ["a.jpg", "b.webp"]
    image, mask = dataset[0]
    assert image.shape == (H, W, 3)
    assert np.array_equal(mask, scenes[0].anomaly)


def test_readers_sort_files(tmp_path, scenes):
    write_cityscapes_split(tmp_path, "val", scenes, city="zurich")
    write_cityscapes_split(tmp_path, "val", scenes[:1], city="aachen")
    paths = CityscapesDataset(tmp_path, "val").image_paths
    assert paths == sorted(paths) and paths[0].parent.name == "aachen"


def test_missing_folders_and_empty_folders_name_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"leftImg8bit.*train"):
        CityscapesDataset(tmp_path, "train")
    (tmp_path / "leftImg8bit" / "train" / "synth").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        CityscapesDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"images.*labels_masks"):
        AnomalyDataset(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        AnomalyDataset(tmp_path)


def test_image_without_label_names_the_missing_file(tmp_path, scenes):
    write_cityscapes_split(tmp_path, "train", scenes[:2])
    missing = tmp_path / "gtFine" / "train" / "synth" / "synth_000000_000001_gtFine_labelTrainIds.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        CityscapesDataset(tmp_path, "train")
    write_anomaly_set(tmp_path / "anomaly", scenes[:2])
    missing = tmp_path / "anomaly" / "labels_masks" / "synth_000000.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        AnomalyDataset(tmp_path / "anomaly")


def test_label_values_outside_the_allowed_set_name_file_and_values(tmp_path, scenes):
    write_cityscapes_split(tmp_path, "train", scenes[:1])
    label_path = CityscapesDataset(tmp_path, "train").label_paths[0]
    labels = scenes[0].labels.copy()
    labels[0, :3] = (19, 33, 254)  # e.g. Cityscapes label ids instead of trainIds
    cv2.imwrite(str(label_path), labels)
    with pytest.raises(DatasetError, match=re.escape(str(label_path)) + r".*\[19, 33, 254\]"):
        CityscapesDataset(tmp_path, "train")[0]
    write_anomaly_set(tmp_path / "anomaly", scenes[:1])
    mask_path = tmp_path / "anomaly" / "labels_masks" / "synth_000000.png"
    cv2.imwrite(str(mask_path), np.where(scenes[0].anomaly == 1, 2, scenes[0].anomaly).astype(np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(mask_path)) + r".*\[2\]"):
        AnomalyDataset(tmp_path / "anomaly")[0]


def test_label_of_another_size_or_colour_is_rejected(tmp_path, scenes):
    write_anomaly_set(tmp_path, scenes[:2])
    cv2.imwrite(str(tmp_path / "labels_masks" / "synth_000000.png"), np.zeros((H // 2, W), np.uint8))
    cv2.imwrite(str(tmp_path / "labels_masks" / "synth_000001.png"), np.zeros((H, W, 3), np.uint8))
    dataset = AnomalyDataset(tmp_path)
    with pytest.raises(DatasetError, match="does not match its image size"):
        dataset[0]
    with pytest.raises(DatasetError, match="single-channel"):
        dataset[1]


def test_generate_datasets_writes_both_layouts_with_disjoint_seeds(tmp_path):
    written = generate_datasets(tmp_path, num_train=2, num_val=1, num_anomaly=2, height=H, width=W, seed=4)
    assert written["train"] == 2 and written["val"] == 1 and written["anomaly"] == 2
    train = CityscapesDataset(written["cityscapes_root"], "train")
    val = CityscapesDataset(written["cityscapes_root"], "val")
    anomaly = AnomalyDataset(written["anomaly_root"])
    assert (len(train), len(val), len(anomaly)) == (2, 1, 2)
    images = [item[0] for item in (*train, *val, *anomaly)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1 :])
    assert all((mask == 1).any() for _, mask in anomaly)
    again = generate_datasets(tmp_path / "again", num_train=1, num_val=0, num_anomaly=0, height=H, width=W, seed=4)
    assert np.array_equal(CityscapesDataset(again["cityscapes_root"], "train")[0][0], train[0][0])


def test_synth_command(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="anomaly-seg")
    synth.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(
        ["synth", str(out), "--train", "1", "--val", "1", "--anomaly", "1", "--height", "64", "--width", "96"]
    )
    assert args.run(args) == 0
    assert "train 1, val 1" in capsys.readouterr().out
    image, labels = CityscapesDataset(out / "cityscapes", "val")[0]
    assert image.shape == (64, 96, 3) and labels.shape == (64, 96)
    assert len(AnomalyDataset(out / "anomaly")) == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", str(out), "--train", "-1"])


def test_road_obstacle_view_ignores_everything_off_the_road():
    from anomaly_seg_ros.data.layout import road_obstacle_scene

    scene = render_scene(5, height=128, width=256, num_anomalies=2)
    view = road_obstacle_scene(scene)
    road = scene.labels == 0
    np.testing.assert_array_equal(view.anomaly[scene.anomaly == 1], 1)
    np.testing.assert_array_equal(view.anomaly[road], scene.anomaly[road])
    off_road = ~road & (scene.anomaly != 1)
    assert off_road.any() and (view.anomaly[off_road] == 255).all()
    assert view.image is scene.image and view.labels is scene.labels
