"""The training run: epochs, validation, checkpoints, resume, and post-training threshold calibration.

One function, :func:`train`, serves a single process and every process of a ``torchrun``
launch alike (DistributedDataParallel, see :mod:`.distributed`): rank 0 writes checkpoints,
logs and progress bars; losses and confusion matrices are reduced over all ranks so that
every rank computes the same history. Images go through
:func:`~anomaly_seg_ros.inference.preprocess.normalize_images`, the preprocessing the
perception core runs, so a trained checkpoint sees identical pixels in deployment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from anomaly_seg_ros.common.errors import CheckpointError, ConfigError
from anomaly_seg_ros.common.labels import IGNORE_INDEX, NUM_CITYSCAPES_CLASSES, class_names
from anomaly_seg_ros.core.alerts import region_of_interest
from anomaly_seg_ros.core.config import AlertConfig, _to_plain, load_config
from anomaly_seg_ros.inference.preprocess import normalize_images
from anomaly_seg_ros.losses import build_criterion, iu_pixel_weights
from anomaly_seg_ros.metrics import ConfusionMatrix
from anomaly_seg_ros.models import build_model, load_weights, model_defaults, save_checkpoint
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import available_scorers, get_scorer
from anomaly_seg_ros.scoring.base import TemperatureScorer
from anomaly_seg_ros.training.config import TrainConfig
from anomaly_seg_ros.training.data import (
    compute_class_weights,
    train_loader,
    training_samples,
    val_loader,
    validation_samples,
)
from anomaly_seg_ros.training.distributed import (
    DistContext,
    all_reduce_sum,
    broadcast_object,
    cleanup_distributed,
    setup_distributed,
)
from anomaly_seg_ros.training.logs import RunLogger

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
TRAINER_STATE = "trainer_state.pt"
HISTORY = "history.json"
#: Scorer flags that put a scorer out of reach of post-training calibration from logits.
_NOT_FROM_LOGITS = ("requires_fit", "requires_features", "requires_model", "offline_only")
#: Optimisation steps between two TensorBoard step-loss points (each costs a device sync).
STEP_LOG_INTERVAL = 20


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_miou: float
    seconds: float
    per_class_iou: list[float | None] = field(default_factory=list)
    learning_rate: float = 0.0


class _ForwardWithFeatures(nn.Module):
    """Makes ``forward_with_features`` the module's ``forward``, returning its fields as a dict.

    DistributedDataParallel synchronises gradients only for passes through its own
    ``forward``, and finds the output tensors it must hook by flattening the output as a
    pytree: a dict of tensors and tuples is one, a ``SegmentationOutput`` dataclass is not
    (with ``static_graph`` the first step's gradients would then silently stay per rank).
    :func:`_as_output` rebuilds the ``SegmentationOutput`` for the criterion.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> dict[str, Any]:
        output = self.model.forward_with_features(inputs)
        return {item.name: getattr(output, item.name) for item in dataclasses.fields(output)}


def _as_output(fields: dict[str, Any]) -> SegmentationOutput:
    return SegmentationOutput(**fields)


# -- reproducibility -----------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _configure_determinism(config: TrainConfig, device: torch.device) -> None:
    if config.deterministic:
        # cuBLAS needs this before its first call to be deterministic (PyTorch reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: autotuned kernels pay off


def _rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather(value: Any, context: DistContext) -> list[Any]:
    if not context.distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


# -- evaluation ----------------------------------------------------------------------------


def _metadata(config: TrainConfig, epoch: int, metrics: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    defaults = model_defaults(config.model)
    return {
        "model": config.model,
        "num_classes": config.num_classes,
        "class_names": list(class_names(config.num_classes)),
        "mean": list(defaults["mean"]),
        "std": list(defaults["std"]),
        "input_size": list(config.input_size),
        "temperature": 1.0,
        "head": config.head,
        "epoch": epoch,
        "metrics": dict(metrics),
        "training": _to_plain(dataclasses.asdict(config)),
        **extra,
    }


@torch.inference_mode()
def predict_batches(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    normalization: Mapping[str, Any],
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (logits, labels) on ``device`` over a loader, preprocessing exactly as at inference."""
    model.eval()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        inputs = normalize_images(images, config.input_size, normalization["mean"], normalization["std"])
        yield model(inputs), labels


def evaluate_miou(
    model: nn.Module, loader: DataLoader, config: TrainConfig, context: DistContext | None = None
) -> ConfusionMatrix:
    """Confusion matrix over the loader's images, summed over all ranks of a distributed run."""
    context = context or DistContext()
    normalization = model_defaults(config.model)
    confusion = ConfusionMatrix(config.num_classes, ignore_index=IGNORE_INDEX)
    for logits, labels in predict_batches(model, loader, config, normalization, context.device):
        confusion.update(logits.argmax(dim=1), labels)
    if context.distributed:
        confusion.matrix = all_reduce_sum(torch.from_numpy(confusion.matrix), context).cpu().numpy()
    return confusion


def cityscapes_miou(confusion: ConfusionMatrix) -> float:
    """Mean IoU over the 19 Cityscapes classes; a 20-class model's void is not one of them.

    Pixels labelled void still count: predicting void on a road pixel is a miss for road.
    """
    with np.errstate(all="ignore"):
        iou = confusion.iou()[:NUM_CITYSCAPES_CLASSES]
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def calibration_region(
    labels: torch.Tensor, predicted: torch.Tensor, alerts: AlertConfig, num_classes: int = NUM_CITYSCAPES_CLASSES
) -> torch.Tensor:
    """(N, H, W) bool: the in-distribution pixels inside the alert region of interest of each frame.

    The region is the one the deployed perception core thresholds (:func:`region_of_interest`
    on the predicted labels with the deployment's ``alerts`` settings), so a threshold set at
    a false-positive rate here has that rate where alerts are raised, and no pixel the alerts
    never look at (the ego hood, the sky, beyond a static polygon) moves it. In-distribution
    means a labelled Cityscapes class (trainIds below ``num_classes``): ignore (255) and a
    20-class model's void (19) are left out.
    """
    known = (labels >= 0) & (labels < num_classes)
    regions = []
    for frame in predicted.cpu().numpy().astype(np.uint8):
        roi, _ = region_of_interest(frame, alerts)
        regions.append(np.ones(frame.shape, dtype=bool) if roi is None else roi)
    return known & torch.from_numpy(np.stack(regions)).to(labels.device)


def describe_region(alerts: AlertConfig, source: str | None) -> dict[str, Any]:
    """What a calibrated threshold's false-positive rate refers to, as stored in the checkpoint."""
    return {
        "pixels": f"labelled in-distribution pixels (trainIds 0-{NUM_CITYSCAPES_CLASSES - 1}) inside the alert ROI",
        "roi": alerts.roi,
        "roi_polygon": [list(point) for point in alerts.roi_polygon],
        "drivable_classes": list(alerts.drivable_classes),
        "config": source or "default perception config",
    }


def calibrate_scorers(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    *,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
    alerts: AlertConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """Per scorer: the alert threshold that a fraction ``calibration_road_fpr`` of the validation
    pixels inside the deployed alert region exceed, and a heatmap display range from the
    in-distribution score spread.

    The region (:func:`calibration_region`) comes from ``alerts``, else from the perception
    config named by ``config.alerts_config``, else from the default one: the deployment's
    region of interest, so every scorer's threshold has the same false-alarm rate where alerts
    are raised, and switching scorers at run time needs no hand tuning. Each entry records the
    rate (``fpr``) and the region it was set for (``region``). Only scorers computed from this
    model's logits alone are calibrated: those that need features, a fit, the network itself
    or parameters are skipped, and so are those whose ``bind`` rejects the model (``void`` on
    a 19-class model, ``isomax`` without an IsoMax+ head). Temperature scorers use
    ``temperature``, the one the perception core will apply from the checkpoint.
    """
    source = config.alerts_config if alerts is None else None
    if alerts is None:
        alerts = load_config(config.alerts_config).alerts
    scorers = {}
    for name in available_scorers():
        try:
            scorer = get_scorer(name)
        except ConfigError as error:  # a scorer that cannot run without parameters (ensembles)
            log.debug("not calibrating scorer %r: %s", name, error)
            continue
        if any(getattr(scorer, flag, False) for flag in _NOT_FROM_LOGITS):
            continue
        if isinstance(scorer, TemperatureScorer):
            scorer = get_scorer(name, temperature=temperature)
        try:
            scorer.bind(model)
        except ConfigError as error:
            log.debug("not calibrating scorer %r: %s", name, error)
            continue
        scorers[name] = scorer
    normalization = model_defaults(config.model)
    region_scores: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    all_scores: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    for logits, labels in predict_batches(model, loader, config, normalization, device):
        region = calibration_region(labels, logits.argmax(dim=1), alerts)
        valid = labels != IGNORE_INDEX
        for name, scorer in scorers.items():
            scores = scorer(logits)
            region_scores[name].append(scores[region].float().cpu().numpy())
            all_scores[name].append(scores[valid][::16].float().cpu().numpy())  # a subsample suffices for a range
    calibration = {}
    region_info = describe_region(alerts, source)
    for name in scorers:
        inside = np.concatenate(region_scores[name])
        if inside.size == 0:
            # A run must not end in an error after its training is done: the checkpoint is kept
            # without thresholds, and the pipeline names `anomaly-seg calibrate` when one is needed.
            log.warning(
                "no alert threshold calibrated: the model predicts no labelled in-distribution pixel inside the "
                "alert region (alerts.roi %r) of the validation split; set alerts.threshold or run "
                "`anomaly-seg calibrate --config CONFIG` on a better model",
                alerts.roi,
            )
            return {}
        threshold = float(np.quantile(inside, 1.0 - config.calibration_road_fpr))
        low = float(np.quantile(np.concatenate(all_scores[name]), 0.05))
        high = threshold + 0.5 * max(threshold - low, 1e-6)
        calibration[name] = {
            "threshold": threshold,
            "range": [low, high],
            "fpr": config.calibration_road_fpr,
            "region": {**region_info, "pixel_count": int(inside.size)},
        }
    return calibration


# -- the run -------------------------------------------------------------------------------


def train_single(
    config: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> list[EpochResult]:
    """Train one network, ``config.model`` with ``config.losses``; write checkpoints and logs to ``out_dir``.

    Writes ``best.safetensors`` / ``last.safetensors`` (weights + metadata), ``trainer_state.pt``
    (optimizer, scheduler, grad scaler, RNG states, class weights: what ``resume`` restores),
    ``history.json``, ``log.csv`` and TensorBoard events. Under ``torchrun`` every process calls
    this; ``batch_size`` is the global batch. Returns the per-epoch history (on every rank).
    """
    context = setup_distributed(config.device)
    try:
        return _train(config, Path(out_dir), context, resume=resume, progress=progress)
    finally:
        cleanup_distributed(context)


def _load_resume_state(out_dir: Path, model: nn.Module, context: DistContext) -> dict[str, Any]:
    """Rank 0 reads the saved run (weights into ``model``); every rank gets the trainer state."""
    payload: dict[str, Any] = {}
    if context.is_main:
        state_path = out_dir / TRAINER_STATE
        try:
            if not state_path.is_file():
                raise CheckpointError(f"cannot resume: {state_path} does not exist (train without --resume first)")
            load_weights(model, out_dir / LAST_CHECKPOINT)
            payload = {"state": torch.load(state_path, map_location="cpu", weights_only=True)}
            payload["history"] = json.loads((out_dir / HISTORY).read_text(encoding="utf-8"))
        except CheckpointError as error:
            payload = {"error": str(error)}
        except (OSError, json.JSONDecodeError) as error:
            payload = {"error": f"cannot resume from {out_dir}: {error}"}
    # Every rank must learn about a failure, or the others would wait in the next collective forever.
    payload = broadcast_object(payload, context)
    if "error" in payload:
        raise CheckpointError(payload["error"])
    return payload


def _train(
    config: TrainConfig, out_dir: Path, context: DistContext, *, resume: bool, progress: bool
) -> list[EpochResult]:
    device = context.device
    main = context.is_main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    _configure_determinism(config, device)
    _seed_everything(config.seed)

    train_set, val_set = training_samples(config), validation_samples(config)
    loader, val = train_loader(train_set, config, context), val_loader(val_set, config, context)
    model = build_model(config.model, num_classes=config.num_classes, head=config.head, **config.model_args)
    normalization = model_defaults(config.model)

    saved = _load_resume_state(out_dir, model, context) if resume else {}
    if config.init_checkpoint and not saved:
        # Fine-tuning: strict load (same model, classes and head), or a CheckpointError naming the file.
        load_weights(model, config.init_checkpoint)
        if main:
            log.info("fine-tuning from %s", config.init_checkpoint)
    state = saved.get("state", {})
    if "class_weights" in state:
        class_weights = state["class_weights"]
    else:
        class_weights = broadcast_object(compute_class_weights(config, train_set) if main else None, context)
    criterion = build_criterion(
        config.losses,
        num_classes=config.num_classes,
        class_weights=class_weights,
        ignore_index=IGNORE_INDEX,
        aux_weight=config.aux_weight,
    )
    criterion.check_model(model)
    if criterion.uses_outliers != config.outliers.enabled:
        raise ConfigError(
            "train.outliers / train.losses: outlier loss terms (energy_margin, outlier_void, outlier_entropy) "
            "need train.outliers.source set, and pasted outliers need one of those terms; got source "
            f"{config.outliers.source!r} with losses {criterion.names}"
        )
    criterion = criterion.to(device)

    model = model.to(device)
    if context.distributed and device.type == "cuda" and config.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = _ForwardWithFeatures(model)
    if context.distributed:
        # Parameters are broadcast from rank 0 here (so resumed weights reach every rank);
        # static_graph tolerates parameters that never get a gradient (ERFNet's encoder
        # output_conv serves only the authors' encoder pre-training).
        net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
        )
    # Dropout masks must differ between ranks; the model's initial weights (drawn above) do not.
    torch.manual_seed(config.seed + 1_000_003 * context.rank)

    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )

    def poly(epoch: int) -> float:
        return math.pow(max(0.0, 1.0 - epoch / config.epochs), config.lr_power)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly)
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.float16 if config.amp_dtype == "float16" else torch.bfloat16
    # bfloat16 has float32's exponent range: no loss scaling needed.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    history: list[EpochResult] = []
    start_epoch, best_miou = 0, -1.0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved by a run without float16 AMP (e.g. on a CPU)
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_miou = int(state["epoch"]), float(state["best_miou"])
        # The saved optimizer holds the rate after the saved run's last scheduler step, which
        # used that run's epoch count; resuming with more epochs must continue this run's decay.
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * poly(start_epoch)
        history = [EpochResult(**item) for item in saved["history"]]
        rng = state["rng"]
        if len(rng) == context.world_size:
            _set_rng_state(rng[context.rank], device)
        else:
            log.warning("resuming with %d processes, saved with %d: RNG streams reseeded", context.world_size, len(rng))
            torch.manual_seed(config.seed + 1_000_003 * context.rank + 7919 * start_epoch)
        if main:
            log.info("resuming after epoch %d (best mIoU %.4f)", start_epoch, best_miou)

    logger = RunLogger(out_dir, tensorboard=config.tensorboard) if main else None
    names = class_names(config.num_classes)
    global_step = start_epoch * len(loader)
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            train_set.set_epoch(epoch)
            loader.sampler.set_epoch(epoch)
            learning_rate = optimizer.param_groups[0]["lr"]
            net.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            steps = 0
            batches = tqdm(
                loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and main), leave=False
            )
            for images, labels, *extras in batches:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                # Extras in the order of SegmentationSamples: instance uncertainty, then the outlier mask.
                outlier_mask = extras.pop().to(device, non_blocking=True) if config.outliers.enabled else None
                # Precomputed instance uncertainty (seed 003): CE * (1 + IU)^2.
                pixel_weights = iu_pixel_weights(extras[0].to(device, non_blocking=True)) if extras else None
                inputs = normalize_images(images, tuple(images.shape[-2:]), normalization["mean"], normalization["std"])
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                    output = _as_output(net(inputs))
                    loss = criterion(output, labels, pixel_weights=pixel_weights, outlier_mask=outlier_mask)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach()
                steps += 1
                global_step += 1
                if main and (progress or global_step % STEP_LOG_INTERVAL == 0):
                    value = loss.item()
                    batches.set_postfix(loss=f"{value:.3f}")
                    if global_step % STEP_LOG_INTERVAL == 0:
                        logger.log_step(global_step, value, learning_rate)
                if config.max_steps_per_epoch and steps >= config.max_steps_per_epoch:
                    break
            scheduler.step()
            totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(steps), device=device)]), context)
            train_loss = float(totals[0] / totals[1].clamp_min(1))
            if not math.isfinite(train_loss):
                raise ConfigError(
                    f"training diverged in epoch {epoch + 1} (loss {train_loss}); lower train.learning_rate"
                )
            confusion = evaluate_miou(model, val, config, context)
            result = EpochResult(
                epoch=epoch + 1,
                train_loss=train_loss,
                val_miou=cityscapes_miou(confusion),
                seconds=time.perf_counter() - started,
                per_class_iou=[None if math.isnan(v) else float(v) for v in confusion.iou()],
                learning_rate=learning_rate,
            )
            history.append(result)
            rng = _gather(_rng_state(device), context)
            if main:
                best_miou = _save_epoch(
                    out_dir, model, config, result, history, best_miou, optimizer, scheduler, scaler, rng, class_weights
                )
                logger.log_epoch([dataclasses.asdict(item) for item in history], names)
                log.info(
                    "epoch %d/%d: loss %.4f, val mIoU %.4f (%.0f s)",
                    result.epoch,
                    config.epochs,
                    result.train_loss,
                    result.val_miou,
                    result.seconds,
                )
            else:
                best_miou = max(best_miou, result.val_miou)
    finally:
        if logger is not None:
            logger.close()

    if main:
        # Calibrate alert thresholds on the best model and store them in its checkpoint.
        best_path = out_dir / BEST_CHECKPOINT
        best = build_model(config.model, num_classes=config.num_classes, head=config.head)
        metadata = load_weights(best, best_path)
        metadata["calibration"] = calibrate_scorers(
            best.to(device), val_loader(val_set, config, DistContext(device=device)), config, device=device
        )
        save_checkpoint(best, best_path, metadata=metadata)
        if config.anomaly_val:
            metadata["metrics"]["anomaly"] = evaluate_anomaly_sets(best, config, device=device)
            _write_anomaly_report(out_dir, metadata["metrics"])
            save_checkpoint(best, best_path, metadata=metadata)
    return history


