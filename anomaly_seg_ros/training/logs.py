"""Per-epoch training logs: a CSV file (one row per epoch) and TensorBoard scalars.

Only rank 0 of a distributed run creates one of these. The CSV is rewritten from the full
history each epoch, so a resumed run continues the same file without duplicate rows.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anomaly_seg_ros.common.errors import ConfigError

CSV_LOG = "log.csv"
TENSORBOARD_DIR = "tensorboard"
CSV_COLUMNS = ("epoch", "train_loss", "val_miou", "learning_rate", "seconds")


class RunLogger:
    """Writes ``out_dir/log.csv`` and, if asked, TensorBoard events under ``out_dir/tensorboard``."""

    def __init__(self, out_dir: str | Path, *, tensorboard: bool) -> None:
        self.out_dir = Path(out_dir)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ConfigError(
                    f"train.tensorboard: true needs the tensorboard package ({error}); "
                    "pip install tensorboard, or set tensorboard=false"
                ) from None
            self.writer = SummaryWriter(log_dir=str(self.out_dir / TENSORBOARD_DIR))

    def log_step(self, step: int, loss: float, learning_rate: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/step_loss", loss, step)
            self.writer.add_scalar("train/learning_rate", learning_rate, step)

    def log_epoch(self, rows: Sequence[Mapping[str, Any]], class_names: Sequence[str] = ()) -> None:
        """Rewrite the CSV from ``rows`` (all epochs so far) and add the last row to TensorBoard."""
        path = self.out_dir / CSV_LOG
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
        if self.writer is not None and rows:
            last = rows[-1]
            epoch = int(last["epoch"])
            self.writer.add_scalar("epoch/train_loss", last["train_loss"], epoch)
            self.writer.add_scalar("epoch/val_miou", last["val_miou"], epoch)
            self.writer.add_scalar("epoch/learning_rate", last["learning_rate"], epoch)
            for name, iou in zip(class_names, last.get("per_class_iou") or (), strict=False):
                if iou is not None:
                    self.writer.add_scalar(f"val_iou/{name}", iou, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
