"""Replay at scale: bags replayed in parallel processes (``--workers``) and as Ray tasks on a real local
cluster (``--ray``) give the report of the serial run: the same counts, alert tracks, obstacles and
pooled metrics, bit for bit (only measured times differ); a bag that fails in a worker is reported
and the others go on. The pooled accumulators merge exactly, also past their exact buffer."""

import importlib.util
import json
import pickle
import struct

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly_seg_ros.evaluation.state import load_streaming_metrics, save_streaming_metrics
from anomaly_seg_ros.metrics import StreamingOODMetrics
from anomaly_seg_ros.metrics.components import ComponentMetrics
from anomaly_seg_ros.replay.parallel import summary_path
from anomaly_seg_ros.replay.runner import PooledMetrics
from anomaly_seg_ros.replay.synthetic_bag import write_sequence_bag

HEIGHT, WIDTH = 64, 128  # small frames
NET = [32, 64]  # a tiny network input
#: Values a run measures (times, and the live-node drops simulated from them): they differ run to run.
MEASURED = {
    "wall_s",
    "throughput_fps",
    "realtime_factor",
    "latency_ms",
    "latency_by_stage_ms",
    "stage_ms_p50",
    "realtime_drops",
    "realtime_dropped_frames",
    "timings_ms",
    "output",
}


def _without_measured(value):
    if isinstance(value, dict):
        return {key: _without_measured(item) for key, item in value.items() if key not in MEASURED}
    if isinstance(value, list):
        return [_without_measured(item) for item in value]
    return value


# -- the accumulators merge exactly -----------------------------------------------------------


def _chunks(seed, count, size):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        labels = rng.choice(np.array([0, 1, 255], np.uint8), size=size, p=[0.7, 0.2, 0.1])
        scores = (rng.normal(size=size) + 1.5 * (labels == 1)).astype(np.float32)
        yield scores, labels


def _state(metrics):
    return (metrics.exact, metrics.score_range, metrics.out_of_range, None if metrics.exact else metrics._hist.tolist())


@pytest.mark.parametrize("buffer_size", [10_000, 300])  # all pixels exact / the buffer overflows mid-way
def test_per_bag_accumulators_merge_into_the_serial_one(buffer_size, tmp_path):
    bags = [list(_chunks(seed, 3, 40)) for seed in range(4)]
    settings = {"num_bins": 64, "buffer_size": buffer_size, "histogram_range": (-2.0, 2.5)}
    serial = StreamingOODMetrics(**settings)  # one accumulator fed every frame of every bag
    parts = []
    for bag in bags:
        part = StreamingOODMetrics(**settings)
        for scores, labels in bag:
            serial.update(scores, labels)
            part.update(scores, labels)
        parts.append(pickle.loads(pickle.dumps(part)))  # as a task's result travels back
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    assert _state(merged) == _state(serial)
    assert merged.summary() == serial.summary()
    scores = np.concatenate([s for bag in bags for s, _ in bag])
    labels = np.concatenate([lab for bag in bags for _, lab in bag])
    keep = labels != 255
    if buffer_size == 10_000:  # exact: sklearn on the pooled pixels
        assert merged.exact
        assert merged.average_precision() == pytest.approx(average_precision_score(labels[keep], scores[keep]))
        assert merged.auroc() == pytest.approx(roc_auc_score(labels[keep], scores[keep]))
    else:  # past the buffer: binned in the range given up front, never one learnt from the first bag
        assert not merged.exact and merged.score_range == (-2.0, 2.5)
        below, above = int(np.sum(scores[keep] < -2.0)), int(np.sum(scores[keep] > 2.5))
        assert merged.out_of_range == (below, above) and below + above > 0
        assert int(merged._hist.sum()) == int(keep.sum())
    save_streaming_metrics(tmp_path / "state.npz", merged)
    loaded = load_streaming_metrics(tmp_path / "state.npz")
    assert loaded.histogram_range == (-2.0, 2.5) and _state(loaded) == _state(merged)
    with pytest.raises(ValueError, match="histogram_range"):
        merged.merge(StreamingOODMetrics(num_bins=64, histogram_range=(0.0, 1.0)))


