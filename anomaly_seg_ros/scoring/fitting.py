"""The fitting API: scorers that learn statistics or a small model on in-distribution data.

A fitted scorer (SML's per-class statistics, FlowEneDet's flow) declares
``requires_fit = True`` and implements ``fit(model, batches)``, ``state_dict()`` and
``load_state_dict()``. ``anomaly-seg fit-scorer NAME --checkpoint CKPT --data ROOT`` runs the
fit and stores it next to the checkpoint as ``<ckpt stem>.<scorer>.safetensors``; its JSON
header names the scorer, the parameters the fit depends on and the SHA-256 of the
checkpoint. :func:`prepare_scorer` (used by the perception core and the evaluation code)
binds a scorer to the network and loads its fit, refusing a fit made for another checkpoint
or with other parameters; a scorer used without its fit raises :class:`ConfigError` naming
the command that makes it.

Batches given to ``fit`` are either normalised network inputs ``(N, 3, H, W)`` or pairs
``(inputs, labels)`` with trainId labels ``(N, H, W)`` at the inputs' resolution (255 = ignore).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.common.fileio import atomic_write_bytes
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring.base import Scorer

#: Header metadata key of a fit file.
FIT_METADATA_KEY = "anomaly_seg_ros_fit"
#: Version of the fit file layout; bumped when its meaning changes.
FIT_FORMAT = 1

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]


class FittedScorer(Scorer):
    """Base of scorers whose statistics come from in-distribution data (``requires_fit``)."""

    requires_fit: ClassVar[bool] = True
    #: Parameters that change what is fitted; a fit made with other values is refused.
    fit_param_names: ClassVar[tuple[str, ...]] = ()
    #: True when ``fit`` needs ground-truth labels, not only images.
    fit_needs_labels: ClassVar[bool] = False

    @property
    def fitted(self) -> bool:
        raise NotImplementedError

    def fit(self, model: nn.Module, batches: Iterable[Batch]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def fit_params(self) -> dict[str, Any]:
        """The parameters the fit depends on, as stored in (and checked against) the fit file."""
        return {key: self.params[key] for key in self.fit_param_names}

    def require_fitted(self) -> None:
        """Raise ConfigError naming the fitting command when no fit is loaded."""
        if not self.fitted:
            raise ConfigError(
                f"scorer {self.name!r} needs a fit on in-distribution data and has none; run: "
                f"{fit_command(self.name, None, self.fit_params())}"
            )


def fit_command(name: str, checkpoint: str | os.PathLike[str] | None, params: Mapping[str, Any] | None = None) -> str:
    """The exact ``anomaly-seg fit-scorer`` command line that makes a fit."""
    parts = ["anomaly-seg", "fit-scorer", name, "--checkpoint", str(checkpoint) if checkpoint else "CKPT"]
    parts += ["--data", "CITYSCAPES_ROOT"]
    for key, value in (params or {}).items():
        parts += ["--set", f"{key}={json.dumps(value)}"]
    return " ".join(shlex.quote(part) if part not in ("CKPT", "CITYSCAPES_ROOT") else part for part in parts)


def fit_path(checkpoint: str | os.PathLike[str], name: str) -> Path:
    """``<checkpoint folder>/<checkpoint stem>.<scorer>.safetensors``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.{name}.safetensors")


def checkpoint_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a checkpoint file's bytes (what a fit is tied to)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_fit(
    scorer: FittedScorer, checkpoint: str | os.PathLike[str], *, info: Mapping[str, Any] | None = None
) -> Path:
    """Write ``scorer``'s fit next to ``checkpoint``; returns the fit file's path.

    The header records scorer name, fit parameters, the checkpoint's file name and SHA-256,
    and ``info`` (e.g. data root, number of images). Written to a temporary name and renamed.
    """
    if not scorer.fitted:
        raise ConfigError(f"scorer {scorer.name!r} has no fit to save; call fit() first")
    path = fit_path(checkpoint, scorer.name)
    meta = {
        "format": FIT_FORMAT,
        "scorer": scorer.name,
        "params": scorer.fit_params(),
        "checkpoint": Path(checkpoint).name,
        "checkpoint_sha256": checkpoint_digest(checkpoint),
        **dict(info or {}),
    }
    tensors = {key: value.detach().cpu().contiguous() for key, value in scorer.state_dict().items()}
    payload = safetensors_bytes(tensors, metadata={FIT_METADATA_KEY: json.dumps(meta)})
    return atomic_write_bytes(path, payload)


