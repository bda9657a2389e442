"""Outlier exposure: the outlier sources, the pasting, and the outlier loss terms."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.common.labels import IGNORE_INDEX
from anomaly_seg_ros.data.augment import Augmentation, sample_generator
from anomaly_seg_ros.data.outliers import (
    FolderOutliers,
    OutlierPaster,
    OutlierSettings,
    ProceduralOutliers,
    horizon_row,
    in_test_shape_family,
    perspective_height,
    remove_anomaly_palette,
    shape_descriptor,
)
from anomaly_seg_ros.data.synthetic_sprites import ANOMALY_MARK, anomaly_object, anomaly_palette_mask, noise_bank
from anomaly_seg_ros.losses import build_criterion

# -- the no-shared-palette and no-shared-shape guarantees ---------------------------------------


def _test_anomaly_sprites(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB, mask) of the synthetic test anomalies, drawn as the scene generator draws them."""
    bank, rng = noise_bank(), np.random.default_rng(123)
    sprites = []
    for _ in range(count):
        width, height = rng.uniform(0.4, 2.0), rng.uniform(0.3, 1.5)
        rgb, labels, _ = anomaly_object(rng, bank, width, height, rng.uniform(8.0, 64.0)).level(0)
        sprites.append((np.clip(rgb, 0, 255).astype(np.uint8), labels == ANOMALY_MARK))
    return sprites


def test_the_shape_descriptor_on_hand_drawn_masks():
    disc = np.zeros((40, 40), np.uint8)
    cv2.circle(disc, (20, 20), 15, 1, -1)
    ring = disc.copy()
    cv2.circle(ring, (20, 20), 8, 0, -1)
    two = np.zeros((20, 40), bool)
    two[5:15, 2:10] = two[5:15, 25:35] = True
    assert shape_descriptor(disc)[:2] == (1, 0) and shape_descriptor(disc)[2] > 0.95
    assert shape_descriptor(ring)[:2] == (1, 1)
    components, holes, solidity = shape_descriptor(two)
    # 80 + 100 pixels; the hull through the pixel centres spans columns 2..34 and rows 5..14: 32 x 9.
    assert (components, holes) == (2, 0) and solidity == pytest.approx(180 / (32 * 9), abs=1e-6)
    assert in_test_shape_family(disc) and in_test_shape_family(ring) and not in_test_shape_family(two)


def test_every_test_anomaly_is_in_the_test_shape_family_and_no_outlier_is():
    test_masks = [mask for _, mask in _test_anomaly_sprites(200)]
    assert all(in_test_shape_family(mask) for mask in test_masks)
    source, rng = ProceduralOutliers(), np.random.default_rng(0)
    families_seen = set()
    for _ in range(300):
        height, width = int(rng.integers(8, 80)), int(rng.integers(8, 120))
        rgb, mask = source.sample(rng, height, width)
        assert rgb.shape == (height, width, 3) and mask.shape == (height, width) and mask.sum() >= 6
        assert not in_test_shape_family(mask)
        components, holes, solidity = shape_descriptor(mask)
        families_seen.add("debris" if components > 1 else "lattice" if holes > 1 else "scribble")
    assert families_seen == {"debris", "lattice", "scribble"}


def test_procedural_outliers_share_no_colour_with_the_test_anomaly_palette():
    # The test anomalies are made of palette colours; the outliers have none, texture and all.
    in_palette = [anomaly_palette_mask(rgb)[mask].mean() for rgb, mask in _test_anomaly_sprites(50)]
    assert np.mean(in_palette) > 0.5
    source, rng = ProceduralOutliers(), np.random.default_rng(1)
    for _ in range(300):
        rgb, _ = source.sample(rng, 24, 32)
        assert not anomaly_palette_mask(rgb).any()


