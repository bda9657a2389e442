"""Instance-wise uncertainty weighting in training (seed 003): masks from an ensemble, and co-training.

The oracle for IU is written here with numpy and scipy.ndimage (8-connected labelling),
independently of the OpenCV code under test.
"""

import numpy as np
import pytest
import torch
from scipy import ndimage

import anomaly_seg_ros.training.instance_uncertainty as iu_training
from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.data.augment import Augmentation, sample_generator
from anomaly_seg_ros.data.datasets import CityscapesDataset
from anomaly_seg_ros.data.layout import generate_datasets
from anomaly_seg_ros.losses import build_criterion
from anomaly_seg_ros.models import build_model, read_metadata, save_checkpoint
from anomaly_seg_ros.training import BEST_CHECKPOINT, load_train_config, train

H, W = 32, 64


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("iu")
    generate_datasets(root, num_train=4, num_val=2, num_anomaly=0, height=H, width=W, seed=3)
    return root / "cityscapes"


def _config(small, **overrides):
    values = {
        "data": str(small),
        "input_size": [H, W],
        "epochs": 1,
        "batch_size": 2,
        "max_steps_per_epoch": 1,
        "threads": 2,
        "tensorboard": False,
    }
    return load_train_config(None, values | overrides)


def _entropy_of_mean_softmax(logits: list[np.ndarray]) -> np.ndarray:
    probs = []
    for z in logits:
        e = np.exp(z - z.max(axis=0, keepdims=True))
        probs.append(e / e.sum(axis=0, keepdims=True))
    mean = np.mean(probs, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(np.where(mean > 0, mean * np.log(mean), 0.0), axis=0)


def _instance_means(entropy: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.zeros_like(entropy, dtype=np.float64)
    for cls in np.unique(labels):
        if cls == 255:
            continue
        components, count = ndimage.label(labels == cls, structure=np.ones((3, 3)))
        for index in range(1, count + 1):
            mask = components == index
            out[mask] = entropy[mask].mean()
    return out


def test_augmentation_moves_the_weight_map_with_the_labels():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 40, 60), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 19, (40, 60), dtype=np.uint8))
    augmentation = Augmentation((32, 48), crop_size=(32, 48), scale_range=(0.6, 1.6), hflip=True, brightness=0.3)
    for index in range(12):
        weights = labels.float() / 10.0
        plain_image, plain_labels = augmentation(image, labels, sample_generator(1, 0, index))
        image_out, labels_out, weights_out = augmentation(image, labels, sample_generator(1, 0, index), weights)
        # The third map changes nothing else, and lands exactly where its labels land.
        assert torch.equal(image_out, plain_image) and torch.equal(labels_out, plain_labels)
        padded = labels_out == 255
        assert torch.equal(weights_out[~padded], labels_out[~padded].float() / 10.0)
        assert torch.all(weights_out[padded] == 0)


def _members(tmp_path, names=("erfnet", "enet")):
    torch.manual_seed(0)
    paths = []
    for index, name in enumerate(names):
        model = build_model(name, num_classes=19).eval()
        path = tmp_path / f"{index}_{name}.safetensors"
        save_checkpoint(model, path, metadata={"input_size": [H, W]})
        paths.append((path, model))
    return paths


def test_iu_masks_from_an_ensemble_match_an_independent_computation(small, tmp_path):
    members = _members(tmp_path)
    count = iu_training.write_iu_masks([p for p, _ in members], small, "train", tmp_path / "masks", progress=False)
    dataset = CityscapesDataset(small, "train")
    assert count == len(dataset) == 4
    for index in range(len(dataset)):
        image, labels = dataset[index]
        # Both members were built with mean 0 / std 1 on 0..1 RGB at the image's size.
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            logits = [model(x)[0].double().numpy() for _, model in members]
        expected = _instance_means(_entropy_of_mean_softmax(logits), labels)
        stored = np.load(iu_training.iu_mask_path(tmp_path / "masks", dataset, index))
        assert stored.dtype == np.float16 and stored.shape == labels.shape
        np.testing.assert_allclose(stored.astype(np.float64), expected, rtol=2e-3, atol=2e-3)
        assert np.all(stored[labels == 255] == 0)


