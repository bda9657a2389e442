"""Diagnostics accumulator and DiagnosticArray building with the real (rosbags) message classes."""

import pytest

from anomaly_seg_ros.ros.conversions import make_header
from anomaly_seg_ros.ros.diagnostics import DIAGNOSTIC_ARRAY, PipelineStats, diagnostic_array_msg
from anomaly_seg_ros.ros.typestore import get_typestore


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_percentiles_drops_and_rejections():
    clock = FakeClock()
    stats = PipelineStats(backend="eager", device="cpu", window_s=2.0, latency_samples=100, clock=clock)
    # 10 s at 4 Hz in (binary-exact steps), every other frame replaces an unprocessed one.
    for i in range(40):
        clock.now += 0.25
        stats.record_received(replaced=i % 2 == 1)
        if i % 2 == 1:
            stats.record_processed(latency_s=0.5)
    for i in range(150):  # 150 more latencies of 1..150 ms: the window keeps the last 100 (51..150 ms)
        stats.record_processed(latency_s=0.001 * (i + 1))
    stats.record_rejected("bad_encoding")
    stats.record_rejected("decode_failed")
    stats.record_rejected("bad_encoding")
    snap = stats.snapshot()
    assert snap.input_rate_hz == 8 / 2.0  # 8 receptions in the last 2 s
    assert snap.received == 40 and snap.dropped == 20 and snap.processed == 170
    # numpy's linear interpolation on 51..150: p50 = 100.5, p95 = 51 + 0.95 * 99 = 145.05
    assert snap.latency_p50_ms == pytest.approx(100.5)
    assert snap.latency_p95_ms == pytest.approx(145.05)
    assert snap.rejected == {"bad_encoding": 2, "decode_failed": 1} and snap.last_rejection == "bad_encoding"
    assert snap.rejected_in_window == 3


def test_window_forgets_old_events_but_not_totals():
    clock = FakeClock()
    stats = PipelineStats(window_s=1.0, clock=clock)
    stats.record_received()
    stats.record_rejected("too_small")
    clock.now += 5.0
    snap = stats.snapshot()
    assert snap.input_rate_hz == 0.0 and snap.received == 1
    assert snap.rejected_in_window == 0 and snap.rejected_total == 1
    assert snap.latency_p50_ms is None


def _status(stats: PipelineStats):
    typestore = get_typestore()
    header = make_header(typestore, 1_700_000_000_123_456_789, "")
    msg = diagnostic_array_msg(typestore, header, stats.snapshot(), name="anomaly_seg: pipeline", hardware_id="cam0")
    raw = typestore.serialize_cdr(msg, DIAGNOSTIC_ARRAY)
    back = typestore.deserialize_cdr(raw, DIAGNOSTIC_ARRAY)
    assert back.header.stamp.sec == 1_700_000_000 and back.header.stamp.nanosec == 123_456_789
    assert len(back.status) == 1
    return back.status[0]


def test_levels_and_round_trip():
    clock = FakeClock()
    stats = PipelineStats(backend="compile", device="cuda:0", window_s=1.0, clock=clock)
    status = _status(stats)
    assert status.level == 1 and status.message == "no images received"

    clock.now += 0.5
    stats.record_received()
    status = _status(stats)
    assert status.level == 2 and "none processed" in status.message

    stats.record_processed(0.02)
    status = _status(stats)
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == 0 and status.name == "anomaly_seg: pipeline" and status.hardware_id == "cam0"
    assert values["backend"] == "compile" and values["device"] == "cuda:0"
    assert values["latency p50 (ms)"] == "20.0" and values["frames dropped"] == "0"
    assert values["last rejection reason"] == "none"

    stats.record_rejected("bad_encoding")
    status = _status(stats)
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == 1 and "bad_encoding" in status.message
    assert values["rejected: bad_encoding"] == "1" and values["messages rejected"] == "1"