@torch.inference_mode()
def evaluate_anomaly_sets(
    model: nn.Module, config: TrainConfig, *, device: torch.device | str = "cpu"
) -> dict[str, dict[str, dict[str, float]]]:
    """Per anomaly set of ``config.anomaly_val`` and per logit scorer: AuPRC, FPR95, AUROC over all pixels.

    Images are preprocessed as at inference (``input_size``); scores are compared with the
    ground truth at the network's resolution (labels by nearest neighbour).
    """
    from anomaly_seg_ros.data.datasets import AnomalyDataset
    from anomaly_seg_ros.inference.preprocess import resize_labels
    from anomaly_seg_ros.metrics.ood import StreamingOODMetrics
    from anomaly_seg_ros.scoring import logit_scorers

    normalization = model_defaults(config.model)
    model = model.to(device).eval()
    scorers = {}
    for name in logit_scorers():
        scorer = get_scorer(name)
        try:
            scorer.bind(model)
        except ConfigError:
            continue
        scorers[name] = scorer
    results: dict[str, dict[str, dict[str, float]]] = {}
    for root in config.anomaly_val:
        dataset = AnomalyDataset(root)
        metrics = {name: StreamingOODMetrics() for name in scorers}
        for index in range(len(dataset)):
            image, truth = dataset[index]
            images = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
            inputs = normalize_images(images, config.input_size, normalization["mean"], normalization["std"])
            logits = model(inputs)
            target = resize_labels(torch.from_numpy(np.ascontiguousarray(truth))[None], tuple(logits.shape[-2:]))[0]
            for name, scorer in scorers.items():
                metrics[name].update(scorer(logits)[0].float().cpu(), target)
        results[str(root)] = {}
        for name, metric in metrics.items():
            summary = metric.summary()
            results[str(root)][name] = {key: float(summary[key]) for key in ("ap", "fpr_at_tpr", "auroc")}
    return results


