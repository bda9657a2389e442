"""The queue of one between the subscription and the worker: drop policy and bounded latency."""

import threading
import time

from anomaly_seg_ros.ros.frame_queue import LatestSlot, PipelineWorker


def test_put_replaces_and_counts():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.dropped == 2 and slot.pending
    assert slot.get(0).item == 3
    assert slot.get(0.01) is None and not slot.pending
    slot.close()
    assert slot.put(4) is False and slot.get(1.0) is None and slot.accepted == 3


def test_close_wakes_a_waiting_get():
    slot: LatestSlot[int] = LatestSlot()
    got = []
    waiter = threading.Thread(target=lambda: got.append(slot.get(10.0)))
    waiter.start()
    time.sleep(0.05)
    slot.close()
    waiter.join(1.0)
    assert not waiter.is_alive() and got == [None]


def test_fast_producer_slow_consumer():
    process_s, period_s, produced = 0.03, 0.001, 300
    slot: LatestSlot[int] = LatestSlot()
    consumed: list[int] = []
    latencies: list[float] = []
    newest_at_pickup: list[tuple[int, int]] = []
    latest = [-1]

    def process(item: int) -> None:
        newest_at_pickup.append((item, latest[0]))
        time.sleep(process_s)
        consumed.append(item)

    worker = PipelineWorker(slot, process, on_done=lambda item, latency: latencies.append(latency), poll_s=0.01)
    worker.start()
    for i in range(produced):
        latest[0] = i
        slot.put(i)
        time.sleep(period_s)
    deadline = time.monotonic() + 2.0  # let the last frame through, however loaded the machine
    while (not consumed or consumed[-1] != produced - 1) and time.monotonic() < deadline:
        time.sleep(process_s)
    assert worker.stop()
    assert not worker.is_alive()

    assert slot.dropped == produced - len(consumed) - int(slot.pending)
    assert slot.dropped > produced / 2  # the consumer really was overloaded
    assert consumed == sorted(consumed) and len(set(consumed)) == len(consumed)
    assert consumed[-1] == produced - 1  # the newest frame is never lost
    # Frames are taken as soon as the worker is free, so the frame taken is the newest (a FIFO
    # would lag by hundreds); the tolerance is a few producer periods of thread scheduling.
    assert all(newest - item <= 10 for item, newest in newest_at_pickup)
    # Latency: at most one waiting frame plus one processing time, whatever the number produced
    # (a FIFO would reach ~produced * period_s = 0.3 s+ here and keep growing).
    assert len(latencies) == len(consumed)
    assert max(latencies) < 2 * process_s + 0.05
    late, early = latencies[len(latencies) // 2 :], latencies[: len(latencies) // 2]
    assert sum(late) / len(late) < sum(early) / len(early) + process_s


def test_worker_survives_errors_and_stops_when_idle():
    slot: LatestSlot[int] = LatestSlot()
    errors: list[tuple[int, str]] = []
    done = threading.Event()

    def process(item: int) -> None:
        if item == 0:
            raise ValueError("bad frame")
        done.set()

    worker = PipelineWorker(slot, process, on_error=lambda item, error: errors.append((item, str(error))), poll_s=0.01)
    worker.start()
    slot.put(0)
    time.sleep(0.05)
    slot.put(1)
    assert done.wait(2.0)
    assert errors == [(0, "bad frame")] and worker.processed == 1
    assert worker.stop(timeout=1.0)
