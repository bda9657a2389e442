"""Dataset writers and readers: exact PNG round trips, file layouts, errors that name the file."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.common.labels import PALETTE
from anomaly_seg_ros.data import (
    AnomalyDataset,
    CityscapesDataset,
    generate_datasets,
    render_scene,
    write_anomaly_set,
    write_cityscapes_split,
)
from anomaly_seg_ros.data.augment import Augmentation, sample_generator
from anomaly_seg_ros.data.cityscapes import convert_label_ids, label_ids_to_train_ids
from anomaly_seg_ros.inference.preprocess import resize_images, resize_labels
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


# -- Cityscapes label ids, label modes, layouts ---------------------------------------------

# The 19 evaluated Cityscapes classes by label id (Cordts et al., CVPR 2016, Table 1 / the
# benchmark's class list), in trainId order; every other label id is not evaluated.
EVALUATED_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def _label_ids_image() -> np.ndarray:
    """A 34x4 labelIds image holding every label id 0..33 in a row of its own."""
    return np.repeat(np.arange(34, dtype=np.uint8)[:, None], 4, axis=1)


def test_label_id_table_maps_the_evaluated_classes_in_order_and_ignores_the_rest():
    train_ids = label_ids_to_train_ids(_label_ids_image())[:, 0]
    expected = [EVALUATED_LABEL_IDS.index(i) if i in EVALUATED_LABEL_IDS else 255 for i in range(34)]
    assert train_ids.tolist() == expected
    with pytest.raises(DatasetError, match=r"values \[34, 200\] are not Cityscapes label ids"):
        label_ids_to_train_ids(np.array([[7, 34, 200]], np.uint8))


def _release_layout(root: Path, scenes) -> list[np.ndarray]:
    """Cityscapes as downloaded: images and *_gtFine_labelIds.png only; returns the label id maps."""
    write_cityscapes_split(root, "val", scenes, city="lindau")
    ids = []
    inverse = np.full(256, 0, np.uint8)  # trainId -> a label id; 255 -> 0 (unlabeled)
    inverse[: len(EVALUATED_LABEL_IDS)] = EVALUATED_LABEL_IDS
    for path in sorted((root / "gtFine" / "val" / "lindau").glob("*_gtFine_labelTrainIds.png")):
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        label_ids = inverse[labels]
        label_ids[labels == 255] = np.array([0, 4, 9, 29])[np.arange((labels == 255).sum()) % 4]  # varied void ids
        cv2.imwrite(str(path).replace("_labelTrainIds", "_labelIds"), label_ids)
        path.unlink()
        ids.append(label_ids)
    return ids


def test_release_label_ids_are_converted_on_the_fly_and_by_convert_label_ids(tmp_path, scenes):
    _release_layout(tmp_path, scenes)
    on_the_fly = CityscapesDataset(tmp_path, "val")
    assert all(on_the_fly.label_is_ids) and on_the_fly.label_paths[0].name.endswith("_gtFine_labelIds.png")
    for (_, labels), scene in zip(on_the_fly, scenes, strict=True):
        assert np.array_equal(labels, scene.labels)

    assert convert_label_ids(tmp_path) == 3
    assert convert_label_ids(tmp_path) == 0  # existing trainId files are kept
    assert convert_label_ids(tmp_path, ("val",), overwrite=True) == 3
    converted = CityscapesDataset(tmp_path, "val")
    assert not any(converted.label_is_ids)
    for (_, labels), scene in zip(converted, scenes, strict=True):
        assert np.array_equal(labels, scene.labels)
    with pytest.raises(DatasetError, match=r"gtFine/train.*<city>/\*_gtFine_labelIds.png"):
        convert_label_ids(tmp_path, ("train",))


def test_twenty_class_mode_trains_the_ignore_pixels_as_void(tmp_path, scenes):
    write_cityscapes_split(tmp_path, "train", scenes[:1])
    nineteen = CityscapesDataset(tmp_path, "train", num_classes=19)[0][1]
    twenty = CityscapesDataset(tmp_path, "train", num_classes=20)[0][1]
    ignored = nineteen == 255
    assert ignored.any() and (twenty[ignored] == 19).all()
    assert np.array_equal(twenty[~ignored], nineteen[~ignored]) and 255 not in twenty
    with pytest.raises(ConfigError, match="num_classes must be 19.*or 20.*got 21"):
        CityscapesDataset(tmp_path, "train", num_classes=21)


def test_malformed_cityscapes_folders_name_the_expected_pattern(tmp_path, scenes):
    write_cityscapes_split(tmp_path, "train", scenes[:1])
    (tmp_path / "flat" / "leftImg8bit" / "train").mkdir(parents=True)
    image = next((tmp_path / "leftImg8bit" / "train" / "synth").iterdir())
    (tmp_path / "flat" / "leftImg8bit" / "train" / image.name).write_bytes(image.read_bytes())
    with pytest.raises(DatasetError, match=r"leftImg8bit/train/<city>/\*_leftImg8bit.png \(1 images lie directly"):
        CityscapesDataset(tmp_path / "flat", "train")
    shutil.rmtree(tmp_path / "gtFine")
    with pytest.raises(DatasetError, match=r"no Cityscapes label folder .*gtFine/train: expected .*<city>/\*_gtFine"):
        CityscapesDataset(tmp_path, "train")
    bad = tmp_path / "gtFine" / "train" / "synth" / image.name.replace("leftImg8bit", "gtFine_labelIds")
    bad.parent.mkdir(parents=True)
    cv2.imwrite(str(bad), np.full((H, W), 40, np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + r".*\[40\] are not Cityscapes label ids"):
        CityscapesDataset(tmp_path, "train")[0]


# -- augmentation ---------------------------------------------------------------------------


def _colour_coded(height: int = 48, width: int = 96):
    """Blocks of labels 0..11 and an image whose colour is each pixel's label's palette colour."""
    rows, cols = np.meshgrid(np.arange(height) // 12, np.arange(width) // 16, indexing="ij")
    labels = ((rows * 6 + cols) % 12).astype(np.uint8)
    image = PALETTE[labels]
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(labels)


def test_augmentation_off_is_exactly_the_inference_resize():
    image, labels = _colour_coded()
    out_image, out_labels = Augmentation((32, 64))(image, labels, sample_generator(0, 0, 0))
    assert torch.equal(out_image, resize_images(image[None], (32, 64))[0])
    assert torch.equal(out_labels, resize_labels(labels[None], (32, 64))[0])


def test_geometric_augmentation_keeps_labels_on_their_pixels():
    image, labels = _colour_coded()
    augment = Augmentation((32, 64), scale_range=(0.5, 2.0), hflip=True)
    padded = flipped = 0
    for index in range(12):
        out_image, out_labels = augment(image, labels, sample_generator(3, 0, index))
        assert out_image.shape == (3, 32, 64) and out_labels.shape == (32, 64)
        # Compare where the 5x5 label neighbourhood is uniform: there the bilinear image and the
        # nearest-neighbour labels must agree (at block edges they legitimately blend).
        lab = out_labels.numpy().astype(np.int32)
        pad = np.pad(lab, 2, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(pad, (5, 5))
        uniform = (windows == lab[:, :, None, None]).all(axis=(2, 3))
        colours = out_image.permute(1, 2, 0).numpy().astype(np.int32)
        inside = uniform & (lab != 255)
        expected = PALETTE[lab[inside]].astype(np.int32)
        assert np.abs(colours[inside] - expected).max() <= 2, index
        assert (colours[uniform & (lab == 255)] == 0).all()  # padding: black pixels, ignored labels
        padded += bool((lab == 255).any())
        # A left-right flip shows as the top-left block's label appearing on the right.
        flipped += bool(lab[0, -1] == 0 and lab[0, 0] != 0)
    assert padded and flipped  # both cases were exercised


def test_augmentation_is_seeded_per_sample_and_epoch():
    image, labels = _colour_coded()
    augment = Augmentation((32, 64), scale_range=(0.75, 1.5), hflip=True, brightness=0.3)
    first = augment(image, labels, sample_generator(1, 0, 5))
    again = augment(image, labels, sample_generator(1, 0, 5))
    other_epoch = augment(image, labels, sample_generator(1, 1, 5))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other_epoch[0])


def test_colour_jitter_changes_pixels_not_labels():
    image, labels = _colour_coded()
    plain = Augmentation((32, 64), hflip=True)
    bright = Augmentation((32, 64), hflip=True, brightness=0.4)
    jitter = Augmentation((32, 64), hflip=True, brightness=0.3, contrast=0.3, saturation=0.3)
    for index in range(4):
        base_image, base_labels = plain(image, labels, sample_generator(0, 0, index))
        bright_image, bright_labels = bright(image, labels, sample_generator(0, 0, index))
        jitter_image, jitter_labels = jitter(image, labels, sample_generator(0, 0, index))
        assert torch.equal(bright_labels, base_labels) and torch.equal(jitter_labels, base_labels)
        assert not torch.equal(jitter_image, base_image)
        # Brightness alone multiplies every unsaturated channel value by one factor in [0.6, 1.4].
        x, y = base_image.double(), bright_image.double()
        usable = (x > 40) & (y < 250)
        ratio = (y[usable] / x[usable]).median().item()
        assert 0.6 <= ratio <= 1.4
        np.testing.assert_allclose(y[usable].numpy(), np.clip(x[usable].numpy() * ratio, 0, 255), atol=1.0)


def test_augmentation_rejects_bad_settings():
    with pytest.raises(ConfigError, match="scale_range"):
        Augmentation((32, 64), scale_range=(1.5, 1.0))
    with pytest.raises(ConfigError, match="brightness"):
        Augmentation((32, 64), brightness=1.5)
