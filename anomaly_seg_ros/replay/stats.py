"""Statistics of a replay: latency percentiles, bag duration and gaps, the node's drop policy, delays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: Latency percentiles reported everywhere (plus the maximum).
PERCENTILES = (50, 95, 99)
#: Per-frame timing columns that the replay adds around the perception stages.
DECODE, PUBLISH, END_TO_END = "decode", "publish", "end_to_end"


# -- statistics ------------------------------------------------------------------------------


def latency_stats(values_ms: Iterable[float]) -> dict[str, float]:
    """``{"p50", "p95", "p99", "max"}`` of the values (numpy's linear interpolation); ``{}`` when empty."""
    values = np.asarray(list(values_ms), dtype=np.float64)
    if values.size == 0:
        return {}
    return {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES} | {"max": float(values.max())}


def bag_duration_s(stamps_ns: Sequence[int]) -> float | None:
    """Recording time covered by frames stamped ``stamps_ns``: ``last - first + median interval``.

    Every frame stands for one frame interval, so 600 frames at 10 Hz are 60 s (not 59.9 s)
    and two bags played one after the other add up. None for fewer than two frames (no
    interval is known).
    """
    stamps = np.sort(np.asarray(stamps_ns, dtype=np.int64))
    if stamps.size < 2:
        return None
    intervals = np.diff(stamps)
    return float(stamps[-1] - stamps[0] + np.median(intervals)) * 1e-9


def missing_frames(stamps_ns: Sequence[int], tolerance: float = 1.5) -> int:
    """Frames missing from the recording, estimated from gaps in the camera stamps.

    With ``d`` the median interval, an interval ``dt > tolerance * d`` is a gap that lost
    ``round(dt / d) - 1`` frames (a camera or recorder drop, before the pipeline ever ran).
    """
    stamps = np.sort(np.asarray(stamps_ns, dtype=np.int64))
    if stamps.size < 3:
        return 0
    intervals = np.diff(stamps).astype(np.float64)
    median = float(np.median(intervals))
    if median <= 0:
        return 0
    gaps = intervals[intervals > tolerance * median]
    return int(np.sum(np.round(gaps / median) - 1))


def simulate_latest_slot(arrivals_ns: Sequence[int], processing_ms: Sequence[float]) -> list[int]:
    """Frames a live node would drop at the measured processing times: indices, in order.

    The node hands frames to one worker through a queue of one (``ros/frame_queue.py``): a
    frame arriving while the worker is busy waits in the slot and replaces (drops) the one
    waiting there; when the worker is free it takes the waiting frame. Frame ``i`` arrives at
    ``arrivals_ns[i]`` and occupies the worker for ``processing_ms[i]``. An offline replay
    processes every frame, so this is how its latencies translate into skipped frames on the
    vehicle at the recorded frame rate.
    """
    if len(arrivals_ns) != len(processing_ms):
        raise ValueError(f"{len(arrivals_ns)} arrivals but {len(processing_ms)} processing times; expected one each")
    dropped: list[int] = []
    free_at = -np.inf  # when the worker finishes its current frame (ns)
    waiting: int | None = None
    for index, (arrival, duration) in enumerate(zip(arrivals_ns, processing_ms, strict=True)):
        if waiting is not None and free_at <= arrival:
            # the worker took the waiting frame the moment it became free
            free_at += processing_ms[waiting] * 1e6
            waiting = None
        if waiting is None and free_at <= arrival:
            free_at = arrival + duration * 1e6
        elif waiting is None:
            waiting = index
        else:
            dropped.append(waiting)
            waiting = index
    return dropped


def delay_stats(obstacles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts of ground-truth obstacles detected / missed and their detection delays (s)."""
    delays = [item["delay_s"] for item in obstacles if item["detected"]]
    stats: dict[str, Any] = {
        "obstacles_total": len(obstacles),
        "obstacles_detected": len(delays),
        "obstacles_missed": len(obstacles) - len(delays),
    }
    if delays:
        stats["detection_delay_s"] = {
            "mean": float(np.mean(delays)),
            "median": float(np.median(delays)),
            "max": max(delays),
        }
    else:
        stats["detection_delay_s"] = None
    return stats


def per_minute(count: int, duration_s: float | None) -> float | None:
    """``count`` per minute of ``duration_s``; None when the duration is unknown or zero."""
    return count / (duration_s / 60.0) if duration_s else None