def test_pooled_component_metrics_merge_to_the_counts_of_one_accumulator():
    rng = np.random.default_rng(3)
    frames = []
    for shift in range(6):  # the predicted blob slides off the obstacle: sIoU from 1 down; a false blob
        truth = np.zeros((32, 32), np.uint8)
        truth[4:16, 4:16] = 1
        scores = rng.random((32, 32)) * 0.4
        scores[4 + shift : 16 + shift, 4 + 2 * shift : 16 + 2 * shift] = 0.9
        scores[24:32, 20:32] = 0.8 if shift % 2 else 0.1
        frames.append((scores, truth))
    pooled = PooledMetrics(StreamingOODMetrics(), ComponentMetrics(0.5, "obstacle"))
    for half in (frames[:2], frames[2:]):
        part = PooledMetrics(StreamingOODMetrics(), ComponentMetrics(0.5, "obstacle"))
        for scores, truth in half:
            part.pixels.update(scores, truth)
            part.components.update(scores, truth)
        pooled.merge(pickle.loads(pickle.dumps(part)))
    direct = ComponentMetrics(0.5, "obstacle")
    for scores, truth in frames:
        direct.update(scores, truth)
    merged, expected = pooled.components.summary(), direct.summary()
    assert set(merged) == set(expected)
    for key, value in expected.items():
        assert merged[key] == pytest.approx(value, nan_ok=True), key
    assert 0.0 < expected["siou_gt"] < 1.0 and expected["num_pred_components"] > 6  # not a trivial case
    truth = np.concatenate([t.ravel() for _, t in frames])
    assert pooled.pixels.average_precision() == pytest.approx(
        average_precision_score(truth, np.concatenate([s.ravel() for s, _ in frames]))
    )


# -- the CLI: serial, --workers, --ray --------------------------------------------------------


