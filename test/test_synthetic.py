"""Synthetic scenes: determinism, label validity, anomaly placement and palette, sequences."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from anomaly_seg_ros.common.labels import IGNORE_INDEX, NUM_CITYSCAPES_CLASSES, TRAIN_ID
from anomaly_seg_ros.data.synthetic import anomaly_palette_mask, render_scene, render_sequence

H, W = 128, 256
SEEDS = range(8)


@pytest.fixture(scope="module")
def normal_scenes():
    return {seed: render_scene(seed, height=H, width=W) for seed in SEEDS}


@pytest.fixture(scope="module")
def anomaly_scenes():
    return {seed: render_scene(seed, height=H, width=W, num_anomalies=1 + seed % 3) for seed in SEEDS}


@pytest.fixture(scope="module")
def sequence():
    return list(render_sequence(11, num_frames=36, height=H, width=W, num_anomalies=2))


def test_same_seed_gives_identical_bytes_and_different_seeds_differ():
    first = render_scene(21, height=H, width=W, num_anomalies=2)
    second = render_scene(21, height=H, width=W, num_anomalies=2)
    for a, b in zip(
        (first.image, first.labels, first.anomaly), (second.image, second.labels, second.anomaly), strict=True
    ):
        assert a.tobytes() == b.tobytes()
    other = render_scene(22, height=H, width=W, num_anomalies=2)
    assert np.mean(first.image != other.image) > 0.5


def test_global_random_state_is_untouched():
    np.random.seed(5)
    random.seed(5)
    numpy_state, python_state = np.random.get_state()[1].copy(), random.getstate()
    render_scene(3, height=64, width=128, num_anomalies=1)
    next(render_sequence(3, num_frames=1, height=64, width=128))
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert random.getstate() == python_state


def test_scene_arrays_have_the_documented_types(normal_scenes):
    scene = normal_scenes[0]
    assert scene.image.shape == (H, W, 3) and scene.image.dtype == np.uint8
    assert scene.labels.shape == (H, W) and scene.labels.dtype == np.uint8
    assert scene.anomaly.shape == (H, W) and scene.anomaly.dtype == np.uint8


@pytest.mark.parametrize("seed", SEEDS)
def test_labels_are_valid_varied_and_laid_out_like_a_road_scene(normal_scenes, seed):
    labels = normal_scenes[seed].labels
    values = set(np.unique(labels).tolist())
    assert values <= set(range(NUM_CITYSCAPES_CLASSES)) | {IGNORE_INDEX}
    assert len(values - {IGNORE_INDEX}) >= 8, f"only classes {sorted(values)}"
    assert np.mean(labels[H // 2 :] == TRAIN_ID["road"]) > 0.15  # road in the lower half
    assert (labels[: H // 4] == TRAIN_ID["sky"]).any()  # sky at the top
    assert np.all(labels[-1] == IGNORE_INDEX)  # ego-vehicle hood along the bottom
    assert np.all(normal_scenes[seed].anomaly[labels != IGNORE_INDEX] == 0)


def test_many_classes_occur_over_scenes(normal_scenes):
    seen = set().union(*(np.unique(scene.labels).tolist() for scene in normal_scenes.values()))
    for name in (
        "road",
        "sidewalk",
        "building",
        "pole",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "car",
    ):
        assert TRAIN_ID[name] in seen, name


def test_class_colours_overlap(normal_scenes):
    """Segmentation must not be a colour lookup: the colour ranges of classes overlap."""
    image = np.concatenate([scene.image.reshape(-1, 3) for scene in normal_scenes.values()])
    labels = np.concatenate([scene.labels.ravel() for scene in normal_scenes.values()])
    grey = (image // 32).astype(np.int64) @ np.array([64, 8, 1])  # 512 colour bins
    for first, second in (("road", "building"), ("road", "sidewalk"), ("vegetation", "terrain")):
        a = set(np.unique(grey[labels == TRAIN_ID[first]]).tolist())
        b = set(np.unique(grey[labels == TRAIN_ID[second]]).tolist())
        assert a & b, (first, second)


@pytest.mark.parametrize("seed", SEEDS)
def test_anomaly_scene_is_the_normal_scene_plus_objects_on_the_road(normal_scenes, anomaly_scenes, seed):
    normal, scene = normal_scenes[seed], anomaly_scenes[seed]
    anomaly = scene.anomaly
    assert set(np.unique(anomaly).tolist()) == {0, 1, 255}
    assert np.all(scene.labels[anomaly == 1] == IGNORE_INDEX)
    assert np.all(anomaly[scene.labels != IGNORE_INDEX] == 0)
    assert np.array_equal(anomaly == 255, normal.labels == IGNORE_INDEX)  # the hood
    # Elsewhere the labels are those of the normal scene, and pixels change only at the objects.
    assert np.array_equal(scene.labels[anomaly == 0], normal.labels[anomaly == 0])
    _, _, stats, _ = cv2.connectedComponentsWithStats((anomaly == 1).view(np.uint8))
    near_objects = np.zeros((H, W), dtype=bool)
    for x, y, w, h, _ in stats[1:]:
        near_objects[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2] = True
    assert not np.any((scene.image != normal.image).any(axis=2) & ~near_objects)
    # The objects stand on the road: along each object's ground-contact row the normal scene
    # is road (objects of a few pixels are skipped: there one row spans metres of ground).
    contact = np.concatenate([normal.labels[y + h - 1, x : x + w] for x, y, w, h, area in stats[1:] if area >= 12])
    assert len(contact) and np.mean(contact == TRAIN_ID["road"]) > 0.75


def test_anomaly_palette_never_appears_in_normal_scenes(normal_scenes, anomaly_scenes):
    for scene in normal_scenes.values():
        assert not anomaly_palette_mask(scene.image).any()
    in_band = np.concatenate([anomaly_palette_mask(s.image)[s.anomaly == 1] for s in anomaly_scenes.values()])
    assert in_band.mean() > 0.3  # most anomaly pixels wear the palette (the rest: black/white parts, haze)
    for scene in anomaly_scenes.values():
        assert not anomaly_palette_mask(scene.image)[scene.anomaly != 1].any()


def test_sequence_frames_and_instances_are_consistent(sequence):
    assert [frame.index for frame in sequence] == list(range(36))
    for frame in sequence:
        assert frame.instances.dtype == np.uint16
        assert set(np.unique(frame.instances).tolist()) <= {0, 1, 2}
        assert np.array_equal(frame.instances > 0, frame.scene.anomaly == 1)
    assert not (sequence[0].instances.any() or sequence[1].instances.any())  # anomaly-free start
    assert {1, 2} <= set().union(*(np.unique(frame.instances).tolist() for frame in sequence))


def test_sequence_is_deterministic(sequence):
    again = list(render_sequence(11, num_frames=36, height=H, width=W, num_anomalies=2))
    for k in (0, 20, 35):
        assert again[k].scene.image.tobytes() == sequence[k].scene.image.tobytes()
        assert again[k].instances.tobytes() == sequence[k].instances.tobytes()


def test_sequence_anomaly_appears_small_near_the_horizon_and_grows(sequence):
    hood_top = int(np.nonzero((sequence[0].scene.labels == IGNORE_INDEX).any(axis=1))[0][0])  # its highest row
    horizon = int(np.nonzero((sequence[0].scene.labels == TRAIN_ID["road"]).any(axis=1))[0][0])
    for instance in (1, 2):
        masks = [frame.instances == instance for frame in sequence]
        frames = [k for k, mask in enumerate(masks) if mask.any()]
        first = frames[0]
        assert frames == list(range(first, frames[-1] + 1))  # in view without gaps
        # Until it reaches the hood, it moves down the image and grows.
        bottoms = [int(np.nonzero(masks[k])[0].max()) for k in frames]
        approach = [k for k, bottom in zip(frames, bottoms, strict=True) if bottom < hood_top - 1]
        areas = np.array([masks[k].sum() for k in approach], dtype=float)
        assert np.all(np.diff([bottoms[frames.index(k)] for k in approach]) >= -1)  # 1 row of raster jitter
        assert areas.max() >= 4 * areas[0]
        assert np.corrcoef(approach, np.log(areas))[0, 1] > 0.9
        # First appearance: a few pixels, in the upper part of the ground region.
        assert areas[0] <= 0.002 * H * W
        assert bottoms[0] - horizon < 0.35 * (hood_top - horizon)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError):
        render_scene(0, num_anomalies=-1)
    with pytest.raises(ValueError):
        render_scene(0, height=8, width=8)
    with pytest.raises(ValueError):
        render_sequence(0, num_frames=3, fps=0.0)  # raises at the call, not at the first frame
    with pytest.raises(ValueError):
        render_scene(-1)
