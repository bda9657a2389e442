"""Evaluation through the perception core: segmentation mIoU, scorer metrics and the evaluation grid.

Images go through ``Perception.infer``, the exact preprocessing of deployment; outputs are
compared with the ground truth at the ground truth's resolution.

The grid (``run_grid``, behind ``anomaly-seg evaluate``) evaluates checkpoints x scorers x
datasets in one run. Per (checkpoint, dataset) cell the network runs ONCE per image and every
scorer reads the same ``SegmentationOutput``, so adding scorers costs only their reductions
(seed 000 Tables 1-2 are one forward pass per image, not one per row). Pixel metrics are
pooled over the dataset (SMIYC convention) with :class:`StreamingOODMetrics`: exact while the
pixels fit its buffer, fixed-size histograms with stated error bounds beyond, so memory does
not grow with the dataset. Per-image score maps are never kept; only the first ``examples``
frames are, for the example grid.

Each finished cell is written to ``OUT/cells/<checkpoint>/<dataset>/`` (``cell.json`` written
last, after the streaming states ``<scorer>.npz``), so an interrupted or extended run reuses
every finished cell and computes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from anomaly_seg_ros.common.errors import AnomalySegError, ConfigError, DatasetError
from anomaly_seg_ros.common.labels import IGNORE_INDEX, NUM_CITYSCAPES_CLASSES, class_names
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.data.datasets import AnomalyDataset, CityscapesDataset
from anomaly_seg_ros.evaluation.state import (
    load_streaming_metrics,
    save_examples,
    save_streaming_metrics,
    write_atomically,
    write_json,
)
from anomaly_seg_ros.inference.preprocess import resize_labels, resize_scores
from anomaly_seg_ros.metrics import ConfusionMatrix, StreamingOODMetrics
from anomaly_seg_ros.scoring import Scorer, get_scorer

#: Version of the cell files; a cell written by another version is recomputed.
CELL_VERSION = 2  # 2: mIoU over the 19 trainIds, without a void class
#: Spellings of the temperature parameter in a scorer spec (``msp@T=0.5``).
TEMPERATURE_KEYS = ("T", "t", "temperature")
#: Temperature value that means "the checkpoint's calibrated temperature".
FITTED = "fitted"
#: Command that fits scorers with ``requires_fit`` (named in the error of an unfitted one).
FIT_COMMAND = "anomaly-seg fit-scorer"
#: Row names of the seed 000 tables.
METHOD_TITLES = {"msp": "MSP", "maxlogit": "Max Logit", "maxentropy": "Max Entropy", "energy": "Energy"}
#: Column titles of the seed 000 tables for dataset kinds.
DATASET_TITLES = {
    "synthetic": "Synthetic",
    "road_anomaly": "Road Anomaly",
    "smiyc_anomaly": "SMIYC RA-21",
    "smiyc_obstacle": "SMIYC RO-21",
    "fs_lost_and_found": "FS L&F",
    "fs_static": "FS Static",
    "lost_and_found": "Lost and Found",
}


def _frame_outputs(
    perception: Perception, scorers: Mapping[str, Scorer], image: np.ndarray
) -> tuple[torch.Tensor, dict[str, np.ndarray | Exception]]:
    """One forward pass shared by all scorers: ``(logits, {key: HxW scores or the scorer's error})``."""
    features = any(scorer.requires_features for scorer in scorers.values())
    output, _ = perception.infer(image, features=features)
    scores: dict[str, np.ndarray | Exception] = {}
    with torch.inference_mode():
        for key, scorer in scorers.items():
            try:
                scores[key] = resize_scores(scorer(output).float(), image.shape[:2])[0].cpu().numpy()
            except Exception as error:  # noqa: BLE001 - reported per scorer by the caller
                if not scorer.requires_fit:
                    raise
                scores[key] = error
    return output.logits, scores


def evaluate_scorers(
    perception: Perception,
    dataset: AnomalyDataset,
    scorers: Sequence[str],
    *,
    progress: bool = False,
) -> dict[str, StreamingOODMetrics]:
    """Pooled pixel metrics of each scorer over ``dataset``, scores taken at the image's size.

    The model runs once per image; every scorer reads the same logits, so adding scorers
    costs only their reductions.
    """
    built = {name: get_scorer(name) for name in scorers}
    for scorer in built.values():
        scorer.bind(perception.model)
    results = {name: StreamingOODMetrics() for name in scorers}
    for index in tqdm(range(len(dataset)), desc="evaluate", unit="image", disable=not progress):
        image, truth = dataset[index]
        _, scores = _frame_outputs(perception, built, image)
        for name, value in scores.items():
            if isinstance(value, Exception):
                raise value
            results[name].update(value, truth)
    return results


def evaluate_segmentation(
    perception: Perception,
    dataset: CityscapesDataset,
    *,
    progress: bool = False,
    calibration: Mapping[float, Any] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix (ignore 255) of the model's arg-max labels over ``dataset``.

    ``calibration`` maps temperatures ``T`` to ``metrics.calibration.CalibrationHistogram``
    accumulators, updated with ``softmax(logits / T)`` in the same pass: the ECE of Guo et al.
    (2017, eq. 3) at network resolution, ground truth resized to it by nearest neighbour
    (resizing C-channel logits to the frame would cost C times the score maps).
    """
    confusion: ConfusionMatrix | None = None
    for index in tqdm(range(len(dataset)), desc="segmentation", unit="image", disable=not progress):
        image, truth = dataset[index]
        logits = perception.infer(image)[0].logits
        if confusion is None:
            confusion = ConfusionMatrix(logits.shape[1], ignore_index=IGNORE_INDEX)
        with torch.inference_mode():
            labels = resize_labels(logits.argmax(dim=1), image.shape[:2])[0].cpu().numpy()
            if calibration:
                small = resize_labels(torch.from_numpy(truth)[None].to(logits.device), tuple(logits.shape[-2:]))
                for temperature, histogram in calibration.items():
                    histogram.update(logits / temperature, small.long(), inputs="logits")
        confusion.update(labels, truth)
    if confusion is None:
        raise ValueError("evaluate_segmentation needs a non-empty dataset")
    return confusion


def scored_classes(num_classes: int) -> int:
    """Classes that mIoU averages: the 19 Cityscapes trainIds, never a 20-class model's void class.

    The ground truth has no void label (its unlabelled pixels are ignore, 255), so void's IoU
    would be 0 whenever void is predicted and pull the mean down; the Cityscapes benchmark and
    the seed's code (``iouEval`` with ``ignoreIndex=19``) average the 19 classes. A pixel of
    class c predicted as void still counts as a miss (false negative) of c.
    """
    return min(num_classes, NUM_CITYSCAPES_CLASSES)


# -- what to evaluate ---------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class ScorerSpec:
    """One row of the grid: a registered scorer and its parameters, as written on the command line.

    ``msp``, ``msp@T=0.5``, ``msp@T=fitted`` (the checkpoint's ``temperature`` metadata),
    ``energy@temperature=2``, ``name@key=value,key=value`` for any scorer parameters.
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """Canonical text of the spec; names the cell files of this scorer."""
        if not self.params:
            return self.name
        return self.name + "@" + ",".join(f"{key}={_format_value(value)}" for key, value in self.params)

    def resolve(self, metadata: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """Parameters for ``get_scorer`` and the row title, ``fitted`` replaced by the checkpoint's value."""
        params = dict(self.params)
        title = METHOD_TITLES.get(self.name, self.name)
        notes = []
        for key, value in self.params:
            if key == "temperature" and value == FITTED:
                fitted = metadata.get("temperature")
                params[key] = float(fitted) if fitted is not None else 1.0
                calibrated = fitted is not None and float(fitted) != 1.0
                notes.append(f"fitted T={params[key]:.4g}" if calibrated else "T=1, no fitted temperature")
            elif key == "temperature":
                notes.append(f"T={value:g}")
            else:
                notes.append(f"{key}={_format_value(value)}")
        return params, title + (f" ({', '.join(notes)})" if notes else "")


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split ``text`` on ``separator`` outside brackets, braces and quoted strings.

    ``"a=1,m=[x,y],b={k: 2}"`` -> ``["a=1", "m=[x,y]", "b={k: 2}"]``. A quote opens a string
    only at the start of a value or list item (after ``=``, ``[``, ``{``, ``,``, ``:`` or a
    space), so an apostrophe inside a path is an ordinary character. Unbalanced brackets raise
    ConfigError (a missing ``]`` would otherwise swallow the following parameters).
    """
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    previous = "="
    for index, char in enumerate(text):
        opens_string = previous in "=[{,: " and char in "\"'"
        previous = char
        if quote:
            quote = "" if char == quote else quote
        elif opens_string:
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"{text!r}: unbalanced {char!r} at position {index}")
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth or quote:
        raise ConfigError(f"{text!r}: unclosed {'quote ' + quote if quote else 'bracket'}; expected e.g. key=[a,b]")
    parts.append(text[start:])
    return parts


def _parse_spec_value(text: str, spec: str) -> Any:
    """A parameter value: number, ``true``/``false``, a YAML flow list/mapping (``[a, b]``), else the string."""
    text = text.strip()
    if text[:1] in "[{":
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--scorer {spec!r}: cannot read {text!r} as a YAML list or mapping: {error}") from None
        return _freeze(value, spec)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return _parse_value(text)


def _freeze(value: Any, spec: str = "") -> Any:
    """Lists -> tuples, recursively, so that a ScorerSpec stays hashable; no scorer takes a mapping."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(item, spec) for item in value)
    if isinstance(value, dict):
        raise ConfigError(
            f"--scorer {spec!r}: a parameter value is a mapping {value!r}; values are numbers, true/false, "
            "strings or lists, e.g. members=[a.safetensors,b.safetensors]"
        )
    return value


def _format_value(value: Any) -> str:
    """Text of a parameter value in a spec key and title: tuples as ``[a,b]``."""
    if isinstance(value, tuple):
        return "[" + ",".join(_format_value(item) for item in value) + "]"
    return str(value)


def parse_scorer_spec(text: str) -> ScorerSpec:
    """``NAME[@KEY=VALUE[,KEY=VALUE...]]`` or ``NAME@{KEY: VALUE, ...}`` -> :class:`ScorerSpec`.

    ``T`` and ``t`` mean ``temperature``. Values are numbers, ``true``/``false``, strings or
    YAML flow lists (``ensemble_entropy@members=[a.safetensors,b.safetensors]``); parameters
    are split only on top-level commas, so commas inside ``[...]`` or ``{...}`` belong to the
    value. The form ``NAME@{members: [a, b], ...}`` is one YAML flow mapping.
    """
    name, _, rest = text.strip().partition("@")
    name, rest = name.strip(), rest.strip()
    if not name:
        raise ConfigError(f"--scorer {text!r}: expected NAME[@KEY=VALUE,...], e.g. msp@T=0.5")
    items: list[tuple[str, Any]] = []
    if rest.startswith("{"):
        try:
            mapping = yaml.safe_load(rest)
        except yaml.YAMLError as error:
            raise ConfigError(f"--scorer {text!r}: {rest!r} is not a YAML flow mapping: {error}") from None
        if not isinstance(mapping, dict) or not all(isinstance(key, str) and key for key in mapping):
            raise ConfigError(f"--scorer {text!r}: expected NAME@{{key: value, ...}}, got {rest!r}")
        items = [(key, _freeze(value, text)) for key, value in mapping.items()]
    else:
        for item in split_top_level(rest) if rest else []:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not item.strip():
                continue
            if not sep or not key or not value.strip():
                raise ConfigError(
                    f"--scorer {text!r}: parameter {item!r} is not KEY=VALUE (e.g. T=0.5, T=fitted or members=[a,b])"
                )
            items.append((key, _parse_spec_value(value, text)))
    params: list[tuple[str, Any]] = []
    for key, value in items:
        key = "temperature" if key in TEMPERATURE_KEYS else key
        if any(key == seen for seen, _ in params):
            raise ConfigError(f"--scorer {text!r}: parameter {key!r} is given twice")
        if (
            key == "temperature"
            and value != FITTED
            and not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0)
        ):
            raise ConfigError(f"--scorer {text!r}: temperature must be a number > 0 or {FITTED!r}, got {value!r}")
        params.append((key, float(value) if key == "temperature" and value != FITTED else value))
    get_scorer(name, **{k: (1.0 if v == FITTED else v) for k, v in params})  # unknown names/params fail now
    return ScorerSpec(name, tuple(params))


@dataclass(frozen=True)
class DatasetSpec:
    """An anomaly dataset of the grid: ``KIND:ROOT`` (e.g. ``synthetic:/tmp/synth``)."""

    kind: str
    root: Path

    @property
    def title(self) -> str:
        return DATASET_TITLES.get(self.kind, self.kind)

    @property
    def key(self) -> str:
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]
        return f"{_slug(self.kind)}-{_slug(self.root.name)}-{digest}"


def parse_dataset_spec(text: str) -> DatasetSpec:
    """``KIND:ROOT`` -> :class:`DatasetSpec`; the root must be an existing folder.

    ``auto:ROOT`` is resolved here to the kind found on disk, so tables and cells name it.
    """
    kind, sep, root = text.partition(":")
    if not sep or not kind or not root:
        raise ConfigError(f"--dataset {text!r}: expected KIND:ROOT, e.g. synthetic:/tmp/synth")
    if not Path(root).is_dir():
        raise ConfigError(f"--dataset {text!r}: {root} is not a folder")
    if kind == "auto":
        from anomaly_seg_ros.data.benchmarks import detect_kind

        kind = detect_kind(Path(root))
    return DatasetSpec(kind, Path(root))


def open_anomaly_data(spec: DatasetSpec) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Items ``(image HxWx3 uint8 RGB, mask HxW uint8 0/1/255)`` of a dataset spec.

    ``synthetic``: the anomaly set of ``anomaly-seg synth`` (``ROOT`` or ``ROOT/anomaly``, the
    Fishyscapes layout). Other kinds (``road_anomaly``, ``smiyc_anomaly``, ``smiyc_obstacle``,
    ``fs_lost_and_found``, ``fs_static``, ``lost_and_found``, ``auto``) are read by
    ``anomaly_seg_ros.data.benchmarks.open_anomaly_dataset`` in the benchmarks' on-disk formats.
    """
    if spec.kind == "synthetic":
        root = spec.root / "anomaly" if (spec.root / "anomaly" / "images").is_dir() else spec.root
        return AnomalyDataset(root)
    try:
        from anomaly_seg_ros.data.benchmarks import open_anomaly_dataset
    except ImportError:
        raise ConfigError(
            f"--dataset {spec.kind}:{spec.root}: unknown kind {spec.kind!r}; available: synthetic "
            "(anomaly_seg_ros.data.benchmarks, the benchmark readers, is not installed)"
        ) from None
    return open_anomaly_dataset(spec.kind, spec.root)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def checkpoint_key(path: Path) -> str:
    """Folder name of a checkpoint's cells: its stem and a hash of its resolved path."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{_slug(path.stem)}-{digest}"


def _checkpoint_fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _clean(value: Any) -> Any:
    """NaN -> None, recursively, so results.json is valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


# -- one (checkpoint, dataset) cell ---------------------------------------------------------------


@dataclass
class CellResult:
    """What one pass of one checkpoint over one anomaly dataset produced, for every scorer."""

    metrics: dict[str, StreamingOODMetrics]
    errors: dict[str, str]
    num_images: int
    #: first frames for the example grid: (image, ground truth, scores of the first scorer)
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


def evaluate_cell(
    perception: Perception,
    dataset: Iterable[tuple[np.ndarray, np.ndarray]],
    scorers: Mapping[str, Scorer],
    *,
    examples: int = 4,
    progress: bool = False,
    description: str = "evaluate",
    metrics_factory: Any = StreamingOODMetrics,
) -> CellResult:
    """Every scorer's pooled pixel metrics over ``dataset``, one forward pass per image.

    Memory: one frame's outputs, the scorers' streaming accumulators (bounded) and the first
    ``examples`` frames. A scorer with ``requires_fit`` that fails (no fit) is reported in
    ``errors`` with the command that fits it; the others go on.
    """
    metrics = {key: metrics_factory() for key in scorers}
    errors: dict[str, str] = {}
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    first = next(iter(scorers), None)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    count = 0
    for image, truth in tqdm(dataset, total=total, desc=description, unit="image", disable=not progress):
        active = {key: scorer for key, scorer in scorers.items() if key not in errors}
        if not active:
            break
        _, scores = _frame_outputs(perception, active, image)
        for key, value in scores.items():
            if isinstance(value, Exception):
                name = scorers[key].name
                errors[key] = (
                    f"scorer {name!r} needs a fit on in-distribution data and failed without one "
                    f"({type(value).__name__}: {value}); fit it with "
                    f"`{FIT_COMMAND} {name} --checkpoint CKPT --data CITYSCAPES_ROOT`"
                )
                continue
            metrics[key].update(value, truth)
        if len(kept) < examples and first in scores and not isinstance(scores[first], Exception):
            kept.append((image.copy(), np.asarray(truth).copy(), scores[first].astype(np.float32)))
        count += 1
    if count == 0:
        raise DatasetError(f"{description}: the dataset has no images")
    return CellResult({k: v for k, v in metrics.items() if k not in errors}, errors, count, kept)


def best_f1_threshold(metrics: StreamingOODMetrics) -> float:
    """Score threshold of the best pixel F1 = 2 P R / (P + R) on the pooled curve (first maximum,
    thresholds decreasing): SMIYC's choice of the component-metrics threshold."""
    precision, recall, thresholds = metrics.pr_curve()
    precision, recall = precision[:-1][::-1], recall[:-1][::-1]  # drop the (1, 0) end point
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    thresholds = thresholds[::-1]
    finite = np.isfinite(thresholds)
    best = thresholds[int(np.argmax(np.where(finite, f1, -1.0)))]
    # The curve flags score >= t, ComponentMetrics flags score > t, and numpy compares a float32
    # map with a Python float in float32: return the largest float32 below t, so that
    # ``s > result`` holds exactly for the float32 scores s >= t.
    below = np.float32(best)
    if below >= best:
        below = np.nextafter(below, np.float32(-np.inf))
    return float(below)


def evaluate_components(
    perception: Perception,
    dataset: Iterable[tuple[np.ndarray, np.ndarray]],
    scorers: Mapping[str, Scorer],
    thresholds: Mapping[str, float],
    *,
    track: str = "anomaly",
    progress: bool = False,
    description: str = "components",
) -> dict[str, dict[str, Any]]:
    """SMIYC component metrics (sIoU, PPV, mean F1; ``metrics.components``) of each scorer at its
    threshold, one forward pass per image shared by all scorers. A second pass over the data,
    because the threshold (best pixel F1) is only known once the pooled curve is complete."""
    from anomaly_seg_ros.metrics.components import ComponentMetrics

    accumulators = {key: ComponentMetrics(thresholds[key], track) for key in scorers}
    total = len(dataset) if hasattr(dataset, "__len__") else None
    for image, truth in tqdm(dataset, total=total, desc=description, unit="image", disable=not progress):
        _, scores = _frame_outputs(perception, scorers, image)
        for key, value in scores.items():
            accumulators[key].update(value, truth)
    return {key: _clean(accumulator.summary()) for key, accumulator in accumulators.items()}


# -- the grid ---------------------------------------------------------------------------------


@dataclass
class GridOptions:
    """Everything ``anomaly-seg evaluate`` was asked to do."""

    checkpoints: list[Path]
    scorers: list[ScorerSpec]
    datasets: list[DatasetSpec]
    out: Path
    segmentation: Path | None = None
    segmentation_split: str = "val"
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    examples: int = 4
    tpr: float = 0.95
    progress: bool = True
    plots: bool = True
    #: SMIYC component metrics track ("anomaly" or "obstacle"): a second pass per cell; None = off
    components: str | None = None
    #: Valid pixels per scorer kept exactly before the streaming metrics switch to histograms
    #: (5 bytes each); a reused cell keeps the state it was computed with.
    exact_pixels: int = 4_000_000


def build_perception(checkpoint: Path, options: GridOptions) -> Perception:
    """The deployment pipeline around ``checkpoint``; alerts are irrelevant here, so no calibrated
    threshold is required (a neutral one is set when neither config nor checkpoint has one)."""
    if not checkpoint.is_file():
        raise ConfigError(f"--checkpoint {checkpoint} does not exist")
    config = load_config(options.config, [*options.overrides, f"model.weights={checkpoint}"])
    if config.alerts.threshold is None:
        config = load_config(options.config, [*options.overrides, f"model.weights={checkpoint}", "alerts.threshold=0"])
    return Perception.from_config(config)


def _cell_identity(perception: Perception, checkpoint: Path, spec: DatasetSpec) -> dict[str, Any]:
    """What a cell's numbers depend on: the checkpoint's bytes (size and mtime), the dataset and
    the preprocessing (``--set model.input_size=...`` changes every score)."""
    return {
        "version": CELL_VERSION,
        "checkpoint": _checkpoint_fingerprint(checkpoint),
        "preprocessing": {
            "input_size": list(perception.input_size),
            "mean": list(perception.mean),
            "std": list(perception.std),
        },
        "dataset": {"kind": spec.kind, "root": str(spec.root.resolve())},
    }


def _load_cell(folder: Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The finished cell in ``folder`` if it was made from the same checkpoint file and dataset."""
    path = folder / "cell.json"
    if not path.is_file():
        return None
    try:
        cell = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if any(cell.get(key) != value for key, value in identity.items()):
        return None
    return cell


def _prepare_scorer(scorer: Scorer, perception: Perception, checkpoint: Path) -> None:
    """Bind ``scorer`` to the network and, if it needs one, load its fit stored next to ``checkpoint``
    (``anomaly_seg_ros.scoring.fitting``; without that module only binding is possible)."""
    try:
        from anomaly_seg_ros.scoring.fitting import prepare_scorer
    except ImportError:
        scorer.bind(perception.model)
        return
    prepare_scorer(scorer, perception.model, checkpoint=checkpoint, metadata=perception.metadata)


def _anomaly_cell(
    perception: Perception,
    checkpoint: Path,
    spec: DatasetSpec,
    scorers: Mapping[str, tuple[ScorerSpec, dict[str, Any], str]],
    options: GridOptions,
    log: list[str],
) -> tuple[Path, dict[str, Any]]:
    """Reuse or compute one (checkpoint, dataset) cell; returns its folder and its cell.json."""
    folder = options.out / "cells" / checkpoint_key(checkpoint) / spec.key
    identity = _cell_identity(perception, checkpoint, spec)
    cell = _load_cell(folder, identity) or {**identity, "scorers": {}, "num_images": None, "examples_of": None}
    # errors are not results: a scorer that failed (no fit yet) is tried again
    missing = [key for key in scorers if "summary" not in cell["scorers"].get(key, {})]
    for key in scorers:
        entry = cell["scorers"].get(key, {})
        if "summary" in entry and entry["summary"]["tpr"] != options.tpr:  # cheap: from the saved state
            entry["summary"] = _clean(load_streaming_metrics(folder / entry["state"]).summary(options.tpr))
    if not missing:
        if not _cell_components(perception, checkpoint, spec, scorers, options, folder, cell, log):
            log.append(f"reused {folder}")
        write_json(folder / "cell.json", cell)
        return folder, cell
    built: dict[str, Scorer] = {}
    for key in missing:
        spec_, params, title = scorers[key]
        scorer = get_scorer(spec_.name, **params)
        try:
            _prepare_scorer(scorer, perception, checkpoint)
        except AnomalySegError as error:  # no fit, or a void-class scorer on a model without a void class
            cell["scorers"][key] = {"title": title, "name": spec_.name, "params": params, "error": str(error)}
            continue
        built[key] = scorer
    if built:
        result = evaluate_cell(
            perception,
            open_anomaly_data(spec),
            built,
            examples=options.examples if cell["examples_of"] is None else 0,
            progress=options.progress,
            description=f"{checkpoint.stem} | {spec.title}",
            metrics_factory=lambda: StreamingOODMetrics(buffer_size=options.exact_pixels),
        )
        for key in built:
            spec_, params, title = scorers[key]
            entry: dict[str, Any] = {"title": title, "name": spec_.name, "params": params}
            if key in result.errors:
                entry["error"] = result.errors[key]
            else:
                file = f"{_slug(key)}.npz"
                save_streaming_metrics(folder / file, result.metrics[key])
                entry |= {"state": file, "summary": _clean(result.metrics[key].summary(options.tpr))}
            cell["scorers"][key] = entry
        if result.examples:
            save_examples(folder / "examples.npz", result.examples)
            cell["examples_of"] = next(iter(built))
        cell["num_images"] = result.num_images
        log.append(f"computed {folder}: {len(built)} scorers over {result.num_images} images")
    _cell_components(perception, checkpoint, spec, scorers, options, folder, cell, log)
    write_json(folder / "cell.json", cell)
    return folder, cell


def _cell_components(
    perception: Perception,
    checkpoint: Path,
    spec: DatasetSpec,
    scorers: Mapping[str, tuple[ScorerSpec, dict[str, Any], str]],
    options: GridOptions,
    folder: Path,
    cell: dict[str, Any],
    log: list[str],
) -> bool:
    """Add component metrics of the requested track to the cell's scorers that lack them; True if any."""
    if options.components is None:
        return False
    todo = [
        key
        for key in scorers
        if "summary" in cell["scorers"][key]
        and cell["scorers"][key].get("components", {}).get("track") != options.components
    ]
    if not todo:
        return False
    built: dict[str, Scorer] = {}
    thresholds: dict[str, float] = {}
    for key in todo:
        spec_, params, _ = scorers[key]
        built[key] = get_scorer(spec_.name, **params)
        _prepare_scorer(built[key], perception, checkpoint)
        thresholds[key] = best_f1_threshold(load_streaming_metrics(folder / cell["scorers"][key]["state"]))
    summaries = evaluate_components(
        perception,
        open_anomaly_data(spec),
        built,
        thresholds,
        track=options.components,
        progress=options.progress,
        description=f"{checkpoint.stem} | {spec.title} | components",
    )
    for key, summary in summaries.items():
        cell["scorers"][key]["components"] = {"track": options.components} | summary
    log.append(f"component metrics ({options.components} track) in {folder}: {len(todo)} scorers")
    return True


def _segmentation_cell(perception: Perception, checkpoint: Path, options: GridOptions, log: list[str]) -> dict:
    root = options.segmentation
    folder = options.out / "cells" / checkpoint_key(checkpoint) / f"segmentation-{_slug(root.name)}"
    identity = _cell_identity(perception, checkpoint, DatasetSpec("cityscapes", root))
    identity["split"] = options.segmentation_split
    cell = _load_cell(folder, identity)
    if cell is not None:
        log.append(f"reused {folder}")
        return cell
    dataset = CityscapesDataset(root, options.segmentation_split)
    temperatures = sorted({1.0, float(perception.metadata.get("temperature") or 1.0)})
    try:
        from anomaly_seg_ros.metrics.calibration import CalibrationHistogram

        calibration = {temperature: CalibrationHistogram() for temperature in temperatures}
    except ImportError:
        calibration = {}
    confusion = evaluate_segmentation(perception, dataset, progress=options.progress, calibration=calibration)
    write_atomically(folder / "confusion.npy", lambda handle: np.save(handle, confusion.matrix))
    scored = scored_classes(confusion.num_classes)
    iou = confusion.iou()[:scored]
    cell = identity | {
        "num_images": len(dataset),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": confusion.pixel_accuracy(),
        "iou": dict(zip(class_names(scored), iou.tolist(), strict=True)),
        # pixels of the scored classes predicted as the void class: misses in their IoU
        "void_predicted": int(confusion.matrix[:scored, scored:].sum()),
        # ECE (15 equal-width confidence bins) at T = 1 and at the checkpoint's temperature
        "ece": {f"{temperature:g}": histogram.value() for temperature, histogram in calibration.items()},
    }
    cell = _clean(cell)
    write_json(folder / "cell.json", cell)
    log.append(f"computed {folder}")
    return cell


def run_grid(options: GridOptions) -> dict[str, Any]:
    """Evaluate every checkpoint x scorer x dataset and write the report folder ``options.out``.

    Writes ``results.json`` (every metric, counts, error bounds), ``table.md`` and
    ``table.csv`` (seed 000 Tables 1-4 layout) and, unless ``options.plots`` is False, the PR,
    ROC, histogram and example plots under ``plots/``. Returns the results document.
    """
    from anomaly_seg_ros.evaluation import plots, tables

    if not options.checkpoints or not options.scorers:
        raise ConfigError("evaluate: give at least one --checkpoint and one --scorer")
    if not options.datasets and options.segmentation is None:
        raise ConfigError("evaluate: give at least one --dataset KIND:ROOT or --segmentation ROOT")
    keys = [spec.key for spec in options.scorers]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"evaluate: a scorer is listed twice: {keys}")
    for checkpoint in options.checkpoints:  # every path before the first one runs for minutes
        if not checkpoint.is_file():
            what = "is a directory, not a checkpoint file" if checkpoint.is_dir() else "does not exist"
            raise ConfigError(f"--checkpoint {checkpoint} {what}")
    options.out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    rows: list[dict[str, Any]] = []
    checkpoints: dict[str, Any] = {}
    folders: dict[tuple[str, str], Path] = {}
    for checkpoint in options.checkpoints:
        perception = build_perception(checkpoint, options)
        scorers = {spec.key: (spec, *spec.resolve(perception.metadata)) for spec in options.scorers}
        ckpt_key = checkpoint_key(checkpoint)
        entry: dict[str, Any] = {
            "path": str(checkpoint),
            "model": perception.metadata.get("model"),
            "temperature": perception.metadata.get("temperature"),
            "input_size": list(perception.input_size),
        }
        if options.segmentation is not None:
            entry["segmentation"] = _segmentation_cell(perception, checkpoint, options, log)
        checkpoints[ckpt_key] = entry
        cells = {}
        for spec in options.datasets:
            folders[(ckpt_key, spec.key)], cells[spec.key] = _anomaly_cell(
                perception, checkpoint, spec, scorers, options, log
            )
        for key, (spec, params, title) in scorers.items():
            row = {
                "checkpoint": ckpt_key,
                "checkpoint_path": str(checkpoint),
                "scorer": key,
                "name": spec.name,
                "params": params,
                "method": title,
                "miou": entry.get("segmentation", {}).get("miou"),
                "datasets": {},
            }
            for dataset_key, cell in cells.items():
                row["datasets"][dataset_key] = {
                    k: v for k, v in cell["scorers"][key].items() if k not in ("title", "name", "params", "state")
                } | {"num_images": cell["num_images"]}
            rows.append(row)
        del perception
    results = {
        "checkpoints": checkpoints,
        "datasets": {
            spec.key: {"kind": spec.kind, "root": str(spec.root), "title": spec.title} for spec in options.datasets
        },
        "tpr": options.tpr,
        "rows": rows,
        "log": log,
    }
    write_json(options.out / "results.json", _clean(results))
    tables.write_grid_tables(options.out, results)
    if options.plots:
        results["plots"] = plots.write_grid_plots(options.out, results, folders)
        write_json(options.out / "results.json", _clean(results))
    return results