def _write_anomaly_report(out_dir: Path, metrics: Mapping[str, Any]) -> None:
    """``anomaly.md``: the validation mIoU beside the anomaly metrics, what the anomaly gain costs."""
    lines = [f"validation mIoU (clean scenes): {100 * metrics['val_miou']:.1f} %", ""]
    for root, per_scorer in metrics["anomaly"].items():
        lines += [f"## {root}", "", "| scorer | AuPRC (%) | FPR95 (%) | AUROC (%) |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {name} | {100 * m['ap']:.2f} | {100 * m['fpr_at_tpr']:.2f} | {100 * m['auroc']:.2f} |"
            for name, m in per_scorer.items()
        ]
        lines.append("")
    (out_dir / "anomaly.md").write_text("\n".join(lines), encoding="utf-8")


def _save_epoch(
    out_dir: Path,
    model: nn.Module,
    config: TrainConfig,
    result: EpochResult,
    history: list[EpochResult],
    best_miou: float,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    rng: list[dict[str, Any]],
    class_weights: torch.Tensor | None,
) -> float:
    """Rank 0's end of epoch: last (and maybe best) checkpoint, trainer state, history; returns best mIoU."""
    metrics = {"val_miou": result.val_miou, "train_loss": result.train_loss}
    extra = {"class_weights": class_weights.tolist()} if class_weights is not None else {}
    metadata = _metadata(config, result.epoch, metrics, **extra)
    save_checkpoint(model, out_dir / LAST_CHECKPOINT, metadata=metadata)
    # NaN (no class present in validation) never becomes "best" by comparison; keep at least one best.
    if result.val_miou > best_miou or not (out_dir / BEST_CHECKPOINT).exists():
        best_miou = result.val_miou if math.isfinite(result.val_miou) else best_miou
        save_checkpoint(model, out_dir / BEST_CHECKPOINT, metadata=metadata)
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": result.epoch,
        "best_miou": best_miou,
        "rng": rng,
        "world_size": len(rng),
    }
    if class_weights is not None:
        state["class_weights"] = class_weights.detach().cpu()
    tmp = out_dir / f".{TRAINER_STATE}.tmp"
    torch.save(state, tmp)
    tmp.replace(out_dir / TRAINER_STATE)
    history_tmp = out_dir / f".{HISTORY}.tmp"
    history_tmp.write_text(json.dumps([dataclasses.asdict(item) for item in history], indent=2), encoding="utf-8")
    history_tmp.replace(out_dir / HISTORY)
    return best_miou
