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

:func:`load_model` is the one loader of every command. A bare PyTorch state_dict (the
authors' ``.pth`` releases) records no model name, class count, normalisation or calibration:
the network and its class count are inferred from the state_dict's keys and shapes (a match
is exact, so it cannot pick the wrong network), the normalisation and input size are the
registry's defaults for that network, and one logged line says so and names the settings
that override them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
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

log = logging.getLogger(__name__)

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


def default_metadata(name: str, num_classes: int, head: str) -> dict[str, Any]:
    """What a checkpoint of registered network ``name`` records when nothing else is known: its builder's defaults."""
    defaults = model_defaults(name)
    return {
        "model": name,
        "num_classes": num_classes,
        "mean": list(defaults["mean"]),
        "std": list(defaults["std"]),
        "input_size": list(defaults["input_size"]),
        "temperature": 1.0,
        "head": head,
    }


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
    meta = default_metadata(name, num_classes, head)
    meta.update(metadata)
    meta.pop("recorded", None)  # defaults of a bare state_dict (load_model) are recorded once saved
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


def load_model(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    model_name: str | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint holds, load it strictly, in eval mode on ``device``.

    Our ``.safetensors`` checkpoints name their model; a PyTorch ``.pth``/``.pt``/``.tar``
    state_dict does not, so its network and class count are inferred from its keys and shapes
    (or taken from ``model_name``/``num_classes``, which must then fit it) and the returned
    metadata holds the registry's defaults for that network, with ``"recorded": False``.
    ``model_name``/``num_classes`` that contradict a checkpoint are an error, never ignored.
    """
    path = Path(path)
    _require_file(path)
    if path.suffix in TORCH_SUFFIXES:
        return _load_bare_state_dict(path, device, model_name, num_classes)
    if path.suffix != SAFETENSORS_SUFFIX:
        raise CheckpointError(
            f"{path}: unsupported checkpoint type {path.suffix!r}; expected "
            f"{SAFETENSORS_SUFFIX} or a PyTorch state_dict ({', '.join(TORCH_SUFFIXES)})"
        )
    meta = read_metadata(path)
    for key in ("model", "num_classes"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata has no {key!r} entry")
    if meta["model"] not in available_models():
        raise CheckpointError(
            f"{path} holds model {meta['model']!r}, which is not registered; "
            f"available models: {', '.join(available_models())}"
        )
    for key, wanted in (("model", model_name), ("num_classes", num_classes)):
        if wanted is not None and wanted != meta[key]:
            raise CheckpointError(f"{path} holds {key} {meta[key]!r}, not the requested {wanted!r}")
    head = meta.get("head", "linear")  # checkpoints written before heads existed are linear
    if head not in HEAD_KINDS:
        raise CheckpointError(f"{path}: metadata 'head' is {head!r}; expected one of {', '.join(HEAD_KINDS)}")
    validate_metadata(meta, path)
    model = build_model(meta["model"], num_classes=meta["num_classes"], head=head)
    load_weights(model, path)
    return model.to(device).eval(), meta


def validate_metadata(meta: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """CheckpointError naming the entry when the preprocessing metadata cannot run a frame.

    Checked at load time so that a bad value stops start-up instead of the first frame.
    """

    def fail(key: str, expected: str) -> None:
        raise CheckpointError(f"{path}: metadata {key!r} is {meta[key]!r}; expected {expected}")

    def numbers(value: Any, count: int) -> bool:
        return (
            isinstance(value, (list, tuple))
            and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        )

    num_classes = meta.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        fail("num_classes", "a positive integer")
    if "input_size" in meta and not (
        numbers(meta["input_size"], 2) and all(int(v) == v and v >= 8 and v % 8 == 0 for v in meta["input_size"])
    ):
        fail("input_size", "[height, width], both positive multiples of 8")
    if "mean" in meta and not numbers(meta["mean"], 3):
        fail("mean", "3 finite numbers (RGB, on the 0..1 scale)")
    if "std" in meta and not (numbers(meta["std"], 3) and all(v > 0 for v in meta["std"])):
        fail("std", "3 finite positive numbers (RGB, on the 0..1 scale)")
    temperature = meta.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        fail("temperature", "a finite positive number")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == num_classes):
        fail("class_names", f"a list of {num_classes} names")
    calibration = meta.get("calibration", {})
    if not isinstance(calibration, Mapping) or not all(isinstance(v, Mapping) for v in calibration.values()):
        fail("calibration", "a mapping {scorer: {threshold: ..., range: [low, high]}}")
    for scorer, entry in calibration.items():
        threshold = entry.get("threshold")
        if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise CheckpointError(
                f"{path}: metadata 'calibration.{scorer}.threshold' is {threshold!r}; expected a finite number"
            )


def _load_bare_state_dict(
    path: Path, device: torch.device | str, model_name: str | None, num_classes: int | None
) -> tuple[nn.Module, dict[str, Any]]:
    state = strip_module_prefix(_read_torch_state_dict(path))
    name, classes = infer_architecture(state, path, model_name=model_name, num_classes=num_classes)
    model = build_model(name, num_classes=classes)
    model.load_state_dict(_check_state_dict(model, state, path), strict=True)
    defaults = model_defaults(name)
    meta = default_metadata(name, classes, "linear")
    meta |= {"source": str(path), "recorded": False}  # the values above are defaults, not the checkpoint's own
    try:
        meta["class_names"] = list(default_class_names(classes))
    except ValueError:
        meta["class_names"] = [f"class {index}" for index in range(classes)]
    height, width = defaults["input_size"]
    log.warning(
        "%s is a bare state_dict: %s with %d classes (inferred from its keys); it records no normalisation "
        "or calibration, so %s's defaults apply (RGB 0..1, mean %s, std %s, input %dx%d, temperature 1, no "
        "alert threshold): if it was trained otherwise pass --set model.mean=[R,G,B] model.std=[R,G,B] "
        "model.input_size=[H,W], and --set alerts.threshold=X to raise alerts",
        path,
        name,
        classes,
        name,
        list(defaults["mean"]),
        list(defaults["std"]),
        height,
        width,
    )
    return model.to(device).eval(), meta


@functools.cache
def _architecture_signature(name: str) -> tuple[frozenset[str], tuple[tuple[str, int], ...]]:
    """Keys of model ``name`` (without BatchNorm counters) and, per class-count-dependent key, the
    axis that has ``num_classes`` entries (found by building the network at two class counts)."""
    small, large = (build_model(name, num_classes=n).state_dict() for n in (3, 5))
    keys = frozenset(key for key in small if not key.endswith(".num_batches_tracked"))
    axes = []
    for key in sorted(keys):
        differing = [axis for axis, (a, b) in enumerate(zip(small[key].shape, large[key].shape, strict=True)) if a != b]
        if differing:
            axes.append((key, differing[0]))
    return keys, tuple(axes)


def infer_architecture(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    num_classes: int | None = None,
) -> tuple[str, int]:
    """(registered model name, class count) whose parameters have exactly the keys of ``state``.

    The class count is read from the shapes of the keys that depend on it (the classifier); a
    requested ``model_name``/``num_classes`` must fit. CheckpointError when nothing fits,
    naming the closest network and its missing and unexpected keys.
    """
    keys = {key for key in state if not key.endswith(".num_batches_tracked")}
    names = [model_name] if model_name is not None else available_models()
    if model_name is not None and model_name not in available_models():
        raise CheckpointError(f"unknown model {model_name!r}; available models: {', '.join(available_models())}")
    signatures = {name: _architecture_signature(name) for name in names}
    matches = [name for name, (expected, _) in signatures.items() if expected == keys]
    if not matches:
        closest = min(signatures, key=lambda name: len(signatures[name][0] ^ keys))
        expected = signatures[closest][0]
        raise CheckpointError(
            f"{path} is not a state_dict of {'model ' + repr(model_name) if model_name else 'any registered model'} "
            f"({', '.join(names)}); closest is {closest!r} with "
            f"missing keys ({len(expected - keys)}): {_listing(sorted(expected - keys))}; "
            f"unexpected keys ({len(keys - expected)}): {_listing(sorted(keys - expected))}"
        )
    name = matches[0]
    counts = {int(state[key].shape[axis]) for key, axis in signatures[name][1] if state[key].ndim > axis}
    if len(counts) != 1:
        raise CheckpointError(
            f"{path}: the classifier layers of {name!r} disagree on the class count: {sorted(counts)}"
        )
    classes = counts.pop()
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"{path} holds a {classes}-class {name!r}, not the requested {num_classes} classes")
    return name, classes


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix ``nn.DataParallel`` puts on every key, if all keys have it."""
    prefix = "module."
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; expected a checkpoint file (.safetensors or .pth)")
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