def read_fit_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a fit file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as reader:
            header = reader.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable fit file: {exc}") from None
    if FIT_METADATA_KEY not in header:
        raise CheckpointError(f"{path} is not an anomaly_seg_ros scorer fit (no {FIT_METADATA_KEY!r} header entry)")
    return json.loads(header[FIT_METADATA_KEY])


def load_fit(scorer: FittedScorer, checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the fit of ``scorer`` stored next to ``checkpoint``; returns its metadata.

    Raises ConfigError with the command that (re)makes the fit when the file is missing,
    was made for another checkpoint (stale: the checkpoint's bytes changed) or with other
    fit parameters.
    """
    path = fit_path(checkpoint, scorer.name)
    command = fit_command(scorer.name, checkpoint, scorer.fit_params())
    if not path.is_file():
        raise ConfigError(f"scorer {scorer.name!r} needs a fit and {path} does not exist; run: {command}")
    meta = read_fit_metadata(path)
    if meta.get("scorer") != scorer.name:
        raise ConfigError(f"{path} holds a fit of scorer {meta.get('scorer')!r}, not {scorer.name!r}; run: {command}")
    digest = checkpoint_digest(checkpoint)
    if meta.get("checkpoint_sha256") != digest:
        raise ConfigError(
            f"{path} is stale: it was fitted for a checkpoint with SHA-256 {meta.get('checkpoint_sha256')}, "
            f"but {checkpoint} now has SHA-256 {digest}; re-run: {command}"
        )
    if meta.get("params") != scorer.fit_params():
        raise ConfigError(
            f"{path} was fitted with parameters {meta.get('params')}, the scorer has {scorer.fit_params()}; "
            f"re-run: {command}"
        )
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable fit file: {exc}") from None
    scorer.load_state_dict(state)
    return meta


def prepare_scorer(
    scorer: Scorer,
    model: nn.Module,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Scorer:
    """Bind ``scorer`` to ``model`` and load its fit (if it needs one and has none yet).

    ``metadata`` is the main checkpoint's metadata (normalisation), which ensembles compare
    their members against. Without ``checkpoint`` a scorer that needs a fit must already be
    fitted. Returns ``scorer``.
    """
    target = getattr(scorer, "inner", scorer)
    if metadata is not None and hasattr(target, "reference_metadata"):
        target.reference_metadata = dict(metadata)
    scorer.bind(model)
    if scorer.requires_fit and not scorer.fitted:
        if checkpoint is None:
            raise ConfigError(
                f"scorer {scorer.name!r} needs a fit stored next to its checkpoint, but no checkpoint path is "
                f"known (model.weights is unset); run: {fit_command(scorer.name, None, scorer.fit_params())}"
            )
        load_fit(target, checkpoint)
    return scorer


def score_all(
    output: torch.Tensor | SegmentationOutput, scorers: Mapping[str, Scorer] | Sequence[Scorer]
) -> dict[str, torch.Tensor]:
    """Scores of several scorers on one forward pass: ``{name: (N, H, W)}``.

    ``scorers`` is a mapping name -> scorer, or a sequence keyed by each scorer's name.
    The network runs once for all of them; each scorer adds only its own work (ensembles
    and ODIN run their extra passes by nature).
    """
    if not isinstance(scorers, Mapping):
        named: dict[str, Scorer] = {}
        for scorer in scorers:
            if scorer.name in named:
                raise ValueError(f"scorer {scorer.name!r} given twice; pass a mapping with distinct keys")
            named[scorer.name] = scorer
        scorers = named
    if not isinstance(output, SegmentationOutput):
        output = SegmentationOutput(logits=output)
    return {name: scorer(output) for name, scorer in scorers.items()}


def model_outputs(
    model: nn.Module, batches: Iterable[Batch]
) -> Iterator[tuple[SegmentationOutput, torch.Tensor | None]]:
    """Run ``model.forward_with_features`` on each batch (no gradients); yields (output, labels or None)."""
    device = next(model.parameters()).device
    for batch in batches:
        inputs, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
            raise ValueError(f"fit batches must hold (N, 3, H, W) input tensors, got {type(inputs).__name__}")
        inputs = inputs.to(device)
        with torch.inference_mode():
            output = model.forward_with_features(inputs)
        output.inputs = inputs
        if labels is not None:
            labels = labels.to(device).long()
            if labels.shape != (output.logits.shape[0], *output.logits.shape[2:]):
                raise ValueError(
                    f"labels must be (N, H, W) at the logits' resolution {tuple(output.logits.shape[2:])}, "
                    f"got {tuple(labels.shape)}"
                )
        yield output, labels