def test_remove_anomaly_palette_changes_only_palette_pixels():
    hsv = np.zeros((1, 360, 3), np.uint8)
    hsv[0, :, 0] = (np.arange(360) * 256 / 360).astype(np.uint8)
    hsv[0, :, 1], hsv[0, :, 2] = 240, 230
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    before = anomaly_palette_mask(rgb)
    fixed = remove_anomaly_palette(rgb)
    assert before.any() and not anomaly_palette_mask(fixed).any()
    np.testing.assert_array_equal(fixed[~before], rgb[~before])


# -- the folder source -----------------------------------------------------------------------


def _write(path, array):
    assert cv2.imwrite(str(path), array)


def test_folder_outliers_read_the_three_layouts_and_crop_to_the_mask(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[5:15, 10:20] = (10, 200, 30)  # BGR on disk
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 255
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "masks").mkdir()
    _write(pairs / "images" / "a.png", image)
    _write(pairs / "masks" / "a.png", mask)
    side = tmp_path / "side"
    side.mkdir()
    _write(side / "b.png", image)
    _write(side / "b_mask.png", mask)
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    _write(rgba / "c.png", np.dstack([image, mask]))
    for root in (pairs, side, rgba):
        source = FolderOutliers(root)
        assert len(source) == 1
        rgb, cut = source.read(0)
        assert rgb.shape == (10, 10, 3) and cut.all()
        np.testing.assert_array_equal(rgb[0, 0], (30, 200, 10))  # RGB
        rgb, cut = source.sample(np.random.default_rng(0), 5, 7)
        assert rgb.shape == (5, 7, 3) and cut.shape == (5, 7)


