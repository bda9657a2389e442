"""Engine cache: key components, stale and corrupt engines, ExportedProgram round trip on CPU."""

import dataclasses
import json
import logging

import pytest
import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.inference import backends
from anomaly_seg_ros.inference.backends import BackendRequest, select_backend
from anomaly_seg_ros.inference.engine_cache import EngineCache, EngineKey, file_sha256, make_key, weights_sha256

BASE = EngineKey(
    model="erfnet",
    weights_sha256="a" * 64,
    input_shape=(1, 3, 512, 1024),
    precision="fp16",
    backend="tensorrt",
    device_name="NVIDIA H100 80GB HBM3",
    torch_version="2.13.0",
    tensorrt_version="2.13.0",
)
CHANGES = {
    "model": "enet",
    "weights_sha256": "b" * 64,
    "input_shape": (1, 3, 256, 512),
    "precision": "fp32",
    "backend": "compile",
    "device_name": "NVIDIA A100",
    "torch_version": "2.14.0",
    "tensorrt_version": "2.14.0",
    "outputs": "features",
}


def test_every_key_component_changes_the_digest():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(EngineKey)}  # no component left untested
    assert EngineKey.from_dict(json.loads(json.dumps(BASE.to_dict()))).digest == BASE.digest
    digests = {BASE.digest}
    for name, value in CHANGES.items():
        digests.add(dataclasses.replace(BASE, **{name: value}).digest)
    assert len(digests) == 1 + len(CHANGES)


def test_weights_hash_covers_parameters_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    twin = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    twin.load_state_dict(model.state_dict())
    assert weights_sha256(model) == weights_sha256(twin)
    with torch.no_grad():
        twin[0].weight[0, 0, 0, 0] += 1e-3
    assert weights_sha256(model) != weights_sha256(twin)
    twin.load_state_dict(model.state_dict())
    twin[1].running_mean[0] = 0.5  # a buffer: folded into the engine's weights
    assert weights_sha256(model) != weights_sha256(twin)
    key = make_key(model, input_shape=(1, 3, 8, 8), precision="fp32", backend="eager", device="cpu")
    assert key.device_name == "cpu" and key.tensorrt_version is None and key.torch_version == torch.__version__


def _fake_saver(payload: bytes):
    def save(path):
        path.write_bytes(payload)

    return save


def test_fake_engine_hit_stale_and_rebuild(tmp_path, caplog):
    cache = EngineCache(tmp_path / "engines")
    assert cache.status(BASE)[0] == "missing"
    path = cache.store(BASE, _fake_saver(b"engine-v1"))
    assert path == cache.engine_path(BASE) and path.read_bytes() == b"engine-v1"
    sidecar = json.loads(cache.sidecar_path(BASE).read_text())
    assert sidecar["digest"] == BASE.digest and sidecar["file_sha256"] == file_sha256(path)
    assert cache.status(BASE)[0] == "hit"

    # New weights: same file name (same configuration), another digest -> stale, rebuilt, never loaded.
    new = dataclasses.replace(BASE, weights_sha256="c" * 64)
    assert cache.engine_path(new) == path
    status, reason = cache.status(new)
    assert status == "stale" and "weights_sha256" in reason
    built, loaded = [], []
    with caplog.at_level(logging.WARNING, logger="anomaly_seg_ros.inference.engine_cache"):
        engine, status, _ = cache.get_or_build(
            new,
            build=lambda: built.append(1) or b"engine-v2",
            save=lambda value, target: target.write_bytes(value),
            load=lambda target: loaded.append(1) or target.read_bytes(),
        )
    assert (engine, status, built, loaded) == (b"engine-v2", "stale", [1], [])
    assert "stale engine, rebuilding" in caplog.text
    assert path.read_bytes() == b"engine-v2" and cache.status(BASE)[0] == "stale"
    # Next start: a hit, loaded from disk without building.
    engine, status, _ = cache.get_or_build(
        new, build=lambda: pytest.fail("rebuilt a valid engine"), save=None, load=lambda target: target.read_bytes()
    )
    assert (engine, status) == (b"engine-v2", "hit")


def test_corrupt_engines_are_rebuilt_with_a_warning(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    path = cache.store(BASE, _fake_saver(b"engine-bytes"))
    path.write_bytes(b"engine-bytes-truncated")  # overwritten behind the cache's back
    status, reason = cache.status(BASE)
    assert status == "corrupt" and "does not match the SHA-256" in reason
    with caplog.at_level(logging.WARNING, logger="anomaly_seg_ros.inference.engine_cache"):
        engine, status, _ = cache.get_or_build(
            BASE, build=lambda: b"fresh", save=lambda v, t: t.write_bytes(v), load=lambda t: t.read_bytes()
        )
    assert (engine, status) == (b"fresh", "corrupt") and "corrupt engine, rebuilding" in caplog.text

    def broken_loader(target):
        raise RuntimeError("bad magic number")

    assert cache.load(BASE, broken_loader)[1:] == (
        "corrupt",
        f"{path.name} failed to load: RuntimeError: bad magic number",
    )
    cache.sidecar_path(BASE).unlink()
    assert cache.status(BASE)[0] == "corrupt"  # engine without a sidecar is never trusted
    cache.sidecar_path(BASE).write_text("{not json")
    assert cache.status(BASE)[0] == "corrupt"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="model.engine_cache"):
        EngineCache(tmp_path / "file")


class TinySegmenter(nn.Module):
    """A small conv net with ERFNet's output contract (export of the full ERFNet takes ~10 s on 2 cores)."""

    model_name = "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.output_conv = nn.ConvTranspose2d(8, 5, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_conv(self.body(x[:, :, ::2, ::2]))


def test_cpu_exported_program_round_trip_without_recompiling(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    model.body[1].running_mean.uniform_(-0.5, 0.5)  # non-trivial buffers must survive the round trip
    request = BackendRequest(backend="eager", input_size=(32, 64), engine_cache=str(tmp_path))
    x = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(x)
        first = select_backend(model, request)
        assert first.cache_status == "missing" and first.name == "eager"
        assert len(list(tmp_path.glob("*.pt2"))) == 1 and len(list(tmp_path.glob("*.json"))) == 1

        def no_export(*args, **kwargs):
            raise AssertionError("a valid cached engine must be loaded, not exported again")

        monkeypatch.setattr(backends, "export_program", no_export)
        second = select_backend(model, request)
        assert second.cache_status == "hit"
        torch.testing.assert_close(second(x), reference, rtol=1e-4, atol=1e-4)
        monkeypatch.undo()

        # New weights -> the cached program is stale: rebuilt, and the output follows the new weights.
        with torch.no_grad():
            model.output_conv.bias += 1.0
        third = select_backend(model, request)
        assert third.cache_status == "stale"
        torch.testing.assert_close(third(x), reference + 1.0, rtol=1e-4, atol=1e-4)
