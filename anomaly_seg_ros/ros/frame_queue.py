"""Hand-off of camera frames from the subscription callback to one inference thread.

Inference takes longer than a camera period on a slow device, so frames must not queue up:
with a FIFO the published masks would fall further and further behind the camera. A
latest-value slot (a queue of one) keeps only the newest unprocessed frame. A newer frame
replaces an older waiting one and the drop is counted, so the latency of what is published
stays bounded by about one processing time plus one wait, however fast frames arrive, and
the executor thread that calls :meth:`LatestSlot.put` never blocks on inference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival(Generic[T]):
    """An item and the monotonic time (seconds) at which it was put into the slot."""

    item: T
    time_s: float


class LatestSlot(Generic[T]):
    """A thread-safe queue of one that keeps the newest item and counts the ones it replaced."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._slot: Arrival[T] | None = None
        self._closed = False
        self._dropped = 0
        self._put = 0

    def put(self, item: T) -> bool:
        """Store ``item``, replacing (and counting) an unprocessed older one; never blocks.

        Returns True when an older item was dropped. After :meth:`close` the item is ignored
        (the node is shutting down) and False is returned.
        """
        with self._cond:
            if self._closed:
                return False
            replaced = self._slot is not None
            self._dropped += replaced
            self._put += 1
            self._slot = Arrival(item, self._clock())
            self._cond.notify()
            return replaced

    def get(self, timeout: float | None = None) -> Arrival[T] | None:
        """The newest item, waiting up to ``timeout`` seconds; None on timeout or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._slot is not None or self._closed, timeout)
            if self._closed:
                return None
            arrival, self._slot = self._slot, None
            return arrival

    def close(self) -> None:
        """Wake every waiting :meth:`get` and refuse further items; a pending item is discarded."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def dropped(self) -> int:
        """Items replaced before a consumer took them."""
        with self._cond:
            return self._dropped

    @property
    def accepted(self) -> int:
        """Items stored by :meth:`put` (dropped ones included)."""
        with self._cond:
            return self._put

    @property
    def pending(self) -> bool:
        """Whether an item waits for a consumer."""
        with self._cond:
            return self._slot is not None

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed


class PipelineWorker(threading.Thread, Generic[T]):
    """Daemon thread: take the newest item from ``slot``, run ``process`` on it, report latency.

    ``on_done(item, latency_s)`` receives the time from the item's arrival in the slot to the
    end of ``process``: what a consumer of the outputs sees as the pipeline's delay. An
    exception from ``process`` goes to ``on_error(item, error)`` and the thread keeps going,
    because one bad frame must not stop perception.
    """

    def __init__(
        self,
        slot: LatestSlot[T],
        process: Callable[[T], None],
        *,
        on_done: Callable[[T, float], None] | None = None,
        on_error: Callable[[T, Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.1,
    ) -> None:
        super().__init__(name="anomaly_seg_worker", daemon=True)
        self.slot = slot
        self._process = process
        self._on_done = on_done
        self._on_error = on_error or _log_error
        self._clock = clock
        self._poll_s = poll_s
        self.processed = 0

    def run(self) -> None:
        while not self.slot.closed:
            arrival = self.slot.get(self._poll_s)
            if arrival is None:
                continue
            try:
                self._process(arrival.item)
            except Exception as error:  # reported, and the next frame is processed
                self._on_error(arrival.item, error)
                continue
            self.processed += 1
            if self._on_done is not None:
                self._on_done(arrival.item, self._clock() - arrival.time_s)

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Close the slot and wait for the frame in progress to finish; True when the thread ended."""
        self.slot.close()
        if self.is_alive():
            self.join(timeout)
        return not self.is_alive()


def _log_error(item: object, error: Exception) -> None:
    _LOG.error("processing a frame failed: %s", error, exc_info=error)
