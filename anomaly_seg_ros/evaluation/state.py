"""On-disk state of evaluation cells: streaming metric accumulators, example frames, JSON documents.

Shared by the grid (which writes and resumes cells) and the plots (which read them back).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from anomaly_seg_ros.common.fileio import atomic_write, json_default
from anomaly_seg_ros.metrics import StreamingOODMetrics


def save_streaming_metrics(path: Path, metrics: StreamingOODMetrics) -> None:
    """Write the whole state of ``metrics`` to ``path`` (.npz): buffered pixels or histograms.

    Reads the accumulator's private fields: StreamingOODMetrics has no public state API, and
    the round trip is tested (test_evaluate.py) so a change there fails loudly.
    """
    arrays: dict[str, np.ndarray] = {
        "config": np.array([metrics.num_bins, metrics.buffer_size], dtype=np.int64),
        "margin": np.array(metrics.margin),
        "out_of_range": np.array(metrics.out_of_range, dtype=np.int64),
    }
    if metrics.histogram_range is not None:
        arrays["histogram_range"] = np.array(metrics.histogram_range, dtype=np.float64)
    if metrics.exact:
        buffer = metrics._buffer
        arrays["scores"] = np.concatenate([s for s, _ in buffer]) if buffer else np.zeros(0, np.float32)
        arrays["positive"] = np.concatenate([p for _, p in buffer]) if buffer else np.zeros(0, bool)
    else:
        arrays["range"] = np.array(metrics.score_range, dtype=np.float64)
        arrays["hist"] = metrics._hist
    write_atomically(path, lambda handle: np.savez(handle, **arrays))


def load_streaming_metrics(path: Path) -> StreamingOODMetrics:
    """The accumulator saved by :func:`save_streaming_metrics`."""
    with np.load(path) as data:
        num_bins, buffer_size = (int(v) for v in data["config"])
        planned = tuple(float(v) for v in data["histogram_range"]) if "histogram_range" in data else None
        metrics = StreamingOODMetrics(
            num_bins=num_bins, buffer_size=buffer_size, margin=float(data["margin"]), histogram_range=planned
        )
        if "hist" in data:
            metrics._fix_range(*data["range"])
            metrics._hist[:] = data["hist"]
            metrics._out_of_range = [int(v) for v in data["out_of_range"]]
        elif data["scores"].size:
            metrics.update(data["scores"], data["positive"].astype(np.uint8))
    return metrics


def write_atomically(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""

    def writer(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            write(handle)

    atomic_write(path, writer)


def write_json(path: Path, document: Any) -> None:
    write_atomically(
        path, lambda handle: handle.write((json.dumps(document, indent=2, default=json_default) + "\n").encode())
    )


def save_examples(path: Path, examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    arrays = {}
    for index, (image, truth, scores) in enumerate(examples):
        arrays |= {f"image_{index}": image, f"truth_{index}": truth, f"scores_{index}": scores}
    write_atomically(path, lambda handle: np.savez_compressed(handle, **arrays))


def load_examples(path: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The example frames of a cell: ``[(image, ground truth, scores of the cell's first scorer)]``."""
    if not path.is_file():
        return []
    with np.load(path) as data:
        count = sum(1 for name in data.files if name.startswith("image_"))
        return [(data[f"image_{i}"], data[f"truth_{i}"], data[f"scores_{i}"]) for i in range(count)]
