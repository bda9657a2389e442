"""Pipeline health for ``/diagnostics``: rates, latency percentiles, drops and rejections.

A vehicle's diagnostic aggregator and ``rqt_robot_monitor`` read ``diagnostic_msgs``; the
numbers an operator needs from this node are whether frames arrive, whether they come out,
how late, how many were dropped under overload (by design, see ``frame_queue``) and why
input messages were rejected. The accumulator is plain Python (thread-safe: the subscription
callback, the worker and the diagnostics timer all touch it), and the message builder takes
message classes from any provider with a ``types`` mapping, so the same code fills rosbags
messages in tests and rclpy messages in the node.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"
DIAGNOSTIC_STATUS = "diagnostic_msgs/msg/DiagnosticStatus"
KEY_VALUE = "diagnostic_msgs/msg/KeyValue"


@dataclass(frozen=True)
class StatsSnapshot:
    """The accumulator's state at one instant (latencies in milliseconds, rates in Hz)."""

    input_rate_hz: float
    output_rate_hz: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    received: int
    processed: int
    dropped: int
    rejected: dict[str, int] = field(default_factory=dict)
    last_rejection: str = ""
    rejected_in_window: int = 0
    backend: str = ""
    device: str = ""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class PipelineStats:
    """Counts and recent timings of the node's data path.

    Rates count events in the last ``window_s`` seconds (or since start, if shorter);
    latency percentiles use the last ``latency_samples`` processed frames, so memory stays
    bounded however long the node runs.
    """

    def __init__(
        self,
        *,
        backend: str = "",
        device: str = "",
        window_s: float = 5.0,
        latency_samples: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or latency_samples < 1:
            raise ValueError("window_s must be positive and latency_samples >= 1")
        self.backend = backend
        self.device = device
        self._window_s = window_s
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._received_times: deque[float] = deque()
        self._processed_times: deque[float] = deque()
        self._rejected_times: deque[float] = deque()
        self._latencies_s: deque[float] = deque(maxlen=latency_samples)
        self._received = 0
        self._processed = 0
        self._dropped = 0
        self._rejected: Counter[str] = Counter()
        self._last_rejection = ""

    def record_received(self, replaced: bool = False) -> None:
        """A frame entered the queue; ``replaced`` when it pushed out an unprocessed one."""
        with self._lock:
            self._received += 1
            self._dropped += replaced
            self._received_times.append(self._clock())

    def record_processed(self, latency_s: float) -> None:
        """A frame's outputs were published ``latency_s`` after it arrived."""
        with self._lock:
            self._processed += 1
            self._processed_times.append(self._clock())
            self._latencies_s.append(latency_s)

    def record_rejected(self, reason: str) -> None:
        """An input message could not be used; ``reason`` is a short key such as ``bad_encoding``."""
        with self._lock:
            self._rejected[reason] += 1
            self._last_rejection = reason
            self._rejected_times.append(self._clock())

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            now = self._clock()
            span = min(self._window_s, max(now - self._start, 1e-9))
            for times in (self._received_times, self._processed_times, self._rejected_times):
                while times and times[0] <= now - self._window_s:
                    times.popleft()
            p50 = p95 = None
            if self._latencies_s:
                p50, p95 = (float(v) * 1e3 for v in np.percentile(np.asarray(self._latencies_s), [50.0, 95.0]))
            return StatsSnapshot(
                input_rate_hz=len(self._received_times) / span,
                output_rate_hz=len(self._processed_times) / span,
                latency_p50_ms=p50,
                latency_p95_ms=p95,
                received=self._received,
                processed=self._processed,
                dropped=self._dropped,
                rejected=dict(self._rejected),
                last_rejection=self._last_rejection,
                rejected_in_window=len(self._rejected_times),
                backend=self.backend,
                device=self.device,
            )


def status_level(snapshot: StatsSnapshot) -> tuple[str, str]:
    """``("OK" | "WARN" | "ERROR", message)``.

    Drops alone are not a warning: under overload they are how latency stays bounded. A
    stalled pipeline (frames in, nothing out) is an error; no input or recent rejections
    are warnings, because a planner must not trust silence from this node.
    """
    if snapshot.input_rate_hz == 0.0:
        return "WARN", "no images received"
    if snapshot.output_rate_hz == 0.0:
        return "ERROR", "images received but none processed"
    if snapshot.rejected_in_window:
        return "WARN", f"{snapshot.rejected_in_window} input messages rejected, last: {snapshot.last_rejection}"
    return "OK", f"{snapshot.output_rate_hz:.1f} Hz, latency p95 {snapshot.latency_p95_ms:.0f} ms"


def _format(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def key_values(snapshot: StatsSnapshot) -> list[tuple[str, str]]:
    """The status's key/value pairs, in display order."""
    pairs = [
        ("input rate (Hz)", _format(snapshot.input_rate_hz, 2)),
        ("output rate (Hz)", _format(snapshot.output_rate_hz, 2)),
        ("latency p50 (ms)", _format(snapshot.latency_p50_ms)),
        ("latency p95 (ms)", _format(snapshot.latency_p95_ms)),
        ("frames received", str(snapshot.received)),
        ("frames processed", str(snapshot.processed)),
        ("frames dropped", str(snapshot.dropped)),
        ("messages rejected", str(snapshot.rejected_total)),
        ("last rejection reason", snapshot.last_rejection or "none"),
    ]
    pairs += [(f"rejected: {reason}", str(count)) for reason, count in sorted(snapshot.rejected.items())]
    pairs += [("backend", snapshot.backend), ("device", snapshot.device)]
    return pairs


def diagnostic_array_msg(typestore: Any, header: Any, snapshot: StatsSnapshot, *, name: str, hardware_id: str) -> Any:
    """A ``DiagnosticArray`` with one status; ``typestore`` is anything with a ``types`` mapping.

    The level is read from the status class's constants (``int`` in rosbags, ``bytes`` in
    rclpy, whose ``byte`` fields take one-byte ``bytes``), so both providers get valid values.
    """
    types = typestore.types
    status_cls = types[DIAGNOSTIC_STATUS]
    level, message = status_level(snapshot)
    status = status_cls(
        level=getattr(status_cls, level),
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[types[KEY_VALUE](key=key, value=value) for key, value in key_values(snapshot)],
    )
    return types[DIAGNOSTIC_ARRAY](header=header, status=[status])