def test_folder_outliers_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        FolderOutliers(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no objects found"):
        FolderOutliers(tmp_path)
    _write(tmp_path / "plain.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="has no mask"):
        FolderOutliers(tmp_path).read(0)


# -- pasting ---------------------------------------------------------------------------------


def _road_scene(height=120, width=160, horizon=40):
    """A flat road below ``horizon`` (a triangle to the vanishing point), sky above; labels trainIds."""
    labels = np.full((height, width), 10, np.uint8)  # sky
    labels[horizon:] = 8  # vegetation beside the road
    for y in range(horizon, height):
        half = (y - horizon) * width / (2 * (height - horizon))
        labels[y, int(width / 2 - half) : int(math.ceil(width / 2 + half))] = 0  # road
    image = np.full((height, width, 3), 90, np.uint8)
    return image, labels


def test_perspective_height_is_the_pinhole_projection():
    # Camera 1.5 m high, focal 300 px, horizon at row 40: a 0.75 m object 15 m away.
    focal, mount, horizon, size, distance = 300.0, 1.5, 40.0, 0.75, 15.0
    foot = horizon + focal * mount / distance
    assert perspective_height(foot, horizon, size / mount) == pytest.approx(focal * size / distance)
    assert perspective_height(horizon - 5, horizon, 0.5) == 0.0


def test_horizon_is_the_top_of_the_drivable_area():
    _, labels = _road_scene(horizon=40)
    assert horizon_row(labels, [0]) in (40, 41, 42)
    assert horizon_row(np.full((10, 10), 10, np.uint8), [0]) is None


def _one_square_object(height_ratio: float, horizon: float, **settings) -> OutlierPaster:
    """A paster of one hard-edged square object per image, of a fixed height ratio, at a known horizon."""
    return OutlierPaster(
        OutlierSettings(
            source="procedural",
            probability=1.0,
            max_objects=1,
            height_ratio=(height_ratio, height_ratio),
            aspect=(1.0, 1.0),
            horizon=horizon,
            blend="hard",
            min_pixels=1,
            **settings,
        )
    )


def test_pasted_objects_stand_on_the_road_sized_by_perspective():
    image, labels = _road_scene(horizon=40)
    paster = _one_square_object(0.5, 40 / 120)
    for seed in range(30):
        result = paster(image, labels, np.random.default_rng(seed))
        if not result.boxes:
            continue
        x0, y0, x1, y1 = result.boxes[0]
        foot = y1 - 1
        assert labels[foot, (x0 + x1) // 2] == 0  # the foot's column centre is on the road
        if y0 > 0:  # unclipped at the top: its height is the perspective height
            assert y1 - y0 == round(0.5 * (foot - 40))
        # Labels under the object are ignored, the mask marks exactly them, elsewhere nothing changed.
        assert (result.labels[result.mask] == IGNORE_INDEX).all()
        np.testing.assert_array_equal(result.labels[~result.mask], labels[~result.mask])
        np.testing.assert_array_equal(result.image[~result.mask], image[~result.mask])
        assert result.mask[y0:y1, x0:x1].sum() == result.mask.sum() > 0
        assert not anomaly_palette_mask(result.image).any()


@pytest.mark.parametrize("sampling", ["pixels", "rows"])
def test_foot_sampling_by_rows_gives_far_rows_their_share(sampling):
    """With "pixels" a foot row is drawn in proportion to its road width (mostly near); with "rows", uniformly."""
    image, labels = _road_scene(height=240, width=160, horizon=40)
    paster = _one_square_object(1.0, 40 / 240, foot_sampling=sampling)
    feet = []
    for seed in range(600):
        boxes = paster(image, labels, np.random.default_rng(seed)).boxes
        feet += [box[3] - 1 for box in boxes]
    road_rows = np.flatnonzero((labels[41:] == 0).any(axis=1)) + 41
    far = road_rows[: road_rows.size // 2]  # the half of the road rows nearest the horizon
    widths = (labels == 0).sum(axis=1)
    expected = far.size / road_rows.size if sampling == "rows" else widths[far].sum() / widths[road_rows].sum()
    observed = np.isin(feet, far).mean()
    assert len(feet) > 550 and observed == pytest.approx(expected, abs=0.06)
    assert (expected > 0.45) if sampling == "rows" else (expected < 0.3)


def test_pasting_skips_images_without_road_and_respects_probability():
    image, labels = _road_scene()
    paster = OutlierPaster(OutlierSettings(source="procedural", probability=0.0))
    assert not paster(image, labels, np.random.default_rng(0)).mask.any()
    sky = np.full_like(labels, 10)
    paster = OutlierPaster(OutlierSettings(source="procedural", probability=1.0))
    assert not paster(image, sky, np.random.default_rng(0)).mask.any()


def test_the_outlier_mask_moves_with_the_augmentation():
    image, labels = _road_scene(height=64, width=128, horizon=20)
    paster = OutlierPaster(OutlierSettings(source="procedural", probability=1.0, max_objects=3, min_pixels=1))
    result = paster(image, labels, np.random.default_rng(3))
    assert result.mask.any()
    # Mark the outlier pixels in the image with a colour the scene does not have, then augment.
    marked = result.image.copy()
    marked[result.mask] = (255, 0, 255)
    augmentation = Augmentation((48, 96), crop_size=(40, 80), scale_range=(0.8, 1.4), hflip=True)
    for seed in range(6):
        image_t = torch.from_numpy(marked).permute(2, 0, 1).contiguous()
        out_image, out_labels, moved = augmentation(
            image_t,
            torch.from_numpy(result.labels),
            sample_generator(0, 0, seed),
            torch.from_numpy(result.mask)[None].float(),
        )
        mask = moved[0] > 0.5
        magenta = (out_image[0] == 255) & (out_image[1] == 0) & (out_image[2] == 255)
        # Nearest-neighbour labels and mask, bilinear image: they agree away from the edges.
        interior = torch.from_numpy(cv2.erode(mask.numpy().astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
        assert magenta[interior].all()
        assert (out_labels[mask] == IGNORE_INDEX).all()


def test_outlier_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match="outliers.folder"):
        OutlierSettings(source="folder").validate()
    with pytest.raises(ConfigError, match="outliers.height_ratio"):
        OutlierSettings(source="procedural", height_ratio=(0.0, 1.0)).validate()
    with pytest.raises(ConfigError, match="outliers.families"):
        OutlierSettings(source="procedural", families=("star",)).validate()


# -- the loss terms against direct computations ------------------------------------------------


def _batch(seed=0, classes=19):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 4, 5, generator=generator) * 3
    target = torch.randint(0, classes, (2, 4, 5), generator=generator)
    outlier = torch.zeros(2, 4, 5, dtype=torch.bool)
    outlier[0, 1:3, 1:4] = True
    outlier[1, 0, 0] = True
    target[outlier] = IGNORE_INDEX
    target[1, 3, 4] = IGNORE_INDEX  # an ignored in-distribution pixel
    return logits, target, outlier


def test_energy_margin_matches_the_formula_pixel_by_pixel():
    logits, target, outlier = _batch()
    m_in, m_out = -4.0, -1.0
    criterion = build_criterion([{"name": "energy_margin", "margin_in": m_in, "margin_out": m_out}], num_classes=19)
    got = criterion(logits, target, outlier_mask=outlier)
    inside, outside = [], []
    for n in range(2):
        for y in range(4):
            for x in range(5):
                energy = -math.log(sum(math.exp(v) for v in logits[n, :, y, x].tolist()))
                if outlier[n, y, x]:
                    outside.append(max(0.0, m_out - energy) ** 2)
                elif target[n, y, x] != IGNORE_INDEX:
                    inside.append(max(0.0, energy - m_in) ** 2)
    assert got.item() == pytest.approx(np.mean(inside) + np.mean(outside), rel=1e-5)


def test_outlier_void_and_entropy_match_direct_computations():
    logits, target, outlier = _batch(classes=20)
    void = build_criterion([{"name": "outlier_void", "weight": 0.5}], num_classes=20)
    p = torch.softmax(logits.double(), dim=1)
    expected_void = 0.5 * -torch.log(p[:, 19][outlier]).mean()
    assert void(logits, target, outlier_mask=outlier).item() == pytest.approx(expected_void.item(), rel=1e-5)
    entropy = build_criterion([{"name": "outlier_entropy"}], num_classes=20)
    h = -(p * p.log()).sum(dim=1)
    expected_entropy = (math.log(20) - h[outlier]).mean()
    assert entropy(logits, target, outlier_mask=outlier).item() == pytest.approx(expected_entropy.item(), rel=1e-5)
    uniform = torch.zeros_like(logits)
    assert entropy(uniform, target, outlier_mask=outlier).item() == pytest.approx(0.0, abs=1e-6)


def test_outlier_terms_add_to_cross_entropy_and_need_outliers_for_their_part():
    logits, target, outlier = _batch()
    logits.requires_grad_(True)
    ce = build_criterion([{"name": "ce"}], num_classes=19)
    both = build_criterion([{"name": "ce"}, {"name": "outlier_entropy", "weight": 0.3}], num_classes=19)
    entropy = build_criterion([{"name": "outlier_entropy"}], num_classes=19)
    total = both(logits, target, outlier_mask=outlier)
    assert total.item() == pytest.approx(
        ce(logits, target).item() + 0.3 * entropy(logits, target, outlier_mask=outlier).item(), rel=1e-6
    )
    # No outlier pixels: the outlier part is 0, with a graph.
    none = entropy(logits, target, outlier_mask=torch.zeros_like(outlier))
    assert none.item() == 0.0 and none.requires_grad
    # Gradients flow only into outlier pixels for the outlier-only terms.
    grad = torch.autograd.grad(entropy(logits, target, outlier_mask=outlier), logits)[0]
    assert (grad.abs().sum(dim=1)[~outlier] == 0).all() and (grad.abs().sum(dim=1)[outlier] > 0).all()


def test_per_object_outlier_means_weigh_every_connected_object_alike():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 19, 6, 8, generator=generator) * 3
    target = torch.randint(0, 19, (2, 6, 8), generator=generator)
    outlier = torch.zeros(2, 6, 8, dtype=torch.bool)
    outlier[0, 0:3, 0:4] = True  # a near object, 12 px ...
    outlier[0, 3, 4] = True  # ... and a pixel touching its corner: the same object (8-connected)
    outlier[0, 5, 7] = True  # a far object, 1 px
    outlier[1, 2:4, 5:7] = True  # 4 px
    target[outlier] = IGNORE_INDEX
    m_in, m_out = -4.0, -1.0
    spec = {"name": "energy_margin", "margin_in": m_in, "margin_out": m_out}
    per_object = build_criterion([{**spec, "per_object": True}], num_classes=19)
    per_pixel = build_criterion([spec], num_classes=19)
    energy = -torch.logsumexp(logits.double(), dim=1)
    hinge_in = torch.relu(energy - m_in) ** 2
    hinge_out = torch.relu(m_out - energy) ** 2
    inside = hinge_in[(target != IGNORE_INDEX)].mean().item()
    objects = _objects(outlier)
    assert sorted(int(mask.sum()) for _, mask in objects) == [1, 4, 13]
    object_means = [hinge_out[n][torch.from_numpy(mask)].mean().item() for n, mask in objects]
    got = per_object(logits, target, outlier_mask=outlier).item()
    assert got == pytest.approx(inside + np.mean(object_means), rel=1e-5)
    assert per_pixel(logits, target, outlier_mask=outlier).item() == pytest.approx(
        inside + hinge_out[outlier].mean().item(), rel=1e-5
    )
    # The same weighting for the other outlier terms; an empty mask still gives 0 with a graph.
    entropy = build_criterion([{"name": "outlier_entropy", "per_object": True}], num_classes=19)
    p = torch.softmax(logits.double(), dim=1)
    gap = math.log(19) + (p * p.log()).sum(dim=1)
    expected = np.mean([gap[n][torch.from_numpy(m)].mean().item() for n, m in objects])
    assert entropy(logits, target, outlier_mask=outlier).item() == pytest.approx(expected, rel=1e-5)
    logits.requires_grad_(True)
    none = entropy(logits, target, outlier_mask=torch.zeros_like(outlier))
    assert none.item() == 0.0 and none.requires_grad


def _objects(outlier: torch.Tensor) -> list[tuple[int, np.ndarray]]:
    """(image, mask) of every 8-connected outlier object, found with scipy (independent of cv2)."""
    from scipy import ndimage

    found = []
    for n in range(outlier.shape[0]):
        labels, count = ndimage.label(outlier[n].numpy(), structure=np.ones((3, 3)))
        found.extend((n, labels == k) for k in range(1, count + 1))
    return found


def test_outlier_loss_specs_are_checked():
    with pytest.raises(ConfigError, match="margin_in must be below margin_out"):
        build_criterion([{"name": "energy_margin", "margin_in": 0.0, "margin_out": -1.0}], num_classes=19)
    with pytest.raises(ConfigError, match="unknown key"):
        build_criterion([{"name": "energy_margin", "class_weighted": True}], num_classes=19)
    with pytest.raises(ConfigError, match="'per_object' must be true or false"):
        build_criterion([{"name": "energy_margin", "per_object": 1}], num_classes=19)
    with pytest.raises(ConfigError, match="unknown key"):
        build_criterion([{"name": "ce", "per_object": True}], num_classes=19)
    from anomaly_seg_ros.models import build_model

    criterion = build_criterion([{"name": "outlier_void"}], num_classes=19)
    with pytest.raises(ConfigError, match="needs a 20-class model"):
        criterion.check_model(build_model("erfnet", num_classes=19))


# -- training with outlier exposure -------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from anomaly_seg_ros.data.layout import generate_datasets

    root = tmp_path_factory.mktemp("oe_data")
    return generate_datasets(root, num_train=4, num_val=2, num_anomaly=3, height=48, width=96, seed=2)


def _train_config(scenes, **overrides):
    from anomaly_seg_ros.training import load_train_config

    values = {
        "data": str(scenes["cityscapes_root"]),
        "input_size": [48, 96],
        "epochs": 1,
        "batch_size": 2,
        "max_steps_per_epoch": 1,
        "threads": 2,
        "tensorboard": False,
        "hflip": False,
    }
    return load_train_config(None, values | overrides)


def test_training_samples_carry_the_outlier_mask_aligned_with_ignored_labels(scenes):
    from anomaly_seg_ros.training import training_samples

    config = _train_config(
        scenes,
        outliers={"source": "procedural", "probability": 1.0, "max_objects": 3},
        scale_range=[1.0, 1.3],
        losses=[{"name": "ce"}, {"name": "outlier_entropy"}],
    )
    samples = training_samples(config)
    masks = [samples[index][2] for index in range(len(samples))]
    assert any(mask.any() for mask in masks)
    for index, mask in enumerate(masks):
        image, labels, again = samples[index]
        assert mask.dtype == torch.bool and mask.shape == labels.shape == (48, 96)
        assert torch.equal(mask, again)  # the same sample every time: (seed, epoch, index)
        assert (labels[mask] == IGNORE_INDEX).all()


def test_fine_tuning_starts_from_the_checkpoint_and_reports_anomaly_metrics(scenes, tmp_path):
    from sklearn.metrics import average_precision_score

    from anomaly_seg_ros.data.datasets import AnomalyDataset
    from anomaly_seg_ros.inference.preprocess import normalize_images
    from anomaly_seg_ros.models import build_model, load_weights, model_defaults, read_metadata
    from anomaly_seg_ros.training import BEST_CHECKPOINT, train

    train(_train_config(scenes), tmp_path / "base", progress=False)
    base = tmp_path / "base" / BEST_CHECKPOINT
    config = _train_config(
        scenes,
        init_checkpoint=str(base),
        learning_rate=1e-12,
        outliers={"source": "procedural", "probability": 1.0},
        losses=[{"name": "ce"}, {"name": "energy_margin", "weight": 0.1}],
        anomaly_val=[str(scenes["anomaly_root"])],
    )
    train(config, tmp_path / "oe", progress=False)
    start, tuned = build_model("erfnet", num_classes=19), build_model("erfnet", num_classes=19)
    load_weights(start, base)
    load_weights(tuned, tmp_path / "oe" / BEST_CHECKPOINT)
    # A vanishing learning rate: the fine-tuned convolutions are the checkpoint's, not a fresh draw.
    for (name, a), b in zip(start.named_parameters(), tuned.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    metrics = read_metadata(tmp_path / "oe" / BEST_CHECKPOINT)["metrics"]
    assert "val_miou" in metrics and (tmp_path / "oe" / "anomaly.md").is_file()
    got = metrics["anomaly"][str(scenes["anomaly_root"])]["energy"]["ap"]
    # Direct computation: energy = -logsumexp of the logits, sklearn's average precision over valid pixels.
    tuned.eval()
    defaults = model_defaults("erfnet")
    scores, truth = [], []
    for image, mask in AnomalyDataset(scenes["anomaly_root"]):
        with torch.no_grad():
            batch = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
            logits = tuned(normalize_images(batch, (48, 96), defaults["mean"], defaults["std"]))
        valid = mask != IGNORE_INDEX
        scores.append((-torch.logsumexp(logits, 1))[0].numpy()[valid])
        truth.append(mask[valid] == 1)
    assert got == pytest.approx(average_precision_score(np.concatenate(truth), np.concatenate(scores)), abs=1e-4)


def test_outlier_losses_and_outlier_source_come_together(scenes, tmp_path):
    from anomaly_seg_ros.training import train

    with pytest.raises(ConfigError, match="outlier loss terms"):
        train(_train_config(scenes, losses=[{"name": "ce"}, {"name": "energy_margin"}]), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="outlier loss terms"):
        train(_train_config(scenes, outliers={"source": "procedural"}), tmp_path / "b", progress=False)
