"""The training configuration: one dataclass, filled from defaults <- YAML file <- ``--set`` overrides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import _build, _merge, parse_override, read_yaml_mapping
from anomaly_seg_ros.data.outliers import OutlierSettings


def _default_losses() -> list[dict[str, Any]]:
    return [{"name": "ce", "weight": 1.0}]


@dataclass
class TrainConfig:
    """Training settings; a YAML file under ``config/`` holds one of these (see ``config/train_*.yaml``)."""

    #: Root of a Cityscapes-layout dataset (leftImg8bit/ + gtFine/ with labelTrainIds or labelIds).
    data: str = ""
    train_split: str = "train"
    val_split: str = "val"
    model: str = "erfnet"
    #: Extra keyword arguments of the model's builder, e.g. {backbone_weights: resnet18.pth} for BiSeNet.
    model_args: dict[str, Any] = field(default_factory=dict)
    #: 19 (Cityscapes trainIds, 255 ignored) or 20 (ignore pixels trained as void = 19).
    num_classes: int = 19
    #: Classifier head: the network as published, or an IsoMax+ head (seed 000 eq. 8).
    head: Literal["linear", "isomax"] = "linear"
    #: Network input (height, width) at validation and inference; images are resized to it.
    input_size: tuple[int, int] = (256, 512)
    #: Training crop (height, width); null = input_size (no cropping unless scale_range != [1, 1]).
    crop_size: tuple[int, int] | None = None
    epochs: int = 10
    #: Global batch size: split evenly over the processes of a distributed run.
    batch_size: int = 8
    #: Adam (ERFNet, ENet authors) or SGD with momentum (BiSeNet authors).
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: Poly decay per epoch: lr = learning_rate * (1 - epoch / epochs) ** lr_power.
    lr_power: float = 0.9
    #: Loss terms for anomaly_seg_ros.losses.build_criterion, e.g. [{name: focal, gamma: 2.0}].
    losses: list[dict[str, Any]] = field(default_factory=_default_losses)
    #: Class weights from the training labels' histogram (losses.enet_class_weights / inverse_frequency_weights).
    class_weights: Literal["none", "enet", "inverse_frequency"] = "none"
    #: Weight of the auxiliary heads' losses (BiSeNet).
    aux_weight: float = 1.0
    # Augmentation (data/augment.py); all off = the inference resize.
    hflip: bool = True
    scale_range: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    workers: int = 0
    seed: int = 0
    #: Deterministic kernels (torch.use_deterministic_algorithms, no cuDNN autotuning); slower on GPU.
    deterministic: bool = False
    #: Cap on optimisation steps per epoch (0 = whole dataset); for quick experiments and tests.
    max_steps_per_epoch: int = 0
    #: Alert thresholds are calibrated so that this fraction of the labelled in-distribution validation
    #: pixels inside the deployed alert region (``alerts_config``) lies above them. (The name is
    #: historical: the region was once all road pixels.)
    calibration_road_fpr: float = 0.001
    #: Perception config (YAML) of the deployment; its ``alerts`` section (roi, roi_polygon,
    #: drivable_classes) is the region thresholds are calibrated in. Null: the default config.
    #: Relative to the training config file when set there, else to the working directory.
    alerts_config: str | None = None
    #: CPU threads per process (0 = PyTorch's default).
    threads: int = 0
    #: "auto" (CUDA when available, the local rank's GPU under torchrun), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    #: Mixed precision (torch.autocast + GradScaler); only takes effect on CUDA.
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    #: Under DistributedDataParallel on CUDA, BatchNorm statistics over the global batch (SyncBatchNorm).
    sync_batchnorm: bool = True
    #: TensorBoard event files under OUT/tensorboard (CSV logs are always written).
    tensorboard: bool = True
    #: Instance-wise uncertainty weighting CE * (1 + IU)^2 (seed 003): "none"; "precomputed" reads the IU
    #: maps under ``iu_masks`` (written by ``anomaly-seg iu-masks``); "cotrain" trains the networks named
    #: in ``iu_members`` together, weighting each by the IU of their joint prediction.
    iu_mode: Literal["none", "precomputed", "cotrain"] = "none"
    iu_masks: str = ""
    iu_members: list[str] = field(default_factory=list)
    #: Fine-tuning: start from this checkpoint's weights (strict load: same model, classes and head)
    #: instead of a random initialisation. The usual outlier-exposure practice: a few epochs on top.
    init_checkpoint: str = ""
    #: Outlier exposure: objects pasted into the training scenes (data/outliers.py); the outlier
    #: loss terms (energy_margin, outlier_void, outlier_entropy) act on their pixels.
    outliers: OutlierSettings = field(default_factory=OutlierSettings)
    #: Anomaly sets (folders of the AnomalyDataset layout) scored after training with the
    #: logit scorers; AuPRC / FPR95 / AUROC are written beside the validation mIoU.
    anomaly_val: list[str] = field(default_factory=list)

    def validate(self) -> None:
        checks = [
            (bool(self.data), "data", "a dataset folder"),
            (self.num_classes in (19, 20), "num_classes", "19 or 20"),
            (
                self.input_size[0] % 8 == 0 and self.input_size[1] % 8 == 0 and min(self.input_size) > 0,
                "input_size",
                "[height, width], positive multiples of 8",
            ),
            (
                self.crop_size is None
                or (self.crop_size[0] % 8 == 0 and self.crop_size[1] % 8 == 0 and min(self.crop_size) > 0),
                "crop_size",
                "null or [height, width], positive multiples of 8",
            ),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.learning_rate > 0, "learning_rate", "a number > 0"),
            (0 <= self.momentum < 1, "momentum", "a number in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "a number >= 0"),
            (self.lr_power >= 0, "lr_power", "a number >= 0"),
            (len(self.losses) > 0, "losses", "a non-empty list of loss specs like {name: ce, weight: 1.0}"),
            (self.aux_weight >= 0, "aux_weight", "a number >= 0"),
            (0 < self.scale_range[0] <= self.scale_range[1], "scale_range", "[low, high] with 0 < low <= high"),
            (0 <= self.brightness < 1, "brightness", "a number in [0, 1)"),
            (0 <= self.contrast < 1, "contrast", "a number in [0, 1)"),
            (0 <= self.saturation < 1, "saturation", "a number in [0, 1)"),
            (self.workers >= 0, "workers", "an integer >= 0"),
            (self.max_steps_per_epoch >= 0, "max_steps_per_epoch", "an integer >= 0"),
            (0 < self.calibration_road_fpr < 1, "calibration_road_fpr", "a number in (0, 1)"),
            (self.threads >= 0, "threads", "an integer >= 0"),
            (
                self.alerts_config is None or Path(self.alerts_config).is_file(),
                "alerts_config",
                "null or an existing perception config file (e.g. config/demo.yaml)",
            ),
            (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                "device",
                "'auto', 'cpu', 'cuda' or 'cuda:N'",
            ),
            (
                self.iu_mode != "precomputed" or bool(self.iu_masks),
                "iu_masks",
                "the IU mask folder for iu_mode precomputed",
            ),
            (self.iu_mode != "cotrain" or len(self.iu_members) >= 2, "iu_members", "2 or more model names for cotrain"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"train.{key}: expected {expected}, got {getattr(self, key)!r}")
        self.outliers.validate()
        if self.outliers.enabled and self.iu_mode == "cotrain":
            raise ConfigError("train.outliers: outlier exposure is not available with iu_mode cotrain")

    @property
    def train_size(self) -> tuple[int, int]:
        """Size of the training batches: the crop, or the input size."""
        return tuple(self.crop_size or self.input_size)


def load_train_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
) -> TrainConfig:
    """Defaults <- YAML file <- ``overrides`` (None values skipped) <- ``sets`` (``key=value``, YAML-typed); validated.

    Unknown keys raise ConfigError naming the key and the valid ones.
    """
    data = read_yaml_mapping(path, "training config file") if path is not None else {}
    if path is not None and data.get("alerts_config") and not Path(data["alerts_config"]).is_absolute():
        # a path written in a config file is relative to that file, wherever the command runs
        data["alerts_config"] = str(Path(path).parent / data["alerts_config"])
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    for text in sets:
        # a nested key (outliers.foot_sampling=rows) keeps its section's other keys
        data = _merge(data, parse_override(text))
    config = _build(TrainConfig, data, "train.")
    config.validate()
    return config
