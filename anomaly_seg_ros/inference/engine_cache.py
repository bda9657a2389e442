"""Compiled engines on disk: compile once, reload at start-up, never run a stale one.

An engine is the compiled form of one network for one configuration: a Torch-TensorRT
program (``torch_tensorrt.save``), a ``torch.export`` ExportedProgram of the eager model
(``torch.export.save``; the ``compile`` and ``eager`` backends), or the ONNX export that ONNX
Runtime and OpenVINO read (``NAME.onnx``, backend ``onnx`` in the key). Building a TensorRT engine
takes minutes, so the node loads it from the cache that ``anomaly-seg export`` filled.

Every engine file ``NAME.pt2`` (or ``NAME.onnx``) has a sidecar ``NAME.json`` holding its :class:`EngineKey`, the
SHA-256 of the key and the SHA-256 of the engine file. An engine is used only when

* the sidecar exists and its key digest equals the digest of the key wanted now, i.e.
  ``sha256(model name, weights hash, input shape, precision, backend, GPU model,
  torch version, Torch-TensorRT version)`` — new weights, another GPU or an upgraded
  TensorRT all give another digest, and
* the engine file's SHA-256 equals the one recorded when it was written (a truncated or
  overwritten file is caught before it is deserialised).

Otherwise the engine is *stale* (key differs) or *corrupt* (hash differs, or loading it
raises) and is rebuilt and overwritten, with a log line saying which. The file name holds
the configuration (model, backend, precision, shape, device) but not the digest, so a stale
engine is found and replaced rather than left behind next to the new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.fileio import atomic_write

LOGGER = logging.getLogger(__name__)

ENGINE_SUFFIX = ".pt2"  # torch.export archive (torch.export.save expects .pt2)
#: Engines that are not torch.export archives: the ONNX file ONNX Runtime and OpenVINO read.
ENGINE_SUFFIXES = {"onnx": ".onnx"}
SIDECAR_SUFFIX = ".json"
#: Version of the sidecar layout; a sidecar of another version is treated as stale.
FORMAT_VERSION = 1

T = TypeVar("T")
CacheStatus = Literal["hit", "missing", "stale", "corrupt"]


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled engine depends on; its :attr:`digest` names it."""

    model: str
    weights_sha256: str
    input_shape: tuple[int, ...]
    precision: str
    backend: str
    device_name: str
    torch_version: str
    tensorrt_version: str | None
    #: What the graph returns: "logits", or "features" for (logits, features, head_logits).
    outputs: str = "logits"

    @property
    def digest(self) -> str:
        """SHA-256 over the canonical JSON of every field (sorted keys, no whitespace)."""
        return hashlib.sha256(_canonical_json(self.to_dict()).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineKey:
        values = dict(data)
        values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)

    @property
    def stem(self) -> str:
        """File name without suffix: the configuration, readable, without the digest."""
        shape = "x".join(str(v) for v in self.input_shape)
        parts = (self.model, self.backend, self.precision, self.outputs, shape, self.device_name)
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts)).strip("-")


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the model's state_dict: names, dtypes, shapes and bytes, in key order.

    Buffers count too (batch-norm statistics change the engine's folded weights).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        # Reinterpret as bytes: numpy has no bfloat16, and a byte view costs no copy.
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def device_name(device: torch.device | str) -> str:
    """The GPU model (``torch.cuda.get_device_name``) or ``"cpu"``: engines are per GPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def tensorrt_version() -> str | None:
    """Installed Torch-TensorRT version, or None when it is not installed."""
    try:
        import torch_tensorrt
    except Exception:  # noqa: BLE001  (any import failure means "not usable here")
        return None
    return str(getattr(torch_tensorrt, "__version__", "unknown"))


def make_key(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    precision: str,
    backend: str,
    device: torch.device | str,
    outputs: str = "logits",
    model_name: str | None = None,
) -> EngineKey:
    """The key of ``model`` compiled for this configuration on this machine."""
    return EngineKey(
        model=model_name or str(getattr(model, "model_name", type(model).__name__)),
        weights_sha256=weights_sha256(model),
        input_shape=tuple(int(v) for v in input_shape),
        precision=precision,
        backend=backend,
        device_name=device_name(device),
        torch_version=torch.__version__,
        tensorrt_version=tensorrt_version() if backend == "tensorrt" else None,
        outputs=outputs,
    )


def engine_suffix(key: EngineKey) -> str:
    """File suffix of the engine of ``key``: ``.onnx`` for the exported ONNX model, else ``.pt2``."""
    return ENGINE_SUFFIXES.get(key.backend, ENGINE_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EngineCache:
    """A folder of engines with sidecar keys (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"model.engine_cache: {self.folder} exists and is not a folder")

    def engine_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.stem}{engine_suffix(key)}"

    def sidecar_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.stem}{SIDECAR_SUFFIX}"

    def status(self, key: EngineKey) -> tuple[CacheStatus, str]:
        """Whether the engine for ``key`` may be loaded, and why not (file contents not parsed)."""
        engine, sidecar = self.engine_path(key), self.sidecar_path(key)
        if not engine.is_file() and not sidecar.is_file():
            return "missing", f"no engine {engine.name} in {self.folder}"
        if not sidecar.is_file():
            return "corrupt", f"{engine.name} has no sidecar {sidecar.name}"
        if not engine.is_file():
            return "corrupt", f"{sidecar.name} has no engine {engine.name}"
        try:
            recorded = json.loads(sidecar.read_text(encoding="utf-8"))
            stored_key = EngineKey.from_dict(recorded["key"])
            digest, engine_hash = recorded["digest"], recorded["file_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return "corrupt", f"sidecar {sidecar.name} is unreadable: {error}"
        if recorded.get("format") != FORMAT_VERSION or digest != stored_key.digest:
            return "corrupt", f"sidecar {sidecar.name} does not match its own key"
        if digest != key.digest:
            changed = [name for name, value in key.to_dict().items() if stored_key.to_dict().get(name) != value]
            return "stale", f"{engine.name} was built for another {', '.join(changed)}"
        if file_sha256(engine) != engine_hash:
            return "corrupt", f"{engine.name} does not match the SHA-256 recorded in {sidecar.name}"
        return "hit", f"{engine.name} matches key {key.digest[:12]}"

    def load(self, key: EngineKey, loader: Callable[[Path], T]) -> tuple[T | None, CacheStatus, str]:
        """``loader(path)`` of the engine for ``key`` when it is valid, else ``None`` and why."""
        status, reason = self.status(key)
        if status != "hit":
            return None, status, reason
        try:
            return loader(self.engine_path(key)), "hit", reason
        except Exception as error:  # noqa: BLE001  (a file that will not deserialise is rebuilt, never fatal)
            return None, "corrupt", f"{self.engine_path(key).name} failed to load: {type(error).__name__}: {error}"

    def store(self, key: EngineKey, saver: Callable[[Path], None]) -> Path:
        """Write an engine with ``saver(path)`` and then its sidecar, each atomically.

        The sidecar is written last, so a crash in between leaves an engine without a
        sidecar, which :meth:`status` reports as corrupt and the next start rebuilds.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        engine, sidecar = self.engine_path(key), self.sidecar_path(key)
        sidecar.unlink(missing_ok=True)
        engine_hash = ""

        def write(tmp: Path) -> None:
            nonlocal engine_hash
            saver(tmp)
            engine_hash = file_sha256(tmp)

        atomic_write(engine, write, suffix=engine_suffix(key))
        record = {"format": FORMAT_VERSION, "digest": key.digest, "file_sha256": engine_hash, "key": key.to_dict()}
        tmp_sidecar = sidecar.with_name(f".{sidecar.name}.tmp")
        tmp_sidecar.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp_sidecar, sidecar)
        return engine

    def get_or_build(
        self,
        key: EngineKey,
        *,
        build: Callable[[], T],
        save: Callable[[T, Path], None],
        load: Callable[[Path], T],
    ) -> tuple[T, CacheStatus, str]:
        """The cached engine for ``key``, or a freshly built one that is then stored.

        Returns the engine, the cache status before this call (``"hit"`` means nothing was
        compiled) and the reason; stale and corrupt engines are logged as warnings.
        """
        engine, status, reason = self.load(key, load)
        if engine is not None:
            LOGGER.info("engine cache hit: %s", reason)
            return engine, status, reason
        if status in ("stale", "corrupt"):
            LOGGER.warning("engine cache: %s engine, rebuilding: %s", status, reason)
        else:
            LOGGER.info("engine cache: %s; building", reason)
        built = build()
        path = self.store(key, lambda target: save(built, target))
        LOGGER.info("engine cache: stored %s (key %s)", path, key.digest[:12])
        return built, status, reason