def _corrupt_first_message(bag):
    """Make the first message record of the bag's mcap claim 2 GiB: the summary (topics, counts) still
    reads, so the driver's checks pass, and the reader fails mid-bag ("Truncated record") in the worker."""
    path = next(bag.glob("*.mcap"))
    data = bytearray(path.read_bytes())
    chunk = 8 + 9 + struct.unpack_from("<Q", data, 9)[0]  # after the magic and the Header record
    assert data[chunk] == 0x06, "expected the first chunk after the header"
    content = chunk + 9
    compression = struct.unpack_from("<I", data, content + 28)[0]
    record = content + 32 + compression + 8
    while data[record] != 0x05:  # schemas and channels come first
        record += 9 + struct.unpack_from("<Q", data, record + 1)[0]
    struct.pack_into("<Q", data, record + 1, 2**31)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def replay_case(tmp_path_factory):
    """Three small bags (different lengths, obstacles approaching), a corrupt fourth one, a tiny checkpoint, and
    the serial run's report of the three good bags."""
    import torch

    from anomaly_seg_ros.core.config import load_config
    from anomaly_seg_ros.core.perception import Perception
    from anomaly_seg_ros.models import build_model, save_checkpoint
    from anomaly_seg_ros.replay.bagio import iter_messages
    from anomaly_seg_ros.ros.conversions import message_to_rgb
    from anomaly_seg_ros.tools.cli import main

    root = tmp_path_factory.mktemp("parallel").resolve()
    drives = root / "drives"
    for name, frames, seed in (("a", 3, 0), ("b", 4, 1), ("c", 2, 2)):
        write_sequence_bag(drives / name, seed=seed, num_frames=frames, height=HEIGHT, width=WIDTH, fps=1.0)
    _corrupt_first_message(write_sequence_bag(drives / "d_corrupt", seed=3, num_frames=2, height=HEIGHT, width=WIDTH))
    weights = root / "erfnet.safetensors"
    torch.manual_seed(0)
    calibration = {"maxlogit": {"threshold": 0.0, "range": [-1.0, 1.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=19), weights, metadata={"input_size": NET, "calibration": calibration}
    )
    # an alert threshold that a fifth of the random network's pixels pass: alerts, tracks and components
    # (MaxLogit: the random network's energy gives no 20-pixel components at that rate)
    perception = Perception.from_config(load_config(None, [f"model.weights={weights}", "scorer.name=maxlogit"]))
    message = next(iter_messages(drives / "a", topics=["/camera/image_raw"]))
    threshold = float(np.quantile(perception.process(message_to_rgb(message.msg)).anomaly, 0.8))
    common = ["--weights", str(weights), "--no-progress", "--no-plots"]
    alerts = ["scorer.name=maxlogit", f"alerts.threshold={threshold}", "alerts.min_area_px=20", "alerts.roi=none"]
    alerts.append("alerts.persistence_k=1")
    common += [item for setting in ["model.threads=1", *alerts] for item in ("--set", setting)]
    good = [str(drives / name) for name in ("a", "b", "c")]
    assert main(["bag", *good, "--out", str(root / "serial"), *common]) == 0
    serial = json.loads((root / "serial_report" / "report.json").read_text())
    return root, drives, common, serial


def _check_against_serial(root, name, serial):
    document = json.loads((root / f"{name}_report" / "report.json").read_text())
    # the corrupt bag failed in its worker, with the reader's reason; the other three were replayed
    [failure] = document.pop("failed_bags")
    assert failure["bag"].endswith("d_corrupt") and "Truncated record" in failure["error"]
    assert document["total"].pop("failed_bags") == 1
    assert "FAILED bag" in (root / f"{name}_report" / "report.md").read_text()
    assert _without_measured(document) == _without_measured(serial)
    total = document["total"]
    assert total["bags"] == 3 and total["frames"] == 9 and total["gt_frames"] == 9
    assert total["pixel_metrics"]["exact"] and total["component_metrics"]["num_frames"] == 9
    assert total["alert_tracks"] > 0 and total["component_metrics"]["num_pred_components"] > 0  # not an empty case
    assert total["pixel_metrics"]["num_anomaly"] > 50 and total["obstacles_detected"] + total["obstacles_missed"] > 0
    for bag in document["bags"]:  # each task's per-bag summary beside its output bag
        summary = json.loads(summary_path(root / name / bag["name"]).read_text())
        assert _without_measured(summary) == _without_measured(bag)
    assert (root / name / "a" / "metadata.yaml").is_file()


@pytest.mark.scale
def test_workers_report_equals_the_serial_report(replay_case):
    from anomaly_seg_ros.tools.cli import main

    root, drives, common, serial = replay_case
    assert main(["bag", str(drives), "--out", str(root / "workers"), "--workers", "2", *common]) == 1  # one bag failed
    _check_against_serial(root, "workers", serial)


@pytest.mark.scale
def test_ray_cluster_report_equals_the_serial_report(replay_case, monkeypatch):
    """A real Ray cluster on loopback: a head and a second node (one CPU each, no dashboard, small object
    stores); the CLI connects to it by address like to any existing cluster."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from anomaly_seg_ros.tools.cli import main

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    root, drives, common, serial = replay_case
    store = 80 * 2**20
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": store},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
        assert main(["bag", str(drives), "--out", str(root / "ray"), "--ray", cluster.address, *common]) == 1
    finally:
        cluster.shutdown()
    _check_against_serial(root, "ray", serial)


def test_scale_mistakes_stop_with_a_one_line_error_before_any_replay(replay_case, capsys):
    import socket

    from anomaly_seg_ros.tools.cli import main

    root, drives, common, _ = replay_case
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    for extra, expected in (
        (["--workers", "0"], "--workers: expected a number of processes >= 1, got 0"),
        (["--score-range", "1", "0"], "--score-range: expected LO < HI"),
        (["--ray", f"127.0.0.1:{free}"], f"--ray 127.0.0.1:{free}: nothing answers at 127.0.0.1:{free}"),
    ):
        if extra[0] == "--ray" and importlib.util.find_spec("ray") is None:
            expected = "--ray needs Ray on this machine and every node"
        out = root / f"refused_{len(extra)}_{extra[0]}"
        assert main(["bag", str(drives), "--out", str(out), *common, *extra]) == 2
        assert expected in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.scale
def test_a_worker_process_that_dies_fails_its_bag_and_the_others_go_on(tmp_path):
    from parallel_tasks import die_on_bag_named_die  # a small module: spawned workers import it

    from anomaly_seg_ros.replay.parallel import ReplayJob, _process_results
    from anomaly_seg_ros.replay.runner import ReplayOptions

    jobs = [ReplayJob(name, str(tmp_path / name), None, (), ReplayOptions()) for name in ("a", "die", "b")]
    # one process: "a" finishes, "die" kills the pool before "b" starts; "b" runs in a new pool
    results = list(_process_results(jobs, 1, task=die_on_bag_named_die))
    assert [result.bag for result in results] == ["a", "die", "b"]
    assert [result.error for result in results[::2]] == ["finished", "finished"]
    assert results[1].error.startswith("worker process died")