def test_precomputed_masks_weight_the_loss_by_one_plus_iu_squared(small, tmp_path, monkeypatch):
    dataset = CityscapesDataset(small, "train")
    masks = tmp_path / "masks"
    values = {}
    for index in range(len(dataset)):
        path = iu_training.iu_mask_path(masks, dataset, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = dataset.read_labels(index)
        values[index] = 0.25 * (index + 1)
        np.save(path, np.full(labels.shape, values[index], dtype=np.float16))

    seen = []

    def spy(specs, **kwargs):
        criterion = build_criterion(specs, **kwargs)
        forward = criterion.forward

        def recording(output, target, *, pixel_weights=None, **kw):
            seen.append(pixel_weights.clone())
            return forward(output, target, pixel_weights=pixel_weights, **kw)

        criterion.forward = recording
        return criterion

    import anomaly_seg_ros.training.loop as loop

    monkeypatch.setattr(loop, "build_criterion", spy)
    config = _config(small, iu_mode="precomputed", iu_masks=str(masks), max_steps_per_epoch=2, hflip=False)
    train(config, tmp_path / "run", progress=False)
    # Each batch image's weights are (1 + IU)^2 of its mask, one constant per training image.
    allowed = {round((1 + v) ** 2, 4) for v in values.values()}
    assert len(seen) == 2
    for weights in seen:
        assert weights.shape == (2, H, W)
        for per_image in weights:
            assert torch.all(per_image == per_image[0, 0])
            assert round(float(per_image[0, 0]), 4) in allowed

    with pytest.raises(DatasetError, match="anomaly-seg iu-masks"):
        train(_config(small, iu_mode="precomputed", iu_masks=str(tmp_path / "none")), tmp_path / "r2", progress=False)
    with pytest.raises(ConfigError, match="iu_masks"):
        _config(small, iu_mode="precomputed")


def test_cotraining_weights_each_member_by_the_joint_instance_uncertainty(small, tmp_path, monkeypatch):
    calls = []

    def spy(specs, **kwargs):
        criterion = build_criterion(specs, **kwargs)
        forward = criterion.forward

        def recording(output, target, *, pixel_weights=None, **kw):
            calls.append((output.logits.detach().double().clone(), target.clone(), pixel_weights.clone()))
            return forward(output, target, pixel_weights=pixel_weights, **kw)

        criterion.forward = recording
        return criterion

    monkeypatch.setattr(iu_training, "build_criterion", spy)
    config = _config(small, iu_mode="cotrain", iu_members=["erfnet", "enet"])
    assert train(config, tmp_path / "run", progress=False) == []

    # One step, two members: both losses carry the same weights, (1 + IU)^2 of their joint entropy.
    assert len(calls) == 2
    (logits_a, target, weights_a), (logits_b, _, weights_b) = calls
    assert torch.equal(weights_a, weights_b)
    for n in range(target.shape[0]):
        entropy = _entropy_of_mean_softmax([logits_a[n].numpy(), logits_b[n].numpy()])
        expected = (1 + _instance_means(entropy, target[n].numpy())) ** 2
        np.testing.assert_allclose(weights_a[n].double().numpy(), expected, rtol=1e-5)

    for index, name in enumerate(["erfnet", "enet"]):
        metadata = read_metadata(tmp_path / "run" / f"member{index}_{name}" / BEST_CHECKPOINT)
        assert metadata["model"] == name and metadata["training"]["iu_members"] == ["erfnet", "enet"]
        assert "msp" in metadata["calibration"]
    with pytest.raises(ConfigError, match="iu_members"):
        _config(small, iu_mode="cotrain", iu_members=["erfnet"])
