"""Checkpoint files: our self-describing safetensors, and the authors' PyTorch files.

Our checkpoints are safetensors (no pickle, so loading one cannot run code) whose header
metadata holds, under the key ``anomaly_seg_ros``, a JSON object with everything needed to
run the network without a config file::

    model         registry name, e.g. "erfnet"
    num_classes   int
    class_names   list of num_classes names
    mean, std     3 floats each, applied to RGB after scaling it to 0..1
    input_size    [H, W] the network expects
    temperature   softmax temperature (1.0 when not calibrated)
    head          classifier head: "linear" (the network as published) or "isomax" (IsoMax+)
    ...           whatever else the caller passed (training config, metrics, epoch)

Loading is always strict: a checkpoint that does not fit the model exactly is an error
naming the file and the offending keys, never a silent partial load.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes
from torch import nn

from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.common.fileio import atomic_write_bytes
from anomaly_seg_ros.common.labels import class_names as default_class_names
from anomaly_seg_ros.models.heads import HEAD_KINDS, head_kind
from anomaly_seg_ros.models.registry import (
    available_models,
    build_model,
    model_defaults,
)

METADATA_KEY = "anomaly_seg_ros"
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".tar")
#: Keys under which training scripts (the ERFNet authors' included) nest the state_dict.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
#: Keys of a loaded state_dict listed in an error message before "... and N more".
_MAX_LISTED = 10


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, Any]) -> Path:
    """Write ``model``'s weights and metadata to a safetensors file; returns its path.

    Model name, class count and class names come from the model; normalisation and input
    size default to the registry's values for that model; ``metadata`` may override them
    (e.g. a fine-tuned input size or a calibrated ``temperature``) and add anything
    JSON-serialisable. The file is written to a temporary name and renamed, so a crash
    or a reader on another process never sees a half-written checkpoint.
    """
    path = Path(path)
    meta = _checkpoint_metadata(model, metadata)
    try:
        header = {METADATA_KEY: json.dumps(meta)}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint metadata for {path} is not JSON-serialisable: {exc}") from exc
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    payload = safetensors_bytes(tensors, metadata=header)

    return atomic_write_bytes(path, payload)


def _checkpoint_metadata(model: nn.Module, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Model-derived and registry-default metadata, overridden and extended by the caller's."""
    name = getattr(model, "model_name", None)
    num_classes = getattr(model, "num_classes", None)
    if name is None or num_classes is None:
        raise ConfigError(
            "model needs 'model_name' and 'num_classes' attributes to be saved; build it with build_model()"
        )
    head = head_kind(model)
    for key, actual in (("model", name), ("num_classes", num_classes), ("head", head)):
        if key in metadata and metadata[key] != actual:
            raise ConfigError(f"metadata[{key!r}] = {metadata[key]!r} contradicts the model ({actual!r})")
    defaults = model_defaults(name)
    meta: dict[str, Any] = {
        "model": name,
        "num_classes": num_classes,
        "mean": list(defaults["mean"]),
        "std": list(defaults["std"]),
        "input_size": list(defaults["input_size"]),
        "temperature": 1.0,
        "head": head,
    }
    meta.update(metadata)
    if "class_names" not in meta:
        try:
            meta["class_names"] = list(default_class_names(num_classes))
        except ValueError as exc:
            raise ConfigError(f"metadata['class_names'] is required: {exc}") from None
    if len(meta["class_names"]) != num_classes:
        raise ConfigError(f"metadata['class_names'] has {len(meta['class_names'])} names for {num_classes} classes")
    return meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of one of our safetensors checkpoints, without loading its tensors."""
    path = Path(path)
    return _parse_metadata(_safetensors_header(path), path)


def _parse_metadata(header: Mapping[str, str], path: Path) -> dict[str, Any]:
    if METADATA_KEY not in header:
        raise CheckpointError(
            f"{path} is a safetensors file but not an anomaly_seg_ros checkpoint "
            f"(no {METADATA_KEY!r} entry in its header metadata)"
        )
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: {METADATA_KEY!r} header metadata is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: {METADATA_KEY!r} header metadata is not a JSON object")
    return meta


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint into ``model`` strictly; returns its metadata (``{}`` if foreign).

    Accepts our ``.safetensors`` files and PyTorch ``.pth``/``.pt``/``.tar`` files holding
    a state_dict, raw or nested under ``state_dict``/``model``/``model_state_dict``, with or
    without DataParallel's ``module.`` prefix (the ERFNet authors' release has it). PyTorch
    files are unpickled with ``weights_only=True``, so a file carrying arbitrary Python
    objects is refused instead of executed.
    """
    path = Path(path)
    _require_file(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        header = _safetensors_header(path)
        meta = _parse_metadata(header, path) if METADATA_KEY in header else {}
        state = _read_safetensors(path)
        saved_name, model_name = meta.get("model"), getattr(model, "model_name", None)
        if saved_name is not None and model_name is not None and saved_name != model_name:
            raise CheckpointError(f"{path} holds a {saved_name!r} model, not {model_name!r}")
        saved_head, model_head = meta.get("head", "linear"), head_kind(model)
        if meta and saved_head != model_head:
            raise CheckpointError(f"{path} holds a model with a {saved_head!r} head, not {model_head!r}")
    elif path.suffix in TORCH_SUFFIXES:
        meta, state = {}, _read_torch_state_dict(path)
    else:
        raise CheckpointError(
            f"{path}: unsupported checkpoint type {path.suffix!r}; expected "
            f"{SAFETENSORS_SUFFIX} or a PyTorch state_dict ({', '.join(TORCH_SUFFIXES)})"
        )
    state = _check_state_dict(model, strip_module_prefix(state), path)
    model.load_state_dict(state, strict=True)
    return meta


def load_model(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model an anomaly_seg_ros checkpoint describes, load it, in eval mode on ``device``."""
    path = Path(path)
    _require_file(path)
    meta = read_metadata(path)
    for key in ("model", "num_classes"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata has no {key!r} entry")
    if meta["model"] not in available_models():
        raise CheckpointError(
            f"{path} holds model {meta['model']!r}, which is not registered; "
            f"available models: {', '.join(available_models())}"
        )
    head = meta.get("head", "linear")  # checkpoints written before heads existed are linear
    if head not in HEAD_KINDS:
        raise CheckpointError(f"{path}: metadata 'head' is {head!r}; expected one of {', '.join(HEAD_KINDS)}")
    model = build_model(meta["model"], num_classes=meta["num_classes"], head=head)
    load_weights(model, path)
    return model.to(device).eval(), meta


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix ``nn.DataParallel`` puts on every key, if all keys have it."""
    prefix = "module."
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")


def _safetensors_header(path: Path) -> dict[str, str]:
    _require_file(path)
    try:
        with safe_open(str(path), framework="pt") as reader:
            return reader.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(path)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None


def _read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a ``torch.save`` file, found raw or under a known key."""
    expected = "a PyTorch state_dict saved with torch.save, loadable with weights_only=True"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot load {path}: expected {expected}; {_reason(exc)}") from None
    if isinstance(obj, Mapping):
        nested = next((obj[key] for key in STATE_DICT_KEYS if isinstance(obj.get(key), Mapping)), None)
        state = nested if nested is not None else obj
        if state and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
            return dict(state)
    found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path}: expected {expected} (raw, or under one of {list(STATE_DICT_KEYS)}), found {found}")


def _reason(exc: Exception) -> str:
    """The informative line of a torch.load error (its weights_only refusal names the global)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    refusal = [line for line in lines if "WeightsUnpickler error" in line]
    return (refusal or lines or [type(exc).__name__])[0]


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``state`` if it fits ``model`` exactly, else CheckpointError listing every bad key.

    The only tolerated gap is BatchNorm's ``num_batches_tracked`` counter, absent from
    checkpoints saved before PyTorch 0.4.1 (the ERFNet authors' release); it is used only
    by BatchNorm with ``momentum=None`` and is set to 0, as PyTorch itself does for such files.
    """
    expected = model.state_dict()
    for key in expected.keys() - state.keys():
        if key.endswith(".num_batches_tracked"):
            state[key] = torch.zeros_like(expected[key])
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected.keys() & state.keys()
        if state[key].shape != expected[key].shape
    )
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    problems = [f"{label} ({len(keys)}): {_listing(keys)}" for label, keys in found.items() if keys]
    if problems:
        raise CheckpointError(f"{path} does not match the model: " + "; ".join(problems))
    return state


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown}, ... and {len(items) - _MAX_LISTED} more"
